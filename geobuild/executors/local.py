"""Local executor: units in this process (workers=1) or a process pool (workers>1)."""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Iterator

from ..log import get_logger, progress
from ..runfolder import RunFolder

log = get_logger("executor")


def _run_unit(stage, run: RunFolder, unit: str) -> dict[str, Any]:
    from ..stage import execute_unit

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
            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(self.workers, len(units)), mp_context=ctx) as pool:
                tries = {u: 0 for u in units}
                pending = {pool.submit(_run_unit, stage, run, u): u for u in units}
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        unit = pending.pop(fut)
                        exc = fut.exception()
                        if exc is not None and tries[unit] < self.retries and _retryable(exc):
                            tries[unit] += 1
                            log.warning("%s unit %s failed (%s); retry %d/%d", stage.name, unit, exc, tries[unit], self.retries)
                            pending[pool.submit(_run_unit, stage, run, unit)] = unit
                            continue
                        yield unit, (exc if exc is not None else fut.result())
                        bar.update(1)
        finally:
            bar.close()

    def _attempt_inline(self, stage, run, unit):
        for attempt in range(self.retries + 1):
            try:
                return _run_unit(stage, run, unit)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - reported per unit
                if attempt >= self.retries or not _retryable(exc):
                    return exc
                log.warning("%s unit %s failed (%s); retry %d/%d", stage.name, unit, exc, attempt + 1, self.retries)
        return RuntimeError("unreachable")


def _retryable(exc: BaseException) -> bool:
    """User errors (bad input, bad config) are not retried; crashes and I/O errors are."""
    from ..errors import GeobuildError

    return not isinstance(exc, GeobuildError)
