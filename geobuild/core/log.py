"""Logging and progress bars shared by every stage."""

from __future__ import annotations

import logging
import os
import sys

from tqdm.auto import tqdm

_CONFIGURED = False


def setup_logging(verbose: bool = False) -> None:
    """Configure the root 'geobuild' logger once (rich handler on a terminal)."""
    global _CONFIGURED
    if _CONFIGURED:
        return
    level = logging.DEBUG if verbose or os.environ.get("GEOBUILD_DEBUG") else logging.INFO
    try:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False, console=None)
        fmt = "%(message)s"
    except ImportError:  # pragma: no cover
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    logger = logging.getLogger("geobuild")
    logger.setLevel(level)
    logger.addHandler(handler)
    logger.propagate = False
    _CONFIGURED = True


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("geobuild") else f"geobuild.{name}")


def progress(total: int | None = None, desc: str = "", unit: str = "it", disable: bool | None = None):
    """A tqdm progress bar on stderr; disabled when GEOBUILD_NO_PROGRESS is set."""
    if disable is None:
        disable = bool(os.environ.get("GEOBUILD_NO_PROGRESS"))
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, leave=False)
