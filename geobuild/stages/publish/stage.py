"""Publish stage: stage a run as two Hub dataset repositories, then (optionally) upload them.

``PublishStage`` (stage name ``publish``) has units ``dataset`` (Parquet configs ``candidates``
and ``georanker``, card, manifest, statistics pictures) and ``images`` (WebDataset tars of the
photos). Each unit builds its folder under a temporary name and renames it into place, so a rerun
skips finished staging and redoes a killed one. ``UploadStage`` (``publish_upload``) has one unit
per staged repository; its uploads resume by comparing remote checksums (:mod:`geobuild.publish.hub`).
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ...core.errors import GeobuildError
from ...core.ledger import read_ledgers, reject
from ...core.log import get_logger
from .layout import DATASET_REPO, IMAGES_REPO
from .splits import SPLITS, split_of
from ...core.runfolder import RunFolder, atomic_path
from ...core.shareable import shareable
from ...core.stage import Stage, StageSummary, UnitResult
from ...artifacts.candidates import candidate_units, recorded_gallery
from ...artifacts.georanking import CANDIDATES, MIN_TAR_BYTES, GeorankerOptions, candidates_to_georanking
from ...artifacts.shards import small_photo_keys
from . import card, plots
from .hub import Uploader, UploadSettings, hub_token
from .images import IMAGE_JSON_FIELDS, KeySet, shard_files, write_images
from .manifest import write_manifest
from .tables import candidates_schema, joined_unit
from .validate import require_valid

log = get_logger("publish")

GEORANKER_DESCRIPTIONS = {
    "img_id": "query image id (MP16-Pro IMG_ID for MP16-Pro runs)",
    "gps": "[lat, lon] of the query",
    "ref_gps": "[lat, lon] per candidate",
    "ref_img_id": "candidate image ids ('/' replaced by '_', as GeoRanker's tar_index keys them), same order",
    "ref_texts": "[city, state, country] per entry ('' where unknown)",
}
GEORANKER_ABOUT = (
    "GeoRanking's exact columns, the rows `geobuild export georanker` writes to GeoRanking.parquet. Entry 0 is "
    "the query itself; entries 1..N are its first N image candidates in retrieval order (real gallery photos "
    "only: no GPS-gallery point and no distance-band point, so nothing in a row depends on the true location). "
    "GeoRanker's trainer skips entry 0, ranks entries 1..7 as the group, and shows the last 5 entries as text "
    "`\"latitude: {lat}, longitude: {lon}, {' '.join(texts)}\"`; photos are looked up by id."
)
CANDIDATES_ABOUT = (
    "The full geobuild schema: one row per query with aligned candidate lists (`cand_*`), the query-to-candidate "
    "distances `query_km` and the candidate-by-candidate matrix `matrix_km` (G rows of G, km)."
)


@dataclass
class PublishConfig:
    """How a run is staged for the Hub."""

    to: str
    validation_fraction: float = 0.05
    rows_per_file: int = 100_000
    max_file_mb: int = 128  # a Parquet file closes at the first row group that takes it to this size
    images_per_tar: int = 2_000
    images: bool = True
    gallery_run: str | None = None
    georanker_candidates: int = CANDIDATES  # image candidates per row of the georanker config
    pretty_name: str = "GeoRanking-style geolocalization candidates"
    license: str = "other"

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_fraction < 1.0:
            raise GeobuildError(f"--validation-fraction must be in [0, 1), got {self.validation_fraction}")
        if self.georanker_candidates < 1:
            raise GeobuildError("--georanker-candidates must be >= 1")
        if self.rows_per_file < 1 or self.images_per_tar < 1 or self.max_file_mb < 1:
            raise GeobuildError("--rows-per-file, --max-file-mb and --images-per-tar must be positive")
        self.to = str(Path(self.to).expanduser().resolve())
        if self.gallery_run:
            self.gallery_run = str(Path(self.gallery_run).expanduser().resolve())


def georanker_converter(run: RunFolder, candidates: int, small_keys: set[str]) -> Callable[[pa.Table], tuple[pa.Table, list[dict[str, Any]]]]:
    """Candidates -> (GeoRanking table, dropped rows) via :mod:`geobuild.artifacts.georanking`: the
    rows ``geobuild export georanker`` writes (photos of 5120 bytes or less leave their row out)."""

    def convert(table: pa.Table) -> tuple[pa.Table, list[dict[str, Any]]]:
        conv = candidates_to_georanking(table, run, GeorankerOptions(candidates=candidates), small_keys)
        dropped = [{**r, "status": f"georanker_{r['status']}",
                    "error_message": f"left out of the georanker config only: {r.get('error_message')}"} for r in conv.dropped]
        return conv.table, dropped

    return convert


#: rows per Parquet row group (and per size check of the file being written)
ROW_GROUP_ROWS = 10_000


class ParquetSplitWriter:
    """``<dir>/<split>-0000i-of-0000N.parquet`` files of at most ``rows_per_file`` rows each; a file
    also closes once it holds ``max_file_bytes`` or more (checked after every row group written).

    The byte cap keeps what a reader holds per file bounded: ``datasets`` buffers a whole Parquet
    file while it streams it, and wide rows (the ``matrix_km`` lists) make 100,000 rows ~450 MB.
    """

    def __init__(self, folder: Path, split: str, rows_per_file: int, max_file_bytes: int | None = None) -> None:
        self.folder, self.split, self.rows_per_file = Path(folder), split, rows_per_file
        self.max_file_bytes = max_file_bytes
        self.parts: list[Path] = []
        self.rows = 0
        self.nbytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._in_file = 0
        self.schema: pa.Schema | None = None

    def write(self, table: pa.Table) -> None:
        if self.schema is None:
            self.schema = table.schema
        table = table.cast(self.schema)
        start = 0
        while start < len(table):
            if not self._room():
                self._close_file()
                self.folder.mkdir(parents=True, exist_ok=True)
                part = self.folder / f"{self.split}-{len(self.parts):05d}.part"
                self.parts.append(part)
                self._writer = pq.ParquetWriter(part, self.schema, compression="zstd")
            n = min(len(table) - start, self.rows_per_file - self._in_file, ROW_GROUP_ROWS)
            piece = table.slice(start, n)
            self._writer.write_table(piece, row_group_size=ROW_GROUP_ROWS)
            self.nbytes += piece.nbytes
            self._in_file += n
            self.rows += n
            start += n

    def _room(self) -> bool:
        """Whether the open file takes more rows (under both caps)."""
        if self._writer is None or self._in_file >= self.rows_per_file:
            return False
        return self.max_file_bytes is None or self.parts[-1].stat().st_size < self.max_file_bytes

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._in_file = 0

    def close(self) -> dict[str, int]:
        """Name the files ``-of-N`` now that N is known; return rows and Arrow bytes."""
        self._close_file()
        n = len(self.parts)
        for i, part in enumerate(self.parts):
            part.rename(self.folder / f"{self.split}-{i:05d}-of-{n:05d}.parquet")
        return {"rows": self.rows, "bytes": self.nbytes, "files": n}


def ledger_rejects(run: RunFolder, extra: list[dict[str, Any]] | None = None) -> dict[str, dict[str, int]]:
    """Rejected samples per stage and reason, from the run's ledgers (plus this stage's)."""
    out: dict[str, dict[str, int]] = {}
    ledger_root = run.path("ledger")
    if ledger_root.is_dir():
        for d in sorted(p for p in ledger_root.iterdir() if p.is_dir() and p.name != PublishStage.name):
            status = read_ledgers(d).column("status").to_pylist()
            counts = Counter(s for s in status if s != "ok")
            if counts:
                out[d.name] = dict(counts)
    if extra:
        out[PublishStage.name] = dict(Counter(r["status"] for r in extra))
    return out


def _fresh(final: Path) -> None:
    """Remove a staged folder left by a unit that did not finish (no marker)."""
    if final.exists():
        shutil.rmtree(final)


@dataclass
class PublishStage(Stage):
    """Stage the dataset and images repositories of a run (units ``dataset``, ``images``)."""

    cfg: PublishConfig
    name: ClassVar[str] = "publish"

    def units(self, run: RunFolder) -> list[str]:
        return [DATASET_REPO, IMAGES_REPO] if self.cfg.images else [DATASET_REPO]

    def output_folders(self, run: RunFolder) -> list[Path]:
        return [Path(self.cfg.to)]

    def depends_on(self, run: RunFolder, unit: str) -> list[tuple[str, str]]:
        """Every mined and distances unit; the images also come from this run's shards."""
        units = candidate_units(run)
        deps = [(s, u) for u in units for s in ("mine", "distances")]
        if unit == IMAGES_REPO:
            deps += [("shard", u) for u in run.shard_units()]
        return deps

    def after(self, run: RunFolder, summary: StageSummary) -> None:
        """New staged files: the upload compares them with the Hub again; staged folders must validate."""
        if summary.done:
            run.reset_stage(UploadStage.name)
        require_valid(Path(self.cfg.to), [DATASET_REPO, IMAGES_REPO] if self.cfg.images else [DATASET_REPO])

    def process(self, run: RunFolder, unit: str) -> UnitResult:
        if unit == DATASET_REPO:
            return self.build_dataset(run)
        if unit == IMAGES_REPO:
            return self.build_images(run)
        raise GeobuildError(f"publish has no unit '{unit}'")

    # -- dataset ------------------------------------------------------------------------------
    def build_dataset(self, run: RunFolder) -> UnitResult:

        cfg = self.cfg
        units = candidate_units(run)
        if not units:
            raise GeobuildError(f"no candidates in {run.path('candidates')}; run `geobuild mine` and `geobuild distances` first")
        small = small_photo_keys(shard_files(self.source_runs(run)), MIN_TAR_BYTES)
        convert = georanker_converter(run, cfg.georanker_candidates, small)
        final = Path(cfg.to) / DATASET_REPO
        _fresh(final)
        rejects: list[dict[str, Any]] = []
        counts = {s: Counter() for s in SPLITS}
        hist, points = plots.DistanceHistogram(), plots.PointSample()
        with atomic_path(final) as tmp:
            tmp.mkdir(parents=True)
            writers = {name: {s: ParquetSplitWriter(tmp / name, s, cfg.rows_per_file, cfg.max_file_mb * 2**20) for s in SPLITS}
                       for name in ("candidates", "georanker")}
            georanker_schema = None
            for unit in units:
                table, rej = joined_unit(run, unit)
                rejects += rej
                authors, ids = table.column("author").to_pylist(), table.column("id").to_pylist()
                split = np.array([split_of(a, i, cfg.validation_fraction) for a, i in zip(authors, ids)], dtype=object)
                lat, lon = table.column("lat").to_pylist(), table.column("lon").to_pylist()
                for la, lo, s in zip(lat, lon, split):
                    points.add(la, lo, s)
                for s in SPLITS:
                    mask = split == s
                    if not mask.any():
                        continue
                    part = table.filter(pa.array(mask))
                    writers["candidates"][s].write(part)
                    gr, dropped = convert(part)
                    rejects += dropped
                    georanker_schema = georanker_schema or gr.schema.remove_metadata()
                    writers["georanker"][s].write(gr.replace_schema_metadata(None))
                    c = counts[s]
                    c["queries"] += len(part)
                    c["candidates"] += int(pc.sum(part.column("n_candidates")).as_py() or 0)
                    for src, n in Counter(pc.list_flatten(part.column("cand_source")).to_pylist()).items():
                        c[f"{src} candidates"] += n
                    hist.add(pc.list_flatten(part.column("query_km")).to_numpy(zero_copy_only=False))
            written = {name: {s: w.close() for s, w in ws.items()} for name, ws in writers.items()}
            if written["candidates"]["train"]["rows"] + written["candidates"]["validation"]["rows"] == 0:
                raise GeobuildError("no query row could be published (see ledger/publish); check the distances stage")
            plot_files = [("Query locations", "stats/query_map.png"), ("Candidate distances to the query", "stats/candidate_distances.png")]
            plots.world_map(points, tmp / plot_files[0][1])
            plots.distance_histogram(hist, tmp / plot_files[1][1])
            configs = {
                "candidates": {"schema": candidates_schema(), "splits": written["candidates"], "pattern": "candidates/{split}-*.parquet",
                               "descriptions": {**card.schema_descriptions("candidates"), **_distance_descriptions()},
                               "about": CANDIDATES_ABOUT},
                "georanker": {"schema": georanker_schema or writers["georanker"]["train"].schema,
                              "splits": written["georanker"], "pattern": "georanker/{split}-*.parquet",
                              "descriptions": GEORANKER_DESCRIPTIONS, "about": GEORANKER_ABOUT},
            }
            if not any(v["rows"] for v in written["georanker"].values()):
                log.warning("publish: no query has %d image candidates; the georanker config is left out "
                            "(mine with a larger --k-image, or publish with a smaller --georanker-candidates)", cfg.georanker_candidates)
                del configs["georanker"], written["georanker"]
            text = card.dataset_card(
                configs=configs, pretty_name=cfg.pretty_name, license=cfg.license,
                counts={s: dict(counts[s]) for s in SPLITS}, rejects=ledger_rejects(run, rejects),
                pipeline_config=card_config(run), validation_fraction=cfg.validation_fraction, plots=plot_files,
            )
            (tmp / "README.md").write_text(text, encoding="utf-8")
            rows = {name: {s: v["rows"] for s, v in splits.items()} for name, splits in written.items()}
            write_manifest(tmp, rows)
        stats = {"queries": {s: counts[s]["queries"] for s in SPLITS}, "candidates": {s: counts[s]["candidates"] for s in SPLITS},
                 "rejected": len(rejects), "configs": sorted(written), "files": {n: {s: v["files"] for s, v in w.items()} for n, w in written.items()}}
        return UnitResult(stats=stats, ledger=rejects or None)

    # -- images -------------------------------------------------------------------------------
    def source_runs(self, run: RunFolder) -> list[RunFolder]:
        """The run itself, and the gallery's run when image candidates come from another one."""
        runs = [run]
        gallery = self.cfg.gallery_run or _gallery_from_config(run)
        if gallery and Path(gallery).resolve() != run.root:
            if not Path(gallery).is_dir():
                raise GeobuildError(f"gallery run {gallery} not found; pass --gallery-run with the run the index was built in")
            runs.append(RunFolder(gallery))
        return runs

    def build_images(self, run: RunFolder) -> UnitResult:

        cfg = self.cfg
        units = candidate_units(run)
        if not units:
            raise GeobuildError(f"no candidates in {run.path('candidates')}; run `geobuild mine` and `geobuild distances` first")
        needed = KeySet()  # every query and image candidate (and gallery negative): every photo a row refers to
        for unit in units:
            table, _ = joined_unit(run, unit)
            needed.add(table.column("key").to_pylist())
            needed.add(pc.list_flatten(table.column("cand_key")).to_pylist())
        needed.freeze()
        final = Path(cfg.to) / IMAGES_REPO
        _fresh(final)
        with atomic_path(final) as tmp:
            tmp.mkdir(parents=True)
            counts, rejects, missing = write_images(needed, self.source_runs(run), tmp, cfg.validation_fraction, cfg.images_per_tar)
            rejects += missing_photo_rows(run, units, missing)
            from datasets import Features, Image, Value  # noqa: F401 - declared features of the tars

            features = Features({
                "__key__": Value("string"), "__url__": Value("string"), "jpg": Image(),
                "json": Features.from_arrow_schema(pa.schema(list(IMAGE_JSON_FIELDS.items()))),
            })
            text = card.images_card(pretty_name=cfg.pretty_name, license=cfg.license, counts=counts,
                                    features=features._to_yaml_list(), validation_fraction=cfg.validation_fraction)
            (tmp / "README.md").write_text(text, encoding="utf-8")
            write_manifest(tmp, {"default": counts})
        return UnitResult(stats={"photos": counts, "needed": len(needed), "rejected": len(rejects)}, ledger=rejects or None)


def missing_photo_rows(run: RunFolder, units: list[str], missing: list[str]) -> list[dict[str, Any]]:
    """Ledger rows for photos the rows refer to but no source shard holds (key order; the id of the
    first row or candidate that names the key, as the rows list them)."""
    if not missing:
        return []
    ids: dict[str, str | None] = dict.fromkeys(missing)
    found: set[str] = set()
    for unit in units:
        table, _ = joined_unit(run, unit)
        pairs = zip(table.column("key").to_pylist() + pc.list_flatten(table.column("cand_key")).to_pylist(),
                    table.column("id").to_pylist() + pc.list_flatten(table.column("cand_id")).to_pylist())
        for k, i in pairs:
            if k in ids and k not in found:
                ids[k] = i
                found.add(k)
    return [reject(k, ids[k], "image_missing", "photo referenced by the dataset not found in any source shard") for k in missing]


def card_config(run: RunFolder) -> dict[str, Any]:
    """The run's recorded configuration as the card shows it: the building stages only (not the
    upload), no secret, timing or local path (input files by name)."""
    return {k: v for k, v in shareable(run.read_config()).items() if k != UploadStage.name}


def _distance_descriptions() -> dict[str, str]:
    return {
        "n_candidates": "G, the number of candidates",
        "query_km": "query -> candidate i, km",
        "matrix_km": "candidate i -> candidate j at [i][j], km (G rows of G)",
        "distance_method": "haversine | geodesic",
    }


def _gallery_from_config(run: RunFolder) -> str | None:
    """The gallery run recorded by the mine stage, if it is there with its shards."""
    g = recorded_gallery(run)
    return g if g and Path(g).is_dir() and (Path(g) / "shards").is_dir() else None


@dataclass
class UploadConfig:
    """Where the staged repositories go. Operational knobs (retries, batching) are not recorded."""

    to: str
    repo_id: str
    private: bool = False
    endpoint: str | None = None
    batch_files: int = 64
    retries: int = 4
    backoff_s: float = 2.0


@dataclass
class UploadStage(Stage):
    """Upload each staged repository (units ``dataset`` -> ``ORG/NAME``, ``images`` -> ``ORG/NAME-images``)."""

    cfg: UploadConfig
    name: ClassVar[str] = "publish_upload"

    def config(self) -> dict[str, Any]:
        return {"to": self.cfg.to, "repo_id": self.cfg.repo_id, "private": self.cfg.private, "endpoint": self.cfg.endpoint}

    def units(self, run: RunFolder) -> list[str]:
        return [u for u in (DATASET_REPO, IMAGES_REPO) if (Path(self.cfg.to) / u).is_dir()]

    def repo_for(self, unit: str) -> str:
        return self.cfg.repo_id if unit == DATASET_REPO else f"{self.cfg.repo_id}-images"

    def preflight(self, run: RunFolder, overwrite: bool = False) -> None:
        """No Hub token, or offline: fail now rather than after hours of work."""
        hub_token()

    def process(self, run: RunFolder, unit: str) -> UnitResult:

        c = self.cfg
        settings = UploadSettings(repo_id=self.repo_for(unit), private=c.private, endpoint=c.endpoint,
                                  batch_files=c.batch_files, retries=c.retries, backoff_s=c.backoff_s)
        stats = Uploader(settings, hub_token()).upload(Path(c.to) / unit)
        return UnitResult(stats={"repo_id": settings.repo_id, **stats})
