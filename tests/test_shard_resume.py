"""Kill ``geobuild shard`` with SIGKILL part-way, resume it, and get the bytes of a clean run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shard_helpers import REPO, cli, run_files, split_bytes, write_csv, write_tar  # noqa: E402


def _noise_jpeg(seed: int, w: int = 320, h: int = 240) -> bytes:
    import io

    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def kill_after_first_unit(args: list[str], run: Path, timeout: float = 120) -> None:
    """Start ``geobuild shard``, SIGKILL it as soon as unit 00000 is marked done."""
    env = dict(os.environ, GEOBUILD_NO_PROGRESS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "geobuild", "shard", *args], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = run / "done" / "shard" / "00000"
    t0 = time.time()
    try:
        while not marker.exists():
            assert proc.poll() is None, "shard finished before it could be killed"
            assert time.time() - t0 < timeout
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_kill_and_resume_streamed_tar_is_byte_identical(tmp_path):
    n = 240
    rows = [[f"{i % 7:02x}/{i % 3:02x}/{5000 + i}.jpg", f"u{i % 5}", 1 + i / 10, 2 + i / 10] for i in range(n)]
    rows[17][2] = "nan"
    members = [(f"mp-16-images/{r[0]}", _noise_jpeg(i)) for i, r in enumerate(rows) if i != 33]
    members.insert(50, ("mp-16-images/zz/orphan.jpg", _noise_jpeg(999)))
    csv_path = write_csv(tmp_path / "MP16_Pro_places365.csv", ["IMG_ID", "AUTHOR", "LAT", "LON"], rows)
    parts = split_bytes(write_tar(tmp_path / "mp-16-images.tar", members), tmp_path / "parts", "mp-16-images", 4)
    common = ["--format", "mp16pro", "--images", str(parts[0]), "--metadata", str(csv_path),
              "--samples-per-shard", "20", "--max-side", "200"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    cli("shard", "--out", str(clean), *common)
    kill_after_first_unit(["--out", str(killed), *common], killed)
    finished = sorted(p.name for p in (killed / "done" / "shard").iterdir())
    assert "00011" not in finished  # the kill really came before the end
    cli("shard", "--out", str(killed), *common)
    assert run_files(killed) == run_files(clean)
    assert len(run_files(clean)) == 12 + 1 + 12  # 12 shards, sizes.json, 12 ledgers


@pytest.mark.slow
def test_kill_and_resume_real_sample_is_byte_identical(tmp_path, shared):
    common = ["--format", "im2gps3k", "--images", str(shared / "data/im2gps3k/im2gps3ktest.zip"),
              "--metadata", str(shared / "data/im2gps3k/im2gps3k_places365.csv"), "--samples-per-shard", "250",
              "--max-side", "256"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    cli("shard", "--out", str(clean), *common)
    kill_after_first_unit(["--out", str(killed), *common], killed)
    assert len(list((killed / "done" / "shard").iterdir())) < 12
    cli("shard", "--out", str(killed), *common)
    assert run_files(killed) == run_files(clean)
