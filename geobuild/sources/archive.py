"""Random-access image containers: a zip file or a folder of photos.

Both list their image files in a fixed (sorted) order and read one file's bytes on demand, so any
unit can be processed by any worker. Matching a metadata row to a file uses the file's candidate
keys (:func:`geobuild.sources.metadata.member_keys`): full path, path without leading folders, and
bare file name.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from ..core.errors import GeobuildError
from .metadata import IMAGE_EXT, member_keys

SKIP_PARTS = ("__MACOSX",)


def is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return bool(IMAGE_EXT.search(base)) and not base.startswith("._") and not any(p in name.split("/") for p in SKIP_PARTS)


class ImageFiles:
    """Sorted image names and byte access for a zip or a folder."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        if self.path.is_dir():
            names = []
            for root, dirs, files in os.walk(self.path):
                dirs.sort()
                rel = Path(root).relative_to(self.path).as_posix()
                for f in files:
                    name = f if rel == "." else f"{rel}/{f}"
                    if is_image_name(name):
                        names.append(name)
            self.names = sorted(names)
        elif self.path.is_file() and zipfile.is_zipfile(self.path):
            try:
                self._zip = zipfile.ZipFile(self.path)
                self.names = sorted(i.filename for i in self._zip.infolist() if not i.is_dir() and is_image_name(i.filename))
            except (OSError, zipfile.BadZipFile) as exc:
                raise GeobuildError(f"cannot read zip {self.path}: {exc}") from None
        elif not self.path.exists():
            raise GeobuildError(f"images not found: {self.path}")
        else:
            raise GeobuildError(f"--images must be a zip, a folder, a tar or tar parts: {self.path}")

    def read(self, name: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(name)
        return (self.path / name).read_bytes()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def by_key(self) -> dict[str, list[str]]:
        """Candidate key -> names having it (each list sorted), for matching rows to files."""
        out: dict[str, list[str]] = {}
        for name in self.names:
            for k in dict.fromkeys(member_keys(name)):
                out.setdefault(k, []).append(name)
        return out
