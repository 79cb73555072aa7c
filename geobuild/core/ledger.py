"""The ledger: one row per input sample that a stage rejected (shard: per input row), with a reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from .runfolder import atomic_path

from .schemas import arrow_schema

LEDGER_SCHEMA = arrow_schema("ledger")

OK = "ok"


def write_ledger(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write ledger rows (key, id, status, error_message) atomically as Parquet."""
    rows = list(rows)
    cols = {name: [None if r.get(name) is None else str(r.get(name)) for r in rows] for name in LEDGER_SCHEMA.names}
    table = pa.table(cols, schema=LEDGER_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_ledgers(folder: Path) -> "pa.Table":
    """All ledger files of one stage, concatenated (empty table if none)."""
    files = sorted(Path(folder).glob("*.parquet"))
    if not files:
        return LEDGER_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(f, schema=LEDGER_SCHEMA) for f in files])


def reject(key: str | None, id_: str | None, status: str, message: str) -> dict[str, Any]:
    """A ledger row for a rejected sample."""
    return {"key": key, "id": id_, "status": status, "error_message": message}
