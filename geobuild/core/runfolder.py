"""The run folder: where every stage of one pipeline run writes, and its resolved configuration.

Layout (``RUN/``)::

    config.yaml                 resolved configuration, one section per stage
    shards/00000.tar ...        WebDataset shards, shards/sizes.json
    ledger/<stage>/<unit>.parquet   one row per input sample that did not make it (and, for
                                    shard, every input row): key, id, status, error_message
    stats/<stage>/<unit>.json   counts by status and reason, timings
    done/<stage>/<unit>         completion markers, written last
    embeddings/ index/ candidates/ distances/ publish/ ranker/
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from .errors import GeobuildError

TMP_MARK = ".tmp-"


class RunFolder:
    """Paths and helpers for one run folder."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    def __reduce__(self):
        return (RunFolder, (str(self.root),))

    # -- well-known folders -------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def shards_dir(self) -> Path:
        return self.path("shards")

    def shard_path(self, unit: str) -> Path:
        return self.shards_dir / f"{unit}.tar"

    def ledger_path(self, stage: str, unit: str) -> Path:
        return self.path("ledger", stage, f"{unit}.parquet")

    def stats_path(self, stage: str, unit: str) -> Path:
        return self.path("stats", stage, f"{unit}.json")

    def marker_path(self, stage: str, unit: str) -> Path:
        return self.path("done", stage, unit)

    def is_done(self, stage: str, unit: str) -> bool:
        return self.marker_path(stage, unit).exists()

    def done_units(self, stage: str) -> list[str]:
        d = self.path("done", stage)
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def shard_units(self) -> list[str]:
        """Names ('00000', ...) of the finished shards, in order."""
        return self.done_units("shard")

    # -- configuration ------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path("config.yaml")

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.exists():
            return {}
        with open(self.config_path) as f:
            return yaml.safe_load(f) or {}

    def check_config(self, section: str, config: Any, overwrite: bool = False) -> bool:
        """Record ``config`` under ``section``; refuse a different one unless ``overwrite``.

        A changed configuration would mix outputs made two ways, so it is refused with a clear
        error. With ``overwrite`` the stage's markers are removed and the new config recorded;
        returns whether that happened.
        """
        self.ensure_root()
        new = plain(config)
        current = self.read_config()
        old = current.get(section)
        reset = old is not None and old != new
        if reset:
            if not overwrite:
                changed = changed_keys(old, new)
                raise GeobuildError(
                    f"run {self.root} already has a different '{section}' configuration"
                    + (f" (changed: {', '.join(changed)})" if changed else "")
                    + "; use --overwrite to redo the stage, or another --out/--run folder"
                )
            self.reset_stage(section)
        current[section] = new
        self.ensure_root()
        with atomic_path(self.config_path) as tmp:
            with open(tmp, "w") as f:
                yaml.safe_dump(current, f, sort_keys=False)
        return reset

    def ensure_root(self) -> None:
        """Create the run folder; an existing path that is not a folder is a GeobuildError."""
        if self.root.exists() and not self.root.is_dir():
            raise GeobuildError(f"--out/--run path {self.root} exists and is not a run folder (it is a file); pick another path")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GeobuildError(f"cannot create run folder {self.root}: {exc.strerror or exc}") from None

    def reset_stage(self, stage: str) -> None:
        """Forget a stage's completion markers so every unit is redone."""
        d = self.path("done", stage)
        if d.is_dir():
            for p in d.iterdir():
                p.unlink()

    def write_json(self, path: Path, obj: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                json.dump(obj, f, indent=2, sort_keys=True, default=str)
                f.write("\n")


def changed_keys(old: Any, new: Any) -> list[str]:
    """The keys whose values differ between two recorded configurations (none for non-mappings)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return []
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def plain(obj: Any) -> Any:
    """Dataclasses, Paths and tuples to YAML-safe plain values."""
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return str(obj)
    return obj


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete leftovers of killed writers (names containing the temp mark) below ``folder``."""
    folder = Path(folder)
    if not folder.exists():
        return 0
    n = 0
    for p in folder.rglob(f"*{TMP_MARK}*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


def remove_leftovers(final: Path) -> None:
    """Delete temp files of an earlier, killed attempt at writing ``final`` (this unit only)."""
    for p in final.parent.glob(f"{final.name}{TMP_MARK}*"):
        p.unlink(missing_ok=True)


def read_json(path: Path, redo: str) -> dict[str, Any]:
    """A JSON object written by a stage; a damaged or foreign file is a GeobuildError saying how to redo it."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GeobuildError(f"unreadable {path} ({exc}); {redo}") from None
    if not isinstance(doc, dict):
        raise GeobuildError(f"{path} does not hold a JSON object; {redo}")
    return doc
