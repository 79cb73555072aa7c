"""Tiny photo collections for the shard tests, built in a temporary folder."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

REPO = Path(__file__).resolve().parent.parent


def jpeg(w: int = 64, h: int = 48, color=(200, 60, 30), mode: str = "RGB", exif: Image.Exif | None = None,
         progressive: bool = False, fmt: str = "JPEG") -> bytes:
    """A small photo with a gradient, so JPEG sizes are realistic."""
    img = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    img = Image.blend(img, Image.new("RGB", (w, h), color), 0.5)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    kw = {}
    if exif is not None:
        kw["exif"] = exif
    if fmt == "JPEG":
        kw["progressive"] = progressive
        kw["quality"] = 90
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def gps_exif(lat: float, lon: float) -> Image.Exif:
    """EXIF with a GPSInfo IFD (degree/minute/second rationals and hemisphere refs)."""

    def dms(v: float):
        v = abs(v)
        d = int(v)
        m = int((v - d) * 60)
        s = round(((v - d) * 60 - m) * 60 * 1000)
        return (IFDRational(d, 1), IFDRational(m, 1), IFDRational(s, 1000))

    exif = Image.Exif()
    exif[0x8825] = {1: "N" if lat >= 0 else "S", 2: dms(lat), 3: "E" if lon >= 0 else "W", 4: dms(lon)}
    return exif


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def split_bytes(path: Path, out_dir: Path, stem: str, n_parts: int) -> list[Path]:
    """Split a file into ``stem00``, ``stem01``, ... byte parts (like mp-16-images00..18)."""
    data = path.read_bytes()
    size = -(-len(data) // n_parts)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in range(n_parts):
        p = out_dir / f"{stem}{i:02d}"
        p.write_bytes(data[i * size : (i + 1) * size])
        parts.append(p)
    return parts


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m geobuild ...`` in a subprocess."""
    env = dict(os.environ, GEOBUILD_NO_PROGRESS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "geobuild", *args], capture_output=True, text=True, env=env, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"geobuild {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def ledger(run: Path) -> dict[str, dict]:
    """All shard ledger rows, by id (the first row of an id listed twice)."""
    out = {}
    for p in sorted((run / "ledger" / "shard").glob("*.parquet")):
        for r in pq.read_table(p).to_pylist():
            out.setdefault(r["id"], r)
    return out


def samples(run: Path) -> dict[str, dict]:
    """Every sample of every shard, by key."""
    from geobuild.artifacts.shards import iter_shard

    out = {}
    for p in sorted((run / "shards").glob("*.tar")):
        for s in iter_shard(p):
            assert s["__key__"] not in out
            out[s["__key__"]] = s
    return out


def run_files(run: Path) -> dict[str, bytes]:
    """The bytes of every shard, sizes.json and ledger file of a run (for byte-for-byte checks)."""
    files = sorted((run / "shards").glob("*")) + sorted((run / "ledger" / "shard").glob("*"))
    return {str(p.relative_to(run)): p.read_bytes() for p in files}
