"""``geobuild export georanker``: a folder GeoRanker's own scripts read unmodified (docs/formats.md).

Two kinds of bundle, chosen from how the run was mined (``mode='auto'``):

* **train** (the run mined against its own gallery): ``GeoRanking.parquet`` (``img_id, gps, ref_gps,
  ref_img_id, ref_texts``; entry 0 is the query itself, entries 1..N its first N IMAGE candidates in
  retrieval order), ``images.tar`` (every photo the table references) and ``tar_index.pkl``
  (id -> ``tarfile.TarInfo``).
* **eval** (the run mined with ``--gallery``): ``<name>.csv`` (``IMG_ID, LAT, LON,
  candidate_gps_lis, candidate_text_lis, candidate_img_lis, zs_gps_lis``), ``queries/<IMG_ID>``,
  ``images.tar`` + ``tar_index.pkl`` (every candidate photo), ``I.npy`` and ``gallery.csv``.

Only image candidates (real gallery photos) are written as ranked entries; GPS-gallery points appear
only as ``zs_gps_lis`` of an eval bundle and distance-band points never appear. Ids take GeoRanker's
form (``id.replace('/', '_')``). As in G3, a tar member of 5120 bytes or less is not indexed, so a
query referencing such a photo is left out. Every query left out is a row of ``ledger.parquet``.
The bundle is written into a temporary folder beside ``out`` and renamed into place last.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ..core.errors import GeobuildError
from ..core.ledger import write_ledger
from ..core.runfolder import RunFolder
from ..core.shardspec import select_units
from .candidates import read_candidates, recorded_gallery
from .georanking import MIN_TAR_BYTES, GeorankerOptions, dropped_row, georanking_rows, gr_id, image_entries, query_texts, text
from .gallery import IDS_FILE, index_path
from .shards import add_member, iter_shard

MANIFEST = "bundle.json"
TRAIN_TABLE = "GeoRanking.parquet"
TEXT6 = ("neighbourhood", "city", "county", "state", "region", "country")
GALLERY_COLUMNS = ["IMG_ID", "AUTHOR", "LAT", "LON", "neighbourhood", "city", "county", "state", "region", "country", "continent"]


@dataclass
class BundleOptions:
    out: Path
    candidates: int = 20
    images_tar: Path | None = None
    mode: str = "auto"  # auto | train | eval
    name: str = "eval"
    shards: str | None = None


@dataclass
class BundleResult:
    mode: str
    out: Path
    rows: int
    left_out: list[dict] = field(default_factory=list)


# -- run inspection -----------------------------------------------------------------------------
def mined_gallery(rf: RunFolder) -> RunFolder:
    """The run whose gallery ``rf`` was mined against (``rf`` itself when mined without --gallery)."""
    g = recorded_gallery(rf)
    return RunFolder(g) if g else rf


def decide_mode(rf: RunFolder, mode: str) -> str:
    if mode not in ("auto", "train", "eval"):
        raise GeobuildError(f"unknown --mode '{mode}' (choose train, eval or auto)")
    if mode != "auto":
        return mode
    return "train" if mined_gallery(rf).root.resolve() == rf.root.resolve() else "eval"


def _shard_tars(rf: RunFolder) -> list[Path]:
    d = rf.shards_dir
    return sorted(p for p in d.glob("*.tar")) if d.is_dir() else []


def _stage_photos(wanted_by_run: list[tuple[RunFolder, dict[str, str]]], staging: Path) -> dict[str, int]:
    """Stream each run's shards once; write the jpg bytes of every key wanted from that run (key ->
    ``_`` id) to ``staging/<_ id>``. Returns ``_`` id -> byte size of the photos found."""
    staging.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    for r, wanted in wanted_by_run:
        for t in _shard_tars(r):
            try:
                for sample in iter_shard(t):
                    gid = wanted.get(sample["__key__"])
                    if gid is None or gid in sizes or "jpg" not in sample:
                        continue
                    data = sample["jpg"]
                    (staging / gid).write_bytes(data)
                    sizes[gid] = len(data)
            except (tarfile.TarError, OSError, ValueError) as exc:
                raise GeobuildError(f"unreadable shard {t} ({exc}); redo it: geobuild shard --run {r.root} --overwrite") from None
    return sizes


def index_tar(path: Path) -> dict[str, tarfile.TarInfo]:
    """G3's tar_index of an existing tar: basename ('/'->'_') -> TarInfo of members ending in .jpg
    larger than 5120 bytes, from one streaming pass over the headers."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise GeobuildError(f"--images-tar {path} is not a file; pass the tar holding the photos (e.g. mp-16-images.tar)")
    index: dict[str, tarfile.TarInfo] = {}
    try:
        with tarfile.open(path, "r:") as tar:  # random-access mode: headers only, data skipped by seeking
            for m in tar:
                if m.isfile() and m.name.lower().endswith((".jpg", ".jpeg")) and m.size > MIN_TAR_BYTES:
                    index[gr_id(m.name.rsplit("/", 1)[-1])] = m
    except (tarfile.TarError, EOFError) as exc:
        raise GeobuildError(f"--images-tar {path} is not a readable tar ({exc}); pass an uncompressed tar of the photos") from None
    return index


def _write_tar(path: Path, staging: Path, ids: list[str]) -> dict[str, tarfile.TarInfo]:
    """A deterministic tar (sorted members, fixed mtime/uid/gid/mode) of ``staging/<id>``; its index."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT if all(len(i) < 100 for i in ids) else tarfile.PAX_FORMAT) as tar:
        for gid in sorted(ids):
            add_member(tar, gid, (staging / gid).read_bytes())
    index: dict[str, tarfile.TarInfo] = {}
    with tarfile.open(path, "r:") as tar:
        for m in tar:
            if m.isfile() and m.size > MIN_TAR_BYTES:
                index[m.name] = m
    return index


def write_photos(tmp: Path, used: set[str], tar_index: dict[str, tarfile.TarInfo] | None) -> None:
    """``images.tar`` of the staged photos (or the given tar's index) and ``tar_index.pkl`` for ``used``."""
    if tar_index is None:
        index = _write_tar(tmp / "images.tar", tmp / "_staging", sorted(used))
    else:
        index = {k: tar_index[k] for k in sorted(used)}
    with open(tmp / "tar_index.pkl", "wb") as f:
        pickle.dump(index, f, protocol=pickle.HIGHEST_PROTOCOL)


CANDIDATE_COLUMNS = ["key", "id", "shard", "lat", "lon", "cand_source", "cand_rank", "cand_key", "cand_id", "cand_lat",
                     "cand_lon", "cand_city", "cand_county", "cand_state", "cand_country", "cand_continent"]


def _mined_units(rf: RunFolder, shards: str | None) -> list[str]:
    have = rf.done_units("mine")
    if not have:
        raise GeobuildError(f"no mined shards in {rf.root}; run: geobuild mine --run {rf.root}")
    return select_units(have, shards, "mined shards")


def _rows(rf: RunFolder, units: list[str], columns: list[str] = CANDIDATE_COLUMNS) -> Iterator[list[dict]]:
    """The candidates rows of ``units``, one unit at a time (memory bounded by the largest unit)."""
    for u in units:
        yield read_candidates(rf, u, columns=columns).to_pylist()


def _gallery_text(grun: RunFolder) -> dict[str, dict[str, Any]]:
    """gallery key -> its row of index/ids.parquet (author and the MP16-Pro text columns)."""
    p = index_path(grun, IDS_FILE)
    if not p.exists():
        return {}
    t = pq.read_table(p)
    keep = [c for c in ("key", "author", *TEXT6, "continent") if c in t.column_names]
    return {r["key"]: r for r in t.select(keep).to_pylist()}


# -- the bundle ---------------------------------------------------------------------------------
def prepare_out(out: Path) -> Path:
    """Check ``out`` may be (re)placed; return the temporary folder beside it."""
    out = Path(out).expanduser()
    if out.exists():
        if not out.is_dir():
            raise GeobuildError(f"--out {out} is an existing file; pass a folder for the bundle")
        if any(out.iterdir()) and not (out / MANIFEST).exists():
            raise GeobuildError(f"--out {out} is a non-empty folder that is not a geobuild bundle; pass a new or empty folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GeobuildError(f"cannot create the --out folder {out} ({exc}); pass another --out") from None
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def finish(tmp: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def seal(tmp: Path, out: Path, left_out: list[dict], manifest: dict[str, Any]) -> None:
    """Write the ledger and ``bundle.json`` into ``tmp``, drop the staging folder, rename ``tmp`` to ``out``."""
    write_ledger(tmp / "ledger.parquet", left_out)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(tmp / "_staging", ignore_errors=True)
    finish(tmp, out)


def export_bundle(run: str | os.PathLike, opts: BundleOptions) -> BundleResult:
    rf = RunFolder(run)
    if not rf.root.is_dir():
        raise GeobuildError(f"run folder not found: {rf.root}")
    if opts.candidates < 1:
        raise GeobuildError("--candidates must be >= 1")
    mode = decide_mode(rf, opts.mode)
    tar_index = index_tar(opts.images_tar) if opts.images_tar else None  # a bad tar fails before any work
    units = _mined_units(rf, opts.shards)
    grun = mined_gallery(rf)
    out = Path(opts.out).expanduser()
    tmp = prepare_out(out)
    try:
        res = (_train if mode == "train" else _eval)(rf, grun, units, opts, tmp, tar_index)
        seal(tmp, out, res.left_out, {
            "mode": mode, "run": str(rf.root), "gallery": str(grun.root), "candidates": opts.candidates,
            "rows": res.rows, "left_out": len(res.left_out),
            "images_tar": str(Path(opts.images_tar).expanduser().resolve()) if opts.images_tar else "images.tar",
            **({"name": opts.name} if mode == "eval" else {}),
        })
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    res.out = out
    return res


def _photos(rf: RunFolder, grun: RunFolder, rows: Iterable[dict], n: int, tmp: Path, tar_index):
    """Stage the photos of every row's query and (without --images-tar) of its first ``n`` image
    candidates; sizes of those found."""
    queries: dict[str, str] = {}
    cands: dict[str, str] = {}
    for r in rows:
        queries[r["key"]] = gr_id(r["id"])
        if tar_index is None:
            for i in image_entries(r)[:n]:
                if r["cand_key"][i]:
                    cands[r["cand_key"][i]] = gr_id(r["cand_id"][i])
    if grun.root.resolve() == rf.root.resolve():
        return _stage_photos([(rf, {**queries, **cands})], tmp / "_staging")
    return _stage_photos([(rf, queries), (grun, cands)], tmp / "_staging")


def _check_photo(gid: str, sizes: dict[str, int], tar_index) -> str | None:
    """Why ``gid`` cannot be opened through tar_index (None if it can)."""
    if tar_index is not None:
        return None if gid in tar_index else "photo_not_in_tar"
    if gid not in sizes:
        return "photo_missing"
    if sizes[gid] <= MIN_TAR_BYTES:
        return "photo_too_small"
    return None


def _train(rf, grun, units: list[str], opts: BundleOptions, tmp: Path, tar_index) -> BundleResult:
    """GeoRanking.parquet written unit by unit; photos staged in one pass over the shards first."""
    n = opts.candidates
    photo_cols = ["key", "id", "cand_source", "cand_rank", "cand_key", "cand_id"]
    sizes = _photos(rf, grun, (r for rows in _rows(rf, units, photo_cols) for r in rows), n, tmp, tar_index) if tar_index is None else {}

    def accept(ids: list[str]) -> tuple[str, str] | None:
        bad = [(gid, why) for gid in ids if (why := _check_photo(gid, sizes, tar_index))]
        if not bad:
            return None
        gid, why = bad[0]
        return why, f"photo {gid} cannot be opened through tar_index ({why}); {len(bad)} of {len(ids)} entries"

    used: set[str] = set()
    dropped: list[dict] = []
    written = 0
    writer: pq.ParquetWriter | None = None
    try:
        for rows in _rows(rf, units):
            conv = georanking_rows(rows, query_texts(rf, rows), GeorankerOptions(candidates=n), accept)
            writer = writer or pq.ParquetWriter(tmp / TRAIN_TABLE, conv.table.schema)
            writer.write_table(conv.table)
            used.update(i for ids in conv.table.column("ref_img_id").to_pylist() for i in ids)
            dropped += conv.dropped
            written += conv.table.num_rows
    finally:
        if writer is not None:
            writer.close()
    write_photos(tmp, used, tar_index)
    return BundleResult("train", tmp, written, dropped)


def _eval(rf, grun, units: list[str], opts: BundleOptions, tmp: Path, tar_index) -> BundleResult:
    """A benchmark's queries (thousands, held together: I.npy and gallery.csv index across them)."""
    n = opts.candidates
    rows = [r for unit_rows in _rows(rf, units) for r in unit_rows]
    sizes = _photos(rf, grun, rows, n, tmp, tar_index)
    gmeta = _gallery_text(grun)
    left: list[dict] = []
    recs: list[dict] = []
    gallery_rows: dict[str, int] = {}
    gallery_recs: list[dict] = []
    I: list[list[int]] = []
    used: set[str] = set()
    qdir = tmp / "queries"
    qdir.mkdir()
    for r in rows:
        img = image_entries(r)
        if len(img) < n:
            left.append(dropped_row(r, "too_few_candidates", f"{len(img)} image candidates, the bundle needs {n} (--candidates)"))
            continue
        img = img[:n]
        qid = gr_id(r["id"])
        if qid not in sizes:
            left.append(dropped_row(r, "photo_missing", f"query photo {qid} not found in the shards of {rf.root}"))
            continue
        cids = [gr_id(r["cand_id"][i]) for i in img]
        bad = [(gid, why) for gid in cids if (why := _check_photo(gid, sizes, tar_index))]
        if bad:
            gid, why = bad[0]
            left.append(dropped_row(r, why, f"candidate photo {gid} cannot be opened through tar_index ({why}); {len(bad)} of {n}"))
            continue
        texts, positions = [], []
        for i, gid in zip(img, cids):
            g = gmeta.get(r["cand_key"][i]) or {}
            t = {f: text(g.get(f)) for f in TEXT6}
            for f in ("city", "county", "state", "country"):  # mine's text (gallery's own or geocoded)
                t[f] = t[f] or text(r[f"cand_{f}"][i])
            texts.append([t[f] for f in TEXT6])
            if gid not in gallery_rows:
                gallery_rows[gid] = len(gallery_recs)
                gallery_recs.append({"IMG_ID": gid, "AUTHOR": text(g.get("author")), "LAT": float(r["cand_lat"][i]),
                                     "LON": float(r["cand_lon"][i]), **t,
                                     "continent": text(g.get("continent")) or text(r["cand_continent"][i])})
            positions.append(gallery_rows[gid])
        used.update(cids)
        zs = [i for i in sorted((i for i, s in enumerate(r["cand_source"]) if s == "gps"), key=lambda i: r["cand_rank"][i])]
        shutil.copyfile(tmp / "_staging" / qid, qdir / qid)
        I.append(positions)
        recs.append({
            "IMG_ID": qid, "LAT": float(r["lat"]), "LON": float(r["lon"]),
            "candidate_gps_lis": repr([(float(r["cand_lat"][i]), float(r["cand_lon"][i])) for i in img]),
            "candidate_text_lis": repr(texts),
            "candidate_img_lis": repr(cids),
            "zs_gps_lis": repr([(float(r["cand_lat"][i]), float(r["cand_lon"][i])) for i in zs]),
        })
    cols = ["IMG_ID", "LAT", "LON", "candidate_gps_lis", "candidate_text_lis", "candidate_img_lis", "zs_gps_lis"]
    pd.DataFrame(recs, columns=cols).to_csv(tmp / f"{opts.name}.csv", index=False)
    pd.DataFrame(gallery_recs, columns=GALLERY_COLUMNS).to_csv(tmp / "gallery.csv", index=False)
    np.save(tmp / "I.npy", np.asarray(I, dtype=np.int64).reshape(len(I), n))
    write_photos(tmp, used, tar_index)
    return BundleResult("eval", tmp, len(recs), left)
