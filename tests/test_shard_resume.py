"""Kill ``geobuild shard`` with SIGKILL part-way, resume it, and get the bytes of a clean run."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from killpoint import run_killed  # noqa: E402
from shard_helpers import cli, run_files, split_bytes, write_csv, write_tar  # noqa: E402


def _noise_jpeg(seed: int, w: int = 320, h: int = 240) -> bytes:
    import io

    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def kill_in_unit(args: list[str], run: Path, unit: str) -> None:
    """Run ``geobuild shard`` and SIGKILL it once ``unit``'s tar is complete in its temporary file,
    before it is renamed into place: the units before it are done, it is not."""
    run_killed(signal.SIGKILL, f"shards/{unit}.tar", 1, ["shard", *args])
    done = sorted(p.name for p in (run / "done" / "shard").iterdir())
    assert done == [f"{i:05d}" for i in range(int(unit))], done
    assert not (run / "shards" / f"{unit}.tar").exists()
    assert len(list((run / "shards").glob(f"{unit}.tar.tmp-*"))) == 1


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
    kill_in_unit(["--out", str(killed), *common], killed, "00003")
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
    kill_in_unit(["--out", str(killed), *common], killed, "00002")
    cli("shard", "--out", str(killed), *common)
    assert run_files(killed) == run_files(clean)
