"""Errors that end a command with one clear line instead of a traceback."""

from __future__ import annotations


class GeobuildError(Exception):
    """A fatal, user-facing error: printed as one line, exit status 2."""


class MissingDependency(GeobuildError):
    """An optional dependency (an extra) is not installed."""


def require(module: str, extra: str):
    """Import an optional dependency lazily, or fail with the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependency(
            f"'{module}' is not installed ({exc}); install it with: pip install 'geobuild[{extra}]'"
        ) from exc
