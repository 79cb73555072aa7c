"""``RUN/distances/<unit>.parquet``: query->candidate and candidate x candidate km (schema
``distances``), written by the distances stage and read by publish."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..core.errors import GeobuildError
from ..core.runfolder import RunFolder
from ..core.schemas import check

SCHEMA = "distances"


def distances_path(run: RunFolder, unit: str) -> Path:
    return run.path("distances", f"{unit}.parquet")


def read_distances(run: RunFolder, unit: str) -> pa.Table:
    """The unit's distances table (schema-checked)."""
    path = distances_path(run, unit)
    if not path.exists():
        raise GeobuildError(f"{path} not found; run `geobuild distances --run {run.root}` first")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise GeobuildError(f"unreadable distances file {path} ({exc}); redo it: remove {run.marker_path('distances', unit)} "
                            f"and run geobuild distances --run {run.root}") from None
    check(table, SCHEMA, str(path))
    return table
