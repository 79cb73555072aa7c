"""Metadata CSVs as they come from other tools (byte-order mark, CRLF, ragged rows, empty ids) and a
decompression-bomb image, through ``geobuild shard`` on real files."""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shard_helpers import jpeg, samples  # noqa: E402

from geobuild.cli import app  # noqa: E402
from geobuild.core.errors import GeobuildError  # noqa: E402


def shard(tmp_path: Path, metadata: Path, images: Path, *extra: str) -> Path:
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["shard", "--out", str(run), "--format", "im2gps3k", "--images", str(images),
                                 "--metadata", str(metadata), *extra], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return run


def ledger_rows(run: Path) -> list[dict]:
    return [r for p in sorted((run / "ledger" / "shard").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


@pytest.fixture
def photos(tmp_path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    for name, color in (("a.jpg", (200, 0, 0)), ("b.jpg", (0, 200, 0)), ("c.jpg", (0, 0, 200))):
        (d / name).write_bytes(jpeg(color=color))
    return d


ROWS = "IMG_ID,AUTHOR,LAT,LON,city\na.jpg,ann,48.5,2.25,Paris\nb.jpg,bob,-33.75,151.5,Sydney\nc.jpg,cy,35.5,139.75,Tokyo\n"
EXPECTED = {"a": ("a.jpg", "ann", 48.5, 2.25, "Paris"), "b": ("b.jpg", "bob", -33.75, 151.5, "Sydney"),
            "c": ("c.jpg", "cy", 35.5, 139.75, "Tokyo")}


@pytest.mark.parametrize("encoding", ["bom", "crlf", "bom+crlf"])
def test_byte_order_mark_and_crlf_read_like_a_plain_csv(tmp_path, photos, encoding):
    text = ROWS.replace("\n", "\r\n") if "crlf" in encoding else ROWS
    data = (b"\xef\xbb\xbf" if "bom" in encoding else b"") + text.encode()
    meta = tmp_path / "meta.csv"
    meta.write_bytes(data)
    got = samples(shard(tmp_path, meta, photos))
    assert {k: (s["json"]["id"], s["json"]["author"], s["json"]["lat"], s["json"]["lon"], s["json"]["city"])
            for k, s in got.items()} == EXPECTED
    assert got["b"]["jpg"] == (photos / "b.jpg").read_bytes()


def test_empty_ids_are_missing_id_ledger_rows(tmp_path, photos):
    meta = tmp_path / "meta.csv"
    meta.write_text("IMG_ID,AUTHOR,LAT,LON\na.jpg,ann,1,2\n,bob,3,4\n   ,cy,5,6\nb.jpg,dee,7,8\n")
    run = shard(tmp_path, meta, photos)
    rows = ledger_rows(run)
    assert [(r["id"], r["status"]) for r in rows if r["status"] != "no_metadata"] == [
        ("a.jpg", "ok"), ("", "missing_id"), ("", "missing_id"), ("b.jpg", "ok"),
    ]
    assert all(r["error_message"] == "row has an empty id" for r in rows if r["status"] == "missing_id")
    assert [r["id"] for r in rows if r["status"] == "no_metadata"] == ["c.jpg"]  # the photo no row names
    assert sorted(samples(run)) == ["a", "b"]


@pytest.mark.parametrize("row", ["b.jpg,bob,3", "b.jpg,bob,3,4,extra"])
def test_ragged_row_is_one_error_line_naming_the_row(tmp_path, photos, row):
    meta = tmp_path / "meta.csv"
    meta.write_text(f"IMG_ID,AUTHOR,LAT,LON\na.jpg,ann,1,2\n{row}\nc.jpg,cy,5,6\n")
    r = CliRunner().invoke(app, ["shard", "--out", str(tmp_path / "run"), "--format", "im2gps3k", "--images", str(photos),
                                 "--metadata", str(meta)], standalone_mode=False)
    assert isinstance(r.exception, GeobuildError), r.exception
    msg = str(r.exception)
    assert "\n" not in msg and f"cannot read metadata CSV {meta}" in msg and row in msg
    assert not (tmp_path / "run" / "shards").exists() or not list((tmp_path / "run" / "shards").glob("*.tar"))


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels: a few hundred KB that decode to
    ``width * height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_is_a_bad_image_row(tmp_path, photos):
    from PIL import Image

    w = h = 10_000  # 1e8 pixels: over Pillow's MAX_IMAGE_PIXELS (~8.9e7), under its hard limit (2x)
    assert Image.MAX_IMAGE_PIXELS < w * h < 2 * Image.MAX_IMAGE_PIXELS
    data = bomb_png(w, h)
    assert len(data) < 200_000
    (photos / "bomb.png").write_bytes(data)
    meta = tmp_path / "meta.csv"
    meta.write_text("IMG_ID,AUTHOR,LAT,LON\na.jpg,ann,1,2\nbomb.png,bob,3,4\nc.jpg,cy,5,6\n")
    run = shard(tmp_path, meta, photos)
    rows = {r["id"]: r for r in ledger_rows(run)}
    assert rows["bomb.png"]["status"] == "bad_image"
    assert "DecompressionBomb" in rows["bomb.png"]["error_message"]
    assert (rows["a.jpg"]["status"], rows["c.jpg"]["status"]) == ("ok", "ok")
    assert sorted(samples(run)) == ["a", "c"]
