"""WebDataset shard I/O: byte-reproducible tar writing and streaming reading.

A shard ``RUN/shards/00000.tar`` holds, per sample, ``<key>.jpg`` and ``<key>.json``; keys are
dot-free and unique. Tars are written with a fixed mtime, owner and mode, so the same samples in
the same order give the same bytes. ``RUN/shards/sizes.json`` maps shard file names to sample
counts, as WebDataset tooling expects.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..core.runfolder import atomic_path

FIXED_MTIME = 1_700_000_000  # 2023-11-14T22:13:20Z, the mtime of every member
def json_bytes(obj: dict[str, Any]) -> bytes:
    """Canonical JSON (sorted keys, no NaN) for sample metadata."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add ``data`` as member ``name`` with the fixed mtime, owner and mode every geobuild tar uses."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = FIXED_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


class ShardWriter:
    """Write samples to a tar atomically and reproducibly (use as a context manager)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.count = 0
        self._ctx = None
        self._tar: tarfile.TarFile | None = None

    def __enter__(self) -> "ShardWriter":
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        self._tar = tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT)
        return self

    def __exit__(self, exc_type, exc, tb):
        assert self._tar is not None and self._ctx is not None
        self._tar.close()
        return self._ctx.__exit__(exc_type, exc, tb)

    def add_file(self, name: str, data: bytes) -> None:
        assert self._tar is not None
        add_member(self._tar, name, data)

    def write(self, key: str, files: dict[str, bytes]) -> None:
        """Add one sample: ``files`` maps extension ('jpg', 'json') to bytes, written sorted."""
        if "." in key or "/" in key:
            raise ValueError(f"sample key must be dot- and slash-free: {key!r}")
        for ext in sorted(files):
            self.add_file(f"{key}.{ext}", files[ext])
        self.count += 1


def iter_shard(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield samples of a shard as dicts: ``__key__`` plus one entry per extension (raw bytes).

    The ``json`` entry, when present, is decoded. Members of one sample are adjacent, as
    WebDataset requires.
    """
    current: dict[str, Any] | None = None
    with tarfile.open(path, "r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            key, _, ext = base.partition(".")
            f = tar.extractfile(member)
            data = f.read() if f is not None else b""
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key}
            current[ext] = json.loads(data) if ext == "json" else data
    if current is not None:
        yield current


def small_photo_keys(paths: Iterable[str | Path], max_bytes: int) -> set[str]:
    """Keys whose ``.jpg`` member is ``max_bytes`` or smaller, from one pass over the tar headers of
    ``paths`` (member data is skipped by seeking, so this costs a header read per member)."""
    small: set[str] = set()
    for path in paths:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if m.isfile() and m.size <= max_bytes and m.name.endswith(".jpg"):
                    small.add(m.name.rsplit("/", 1)[-1].partition(".")[0])
    return small


def write_sizes(shards_dir: str | Path, sizes: dict[str, int] | None = None) -> dict[str, int]:
    """Write ``sizes.json`` (shard file name -> sample count).

    ``sizes`` given (e.g. from the shard stage's per-unit stats) is written as is; otherwise every
    ``*.tar`` in ``shards_dir`` is read and counted.
    """
    shards_dir = Path(shards_dir)
    if sizes is None:
        sizes = {p.name: sum(1 for _ in iter_shard(p)) for p in sorted(shards_dir.glob("*.tar"))}
    sizes = {k: int(sizes[k]) for k in sorted(sizes)}
    shards_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(shards_dir / "sizes.json") as tmp:
        tmp.write_text(json.dumps(sizes, indent=2, sort_keys=True) + "\n")
    return sizes


def read_samples(path: str | Path, keys: set[str], ext: str = "jpg") -> Iterator[tuple[str, bytes]]:
    """Yield ``(key, bytes)`` of the ``<key>.<ext>`` members of a shard whose key is in ``keys``.

    The tar is opened for random access: only the member headers are read and the data of the
    other samples is skipped by seeking, so a few photos come out of a large shard cheaply.
    """
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            base = member.name.rsplit("/", 1)[-1]
            key, _, e = base.partition(".")
            if e == ext and key in keys and member.isfile():
                f = tar.extractfile(member)
                if f is not None:
                    yield key, f.read()
