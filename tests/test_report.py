"""``geobuild report``: the static site of a run, opened in a real headless browser.

The expected numbers are computed here from the ledgers, markers and candidates files, never read
from the report's own data."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from browser import dump_dom, screenshot
from geobuild.artifacts.shards import ShardWriter, json_bytes
from geobuild.cli import app
from geobuild.core.runfolder import RunFolder

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


# -- what a report refers to ------------------------------------------------------------------------
class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href", "srcset", "poster", "data", "action", "xlink:href") and value is not None:
                self.refs.append(value)


_ABSOLUTE = re.compile(r"(?i)\b(?:https?|ftp|wss?|file|data|blob|javascript):|(?<![\w:])//[\w.-]+|@import|\burl\(")


def outside_references(folder: Path) -> list[str]:
    """Every reference in the report's HTML, CSS and scripts that leaves ``folder`` or is missing."""
    bad = []
    for p in sorted(folder.rglob("*")):
        if p.suffix not in (".html", ".css", ".js"):
            continue
        text = p.read_text(encoding="utf-8")
        code = text
        if p.suffix == ".html":
            parser = _Refs()
            parser.feed(text)
            for ref in parser.refs:
                path = unquote(urlsplit(ref).path)
                if urlsplit(ref).scheme or urlsplit(ref).netloc or ref.startswith("/"):
                    bad.append(f"{p.name}: {ref}")
                elif path and not (p.parent / path).resolve().is_relative_to(folder.resolve()):
                    bad.append(f"{p.name}: {ref} (outside)")
                elif path and not (p.parent / path).exists():
                    bad.append(f"{p.name}: {ref} (missing)")
        if p.parent.name == "data" or p.name == "world.js":
            code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # data: look at the code, not at the texts it carries
        for m in _ABSOLUTE.finditer(code):
            bad.append(f"{p.relative_to(folder)}: ...{code[max(0, m.start() - 30): m.end() + 30]}...")
    return bad


def referenced_photos(folder: Path) -> set[str]:
    """Every photos/... and thumbs/... path named in the report's data scripts."""
    found = set()
    for p in (folder / "data").glob("*.js"):
        found |= set(re.findall(r'"((?:photos|thumbs)/[^"]+)"', p.read_text(encoding="utf-8")))
    return found


def text_of(dom: str, element_id: str) -> str:
    m = re.search(rf'id="{re.escape(element_id)}"[^>]*>(.*?)</', dom, re.S)
    assert m, f"no element #{element_id} in the page"
    return re.sub(r"<[^>]+>", "", m.group(1)).strip()


def number(text: str) -> int:
    digits = re.sub(r"\D", "", text)
    assert digits, f"no number in {text!r}"
    return int(digits)


def stage_cell(dom: str, stage: str, cls: str) -> str:
    row = re.search(rf'<tr id="stage-{stage}">(.*?)</tr>', dom, re.S)
    assert row, f"no row for stage {stage}"
    cell = re.search(rf'<td class="n {cls}">(.*?)</td>', row.group(1), re.S)
    assert cell, f"no {cls} cell for stage {stage}"
    return cell.group(1)


# -- expectations from the run folder ------------------------------------------------------------
def ledger_counts(run: RunFolder, stage: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in sorted(run.path("ledger", stage).glob("*.parquet")):
        for s in pq.read_table(p, columns=["status"]).column("status").to_pylist():
            counts[s] = counts.get(s, 0) + 1
    return counts


def candidates_table(run: RunFolder):
    import pyarrow as pa

    files = sorted(run.path("candidates").glob("*.parquet"))
    return pa.concat_tables([pq.read_table(p, columns=["key", "id", "lat", "lon", "cand_source", "cand_rank", "cand_dist_km", "n_image", "n_gps"])
                             for p in files])


def top1_share(table, km: float) -> float:
    hits = 0
    for src, rank, dist in zip(*(table.column(c).to_pylist() for c in ("cand_source", "cand_rank", "cand_dist_km"))):
        d = [x for s, r, x in zip(src, rank, dist) if s == "image" and r == 0]
        hits += bool(d) and d[0] < km
    return hits / table.num_rows


# -- the real sample, in chromium ----------------------------------------------------------------
@pytest.mark.slow
def test_sample_report_in_chromium(sample_run):
    run = RunFolder(sample_run.out)
    report = run.path("report")
    assert (report / "index.html").exists(), "geobuild run did not write RUN/report"
    # rebuilt on its own, with another sample, in place of the one geobuild run wrote
    r = subprocess.run([sys.executable, "-m", "geobuild", "report", str(run.root), "--queries", "60", "--seed", "7"],
                       cwd=REPO, env=sample_run.env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert outside_references(report) == []
    photos = referenced_photos(report)
    assert photos and all((report / p).is_file() for p in photos)

    shard = ledger_counts(run, "shard")
    cands = candidates_table(run)
    overview = dump_dom((report / "index.html").as_uri())
    assert number(text_of(overview, "tile-photos-in")) == sum(shard.values())
    assert number(text_of(overview, "tile-sharded")) == shard["ok"] == sample_run.rows
    assert number(text_of(overview, "tile-queries")) == cands.num_rows
    assert number(text_of(overview, "tile-cand-image")) == sum(cands.column("n_image").to_pylist())
    assert number(text_of(overview, "tile-cand-gps")) == sum(cands.column("n_gps").to_pylist())
    rejected = {s: c for s, c in shard.items() if s != "ok"}
    assert rejected, "the 300-row slice leaves the zip's other photos without metadata"
    assert number(text_of(overview, "tile-rejected")) == sum(rejected.values())
    for reason, count in rejected.items():
        m = re.search(rf'data-stage="shard" data-reason="{reason}">.*?<span class="count">(.*?)</span>', overview, re.S)
        assert m and number(m.group(1)) == count
    for stage in ("shard", "embed", "index", "mine", "distances", "publish"):
        assert number(stage_cell(overview, stage, "units")) == len(list(run.path("done", stage).iterdir()))
    assert number(stage_cell(overview, "shard", "out")) == shard["ok"]
    assert number(stage_cell(overview, "mine", "out")) == cands.num_rows
    acc = re.search(r'<tr id="acc-top1_image">(.*?)</tr>', overview, re.S).group(1)
    shown = [float(x) for x in re.findall(r"<span>([\d.]+)%</span>", acc)]
    assert shown == pytest.approx([100 * top1_share(cands, t) for t in (1, 25, 200, 750, 2500)], abs=0.051)
    local = (str(run.root.parent), sample_run.env["GEOBUILD_SHARED"], str(REPO))  # no local path anywhere in the report
    texts = [p.read_text(encoding="utf-8") for p in report.rglob("*") if p.suffix in (".html", ".js", ".json")]
    assert not [d for d in local for t in texts if d in t]
    assert overview.count("<rect") > 100  # the density map's cells and the histograms' bars

    # the query browser: 60 sampled queries in pages; the search finds one by its id
    queries = (report / "queries.html").as_uri()
    listing = dump_dom(queries)
    assert number(text_of(listing, "sample-count")) == 60
    assert re.search(r'data-images-ready="1"', listing) and re.search(r'data-images-broken="0"', listing)
    keys = re.findall(r'class="qcard" href="#q=[^"]+" data-key="([^"]+)"', listing)
    assert len(keys) == 24 and len(set(keys)) == 24
    by_key = {k: i for i, k in enumerate(cands.column("key").to_pylist())}
    key = keys[5]
    row = cands.slice(by_key[key], 1).to_pylist()[0]
    found = dump_dom(f"{queries}#s={row['id']}")
    assert number(text_of(found, "shown-count")) == 1 and f'data-key="{key}"' in found

    page = dump_dom(f"{queries}#q={key}")
    assert text_of(page, "detail-id") == row["id"]
    assert number(text_of(page, "cand-count")) == len(row["cand_source"])
    assert page.count('<tr class="cand image">') == row["n_image"] and page.count('<tr class="cand gps">') == row["n_gps"]
    assert re.search(r'data-images-ready="1"', page) and re.search(r'data-images-broken="0"', page)
    imgs = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert len(imgs) == 1 + row["n_image"] and all((report / unquote(s)).is_file() for s in imgs)

    shots = run.path("screenshots")
    for name, url, height in (("overview", (report / "index.html").as_uri(), 3200), ("query", f"{queries}#q={key}", 2600)):
        png = screenshot(url, shots / f"{name}.png", height=height)
        from PIL import Image

        with Image.open(png) as im:
            colours = np.asarray(im.convert("RGB").resize((64, 64))).reshape(-1, 3)
            assert im.width == 1280 and im.height > 800 and len(np.unique(colours, axis=0)) > 50  # a drawn page, not a blank one
    print(f"screenshots: {shots}")


# -- a small synthetic run (fast) ----------------------------------------------------------------
def _photo(seed: int, side: int = 64) -> bytes:
    """A smooth JPEG (small, so the report copies it byte for byte)."""
    from PIL import Image

    y, x = np.mgrid[0:side, 0:side]
    img = np.stack([(x * 4 + seed * 37) % 256, (y * 4 + seed * 11) % 256, np.full_like(x, (seed * 53) % 256)], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=70)
    return buf.getvalue()


def _add_shards(run: RunFolder, salt: int) -> None:
    meta = pq.read_table(run.path("index", "ids.parquet")).to_pylist()
    units: dict[str, list[dict]] = {}
    for r in meta:
        units.setdefault(r["shard"], []).append(r)
    for unit, rows in units.items():
        with ShardWriter(run.shard_path(unit)) as w:
            for i, r in enumerate(rows):
                w.write(r["key"], {"jpg": _photo(i + salt), "json": json_bytes({"id": r["id"], "lat": r["lat"], "lon": r["lon"]})})


def _cli(*args: str):
    res = runner.invoke(app, [str(a) for a in args])
    return res


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    """The synthetic mine run (48 photos) with photos in its shards, and the same queries mined
    against a gallery run whose photos differ."""
    from _mine_fixtures import base_run_copy

    base = tmp_path_factory.mktemp("report")
    own = base_run_copy(base / "own")
    _add_shards(own, salt=0)
    assert _cli("mine", "--run", own.root).exit_code == 0
    gallery = base_run_copy(base / "gallery")
    _add_shards(gallery, salt=500)
    bench = base_run_copy(base / "bench")
    _add_shards(bench, salt=0)
    res = _cli("mine", "--run", bench.root, "--gallery", gallery.root)
    assert res.exit_code == 0, res.output
    return own, gallery, bench


def test_report_of_a_run_is_complete_and_the_same_twice(mined):
    own, _, _ = mined
    a, b = own.path("report-a"), own.path("report-b")
    for out in (a, b):
        res = _cli("report", own.root, "--out", out, "--queries", "10", "--seed", "3")
        assert res.exit_code == 0, res.output
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert outside_references(a) == []
    cands = candidates_table(own)
    html = (a / "index.html").read_text()
    assert number(text_of(html, "tile-queries")) == cands.num_rows == 48
    assert number(text_of(html, "tile-cand-image")) == sum(cands.column("n_image").to_pylist())
    photos = referenced_photos(a)
    assert sum(p.startswith("photos/") for p in photos) == 10
    assert all((a / p).is_file() for p in photos)
    # another seed, another sample
    res = _cli("report", own.root, "--out", b, "--queries", "10", "--seed", "4")
    assert res.exit_code == 0
    assert referenced_photos(b) != photos


def test_benchmark_report_shows_the_gallery_photos(mined):
    _, gallery, bench = mined
    out = bench.path("report")
    assert _cli("report", bench.root, "--queries", "5").exit_code == 0
    thumbs = sorted((out / "thumbs").iterdir())
    assert thumbs
    with_gallery = {}
    for tar in sorted(gallery.shards_dir.glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.name.endswith(".jpg"):
                    with_gallery[m.name[:-4]] = t.extractfile(m).read()
    for p in thumbs:  # small photos are copied as they are: byte-equal to the gallery's, not the queries'
        assert p.read_bytes() == with_gallery[p.stem]
    html = (out / "index.html").read_text()
    assert "gallery run <b>gallery</b>" in html
    assert re.search(r"<th>gallery <small>\(48\)</small></th>", html)


def test_report_errors_are_one_line(tmp_path, mined):
    own, _, _ = mined
    res = _cli("report", tmp_path / "nope")
    assert res.exit_code != 0 and "run folder not found" in str(res.exception)
    (tmp_path / "notarun").mkdir()
    res = _cli("report", tmp_path / "notarun")
    assert "is not a geobuild run folder" in str(res.exception)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    res = _cli("report", own.root, "--out", busy)
    assert "is not a geobuild report" in str(res.exception) and (busy / "keep.txt").read_text() == "mine"
    r = subprocess.run([sys.executable, "-m", "geobuild", "report", str(tmp_path / "nope")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: run folder not found: {tmp_path / 'nope'}"]


TOY = """
name: toy
stages:
  make:
    uses: tests.toy_stages:MakeStage
    n: 3
    size: 5
  upper:
    uses: tests.toy_stages:UpperStage
"""


def test_geobuild_run_writes_the_report_unless_told_not_to(tmp_path):
    toy = tmp_path / "toy.yaml"
    toy.write_text(TOY)
    res = _cli("run", toy, "--out", tmp_path / "a")
    assert res.exit_code == 0, res.output
    html = (tmp_path / "a" / "report" / "index.html").read_text()
    run = RunFolder(tmp_path / "a")
    rejects = ledger_counts(run, "make")
    assert rejects and all(s != "ok" for s in rejects)  # the toy stage rejects every 5th sample
    for reason, count in rejects.items():
        m = re.search(rf'data-stage="make" data-reason="{reason}">.*?<span class="?count"?>(.*?)</span>', html, re.S)
        assert m and number(m.group(1)) == count
    assert "No mined candidates" in html and outside_references(tmp_path / "a" / "report") == []
    res = _cli("run", toy, "--out", tmp_path / "b", "--no-report")
    assert res.exit_code == 0 and not (tmp_path / "b" / "report").exists()
    meta = json.loads((tmp_path / "a" / "report" / "report.json").read_text())
    assert meta["queries"] == 0
