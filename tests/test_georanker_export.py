"""``geobuild export georanker``: a bundle (GeoRanking.parquet or eval CSV, images.tar, tar_index.pkl)
that satisfies exactly GeoRanker's reads (docs/formats.md), re-created here in the project's own code."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from _mine_fixtures import base_run_copy
from geobuild.cli import app
from geobuild.artifacts.georanking import GeorankerOptions, georanking_rows
from geobuild.artifacts.shards import ShardWriter, json_bytes

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent
TAIL = 5


# -- fixtures: the synthetic mine run, with real JPEG photos in its shards ------------------------
def _jpeg(seed: int, side: int = 96) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def add_shards(run, small: set[str] = frozenset()) -> None:
    """shards/<unit>.tar with a JPEG per embedded photo (``small`` keys get a <= 5120-byte photo)."""
    meta = pq.read_table(run.path("index", "ids.parquet")).to_pylist()
    units: dict[str, list[dict]] = {}
    for r in meta:
        units.setdefault(r["shard"], []).append(r)
    run.shards_dir.mkdir(parents=True, exist_ok=True)
    for unit, rows in units.items():
        with ShardWriter(run.shard_path(unit) if hasattr(run, "shard_path") else run.shards_dir / f"{unit}.tar") as w:
            for i, r in enumerate(rows):
                data = _jpeg(i, 8) if r["key"] in small else _jpeg(zlib.crc32(r["key"].encode()) % 1000)
                w.write(r["key"], {"jpg": data, "json": json_bytes({"id": r["id"], "lat": r["lat"], "lon": r["lon"]})})


def _mine(root, *args) -> None:
    res = runner.invoke(app, ["mine", "--run", str(root), *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output


def _export(*args) -> str:
    res = runner.invoke(app, ["export", "georanker", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    """The synthetic run (48 photos, 6 cities) with photos, mined with the defaults."""
    root = tmp_path_factory.mktemp("gr") / "run"
    run = base_run_copy(root)
    add_shards(run)
    _mine(root)
    return run


@pytest.fixture(scope="module")
def train_bundle(mined, tmp_path_factory):
    out = tmp_path_factory.mktemp("grb") / "bundle"
    _export("--run", str(mined.root), "--out", str(out))
    return out


@pytest.fixture(scope="module")
def eval_bundle(tmp_path_factory):
    """Queries mined against another run's gallery (a copy of the same synthetic run)."""
    base = tmp_path_factory.mktemp("gre")
    g = base_run_copy(base / "gallery")
    add_shards(g)
    q = base_run_copy(base / "queries")
    add_shards(q)
    _mine(q.root, "--gallery", str(g.root))
    out = base / "bundle"
    _export("--run", str(q.root), "--out", str(out), "--name", "im2gps3k")
    return q, g, out


# -- GeoRanker's reads, re-created ----------------------------------------------------------------
def open_photo(bundle: Path, tar_index: dict, gid: str):
    from PIL import Image

    with tarfile.open(bundle / "images.tar") as tar:
        img = Image.open(tar.extractfile(tar_index[gid]))
        img.load()
    return img


def _embeddings(run) -> dict[str, np.ndarray]:
    from geobuild.artifacts.embeddings import embedded_units, read_embeddings

    out = {}
    for u in embedded_units(run):
        x, meta = read_embeddings(run, u)
        x = np.asarray(x, np.float64)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out.update({i.replace("/", "_"): v for i, v in zip(meta["id"], x)})
    return out


def check_train_bundle(bundle: Path, run, gallery_run=None, n: int = 20) -> int:
    """Every read formats.md lists for training, on ``bundle``; returns the number of rows."""
    import datasets

    gallery_run = gallery_run or run
    ds = datasets.load_dataset("parquet", data_files=str(bundle / "GeoRanking.parquet"), split="train",
                               cache_dir=str(bundle.parent / f"hf-{bundle.name}"))
    assert ds.column_names == ["img_id", "gps", "ref_gps", "ref_img_id", "ref_texts"]
    with open(bundle / "tar_index.pkl", "rb") as f:
        tar_index = pickle.load(f)
    assert all(isinstance(v, tarfile.TarInfo) and v.size > 5120 for v in tar_index.values())
    gal = {r["id"].replace("/", "_"): r for r in pq.read_table(gallery_run.path("index", "ids.parquet")).to_pylist()}
    emb_q, emb_g = _embeddings(run), _embeddings(gallery_run)
    from PIL import Image

    with tarfile.open(bundle / "images.tar") as tar:
        for row in ds:
            ids, gps, texts = row["ref_img_id"], row["ref_gps"], row["ref_texts"]
            assert len(ids) == len(gps) == len(texts) == 1 + n >= 1 + 7 + TAIL
            assert ids[0] == row["img_id"] and gps[0] == row["gps"]  # entry 0: the query itself
            for gid in [row["img_id"], *ids]:  # every id opens from the tar through tar_index, with PIL
                Image.open(tar.extractfile(tar_index[gid])).load()
            for gid, (la, lo) in zip(ids[1:], gps[1:]):  # a real gallery photo at its own coordinates
                assert "/" not in gid and not gid.startswith("gps:")
                assert gid in gal and [gal[gid]["lat"], gal[gid]["lon"]] == [la, lo]
            sims = [float(emb_q[row["img_id"]] @ emb_g[g]) for g in ids[1:]]
            assert all(a >= b - 1e-3 for a, b in zip(sims, sims[1:])), sims  # most similar photo first
            assert row["img_id"] not in ids[1:]
            assert all(len(t) == 3 and all(isinstance(s, str) for s in t) for t in texts)
            # the trainer's negative-example text: the last 5 entries, all retrieval candidates
            neg = [f"latitude: {la}, longitude: {lo}, {' '.join(t)}" for (la, lo), t in zip(gps[-TAIL:], texts[-TAIL:])]
            assert len(neg) == TAIL and all(g in gal for g in ids[-TAIL:])
    return len(ds)


def test_mine_defaults_are_leak_free(mined):
    from geobuild.stages.mine.stage import MineConfig

    assert MineConfig().negatives == "none" and MineConfig().k_image == 20
    for p in mined.path("candidates").glob("*.parquet"):
        t = pq.read_table(p)
        assert set(pa.compute.list_flatten(t.column("cand_source")).to_pylist()) <= {"image", "gps"}
        assert min(t.column("n_image").to_pylist()) == 20


def test_train_bundle_satisfies_georanker_reads(train_bundle, mined, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert check_train_bundle(train_bundle, mined) == 48
    assert not pq.read_table(train_bundle / "ledger.parquet").num_rows
    with tarfile.open(train_bundle / "images.tar") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and {(m.mtime, m.uid, m.gid) for m in members} == {(1_700_000_000, 0, 0)}


def test_train_bundle_is_deterministic_and_replaced_whole(train_bundle, mined, tmp_path):
    out = tmp_path / "again"
    _export("--run", str(mined.root), "--out", str(out))
    for f in ("images.tar", "GeoRanking.parquet"):
        assert (out / f).read_bytes() == (train_bundle / f).read_bytes()
    (out / "stray").write_text("x")
    _export("--run", str(mined.root), "--out", str(out), "--candidates", "12")  # a rerun redoes the bundle
    assert not (out / "stray").exists() and len(pq.read_table(out / "GeoRanking.parquet").column("ref_gps")[0]) == 13
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_too_few_candidates_and_small_photos_go_to_the_ledger(tmp_path):
    root = tmp_path / "run"
    run = base_run_copy(root)
    add_shards(run, small={"paris000"})
    _mine(root, "--k-image", "20")
    out = tmp_path / "b"
    _export("--run", str(root), "--out", str(out), "--candidates", "30")
    led = pq.read_table(out / "ledger.parquet").to_pylist()
    assert len(led) == 48 and {r["status"] for r in led} == {"too_few_candidates"}
    assert pq.read_table(out / "GeoRanking.parquet").num_rows == 0
    _export("--run", str(root), "--out", str(out))
    led = pq.read_table(out / "ledger.parquet").to_pylist()
    t = pq.read_table(out / "GeoRanking.parquet").to_pylist()
    assert led and {r["status"] for r in led} == {"photo_too_small"} and len(t) + len(led) == 48
    assert all("paris000.jpg" not in r["ref_img_id"] for r in t)
    assert "paris000.jpg" not in pickle.loads((out / "tar_index.pkl").read_bytes())


def test_images_tar_indexes_an_existing_tar(train_bundle, mined, tmp_path):
    big = tmp_path / "mp-16-images.tar"  # photos under a folder, one of them missing
    with tarfile.open(train_bundle / "images.tar") as src, tarfile.open(big, "w") as dst:
        for m in src.getmembers():
            if m.name != "tokyo003.jpg":
                data = src.extractfile(m).read()
                m2 = tarfile.TarInfo("mp16/" + m.name)
                m2.size = len(data)
                dst.addfile(m2, io.BytesIO(data))
    out = tmp_path / "b"
    _export("--run", str(mined.root), "--out", str(out), "--images-tar", str(big))
    assert not (out / "images.tar").exists()
    idx = pickle.loads((out / "tar_index.pkl").read_bytes())
    rows = pq.read_table(out / "GeoRanking.parquet").to_pylist()
    led = pq.read_table(out / "ledger.parquet").to_pylist()
    assert led and {r["status"] for r in led} == {"photo_not_in_tar"} and len(rows) + len(led) == 48
    from PIL import Image

    with tarfile.open(big) as tar:
        for r in rows:
            assert "tokyo003.jpg" not in r["ref_img_id"]
            for gid in r["ref_img_id"]:
                Image.open(tar.extractfile(idx[gid])).load()


def error_line(*args: str) -> str:
    env = {**os.environ, "GEOBUILD_NO_PROGRESS": "1", "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "geobuild", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, (res.returncode, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_bad_inputs_are_one_error_line(mined, tmp_path):
    bad = tmp_path / "not.tar"
    bad.write_text("hello, not a tar\n" * 100)
    out = tmp_path / "b"
    assert "not a readable tar" in error_line("export", "georanker", "--run", str(mined.root), "--out", str(out), "--images-tar", str(bad))
    assert not out.exists()
    assert "no mined shards" in error_line("export", "georanker", "--run", str(tmp_path), "--out", str(out))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("x")
    assert "not a geobuild bundle" in error_line("export", "georanker", "--run", str(mined.root), "--out", str(tmp_path / "busy"))


def test_eval_bundle_satisfies_georanker_reads(eval_bundle):
    import pandas as pd
    from PIL import Image

    q, g, out = eval_bundle
    assert not (out / "GeoRanking.parquet").exists()
    df = pd.read_csv(out / "im2gps3k.csv")
    assert list(df.columns) == ["IMG_ID", "LAT", "LON", "candidate_gps_lis", "candidate_text_lis", "candidate_img_lis", "zs_gps_lis"]
    assert len(df) == 48
    I = np.load(out / "I.npy")
    assert I.dtype == np.int64 and I.shape == (48, 20)
    gallery = pd.read_csv(out / "gallery.csv", keep_default_na=False)
    assert list(gallery.columns) == ["IMG_ID", "AUTHOR", "LAT", "LON", "neighbourhood", "city", "county", "state", "region", "country", "continent"]
    tar_index = pickle.loads((out / "tar_index.pkl").read_bytes())
    gal = {r["id"]: r for r in pq.read_table(g.path("index", "ids.parquet")).to_pylist()}
    emb_q, emb_g = _embeddings(q), _embeddings(g)
    with tarfile.open(out / "images.tar") as tar:
        for r, irow in zip(df.to_dict("records"), I):
            gps, text, img, zs = (eval(r[c]) for c in ("candidate_gps_lis", "candidate_text_lis", "candidate_img_lis", "zs_gps_lis"))
            assert len(gps) == len(text) == len(img) == 20 and zs
            assert all(isinstance(p, tuple) and len(p) == 2 and all(isinstance(v, float) for v in p) for p in gps + zs)
            assert all(len(t) == 6 and all(isinstance(s, str) for s in t) for t in text)
            Image.open(out / "queries" / r["IMG_ID"]).load()
            for gid, (la, lo) in zip(img, gps):
                Image.open(tar.extractfile(tar_index[gid])).load()
                assert (gal[gid]["lat"], gal[gid]["lon"]) == (la, lo)
            assert gallery.iloc[irow]["IMG_ID"].tolist() == img
            assert np.allclose(gallery.iloc[irow][["LAT", "LON"]].to_numpy(float), np.array(gps))
            sims = [float(emb_q[r["IMG_ID"]] @ emb_g[x]) for x in img]
            assert all(a >= b - 1e-3 for a, b in zip(sims, sims[1:]))
    # --mode train forces a training bundle from the same run (candidate photos from the gallery's shards)
    tb = out.parent / "forced"
    _export("--run", str(q.root), "--out", str(tb), "--mode", "train")
    assert check_train_bundle(tb, q, g) == 48


def test_georanking_rows_are_image_candidates_in_retrieval_order():
    """The rows of GeoRanking.parquet and of the published georanker config (artifacts.georanking):
    entry 0 the query, then its image candidates by rank; GPS and band points never appear."""
    src = ["gps", "image", "negative", "image", "gps", "image"]
    rank = [0, 2, 0, 0, 1, 1]
    row = {"key": "a", "id": "45/77/1.jpg", "shard": "00000", "lat": 1.0, "lon": 2.0, "cand_source": src, "cand_rank": rank,
           "cand_id": ["gps:1", "c/2.jpg", "gps:9", "c/0.jpg", "gps:2", "c/1.jpg"],
           "cand_lat": [9.0, 12.0, 1.0, 10.0, 9.5, 11.0], "cand_lon": [0.0] * 6,
           "cand_city": ["", "C2", "", "C0", "", None], "cand_state": [""] * 6, "cand_country": ["", "X", "", "X", "", "X"]}
    conv = georanking_rows([row], [["Q", "", "X"]], GeorankerOptions(candidates=3))
    (out,) = conv.table.to_pylist()
    assert out["img_id"] == "45_77_1.jpg" and out["gps"] == [1.0, 2.0]
    assert out["ref_img_id"] == ["45_77_1.jpg", "c_0.jpg", "c_1.jpg", "c_2.jpg"]
    assert out["ref_gps"] == [[1.0, 2.0], [10.0, 0.0], [11.0, 0.0], [12.0, 0.0]]
    assert out["ref_texts"] == [["Q", "", "X"], ["C0", "", "X"], ["", "", "X"], ["C2", "", "X"]]
    conv = georanking_rows([row], [["", "", ""]], GeorankerOptions(candidates=4))
    assert conv.table.num_rows == 0 and conv.dropped[0]["status"] == "too_few_candidates"
    refused = georanking_rows([row], [["", "", ""]], GeorankerOptions(candidates=3), accept=lambda ids: ("photo_missing", ids[1]))
    assert refused.table.num_rows == 0 and refused.dropped[0]["status"] == "photo_missing"


@pytest.mark.slow
def test_real_sample_bundles(shared, tmp_path, monkeypatch):
    """A slice of the real IM2GPS3K sample: shard, embed, index, mine with the defaults, export both bundles."""
    import shutil

    import pandas as pd

    import geobuild.encoders.location as le
    from geobuild.core.runfolder import RunFolder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = shared / "data" / "im2gps3k"
    csv = tmp_path / "slice.csv"
    pd.read_csv(data / "im2gps3k_places365.csv").head(160).to_csv(csv, index=False)
    pd.read_csv(le.geoclip_gallery_csv()).iloc[::20].to_csv(tmp_path / "gps.csv", index=False)
    run = tmp_path / "run"

    def cli(*args):
        env = dict(os.environ, GEOBUILD_NO_PROGRESS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
        res = subprocess.run([sys.executable, "-m", "geobuild", *args], env=env, capture_output=True, text=True, cwd=REPO)
        assert res.returncode == 0, res.stderr[-3000:]

    cli("shard", "--out", str(run), "--format", "im2gps3k", "--images", str(data / "im2gps3ktest.zip"), "--metadata", str(csv), "-n", "80")
    cli("embed", "--run", str(run), "--model", "efficientnet-lite0")
    cli("index", "--run", str(run), "--gps-gallery", str(tmp_path / "gps.csv"))
    gallery = tmp_path / "gallery"
    shutil.copytree(run, gallery)
    queries = tmp_path / "queries"
    shutil.copytree(run, queries)
    cli("mine", "--run", str(run))
    cli("export", "georanker", "--run", str(run), "--out", str(tmp_path / "train"))
    rows = check_train_bundle(tmp_path / "train", RunFolder(run))
    left = pq.read_table(tmp_path / "train" / "ledger.parquet").num_rows
    mined = sum(pq.read_metadata(p).num_rows for p in (run / "candidates").glob("*.parquet"))
    assert rows > 100 and rows + left == mined
    cli("mine", "--run", str(queries), "--gallery", str(gallery))
    cli("export", "georanker", "--run", str(queries), "--out", str(tmp_path / "eval"))
    df = pd.read_csv(tmp_path / "eval" / "eval.csv")
    gal = pd.read_csv(tmp_path / "eval" / "gallery.csv", keep_default_na=False)
    I = np.load(tmp_path / "eval" / "I.npy")
    idx = pickle.loads((tmp_path / "eval" / "tar_index.pkl").read_bytes())
    assert len(df) > 100 and I.shape == (len(df), 20)
    for r, irow in zip(df.to_dict("records"), I):
        img = eval(r["candidate_img_lis"])
        assert gal.iloc[irow]["IMG_ID"].tolist() == img and all(i in idx for i in img)
        assert len(eval(r["candidate_gps_lis"])) == 20 and all(len(t) == 6 for t in eval(r["candidate_text_lis"]))
        assert (tmp_path / "eval" / "queries" / r["IMG_ID"]).is_file()
