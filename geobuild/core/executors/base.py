"""What every executor shares: the protocol and the one retry policy."""

from __future__ import annotations

from typing import Any, Iterator, Protocol

from ..errors import GeobuildError
from ..runfolder import RunFolder


class Executor(Protocol):
    """Runs a stage's units; yields ``(unit, stats | exception)`` as units finish, in any order."""

    def map_units(self, stage: Any, run: RunFolder, units: list[str]) -> Iterator[tuple[str, Any]]: ...


class SystemFailure(RuntimeError):
    """A failure the backend already retried on its own (a lost worker or node): not retried again."""


def retryable(exc: BaseException) -> bool:
    """User errors (bad input, bad config) and backend failures are not retried; crashes and I/O
    errors raised by a unit are."""
    if isinstance(exc, (GeobuildError, SystemFailure)):
        return False
    return not (type(exc).__module__ or "").startswith("ray.")
