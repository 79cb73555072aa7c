"""Local executor: units in this process (workers=1) or a process pool (workers>1)."""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Iterator

from ..commit import execute_unit
from ..log import get_logger, progress
from ..runfolder import RunFolder
from .base import retryable

log = get_logger("executor")


def _run_unit(stage, run: RunFolder, unit: str) -> dict[str, Any]:
    return execute_unit(stage, run, unit)


class LocalExecutor:
    """Run units in-process or on a pool of ``workers`` spawned processes, retrying failures."""

    def __init__(self, workers: int = 1, retries: int = 0):
        self.workers = max(1, int(workers))
        self.retries = max(0, int(retries))

    def map_units(self, stage, run: RunFolder, units: list[str]) -> Iterator[tuple[str, Any]]:
        if not units:
            return
        bar = progress(total=len(units), desc=stage.name, unit="unit")
        try:
            if self.workers == 1 or len(units) == 1:
                for unit in units:
                    yield unit, self._attempt_inline(stage, run, unit)
                    bar.update(1)
                return
            yield from self._pool(stage, run, units, bar)
        finally:
            bar.close()

    def _pool(self, stage, run, units, bar) -> Iterator[tuple[str, Any]]:
        """Units on a spawned process pool. A worker that dies (killed, out of memory) breaks the
        whole pool: it is replaced and the units that were in flight are resubmitted, each at most
        ``retries`` times, before being reported with the error."""
        ctx = mp.get_context("spawn")
        tries = {u: 0 for u in units}
        queue = list(units)
        while queue:
            broken: list[str] = []
            with ProcessPoolExecutor(max_workers=min(self.workers, len(queue)), mp_context=ctx) as pool:
                pending = {pool.submit(_run_unit, stage, run, u): u for u in queue}
                queue = []
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        unit = pending.pop(fut)
                        exc = fut.exception()
                        if isinstance(exc, BrokenProcessPool):
                            broken.append(unit)
                            continue
                        if exc is not None and tries[unit] < self.retries and retryable(exc):
                            tries[unit] += 1
                            log.warning("%s unit %s failed (%s); retry %d/%d", stage.name, unit, exc, tries[unit], self.retries)
                            try:
                                pending[pool.submit(_run_unit, stage, run, unit)] = unit
                            except BrokenProcessPool:
                                broken.append(unit)
                            continue
                        yield unit, (exc if exc is not None else fut.result())
                        bar.update(1)
            if broken:
                log.warning("%s: a worker process died; %d unit(s) in flight are retried", stage.name, len(broken))
            for unit in sorted(broken):
                if tries[unit] < self.retries:
                    tries[unit] += 1
                    queue.append(unit)
                else:
                    yield unit, BrokenProcessPool(f"the worker process running {stage.name} unit {unit} died (killed or out of memory), {self.retries} retries used")
                    bar.update(1)

    def _attempt_inline(self, stage, run, unit):
        for attempt in range(self.retries + 1):
            try:
                return _run_unit(stage, run, unit)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - reported per unit
                if attempt >= self.retries or not retryable(exc):
                    return exc
                log.warning("%s unit %s failed (%s); retry %d/%d", stage.name, unit, exc, attempt + 1, self.retries)
        return RuntimeError("unreachable")

