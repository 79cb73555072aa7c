"""``RUN/candidates/<unit>.parquet``: one row per query with its candidate lists (schema ``candidates``),
written by mine and read by distances, publish, export and the ranker."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..core.errors import GeobuildError
from ..core.runfolder import TMP_MARK, RunFolder, in_run
from ..core.schemas import check

SCHEMA = "candidates"
CANDIDATES_DIR = "candidates"


def candidates_path(run: RunFolder, unit: str) -> Path:
    return run.path(CANDIDATES_DIR, f"{unit}.parquet")


def candidate_units(run: RunFolder) -> list[str]:
    """Units with a candidates file, sorted."""
    d = run.path(CANDIDATES_DIR)
    return sorted(p.stem for p in d.glob("*.parquet") if TMP_MARK not in p.name) if d.is_dir() else []


def recorded_gallery(run: RunFolder) -> str | None:
    """The gallery run the candidates were mined against (``mine.gallery`` in config.yaml), or None
    when the run was mined against its own index."""
    g = (run.read_config().get("mine") or {}).get("gallery")
    return in_run(run, g) if isinstance(g, str) and g else None


def redo_hint(run: RunFolder, unit: str) -> str:
    return f"redo it: remove {run.marker_path('mine', unit)} and run geobuild mine --run {run.root} --shards {unit}"


def open_candidates(run: RunFolder, unit: str) -> pq.ParquetFile:
    """The unit's candidates as a schema-checked ParquetFile (for reading in batches)."""
    path = candidates_path(run, unit)
    if not path.exists():
        raise GeobuildError(f"no candidates for shard {unit} in {run.root} ({path}); run: geobuild mine --run {run.root}")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise GeobuildError(f"unreadable candidates file {path} ({exc}); {redo_hint(run, unit)}") from None
    check(pf.schema_arrow, SCHEMA, str(path))
    return pf


def read_candidates(run: RunFolder | str, unit: str, columns: list[str] | None = None) -> pa.Table:
    """``candidates/<unit>.parquet`` as an Arrow table (schema-checked), optionally some columns."""
    run = run if isinstance(run, RunFolder) else RunFolder(run)
    pf = open_candidates(run, unit)
    try:
        return pf.read(columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise GeobuildError(f"unreadable candidates file {candidates_path(run, unit)} ({exc}); {redo_hint(run, unit)}") from None
