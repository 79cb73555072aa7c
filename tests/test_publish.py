"""geobuild publish: stage a run, load it back with the real `datasets`, upload to a Hub double."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from geobuild.stages.publish.card import parse_front_matter
from geobuild.stages.publish.splits import split_of
from geobuild.artifacts.shards import iter_shard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_double import HubDouble  # noqa: E402
from publish_helpers import make_run  # noqa: E402
from georanker_reads import check_georanker_row  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TOKEN = "hf_TESTtoken0123456789secretXYZ"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_XET": "1", "GEOBUILD_NO_PROGRESS": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": str(REPO), "COLUMNS": "200"})
    env.update(extra)
    return env


def publish(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geobuild", "publish", *args], cwd=tmp_path, env=_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=300)


def load(path: Path, name: str | None, cache: Path, **kw):
    import datasets

    return datasets.load_dataset(str(path), name, cache_dir=str(cache), **kw)


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """One run published to a folder (shared by the read-only tests below)."""
    tmp = tmp_path_factory.mktemp("pub")
    run = make_run(tmp / "run", k_image=12)
    proc = publish(tmp, "--run", str(run.root), "--to", str(tmp / "out"), "--rows-per-file", "7",
                   "--validation-fraction", "0.3", "--images-per-tar", "8", "--georanker-candidates", "12", HF_HUB_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr
    return tmp, run, tmp / "out"


def test_configs_load_back_with_datasets(staged, monkeypatch):
    tmp, run, out = staged
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    card = parse_front_matter((out / "dataset" / "README.md").read_text())
    names = [c["config_name"] for c in card["configs"]]
    assert names[0] == "candidates" and card["configs"][0]["default"] is True
    infos = {i["config_name"]: i for i in card["dataset_info"]}
    assert set(infos) == set(names)
    manifest = json.loads((out / "dataset" / "manifest.json").read_text())
    for name in names:
        dd = load(out / "dataset", name, tmp / "cache")
        declared = [f["name"] for f in infos[name]["features"]]
        for split in dd:
            assert list(dd[split].features) == declared
            assert dd[split].num_rows == manifest["rows"][name][split]
    dd = load(out / "dataset", "candidates", tmp / "cache")
    rows = [r for s in dd for r in dd[s]]
    # every query either published or in the ledger with a reason
    n_queries = sum(pq.read_metadata(p).num_rows for p in run.path("candidates").glob("*.parquet"))
    ledger = pq.read_table(run.ledger_path("publish", "dataset")).to_pylist()
    assert len(rows) + len(ledger) == n_queries == 24
    assert [r["status"] for r in ledger] == ["no_distances"] and ledger[0]["key"] == "im00023"
    assert len({r["key"] for r in rows}) == len(rows)
    # the matrix is the distances' flat row, reshaped G x G, and matches the query distances
    dist = {r["key"]: r for p in sorted(run.path("distances").glob("*.parquet")) for r in pq.read_table(p).to_pylist()}
    for r in rows[:5]:
        g = r["n_candidates"]
        m = np.array(r["matrix_km"], dtype=np.float32)
        assert m.shape == (g, g) and np.allclose(np.diag(m), 0, atol=1e-3)
        assert np.array_equal(m.ravel(), np.array(dist[r["key"]]["matrix_km"], dtype=np.float32))
        assert r["query_km"] == pytest.approx(dist[r["key"]]["query_km"])
        assert len(r["cand_lat"]) == len(r["cand_texts"]) == g
    # the manifest matches the files
    for rel, info in manifest["files"].items():
        data = (out / "dataset" / rel).read_bytes()
        assert len(data) == info["size"] and hashlib.sha256(data).hexdigest() == info["sha256"]
    assert any(rel.startswith("candidates/train-00000-of-0000") for rel in manifest["files"])


def test_georanker_config_satisfies_georanker_reads(staged, monkeypatch):
    tmp, run, out = staged
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    manifest = json.loads((out / "dataset" / "manifest.json").read_text())
    cand = load(out / "dataset", "candidates", tmp / "cache")
    files = {s: sorted(str(p) for p in (out / "dataset" / "georanker").glob(f"{s}-*.parquet")) for s in ("train", "validation")}
    for dd in (load(out / "dataset", "georanker", tmp / "cache"),
               datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp / "cache"))):
        assert set(dd) == {"train", "validation"}
        for split in dd:
            assert dd[split].column_names == ["img_id", "gps", "ref_gps", "ref_img_id", "ref_texts"]
            # every query has 16 candidates (12 image, 3 GPS, 1 band point) and rows take the 12 image ones:
            # none is left out of this config
            assert dd[split].num_rows == cand[split].num_rows == manifest["rows"]["georanker"][split]
            queries = {r["id"]: (r["lat"], r["lon"]) for r in cand[split]}
            cand_rows = {r["id"]: r for r in cand[split]}
            assert sorted(dd[split]["img_id"]) == sorted(queries)
            for row in dd[split]:
                assert len(row["ref_gps"]) == 13  # entry 0 + 12 candidates
                q = cand_rows[row["img_id"]]
                image = sorted((r, i) for i, (s, r) in enumerate(zip(q["cand_source"], q["cand_rank"])) if s == "image")
                # image candidates by rank only, with their own coordinates and texts
                cands = [(q["cand_id"][i], q["cand_lat"][i], q["cand_lon"][i],
                          [q[f"cand_{f}"][i] or "" for f in ("city", "state", "country")]) for _, i in image]
                check_georanker_row(row, query=queries[row["img_id"]], candidates=cands)


def test_negative_example_texts_spell_georankers_format():
    """negative_example_texts on a hand-written row, against hand-written strings."""
    row = {"ref_gps": [[0.5, 1.5]] + [[float(i), -float(i) / 4] for i in range(1, 8)],
           "ref_texts": [["Q"]] + [[f"City{i}", "State", "Country"] for i in range(1, 6)] + [["Lima", "Peru"], []]}
    from geobuild.artifacts.georanking import negative_example_texts

    assert negative_example_texts(row) == [
        "latitude: 3.0, longitude: -0.75, City3 State Country",
        "latitude: 4.0, longitude: -1.0, City4 State Country",
        "latitude: 5.0, longitude: -1.25, City5 State Country",
        "latitude: 6.0, longitude: -1.5, Lima Peru",
        "latitude: 7.0, longitude: -1.75, ",
    ]


def test_card_plots_and_provenance(staged):
    tmp, run, out = staged
    text = (out / "dataset" / "README.md").read_text()
    meta = parse_front_matter(text)
    assert meta["license"] and meta["pretty_name"] and meta["task_categories"] and "georanker" in meta["tags"]
    feats = {f["name"]: f for f in meta["dataset_info"][0]["features"]}
    assert feats["matrix_km"] == {"name": "matrix_km", "list": {"list": "float32"}}
    assert feats["cand_key"] == {"name": "cand_key", "list": "string"} and feats["author"]["dtype"] == "string"
    assert "@inproceedings{jia2025georanker" in text and "geobuild 0.1.0" in text
    assert "k_image: 12" in text  # the run's resolved config
    rows = json.loads((out / "dataset" / "manifest.json").read_text())["rows"]["candidates"]
    assert (rows["train"], rows["validation"]) == (14, 9)  # 23 of the 24 queries, split by author
    per_query = {"queries": 1, "candidates": 16, "image candidates": 12, "gps candidates": 3, "negative candidates": 1}
    for what, k in per_query.items():
        assert f"| {what} | {k * rows['train']} | {k * rows['validation']} |" in text, what
    assert "| shard | decode_error | 1 |" in text and "| publish | no_distances | 1 |" in text
    for rel in ("stats/query_map.png", "stats/candidate_distances.png"):
        assert f"]({rel})" in text
        with Image.open(out / "dataset" / rel) as im:
            im.verify()
        with Image.open(out / "dataset" / rel) as im:
            assert im.format == "PNG" and im.size[0] >= 600 and im.size[1] >= 300
            assert len(np.unique(np.asarray(im.convert("L")))) > 5  # not a blank canvas
    icard = parse_front_matter((out / "images" / "README.md").read_text())
    assert {f["name"] for f in icard["dataset_info"][0]["features"]} == {"__key__", "__url__", "jpg", "json"}


def test_images_repo_loads_and_splits_never_share_an_author(staged, monkeypatch):
    tmp, run, out = staged
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    icard = parse_front_matter((out / "images" / "README.md").read_text())
    features = datasets.Features._from_yaml_list(icard["dataset_info"][0]["features"])
    files = {s: sorted(str(p) for p in (out / "images" / s).glob("*.tar")) for s in ("train", "validation")}
    assert len(files["train"]) >= 2  # rotated at 8 photos per tar
    dd = datasets.load_dataset("webdataset", data_files=files, features=features, cache_dir=str(tmp / "cache"))
    manifest = json.loads((out / "images" / "manifest.json").read_text())
    assert {s: dd[s].num_rows for s in dd} == manifest["rows"]["default"]
    # also through the repository's own card
    dd2 = load(out / "images", None, tmp / "cache")
    assert {s: dd2[s].num_rows for s in dd2} == manifest["rows"]["default"]
    photo_split = {}
    for s in dd:
        for row in dd[s]:
            photo_split[row["__key__"]] = (s, row["json"]["author"])
            assert row["jpg"].size == (128, 96)
    # every query and image candidate is there once, except the photo no shard holds (ledger)
    ledger = pq.read_table(run.ledger_path("publish", "images")).to_pylist()
    assert [(r["key"], r["status"]) for r in ledger] == [("ghost00001", "image_missing")]
    keys = {s["__key__"] for p in sorted(run.shards_dir.glob("*.tar")) for s in iter_shard(p)}
    assert set(photo_split) <= keys and len(photo_split) == sum(manifest["rows"]["default"].values())
    # one author never spans splits, in the dataset and in the images
    qd = load(out / "dataset", "candidates", tmp / "cache")
    by_author: dict = {}
    for s in qd:
        for row in qd[s]:
            by_author.setdefault(row["author"] or ("id:" + row["id"]), set()).add(s)
            assert photo_split[row["key"]][0] == s
    for s, author in photo_split.values():
        if author:
            by_author.setdefault(author, set()).add(s)
    assert all(len(v) == 1 for v in by_author.values())
    assert {s for v in by_author.values() for s in v} == {"train", "validation"}


def test_split_rule_is_stable():
    assert split_of("alice", "x", 0.5) == split_of("alice", "y", 0.5)
    assert split_of(None, "x", 0.0) == "train" and split_of("bob", "x", 0.0) == "train"
    fractions = np.mean([split_of(f"author{i}", None, 0.2) == "validation" for i in range(4000)])
    assert 0.17 < fractions < 0.23


def test_rerun_skips_and_restage_is_identical(staged):
    tmp, run, out = staged
    before = json.loads((out / "dataset" / "manifest.json").read_text())
    proc = publish(tmp, "--run", str(run.root), "--to", str(out), "--rows-per-file", "7", "--validation-fraction", "0.3",
                   "--images-per-tar", "8", "--georanker-candidates", "12", HF_HUB_OFFLINE="1")
    assert proc.returncode == 0 and "0 units done, 2 skipped" in proc.stderr
    changed = publish(tmp, "--run", str(run.root), "--to", str(out), "--validation-fraction", "0.5", HF_HUB_OFFLINE="1")
    assert changed.returncode == 2 and "different 'publish' configuration" in changed.stderr
    assert "Traceback" not in changed.stderr
    proc = publish(tmp, "--run", str(run.root), "--to", str(out), "--rows-per-file", "7", "--validation-fraction", "0.3",
                   "--images-per-tar", "8", "--georanker-candidates", "12", "--restage", HF_HUB_OFFLINE="1")
    assert proc.returncode == 0 and "2 units done" in proc.stderr
    assert json.loads((out / "dataset" / "manifest.json").read_text()) == before


def _all_text(*folders: Path) -> str:
    out = []
    for folder in folders:
        for p in folder.rglob("*"):
            if p.is_file():
                out.append(p.read_bytes().decode("latin-1"))
    return "\n".join(out)


def test_validation_failure_uploads_nothing(tmp_path):
    run = make_run(tmp_path / "run", per_shard=6, drop_distance=False, missing_photo=False)
    proc = publish(tmp_path, "--run", str(run.root), "--to", str(tmp_path / "out"), "--no-images", HF_HUB_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr
    victim = sorted((tmp_path / "out" / "dataset" / "candidates").glob("train-*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[:-40] + b"\0" * 40)
    with HubDouble(TOKEN) as hub:
        proc = publish(tmp_path, "--run", str(run.root), "--to", str(tmp_path / "out"), "--no-images", "--hub", "geo/bad",
                       HF_TOKEN=TOKEN, HF_ENDPOINT=hub.url)
        assert proc.returncode == 2
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: validation of") and "sha256 differs" in last and "nothing uploaded" in last
        assert "Traceback" not in proc.stderr
        assert hub.repos == {} and hub.received == [] and hub.commit_attempts == 0


def test_row_counts_that_disagree_fail_validation_and_upload_nothing(tmp_path):
    """Checksums pass (manifest regenerated) but the rows do not: validation names the config, nothing is uploaded.
    The altered files are recorded in the publish marker, as if the stage had written them (a changed
    staged file is otherwise noticed by the marker check and staged again from the run)."""
    from geobuild.core.markers import read_marker, output_records, write_marker
    from geobuild.stages.publish.manifest import read_manifest, write_manifest

    def as_if_staged() -> None:
        m = read_marker(run, "publish", "dataset")
        write_marker(run, "publish", "dataset", output_records(run, [folder]), m.inputs)

    run = make_run(tmp_path / "run", per_shard=6, drop_distance=False, missing_photo=False)
    args = ["--run", str(run.root), "--to", str(tmp_path / "out"), "--no-images"]
    proc = publish(tmp_path, *args, HF_HUB_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "out" / "dataset"
    rows = read_manifest(folder)["rows"]
    n_train = rows["candidates"]["train"]
    assert n_train >= 2

    def rejected(*words: str) -> None:
        with HubDouble(TOKEN) as hub:
            proc = publish(tmp_path, *args, "--hub", "geo/bad", HF_TOKEN=TOKEN, HF_ENDPOINT=hub.url)
            assert proc.returncode == 2, proc.stderr
            last = proc.stderr.strip().splitlines()[-1]
            assert last.startswith("error: validation of") and "nothing uploaded" in last, last
            assert "sha256" not in last and all(w in last for w in words), last
            assert "Traceback" not in proc.stderr
            assert hub.repos == {} and hub.received == [] and hub.commit_attempts == 0

    # 1. the manifest claims one train row more than the files hold (files, card and datasets agree)
    write_manifest(folder, {**rows, "candidates": {**rows["candidates"], "train": n_train + 1}})
    as_if_staged()
    loaded = {s: n for s, n in rows["candidates"].items() if n > 0}
    rejected(f"dataset/candidates: datasets loads {loaded} rows, manifest says {({**loaded, 'train': n_train + 1})}")
    # 2. a staged Parquet file lost a row and the manifest was rewritten to match: the card's split sizes disagree
    victim = sorted((folder / "candidates").glob("train-*.parquet"))[0]
    t = pq.read_table(victim)
    pq.write_table(t.slice(0, t.num_rows - 1), victim)
    write_manifest(folder, {**rows, "candidates": {**rows["candidates"], "train": n_train - 1}})
    as_if_staged()
    shrunk = {**loaded, "train": n_train - 1}
    rejected(f"dataset/candidates: datasets loads {shrunk} rows, the card's dataset_info declares {loaded}")
    # 3. the same file cut short: datasets cannot read the config
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    write_manifest(folder, rows)
    as_if_staged()
    rejected("config 'candidates' does not load")


def test_no_token_or_offline_fails_before_any_work(tmp_path):
    run = make_run(tmp_path / "run", per_shard=4, shards=1)
    for env, words in (({"HF_HUB_OFFLINE": "1", "HF_TOKEN": TOKEN}, "HF_HUB_OFFLINE"), ({}, "no Hugging Face token")):
        proc = publish(tmp_path, "--run", str(run.root), "--to", str(tmp_path / "out"), "--hub", "geo/x", **env)
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and TOKEN not in proc.stderr
        assert not (tmp_path / "out").exists() and not run.is_done("publish", "dataset")


def test_upload_interrupted_then_resumed(tmp_path):
    run = make_run(tmp_path / "run")
    out = tmp_path / "out"
    args = ["--run", str(run.root), "--to", str(out), "--rows-per-file", "5", "--images-per-tar", "6",
            "--validation-fraction", "0.3", "--hub", "geo/georanking-mini", "--private", "--batch-files", "3",
            "--retries", "1", "--backoff", "0.01"]
    with HubDouble(TOKEN) as hub:
        hub.drop_commits = {1}  # connection dropped once: retried within the run
        hub.fail_commits = {3, 4}  # the second batch fails twice: more than --retries 1, the run stops
        first = publish(tmp_path, *args, HF_TOKEN=TOKEN, HF_ENDPOINT=hub.url)
        assert first.returncode == 2, first.stderr
        last = first.stderr.strip().splitlines()[-1]
        assert "rerun the same command" in last and "Traceback" not in first.stderr
        partial = list(hub.received)
        assert 0 < len(partial) and ("geo/georanking-mini", "README.md") not in partial
        assert hub.unauthorized == 0, hub.unauthorized_paths
        assert hub.repos["geo/georanking-mini"].private

        second = publish(tmp_path, *args, HF_TOKEN=TOKEN, HF_ENDPOINT=hub.url)
        assert second.returncode == 0, second.stderr
        assert f"{hub.url}/datasets/geo/georanking-mini" in second.stdout
        third = publish(tmp_path, *args, HF_TOKEN=TOKEN, HF_ENDPOINT=hub.url)
        assert third.returncode == 0 and "0 units done, 2 skipped" in third.stderr

    for repo_id, folder in (("geo/georanking-mini", out / "dataset"), ("geo/georanking-mini-images", out / "images")):
        local = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        remote = hub.repos[repo_id].files
        assert set(remote) == set(local)
        for rel, data in local.items():
            assert hashlib.sha256(remote[rel]).hexdigest() == hashlib.sha256(data).hexdigest(), rel
        sent = [p for r, p in hub.received if r == repo_id]
        assert sorted(sent) == sorted(local), "every file exactly once"
        assert {"README.md", "manifest.json"} <= set(hub.repos[repo_id].commits[-1])  # the card lands last
        assert {p for p in hub.repos[repo_id].lfs_paths} == {p for p in local if p.endswith((".parquet", ".tar", ".png"))}
    # the token never appears in output or in any written file
    for proc in (first, second, third):
        assert TOKEN not in proc.stdout + proc.stderr
    assert TOKEN not in _all_text(tmp_path / "run", out)
    assert yaml.safe_load((run.root / "config.yaml").read_text())["publish_upload"]["repo_id"] == "geo/georanking-mini"


def test_verify_accounts_for_every_published_row(staged, tmp_path):
    """`geobuild verify` checks that mined query rows = published rows + ledgered rejects and that the
    manifest's row counts agree; a manifest or stats that lost a row is reported."""
    import shutil

    import yaml

    from geobuild.core.runfolder import RunFolder
    from geobuild.pipeline.verify import verify_run

    _, run, out = staged
    shutil.copytree(run.root, tmp_path / "run")
    shutil.copytree(out, tmp_path / "out")
    copy = RunFolder(tmp_path / "run")
    cfg = yaml.safe_load(copy.path("config.yaml").read_text())
    cfg["publish"]["to"] = str(tmp_path / "out")
    copy.path("config.yaml").write_text(yaml.safe_dump(cfg))

    def findings():
        return [f for f in verify_run(copy) if f.stage == "publish" and f.check == "accounting"]

    rows = sum(pq.read_metadata(p).num_rows for p in copy.path("candidates").glob("*.parquet"))
    rejected = pq.read_table(copy.ledger_path("publish", "dataset")).num_rows  # a query without distances
    assert rows > 0 and rejected == 1
    (ok,) = findings()
    assert ok.ok and ok.detail.startswith(f"{rows} query rows = {rows - 1} published + 1 rejected")
    manifest = tmp_path / "out" / "dataset" / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["rows"]["candidates"]["train"] -= 1
    manifest.write_text(json.dumps(doc))
    stats = copy.stats_path("publish", "dataset")
    st = json.loads(stats.read_text())
    st["queries"]["validation"] -= 1
    stats.write_text(json.dumps(st))
    problems = [f.detail for f in findings() if not f.ok]
    assert any(p.startswith(f"mine wrote {rows} query rows but {rows - 2} were published") for p in problems)
    assert any(p.startswith("manifest: candidates rows") for p in problems)
