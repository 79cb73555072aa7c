"""A real headless browser for the report tests: Debian's chromium, driven from its command line
(``--dump-dom`` for the DOM after the page's scripts ran, ``--screenshot`` for a PNG)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> str:
    """The browser's executable; skips the test when none is installed (fails under CI, where
    ``.ci/run`` installs it)."""
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
    pytest.skip("chromium is not installed (apt-get install -y chromium)")


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}",
               "--virtual-time-budget=10000", *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def dump_dom(url: str, width: int = 1280, height: int = 2000) -> str:
    """The page's DOM (serialised HTML) once its scripts have run and its images settled."""
    return _run([f"--window-size={width},{height}", "--dump-dom", url]).stdout


def screenshot(url: str, path: Path, width: int = 1280, height: int = 3000) -> Path:
    """A PNG of the page at ``width`` x ``height``, cut below the last row that is not background."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _run([f"--window-size={width},{height}", f"--screenshot={path}", url])
    assert path.exists() and path.stat().st_size > 0, f"chromium wrote no screenshot to {path}"
    _trim_bottom(path)
    return path


def _trim_bottom(path: Path, margin: int = 24) -> None:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    background = rgb[-1, 0]
    busy = np.flatnonzero((np.abs(rgb.astype(int) - background).sum(axis=2) > 12).any(axis=1))
    if busy.size:
        bottom = min(rgb.shape[0], int(busy[-1]) + margin)
        Image.fromarray(rgb[:bottom]).save(path, optimize=True)
