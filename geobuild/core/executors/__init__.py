"""Executors run a stage's units: locally (the default) or on Ray (``ray_executor``).

Every executor implements ``map_units(stage, run, units)`` yielding ``(unit, stats | exception)``
as units finish, in any order. The unit-to-work mapping is fixed by the stage, so a run started
with one executor can be resumed with another.
"""

from __future__ import annotations

from ..errors import GeobuildError
from .base import Executor, retryable
from .local import LocalExecutor

__all__ = ["Executor", "LocalExecutor", "make_executor", "retryable"]


def make_executor(kind: str = "local", workers: int = 1, ray_address: str | None = None, retries: int = 2):
    """Build an executor from its CLI name."""
    if kind == "local":
        return LocalExecutor(workers=workers, retries=retries)
    if kind == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(address=ray_address, retries=retries, workers=workers)
    raise GeobuildError(f"unknown executor '{kind}' (choose local or ray)")
