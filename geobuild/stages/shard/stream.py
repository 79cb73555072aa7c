"""Driving the shard stage over a streamed tar (see :mod:`geobuild.stages.shard.stage` for the design).

The tar is read once, front to back; units are committed one after the other with the shared
:func:`geobuild.core.commit.execute_unit` (ledger, then stats, then the completion marker).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .images import BAD_IMAGE, ImageReject
from ...core.ledger import OK, reject
from ...core.log import get_logger, progress
from ...core.runfolder import RunFolder
from ...core.schemas import json_version
from ...artifacts.shards import ShardWriter
from ...core.shardspec import shard_name
from ...core.commit import execute_unit
from ...core.stage import Stage, UnitResult
from ...sources.metadata import member_keys
from ...sources.mp16pro import ChainedParts, KeyIndex, find_parts, iter_members
from .plan import DUPLICATE_IMAGE, MISSING_IMAGE, NO_METADATA, MappedPlan, plan_text_cols

log = get_logger("shard")


class _StreamUnit:
    """One unit being filled by the stream: an open shard writer, ledger rows and counters."""

    def __init__(self, run: RunFolder, unit: str):
        self.unit = unit
        self._writer = ShardWriter(run.shard_path(unit))
        self.writer = self._writer.__enter__()
        self.ledger: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self.members = 0
        self.reencoded = 0
        self.final = False

    def add(self, entry: dict[str, Any], member: bool = True) -> None:
        self.ledger.append(entry)
        self.counts[entry["status"]] = self.counts.get(entry["status"], 0) + 1
        self.members += int(member)

    def abort(self) -> None:
        self._writer.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def finish(self) -> UnitResult:
        self._writer.__exit__(None, None, None)
        stats = {"schema_version": json_version("shard_stats"), "samples": self.writer.count, "inputs": len(self.ledger), "by_status": self.counts,
                 "reencoded": self.reencoded, "members": self.members, "final": self.final}
        return UnitResult(stats=stats, ledger=self.ledger)


def stream_units(stage: Stage, run: RunFolder) -> Iterator[tuple[str, dict[str, Any]]]:
    """Shard a tar (or its parts) in one streaming pass, resuming after the finished units; yields
    ``(unit, stats)`` as each unit is committed. ``stage`` is the shard stage (its plan is ready)."""
    mapped = MappedPlan(stage.plan_path(run))
    try:
        yield from _stream(stage, run, mapped)
    finally:
        mapped.close()


def _stream(stage: Stage, run: RunFolder, mapped: MappedPlan) -> Iterator[tuple[str, dict[str, Any]]]:
    plan = mapped.table
    text_cols = plan_text_cols(plan)
    n_per = stage.cfg.samples_per_shard

    done = set(run.done_units(stage.name))
    k, skip = 0, 0
    while shard_name(k) in done:
        st = json.loads(run.stats_path(stage.name, shard_name(k)).read_text())
        if st.get("final"):
            log.info("shard: all %d units already done", k + 1)
            return
        skip += int(st["members"])
        k += 1
    if k:
        log.info("shard: resuming after %d finished units (%d tar members)", k, skip)

    n_rows = plan.num_rows
    index = KeyIndex(plan.column("key"))  # the memory-mapped column: no copy of the keys
    bindex = KeyIndex(plan.column("bkey"))
    seen = np.zeros(n_rows, dtype=bool)

    def match(name: str) -> int:
        cands = member_keys(name)
        for c in cands:
            r = index.get(c)
            if r >= 0:
                return r
        return bindex.get(cands[-1]) if cands else -1

    chain = ChainedParts(find_parts(Path(stage.cfg.images)))
    bar = progress(total=chain.total, desc="shard", unit="B")
    bar.unit_scale = True
    cur: _StreamUnit | None = None
    pending: list[dict[str, Any]] = []

    def commit(unit: _StreamUnit) -> tuple[str, dict[str, Any]]:
        stage._open = unit
        done = unit.unit, execute_unit(stage, run, unit.unit)
        mapped.release()  # resident plan pages stay about one unit's worth
        return done

    try:
        last_pos = 0
        for m, (name, data, err) in enumerate(iter_members(chain)):
            bar.update(chain.position - last_pos)
            last_pos = chain.position
            r = match(name)
            if m < skip:
                if r >= 0:
                    seen[r] = True
                continue
            if cur is None:
                cur = _StreamUnit(run, shard_name(k))
            files = None
            if r < 0:
                entry = reject(None, name, NO_METADATA, f"{name}: image has no metadata row")
            elif seen[r]:
                entry = reject(None, name, DUPLICATE_IMAGE, f"{name}: an earlier tar member already provided row {r}'s image")
            else:
                seen[r] = True
                row = plan.slice(r, 1).to_pylist()[0]
                if row["status"] != OK:
                    entry = reject(row["key"], row["id"], row["status"], row["message"])
                elif err is not None:
                    entry = reject(row["key"], row["id"], BAD_IMAGE, f"{name}: {err}")
                else:
                    try:
                        files, reenc = stage._sample(row, data, text_cols, row["lat"], row["lon"])
                        entry = reject(row["key"], row["id"], OK, None)
                    except ImageReject as exc:
                        entry = reject(row["key"], row["id"], exc.status, f"{name}: {exc}")
            if files is None:
                (pending.append(entry) if cur.writer.count >= n_per else cur.add(entry))
                continue
            if cur.writer.count >= n_per:
                yield commit(cur)
                k += 1
                cur = _StreamUnit(run, shard_name(k))
                for e in pending:
                    cur.add(e)
                pending = []
            cur.writer.write(entry["key"], files)
            cur.reencoded += reenc
            cur.add(entry)
        if cur is None:
            cur = _StreamUnit(run, shard_name(k))
        for e in pending:
            cur.add(e)
        _missing_rows(plan, seen, cur, mapped.release)
        cur.final = True
        yield commit(cur)
        cur = None
    except BaseException:
        if cur is not None and stage._open is None:
            cur.abort()
        raise
    finally:
        bar.close()
        chain.close()


def _missing_rows(plan, seen: np.ndarray, unit: _StreamUnit, release=None, window: int = 16384) -> None:
    """Ledger rows for every plan row no tar member provided (in row order), read a window of
    plan rows at a time (``release`` drops the mapped pages read after each window)."""
    rows = np.flatnonzero(~seen)
    bounds = np.searchsorted(rows, np.arange(0, seen.size + window, window))
    cols = plan.select(["key", "id", "status", "message"])
    for w, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        if a == b:
            continue
        part = cols.slice(w * window, window).take(rows[a:b] - w * window).to_pylist()
        for row in part:
            if row["status"] == OK:
                unit.add(reject(row["key"], row["id"], MISSING_IMAGE, f"no tar member for id {row['id']!r}"), member=False)
            else:
                unit.add(reject(row["key"], row["id"], row["status"], row["message"]), member=False)
        if release is not None:
            release()
