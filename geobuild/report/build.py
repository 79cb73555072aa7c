"""``geobuild report``: build the static site of one run folder.

One pass over the candidates, unit by unit and batch by batch, accumulates the data section and
keeps the sampled rows; photos come from the shard tars of the run (queries) and of the gallery run
(image candidates). The site is written to a temporary folder beside ``out`` and moved into place.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..artifacts.candidates import candidate_units, open_candidates, recorded_gallery
from ..artifacts.gallery import IDS_FILE, index_path
from ..core.errors import GeobuildError
from ..core.log import get_logger
from ..core.runfolder import RunFolder, atomic_path
from .datastats import COLUMNS, DataStats, PlaceMix
from .photos import PhotoSize, write_photos
from .runinfo import stage_rows, without_local_paths
from .context import ReportContext
from .sample import query_records, sample_positions
from .site import write_site

log = get_logger("report")

MARKER = "report.json"
PHOTOS, THUMBS = "photos", "thumbs"  # sub-folders: the sampled queries' photos, the image candidates' thumbnails
BATCH_ROWS = 2048
SAMPLE_COLUMNS = ["key", "id", "shard", "lat", "lon", "author", "texts", "cand_source", "cand_key", "cand_id", "cand_lat",
                  "cand_lon", "cand_score", "cand_rank", "cand_texts", "cand_dist_km"]


@dataclass
class ReportConfig:
    """Where the report goes and how many queries it shows."""

    out: Path | None = None  # default: RUN/report
    queries: int = 200
    seed: int = 0
    page_size: int = 24
    photo: PhotoSize = PhotoSize(side=512, max_bytes=150_000)
    thumb: PhotoSize = PhotoSize(side=96, max_bytes=8_000)


@dataclass
class ReportResult:
    out: Path
    queries: int
    sampled: int
    photos: int
    thumbs: int
    seconds: float


def _check_run(run: RunFolder) -> None:
    if not run.root.is_dir():
        raise GeobuildError(f"run folder not found: {run.root}")
    if not (run.config_path.exists() or run.path("done").is_dir()):
        raise GeobuildError(f"{run.root} is not a geobuild run folder (no config.yaml, no done/); pass the folder given to geobuild run --out")


def _check_out(out: Path, run: RunFolder) -> None:
    if out.resolve() == run.root:
        raise GeobuildError("--out must not be the run folder itself; use a folder inside it, e.g. RUN/report")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise GeobuildError(f"--out {out} exists and is not a geobuild report; choose another folder")


def _mined_units(run: RunFolder) -> list[str]:
    done = set(run.done_units("mine"))
    return [u for u in candidate_units(run) if u in done]


def _gallery_run(run: RunFolder) -> RunFolder | None:
    g = recorded_gallery(run)
    if g is None:
        return run
    grun = RunFolder(g)
    if not grun.root.is_dir():
        log.warning("report: the gallery run %s is not here; gallery photos and mix are left out", g)
        return None
    return grun


def _scan_candidates(run: RunFolder, units: list[str], n: int, seed: int) -> tuple[DataStats, list[dict[str, Any]]]:
    """Stream every mined unit once: the data statistics over all queries, the sampled rows."""
    files = {u: open_candidates(run, u) for u in units}
    total = sum(pf.metadata.num_rows for pf in files.values())
    wanted = sample_positions(total, n, seed)
    stats, rows, start = DataStats(), [], 0
    columns = list(dict.fromkeys(COLUMNS + SAMPLE_COLUMNS))
    for unit, pf in files.items():
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            stats.add(batch)
            lo, hi = np.searchsorted(wanted, [start, start + batch.num_rows])
            if hi > lo:
                rows.extend(batch.select(SAMPLE_COLUMNS).take(wanted[lo:hi] - start).to_pylist())
            start += batch.num_rows
    return stats, rows


def _gallery_mix(grun: RunFolder | None) -> PlaceMix | None:
    """Countries and continents of the gallery photos (``index/ids.parquet``), read in batches."""
    if grun is None or not index_path(grun, IDS_FILE).exists():
        return None
    mix = PlaceMix()
    for batch in pq.ParquetFile(index_path(grun, IDS_FILE)).iter_batches(batch_size=65536, columns=["lat", "lon"]):
        mix.add(batch.column("lat").to_numpy(zero_copy_only=False), batch.column("lon").to_numpy(zero_copy_only=False))
    return mix


def _gallery_tars(grun: RunFolder, keys: set[str]) -> dict[Path, set[str]]:
    """Shard tar -> wanted gallery keys, from the gallery's id map (read in batches)."""
    out: dict[Path, set[str]] = {}
    path = index_path(grun, IDS_FILE)
    if not keys or not path.exists():
        return out
    wanted = pa.array(sorted(keys), pa.string())
    for batch in pq.ParquetFile(path).iter_batches(batch_size=65536, columns=["key", "shard"]):
        hit = batch.filter(pc.is_in(batch.column("key"), value_set=wanted))
        for key, shard in zip(hit.column("key").to_pylist(), hit.column("shard").to_pylist()):
            out.setdefault(grun.shard_path(shard), set()).add(key)
    return out


def build_report(run: RunFolder | str | Path, cfg: ReportConfig = ReportConfig()) -> ReportResult:
    """Write the report of ``run`` to ``cfg.out`` (default ``RUN/report``), replacing an older one."""
    t0 = time.time()
    run = run if isinstance(run, RunFolder) else RunFolder(run)
    _check_run(run)
    out = Path(cfg.out).expanduser().resolve() if cfg.out else run.path("report")
    _check_out(out, run)
    stages, saved = stage_rows(run)
    units = _mined_units(run)
    stats, rows = _scan_candidates(run, units, cfg.queries, cfg.seed) if units else (DataStats(), [])
    grun = _gallery_run(run)
    gallery_mix = _gallery_mix(grun) if units else None
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        wanted: dict[Path, dict[str, set[str]]] = {}
        for r in rows:
            wanted.setdefault(run.shard_path(r["shard"]), {}).setdefault(r["key"], set()).add(PHOTOS)
        cand_keys = {k for r in rows for k, s in zip(r["cand_key"], r["cand_source"]) if s == "image" and k}
        for tar, keys in (_gallery_tars(grun, cand_keys) if grun is not None else {}).items():
            for key in keys:
                wanted.setdefault(tar, {}).setdefault(key, set()).add(THUMBS)
        written = write_photos(wanted, tmp, {PHOTOS: cfg.photo, THUMBS: cfg.thumb})
        photos, thumbs = written[PHOTOS], written[THUMBS]
        context = ReportContext(
            run_name=run.root.name,
            gallery_name=None if grun is None or grun.root == run.root else grun.root.name,
            gallery_recorded=recorded_gallery(run) is not None,
            saved=saved,
            pipeline=_pipeline_info(run),
            config=without_local_paths(run.read_config()),
            stages=stages,
            stats=stats if units else None,
            gallery_mix=gallery_mix,
            records=query_records(rows, photos, thumbs),
            page_size=cfg.page_size,
            seed=cfg.seed,
        )
        write_site(tmp, context)
        records = context.records
        meta = {"run": run.root.name, "queries": stats.queries, "sampled": len(records), "seed": cfg.seed,
                "photos": len(photos), "thumbs": len(thumbs)}
        (tmp / MARKER).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
    result = ReportResult(out=out, queries=stats.queries, sampled=len(records), photos=len(photos), thumbs=len(thumbs), seconds=time.time() - t0)
    log.info("report: %d of %d queries, %d photos, %d thumbnails -> %s (%.1fs)", result.sampled, result.queries, result.photos,
             result.thumbs, out / "index.html", result.seconds)
    return result


def _pipeline_info(run: RunFolder) -> dict[str, Any]:
    """Name and description of the pipeline the run was made with (``pipeline.yaml``), if any."""
    import yaml

    p = run.path("pipeline.yaml")
    try:
        doc = yaml.safe_load(p.read_text()) if p.exists() else {}
    except (OSError, yaml.YAMLError):
        return {}
    doc = doc if isinstance(doc, dict) else {}
    return {k: doc[k] for k in ("name", "description") if isinstance(doc.get(k), str)}
