"""The ``shard`` stage: geotagged photos + metadata -> WebDataset shards, a ledger, sizes.json.

Inputs
    ``images``: a zip or a folder (random access), or a tar / its byte-split parts (streamed);
    ``metadata``: a CSV (MP16-Pro, IM2GPS3K, YFCC numbered header, or any CSV with named
    columns); ``format="exif"`` needs no CSV and reads each photo's EXIF GPS.

The plan
    The metadata is read once, in the main process, into ``RUN/work/shard/plan.arrow`` (see
    :mod:`geobuild.sources.metadata`): one row per input row in CSV order (per photo for EXIF),
    with its sample key and the reasons known from metadata alone. The file is an uncompressed
    Arrow IPC file that units memory-map, so a worker touches only the rows it needs.

Units for random-access sources (zip, folder, EXIF folder)
    Unit ``k`` is the plan rows ``[k*N, (k+1)*N)`` (``N = samples_per_shard``): fixed, so units
    run in any order on any executor (``--workers``). Shard ``k`` holds the accepted rows of unit
    ``k`` in row order. Photos matched by no row (orphans) and second photos for an already matched
    row are listed in the ledger of the *last* unit, in sorted name order.

Units for a streamed tar (MP16-Pro's ``mp-16-images.tar`` or its parts)
    The tar is read once, front to back, in one process; units are consecutive runs of tar
    members. A unit ends at its ``N``-th accepted sample; rejected members that follow it wait
    until the next accepted sample opens unit ``k+1`` (they belong to ``k+1``) or the stream ends
    (they belong to ``k``), so no shard is empty unless nothing at all was accepted. The last unit's
    ledger also lists every row whose photo never appeared. Each unit's stats record how many
    members it consumed; a resumed run skips that many members of the finished units (matching
    their names to rebuild the "already seen" state, without decoding) and continues with the first
    unfinished unit. Every decision depends only on the tar, the plan and the config, so a killed
    and resumed run writes the same bytes as an uninterrupted one. Memory is bounded by one shard's
    sample at a time plus the plan's index (16 bytes per row) and a seen-flag per row.
"""

from __future__ import annotations

import itertools

import math
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ...core.errors import GeobuildError
from .images import ImageOptions, ImageReject, prepare_jpeg
from ...core.ledger import OK, reject
from ...core.log import get_logger
from ...core.runfolder import RunFolder, atomic_path, content_id
from ...core.schemas import json_version
from ...artifacts.shards import ShardWriter, json_bytes, write_sizes
from ...core.shardspec import shard_name
from ...core.stage import Accounting, Stage, StageSummary, UnitResult
from .plan import (
    BAD_LATLON,
    DUPLICATE_IMAGE,
    MISSING_IMAGE,
    NO_GPS,
    NO_METADATA,
    PLAN_VERSION,
    READ_ERROR,
    plan_text_cols,
    read_plan,
    remove_partial_outputs,
    sig_bytes,
)
from .stream import stream_units
from ...sources.metadata import (
    FORMATS,
    member_keys,
    plan_batches,
    plan_from_table,
    read_header,
    resolve_columns,
    text_value,
)

log = get_logger("shard")



@dataclass
class ShardConfig:
    """Everything that determines the shards' bytes (recorded in config.yaml under ``shard``)."""

    images: str
    metadata: str | None = None
    format: str = "csv"
    id_col: str | None = None
    lat_col: str | None = None
    lon_col: str | None = None
    author_col: str | None = None
    text_cols: list[str] | None = None
    samples_per_shard: int = 1000
    max_side: int | None = None
    min_side: int | None = None
    jpeg_quality: int = 95
    min_size: int = 0
    min_bytes: int = 0

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise GeobuildError(f"unknown --format '{self.format}' (choose one of {', '.join(FORMATS)})")
        self.images = str(Path(self.images).expanduser().resolve())
        if self.metadata is not None:
            self.metadata = str(Path(self.metadata).expanduser().resolve())
        if self.format != "exif" and self.metadata is None:
            raise GeobuildError(f"--format {self.format} needs --metadata CSV (only --format exif reads locations from the photos)")
        if self.samples_per_shard < 1:
            raise GeobuildError("--samples-per-shard must be at least 1")
        if not 1 <= self.jpeg_quality <= 100:
            raise GeobuildError("--jpeg-quality must be between 1 and 100")
        if self.text_cols is not None:
            self.text_cols = list(self.text_cols)

    def image_options(self) -> ImageOptions:
        return ImageOptions(self.max_side, self.min_side, self.jpeg_quality, self.min_size, self.min_bytes)


_FILES_CACHE: dict[str, Any] = {}


def _image_files(path: str):
    from ...sources.archive import ImageFiles

    if path not in _FILES_CACHE:
        files = ImageFiles(Path(path))
        _FILES_CACHE.clear()
        _FILES_CACHE[path] = (files, files.by_key())
    return _FILES_CACHE[path]


@dataclass
class ShardStage(Stage):
    """Build ``RUN/shards`` from photos and their metadata (see the module docstring)."""

    cfg: ShardConfig
    name = "shard"
    accounting = Accounting("inputs", ("samples",), None)
    _open: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self):
        return {"cfg": self.cfg, "_open": None}

    # -- the stage's rules ------------------------------------------------------------------------
    def input_paths(self) -> dict[str, str | None]:
        return {"images": self.cfg.images, "metadata": self.cfg.metadata}

    def preflight(self, run: RunFolder, overwrite: bool = False) -> None:
        """Missing photos, or a missing/unreadable CSV or unknown column, fail before anything is recorded."""
        cfg = self.cfg
        if not Path(cfg.images).exists() and not (cfg.format != "exif" and _parts_exist(cfg.images)):
            raise GeobuildError(f"images not found: {cfg.images}")
        if cfg.metadata is not None:
            header = read_header(Path(cfg.metadata))
            resolve_columns(header, cfg.format, cfg.id_col, cfg.lat_col, cfg.lon_col, cfg.author_col, cfg.text_cols)

    def prepare(self, run: RunFolder) -> None:
        remove_partial_outputs(run)
        self.ensure_plan(run)
        if not self.streaming:
            _image_files(self.cfg.images)  # fail early on an unreadable zip or folder

    def run_units(self, run: RunFolder, executor: Any, todo: list[str]):
        """A tar (or its parts) is read once, front to back, in this process; anything else runs
        as independent units on ``executor``."""
        if self.streaming:
            return stream_units(self, run)
        return executor.map_units(self, run, todo)

    # -- plan -----------------------------------------------------------------------------------
    def plan_path(self, run: RunFolder) -> Path:
        return run.path("work", "shard", "plan.arrow")

    @property
    def streaming(self) -> bool:
        from ...sources.mp16pro import is_tar_input

        return self.cfg.format != "exif" and is_tar_input(Path(self.cfg.images))

    def _input_signature(self) -> dict[str, Any]:
        """What the plan is made from: the config, with input files named by their content and
        folders by their size and mtime, not by their path (a moved run or input keeps its plan)."""
        config = asdict(self.cfg)
        for what in ("metadata", "images"):
            p = Path(config[what]) if config[what] else None
            if p is not None and p.is_file():
                config[what] = content_id(p)
            elif p is not None and p.exists():
                config[what] = [p.stat().st_size, p.stat().st_mtime_ns]
        return {"version": PLAN_VERSION, "config": config}

    def ensure_plan(self, run: RunFolder) -> Path:
        """Build the plan unless an identical one (same config and inputs) exists."""
        path = self.plan_path(run)
        sig = self._input_signature()
        if path.exists():
            try:
                meta = pa.ipc.open_file(pa.memory_map(str(path), "r")).schema.metadata or {}
                if meta.get(b"geobuild.shard_plan") == sig_bytes(sig):
                    return path
            except (OSError, pa.ArrowInvalid):
                pass
        cfg = self.cfg
        if cfg.format == "exif":
            from ...sources.archive import ImageFiles

            names = ImageFiles(Path(cfg.images)).names
            batches = iter([plan_from_table(pa.table({"id": pa.array(names, pa.string())}), None)])
            text_cols: list[str] = []
        else:
            meta_path = Path(cfg.metadata)  # type: ignore[arg-type]
            header = read_header(meta_path)
            cols = resolve_columns(header, cfg.format, cfg.id_col, cfg.lat_col, cfg.lon_col, cfg.author_col, cfg.text_cols)
            batches = plan_batches(meta_path, cols)  # streamed: memory is one batch of the CSV
            text_cols = cols.text
        meta = {b"geobuild.shard_plan": sig_bytes(sig), b"geobuild.text_cols": ",".join(text_cols).encode()}
        rows = 0
        with atomic_path(path) as tmp:
            first = next(batches)
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, first.schema.with_metadata(meta)) as writer:
                for table in itertools.chain([first], batches):
                    writer.write_table(table.replace_schema_metadata(meta), max_chunksize=65536)
                    rows += table.num_rows
        log.info("shard plan: %d input rows -> %s", rows, path)
        return path

    def units(self, run: RunFolder) -> list[str]:
        n = read_plan(self.ensure_plan(run)).num_rows
        return [shard_name(i) for i in range(max(1, math.ceil(n / self.cfg.samples_per_shard)))]

    # -- one sample -----------------------------------------------------------------------------
    def _sample(self, row: dict[str, Any], data: bytes, text_cols: list[str], lat: float, lon: float,
                img: Any = None) -> tuple[dict[str, bytes], bool]:
        if img is None:
            img = prepare_jpeg(data, self.cfg.image_options())
        meta: dict[str, Any] = {
            "key": row["key"],
            "id": row["id"],
            "lat": float(lat),
            "lon": float(lon),
            "author": row.get("author"),
            "source": self.cfg.format,
            "width": img.width,
            "height": img.height,
        }
        for c in text_cols:
            meta[c] = text_value(c, row.get(f"x:{c}"))
        return {"jpg": img.data, "json": json_bytes(meta)}, img.reencoded

    # -- random-access units --------------------------------------------------------------------
    def process(self, run: RunFolder, unit: str) -> UnitResult:
        if self._open is not None:  # a streamed unit the stream has just filled
            su, self._open = self._open, None
            return su.finish()
        from ...sources.exif import gps_from_bytes
        from ...geo.sphere import valid_latlon
        from ...sources.metadata import latlon_problem

        plan = read_plan(self.plan_path(run))
        text_cols = plan_text_cols(plan)
        k, n = int(unit), self.cfg.samples_per_shard
        rows = plan.slice(k * n, n).to_pylist()
        files, by_key = _image_files(self.cfg.images)
        exif = self.cfg.format == "exif"
        ledger: list[dict[str, Any]] = []
        counts: dict[str, int] = {}
        reencoded = 0
        with ShardWriter(run.shard_path(unit)) as writer:
            for row in rows:
                key, id_ = row["key"], row["id"]
                status, msg = row["status"], row["message"]
                lat, lon = row["lat"], row["lon"]
                if status == OK:
                    name = row["id"] if exif else _match_row(row, by_key)
                    if name is None:
                        status, msg = MISSING_IMAGE, f"no image file for id {id_!r} in {self.cfg.images}"
                    else:
                        img = None
                        try:
                            data = files.read(name)
                        except (OSError, KeyError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
                            # a damaged zip member (bad deflate stream, CRC mismatch, truncated)
                            # loses this sample only, never the unit
                            data, status, msg = None, READ_ERROR, f"cannot read {name}: {type(exc).__name__}: {exc}"
                        if data is not None and exif:
                            # decode first, so an empty or broken file is empty_file / bad_image,
                            # not no_gps
                            try:
                                img = prepare_jpeg(data, self.cfg.image_options())
                            except ImageReject as exc:
                                data, status, msg = None, exc.status, f"{name}: {exc}"
                        if data is not None and exif:
                            gps = gps_from_bytes(data)
                            if gps is None:
                                status, msg = NO_GPS, "photo has no EXIF GPS position"
                            else:
                                lat, lon = gps
                                if not valid_latlon(np.array([lat]), np.array([lon]))[0]:
                                    status, msg = BAD_LATLON, latlon_problem(lat, lon, lat, lon)
                        if status == OK and data is not None:
                            try:
                                files_out, re = self._sample(row, data, text_cols, lat, lon, img)
                                writer.write(key, files_out)
                                reencoded += re
                            except ImageReject as exc:
                                status, msg = exc.status, f"{name}: {exc}"
                counts[status] = counts.get(status, 0) + 1
                ledger.append(reject(key, id_, status, msg))
            samples = writer.count
        if k == len(self.units(run)) - 1 and not exif:
            for entry in _orphans(plan, files.names, by_key):
                counts[entry["status"]] = counts.get(entry["status"], 0) + 1
                ledger.append(entry)
        stats = {"schema_version": json_version("shard_stats"), "samples": samples, "inputs": len(ledger), "by_status": counts, "reencoded": reencoded,
                 "rows": [k * n, k * n + len(rows)]}
        return UnitResult(stats=stats, ledger=ledger)

    def finalize(self, run: RunFolder, summary: StageSummary) -> None:
        """sizes.json from the per-unit stats (no tar is re-read)."""
        import json

        sizes = {}
        for unit in run.done_units(self.name):
            st = summary.stats.get(unit)
            if st is None:
                st = json.loads(run.stats_path(self.name, unit).read_text())
            sizes[f"{unit}.tar"] = int(st["samples"])
        for stale in run.shards_dir.glob("*.tar"):
            if stale.name not in sizes:  # left by an earlier configuration of this run folder
                stale.unlink()
        write_sizes(run.shards_dir, sizes)


def _match_row(row: dict[str, Any], by_key: dict[str, list[str]]) -> str | None:
    """The file for a row: by its key (full id, '/'->'_'), else by its id's base name."""
    names = by_key.get(row["key"]) or (by_key.get(row["bkey"]) if row["bkey"] != row["key"] else None)
    return names[0] if names else None


def _orphans(plan: pa.Table, names: list[str], by_key: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Ledger rows for files no row uses (no_metadata) or a row already has (duplicate_image)."""
    used: set[str] = set()
    keys = plan.column("key").to_pylist()
    bkeys = plan.column("bkey").to_pylist()
    for key, bkey in zip(keys, bkeys):
        got = by_key.get(key) or (by_key.get(bkey) if bkey != key else None)
        if got:
            used.add(got[0])
    key_set = set(keys) | set(bkeys)
    out = []
    for name in names:
        if name in used:
            continue
        matched = any(k in key_set for k in member_keys(name))
        status = DUPLICATE_IMAGE if matched else NO_METADATA
        msg = "another file already provides this row's image" if matched else "image has no metadata row"
        out.append(reject(None, name, status, f"{name}: {msg}"))
    return out


def _parts_exist(images: str) -> bool:
    from ...sources.mp16pro import find_parts

    try:
        return bool(find_parts(Path(images)))
    except GeobuildError:
        return False
