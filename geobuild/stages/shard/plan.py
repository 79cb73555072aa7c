"""The shard plan (``RUN/work/shard/plan.arrow``) and the reasons a row or photo is left out."""

from __future__ import annotations

import json
import mmap
from pathlib import Path
from typing import Any

import pyarrow as pa

from ...core.log import get_logger
from ...core.runfolder import RunFolder, remove_stale_temps

log = get_logger("shard")

PLAN_VERSION = 1
MISSING_IMAGE = "missing_image"
NO_METADATA = "no_metadata"
DUPLICATE_IMAGE = "duplicate_image"
NO_GPS = "no_gps"
BAD_LATLON = "bad_latlon"
READ_ERROR = "read_error"


def read_plan(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


class MappedPlan:
    """The plan memory-mapped (no copy), with :meth:`release` to drop the pages read so far from
    this process's memory: the streamed shard pass reads every row once, in tar order, so without
    it the whole plan (about 270 bytes per input row) would end up resident."""

    def __init__(self, path: Path):
        self._file = open(path, "rb")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self.table: pa.Table | None = pa.ipc.open_file(pa.py_buffer(self._map)).read_all()

    def release(self) -> None:
        """Drop the mapped pages (clean file pages: a later read faults them in again)."""
        if hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        self.table = None
        try:
            self._map.close()
        except BufferError:  # an Arrow array of the plan is still referenced: the map goes with it
            pass
        self._file.close()


def sig_bytes(sig: dict[str, Any]) -> bytes:
    return json.dumps(sig, sort_keys=True, default=str).encode()


def plan_text_cols(plan: pa.Table) -> list[str]:
    raw = (plan.schema.metadata or {}).get(b"geobuild.text_cols", b"").decode()
    return [c for c in raw.split(",") if c]


def remove_partial_outputs(run: RunFolder) -> None:
    """Delete temp files left by a killed run (the stage is single-writer per run folder)."""
    n = remove_stale_temps(run.shards_dir) + remove_stale_temps(run.path("work", "shard"))
    if n:
        log.info("removed %d partial files from an interrupted run", n)
