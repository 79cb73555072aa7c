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
import contextvars
import json
import os
import shutil
import uuid
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from .errors import GeobuildError

TMP_MARK = ".tmp-"
#: content identity of the input paths of each stage (see RunFolder.config_changes)
INPUTS_FILE = "inputs.json"
#: the files :func:`atomic_path` renamed into place while :func:`recording_writes` is active
_WRITTEN: contextvars.ContextVar[list[Path] | None] = contextvars.ContextVar("geobuild_written", default=None)


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
        return sorted(p.name for p in d.iterdir() if TMP_MARK not in p.name) if d.is_dir() else []

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

    def check_config(self, section: str, config: Any, overwrite: bool = False, inputs: dict[str, str] | None = None) -> bool:
        """Record ``config`` under ``section``; refuse a different one unless ``overwrite``.

        A changed configuration would mix outputs made two ways, so it is refused with a clear
        error. With ``overwrite`` the stage's markers are removed and the new config recorded;
        returns whether that happened. Paths inside the run folder are recorded relative to it;
        ``inputs`` (config key -> path of a file or folder from outside the run) are compared by
        content, not spelling (see :meth:`config_changes`).
        """
        self.ensure_root()
        new = self.recordable(config)
        current = self.read_config()
        changed = self.config_changes(section, new, inputs)
        reset = changed is not None and current.get(section) is not None
        if reset:
            if not overwrite:
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
        self.record_inputs(section, inputs)
        return reset

    def recordable(self, config: Any) -> Any:
        """``config`` as recorded: plain YAML values, paths inside the run folder relative to it."""
        return relative_paths(plain(config), self.root)

    def config_changes(self, section: str, new: Any, inputs: dict[str, str] | None = None) -> list[str] | None:
        """The keys of ``section`` whose recorded value differs from ``new`` (None: no change, or
        nothing recorded yet). An input path spelled differently (a moved or copied run, a moved
        input) is no change when the file or folder it names has the content recorded in
        ``inputs.json`` (or, for runs made before that file, the content of the old path)."""
        old = relative_paths(self.read_config().get(section), self.root)  # runs made before paths were relative
        before = self.previous_root()
        if before is not None:  # ... and since moved: their absolute paths name the old folder
            old = relative_paths(old, before)
        if old is None or old == new:
            return None
        if isinstance(old, dict) and isinstance(new, dict) and inputs:
            old = dict(old)
            known = self._inputs().get(section, {})
            for key, path in inputs.items():
                if isinstance(old.get(key), str) and old[key] != new.get(key) and path is not None:
                    rec = known.get(key) or {}
                    was = rec.get("id") if rec.get("path") == old[key] else content_id(in_run(self, old[key]))
                    if was is not None and was == content_id(path):
                        old[key] = new.get(key)
            if old == new:
                return None
        return changed_keys(old, new)

    def previous_root(self) -> Path | None:
        """Where the run folder was when ``geobuild run`` last wrote ``summary.json``, if elsewhere."""
        try:
            was = json.loads(self.path("summary.json").read_text()).get("run")
        except (OSError, ValueError, AttributeError):
            return None
        return Path(was) if isinstance(was, str) and os.path.isabs(was) and Path(was) != self.root else None

    def _inputs(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path(INPUTS_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def record_inputs(self, section: str, inputs: dict[str, str] | None) -> None:
        """Remember the content identity of a stage's input paths (``RUN/inputs.json``); only
        computed for a path not recorded yet, so an unchanged run costs nothing."""
        if not inputs:
            return
        doc = self._inputs()
        known = doc.get(section, {})
        fresh = {}
        for key, path in sorted(inputs.items()):
            if path is None:
                continue
            rec = known.get(key)
            name = relative_paths(path, self.root)
            fresh[key] = rec if rec and rec.get("path") == name else {"path": name, "id": content_id(path)}
        if fresh != known:
            doc[section] = fresh
            self.write_json(self.path(INPUTS_FILE), doc)

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

    def unmark(self, stage: str, unit: str) -> None:
        """Forget one unit's completion marker so it is redone."""
        self.marker_path(stage, unit).unlink(missing_ok=True)

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


def relative_paths(obj: Any, root: Path) -> Any:
    """Absolute path strings inside ``root`` as paths relative to it (``root`` itself as ``.``)."""
    if isinstance(obj, dict):
        return {k: relative_paths(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [relative_paths(v, root) for v in obj]
    if isinstance(obj, str) and os.path.isabs(obj):
        p = Path(obj)
        if p == root:
            return "."
        if root in p.parents:
            return p.relative_to(root).as_posix()
    return obj


def in_run(run: "RunFolder", value: str | None) -> str | None:
    """A path as recorded in config.yaml, resolved: relative ones are inside the run folder."""
    if not value:
        return value
    return value if os.path.isabs(value) else str(run.root / value)


def content_id(path: str | os.PathLike | None) -> str | None:
    """What identifies an input whatever its path: a file's size and xxHash3 of its bytes (head and
    tail 4 MiB for files over 64 MiB: a zip's or tar's index lives at its end); a folder's sorted
    relative names and sizes. None for a path that does not exist."""
    import xxhash

    if not path:
        return None
    p = Path(path).expanduser()
    h = xxhash.xxh3_128()
    if p.is_file():
        size = p.stat().st_size
        with open(p, "rb") as f:
            if size <= 64 << 20:
                while block := f.read(1 << 20):
                    h.update(block)
            else:
                h.update(f.read(4 << 20))
                f.seek(size - (4 << 20))
                h.update(f.read(4 << 20))
        return f"file:{size}:{h.hexdigest()}"
    if p.is_dir():
        n = 0
        for q in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(f"{q.relative_to(p).as_posix()}\0{q.stat().st_size}\n".encode())
            n += 1
        return f"dir:{n}:{h.hexdigest()}"
    return None


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
        written = _WRITTEN.get()
        if written is not None:
            written.append(final)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


@contextlib.contextmanager
def recording_writes() -> Iterator[list[Path]]:
    """Collect the final paths :func:`atomic_path` renames into place inside the block (this
    thread or task only): what a unit committed."""
    written: list[Path] = []
    token = _WRITTEN.set(written)
    try:
        yield written
    finally:
        _WRITTEN.reset(token)


def _writer_alive(name: str) -> bool:
    """Whether the process that named a temporary (``<final>.tmp-<pid>-<rand>``) still runs here."""
    try:
        pid = int(name.rsplit(TMP_MARK, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete leftovers of killed writers below ``folder``: files and folders whose name holds the
    temp mark, unless the process that made them is still running on this machine."""
    folder = Path(folder)
    if not folder.exists():
        return 0
    n = 0
    for p in sorted(folder.rglob(f"*{TMP_MARK}*"), key=lambda q: len(q.parts)):
        if not p.exists() or _writer_alive(p.name):
            continue  # inside a temp folder removed just before, or still being written
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
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
