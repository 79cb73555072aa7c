"""MP16-Pro images: one tar, or its byte-split parts streamed as one tar.

``mp-16-images.tar`` (about 370 GB) is distributed as ``mp-16-images00``, ``mp-16-images01``, ...
which concatenate into the tar. :class:`ChainedParts` is a read-only file object over the parts in
order, so ``tarfile.open(fileobj=..., mode="r|")`` streams the tar without the concatenation ever
being written to disk. :class:`KeyIndex` maps a member's candidate keys to metadata rows with two
numpy arrays (64-bit hashes and row numbers), a few bytes per row instead of a Python dict.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from ..core.errors import GeobuildError

PART_SUFFIX = re.compile(r"^(?P<stem>.*?)(?P<num>\d+)$")
GLOB_CHARS = re.compile(r"[*?\[]")


class ChainedParts(io.RawIOBase):
    """Sequential reads across several files as if they were one."""

    def __init__(self, paths: list[Path]):
        super().__init__()
        self.paths = [Path(p) for p in paths]
        self.total = sum(p.stat().st_size for p in self.paths)
        self._i = 0
        self._f: BinaryIO | None = None
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        view = memoryview(b)
        while self._i < len(self.paths):
            if self._f is None:
                self._f = open(self.paths[self._i], "rb")
            n = self._f.readinto(view)
            if n:
                self.position += n
                return n
            self._f.close()
            self._f = None
            self._i += 1
        return 0

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        super().close()


def find_parts(path: Path) -> list[Path]:
    """The files making up the tar: ``path`` itself, or every numbered part beside it.

    ``mp-16-images00`` (or the stem ``mp-16-images`` when no such file exists, or a shell glob
    ``mp-16-images??`` / ``mp-16-images*`` quoted so the shell leaves it alone) selects
    ``mp-16-images00``, ``mp-16-images01``, ... in numeric order.
    """
    path = Path(path)
    if GLOB_CHARS.search(path.name) and not path.exists():
        return _glob_parts(path)
    if path.is_file() and not PART_SUFFIX.match(path.name):
        return [path]
    stem = path.name
    m = PART_SUFFIX.match(path.name)
    if path.is_file() and m:
        stem = m.group("stem")
    folder = path.parent
    if not folder.is_dir():
        raise GeobuildError(f"images not found: {path}")
    parts = []
    for p in folder.iterdir():
        pm = PART_SUFFIX.match(p.name)
        if p.is_file() and pm and pm.group("stem") == stem:
            parts.append((int(pm.group("num")), p))
    if not parts:
        if path.is_file():
            return [path]
        raise GeobuildError(f"images not found: {path} (no file and no numbered parts {stem}00, {stem}01, ...)")
    parts.sort()
    nums = [n for n, _ in parts]
    if nums != list(range(nums[0], nums[0] + len(nums))):
        raise GeobuildError(f"tar parts of {stem} are not consecutive: found numbers {nums}; a part is missing")
    return [p for _, p in parts]


def _glob_parts(path: Path) -> list[Path]:
    """Parts named by a glob: trailing ``?``/``*`` are dropped and the rest is the stem; any other
    glob is expanded (files only) and ordered by the number ending each name."""
    stem = path.name.rstrip("?*")
    if stem and not GLOB_CHARS.search(stem):
        return find_parts(path.parent / stem)
    if GLOB_CHARS.search(str(path.parent)):
        raise GeobuildError(f"images not found: {path} (only the file name may be a glob)")
    hits = sorted(p for p in path.parent.glob(path.name) if p.is_file()) if path.parent.is_dir() else []
    if not hits:
        raise GeobuildError(f"images not found: {path} (the glob matches no file)")
    numbered = [(PART_SUFFIX.match(p.name), p) for p in hits]
    if all(m for m, _ in numbered):
        return [p for _, p in sorted(numbered, key=lambda mp: (mp[0].group("stem"), int(mp[0].group("num"))))]
    return hits


def is_tar_input(path: Path) -> bool:
    """Whether ``--images`` names a tar or tar parts (streamed) rather than a zip or folder."""
    path = Path(path)
    if path.is_dir():
        return False
    if path.is_file():
        if path.suffix.lower() == ".zip":
            return False
        if path.name.lower().endswith(".tar") or PART_SUFFIX.match(path.name):
            return True
        try:
            return tarfile.is_tarfile(path)
        except OSError:
            return False
    return bool(find_parts(path))


def iter_members(fileobj: BinaryIO) -> Iterator[tuple[str, bytes | None, str | None]]:
    """Stream ``(name, bytes, error)`` for each regular file of a tar read front to back.

    A member whose data ends early yields ``(name, None, message)`` and the stream stops there.
    """
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r|")
    except tarfile.TarError as exc:
        raise GeobuildError(f"images are not a readable tar stream: {exc}") from None
    with tar:
        while True:
            try:
                member = tar.next()
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise GeobuildError(f"tar stream is corrupt after {tar.offset} bytes: {exc}") from None
            if member is None:
                return
            tar.members = []  # a streamed TarFile keeps every header it read: ~1 KB per member, unbounded
            if not member.isfile():
                continue
            try:
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                if len(data) != member.size:
                    raise EOFError(f"expected {member.size} bytes, got {len(data)}")
            except (tarfile.TarError, OSError, EOFError) as exc:
                yield member.name, None, f"tar member is truncated: {exc}"
                return
            yield member.name, data, None


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little", signed=True)


class KeyIndex:
    """Exact lookup of strings (keys) to row numbers via sorted 64-bit hashes, verified on hit."""

    def __init__(self, keys, rows: np.ndarray | None = None, chunk: int = 65536):
        """``keys``: a pyarrow string (chunked) array (kept, not copied) or a list; ``rows``: row per key."""
        self.keys = keys
        n = len(keys)
        rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        hashes = np.zeros(n, dtype=np.int64)
        keep = np.zeros(n, dtype=bool)
        for start in range(0, n, chunk):
            part = keys[start : start + chunk]
            part = part.to_pylist() if hasattr(part, "to_pylist") else part
            for j, k in enumerate(part):
                if k:
                    hashes[start + j] = key_hash(k)
                    keep[start + j] = True
        pos = np.flatnonzero(keep)
        hashes, rows = hashes[keep], rows[keep]
        order = np.lexsort((rows, hashes))  # by hash, then row: first row wins
        small = np.int32 if max(n, int(rows.max(initial=0)) + 1) < 2**31 else np.int64  # 16 B per key, not 24
        self._h = hashes[order]
        self._r = rows[order].astype(small)
        self._p = pos[order].astype(small)

    def get(self, key: str) -> int:
        """The first row whose key equals ``key``, or -1."""
        h = key_hash(key)
        i = int(np.searchsorted(self._h, h, side="left"))
        while i < len(self._h) and self._h[i] == h:
            k = self.keys[int(self._p[i])]
            if (k.as_py() if hasattr(k, "as_py") else k) == key:
                return int(self._r[i])
            i += 1
        return -1
