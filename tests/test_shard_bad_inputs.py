"""Every kind of bad input becomes a ledger row with the right reason; fatal errors are one line."""

from __future__ import annotations

import sys
from pathlib import Path

import io

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shard_helpers import cli, jpeg, ledger, samples, write_csv  # noqa: E402

HEADER = ["IMG_ID", "AUTHOR", "LAT", "LON"]


def _collection(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    palette = Image.new("P", (30, 20))
    palette.putpalette([0, 0, 0, 255, 0, 0] * 128)
    buf = io.BytesIO()
    palette.save(buf, "PNG", transparency=0)
    i16 = Image.new("I;16", (30, 20), 40000)
    buf16 = io.BytesIO()
    i16.save(buf16, "PNG")
    gif = io.BytesIO()
    Image.new("L", (1, 1)).save(gif, "GIF")
    files = {
        "good.jpg": jpeg(),
        "badlat.jpg": jpeg(), "nolat.jpg": jpeg(), "range.jpg": jpeg(), "zero.jpg": jpeg(),
        "dup.jpg": jpeg(),
        "orphan.jpg": jpeg(),
        "empty.jpg": b"",
        "trunc.jpg": jpeg(200, 150)[:600],
        "text.jpg": b"this is not an image at all\n" * 10,
        "cmyk.jpg": jpeg(mode="CMYK"),
        "grey.jpg": jpeg(mode="L"),
        "palette.png": buf.getvalue(),
        "sixteen.png": buf16.getvalue(),
        "rgb.png": jpeg(fmt="PNG"),
        "rotated.jpg": jpeg(40, 20, exif=exif),
        "progressive.jpg": jpeg(progressive=True),
        "tiny.jpg": jpeg(8, 8),
        "onepixel.gif": gif.getvalue(),
    }
    for name, data in files.items():
        (imgs / name).write_bytes(data)
    rows = [
        ["good.jpg", "a", 1, 2], ["badlat.jpg", "a", "north", 2], ["nolat.jpg", "a", "", 2],
        ["range.jpg", "a", 95, 2], ["zero.jpg", "a", 0, 0], ["dup.jpg", "a", 3, 4], ["dup.jpg", "b", 5, 6],
        ["missing.jpg", "a", 1, 2], ["empty.jpg", "a", 1, 2], ["trunc.jpg", "a", 1, 2], ["text.jpg", "a", 1, 2],
        ["cmyk.jpg", "a", 1, 2], ["grey.jpg", "a", 1, 2], ["palette.png", "a", 1, 2], ["sixteen.png", "a", 1, 2],
        ["rgb.png", "a", 1, 2], ["rotated.jpg", "a", 1, 2], ["progressive.jpg", "a", 1, 2], ["tiny.jpg", "a", 1, 2],
        ["onepixel.gif", "a", 1, 2], ["dup.JPG", "c", 1, 2],
    ]
    csv_path = write_csv(tmp_path / "meta.csv", HEADER, rows)
    return imgs, csv_path, files, rows


def test_bad_inputs_go_to_the_ledger(tmp_path):
    imgs, csv_path, files, rows = _collection(tmp_path)
    run = tmp_path / "run"
    cli("shard", "--out", str(run), "--format", "im2gps3k", "--images", str(imgs), "--metadata", str(csv_path),
        "--samples-per-shard", "5", "--min-size", "16", "--min-bytes", "50", "--workers", "2")
    led = ledger(run)
    status = {k: v["status"] for k, v in led.items()}
    expected = {
        "good.jpg": "ok", "badlat.jpg": "bad_latlon", "nolat.jpg": "bad_latlon", "range.jpg": "bad_latlon",
        "zero.jpg": "bad_latlon", "missing.jpg": "missing_image", "orphan.jpg": "no_metadata",
        "empty.jpg": "empty_file", "trunc.jpg": "bad_image", "text.jpg": "bad_image", "cmyk.jpg": "ok",
        "grey.jpg": "ok", "palette.png": "ok", "sixteen.png": "ok", "rgb.png": "ok", "rotated.jpg": "ok",
        "progressive.jpg": "ok", "tiny.jpg": "too_small", "onepixel.gif": "too_few_bytes", "dup.JPG": "duplicate",
    }
    for k, v in expected.items():
        assert status[k] == v, (k, led[k])
    # dup.jpg appears twice in the CSV: the first row is used, the second is a duplicate
    dup_rows = [r for r in _ledger_rows(run) if r["id"] == "dup.jpg"]
    assert [r["status"] for r in dup_rows] == ["ok", "duplicate"]
    assert "not a number" in led["badlat.jpg"]["error_message"] and "placeholder" in led["zero.jpg"]["error_message"]
    assert "out of range" in led["range.jpg"]["error_message"] and "missing" in led["nolat.jpg"]["error_message"]
    got = samples(run)
    n_ok = sum(r["status"] == "ok" for r in _ledger_rows(run))
    assert len(got) == n_ok
    assert len(_ledger_rows(run)) == len(rows) + 1  # every row + the orphan image: nothing lost
    for key, s in got.items():
        img = Image.open(io.BytesIO(s["jpg"]))
        assert img.format == "JPEG" and img.mode == "RGB", key
        assert not img.info.get("progressive"), key
    rot = got["rotated"]
    assert Image.open(io.BytesIO(rot["jpg"])).size == (20, 40)
    assert (rot["json"]["width"], rot["json"]["height"]) == (20, 40)
    assert got["good"]["jpg"] == files["good.jpg"]
    r, g, b = Image.open(io.BytesIO(got["sixteen"]["jpg"])).getpixel((5, 5))
    assert 140 < r < 175 and r == g == b  # 40000/65535 of white, not clipped to 255
    assert Image.open(io.BytesIO(got["palette"]["jpg"])).getpixel((5, 5)) > (245, 245, 245)  # transparent -> white


def _ledger_rows(run):
    import pyarrow.parquet as pq

    return [r for p in sorted((run / "ledger" / "shard").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_resize_and_quality(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "big.jpg").write_bytes(jpeg(400, 300))
    (imgs / "small.jpg").write_bytes(jpeg(40, 30))
    csv_path = write_csv(tmp_path / "m.csv", HEADER, [["big.jpg", "a", 1, 2], ["small.jpg", "a", 1, 2]])
    run = tmp_path / "run"
    cli("shard", "--out", str(run), "--format", "csv", "--id-col", "IMG_ID", "--images", str(imgs),
        "--metadata", str(csv_path), "--max-side", "100", "--jpeg-quality", "80")
    got = samples(run)
    assert Image.open(io.BytesIO(got["big"]["jpg"])).size == (100, 75)
    assert (got["big"]["json"]["width"], got["big"]["json"]["height"]) == (400, 300)
    assert got["small"]["jpg"] == (imgs / "small.jpg").read_bytes()
    run2 = tmp_path / "run2"
    cli("shard", "--out", str(run2), "--format", "csv", "--id-col", "IMG_ID", "--images", str(imgs),
        "--metadata", str(csv_path), "--min-side", "20")
    assert Image.open(io.BytesIO(samples(run2)["small"]["jpg"])).size == (27, 20)


def _fatal(tmp_path, *args):
    import uuid

    proc = cli("shard", "--out", str(tmp_path / f"run-{uuid.uuid4().hex[:6]}"), *args, check=False)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_fatal_errors_are_one_line(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a.jpg").write_bytes(jpeg())
    good = write_csv(tmp_path / "m.csv", HEADER, [["a.jpg", "x", 1, 2]])
    assert "not found" in _fatal(tmp_path, "--format", "im2gps3k", "--images", str(tmp_path / "nope.zip"), "--metadata", str(good))
    assert "not found" in _fatal(tmp_path, "--format", "im2gps3k", "--images", str(imgs), "--metadata", str(tmp_path / "nope.csv"))
    msg = _fatal(tmp_path, "--format", "csv", "--images", str(imgs), "--metadata", str(good), "--id-col", "IMG_ID", "--lat-col", "latitude")
    assert "latitude" in msg and "--lat-col" in msg
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"\xff\xfe\x00\x81garbage\x00\x9c\n\x00\x00")
    assert "cannot read" in _fatal(tmp_path, "--format", "im2gps3k", "--images", str(imgs), "--metadata", str(bad))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert "empty" in _fatal(tmp_path, "--format", "im2gps3k", "--images", str(imgs), "--metadata", str(empty))
    assert "--metadata" in _fatal(tmp_path, "--format", "mp16pro", "--images", str(imgs))


def _damage_member(zip_path, name):
    """Flip bytes in the middle of ``name``'s deflated data inside ``zip_path``."""
    import zipfile

    with zipfile.ZipFile(zip_path) as zf:
        info = zf.getinfo(name)
        assert info.compress_type == zipfile.ZIP_DEFLATED
    raw = bytearray(zip_path.read_bytes())
    name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    mid = start + info.compress_size // 2
    for i in range(mid, mid + 16):
        raw[i] ^= 0xFF
    zip_path.write_bytes(bytes(raw))


def test_damaged_zip_member_is_a_ledger_row(tmp_path):
    import zipfile

    names = [f"p{i}.jpg" for i in range(6)]
    zip_path = tmp_path / "imgs.zip"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i, n in enumerate(names):
            zf.writestr(n, jpeg(64 + 8 * i, 48))
    _damage_member(zip_path, "p3.jpg")
    csv_path = write_csv(tmp_path / "m.csv", HEADER, [[n, "a", 1 + i, 2] for i, n in enumerate(names)])
    run = tmp_path / "run"
    cli("shard", "--out", str(run), "--format", "im2gps3k", "--images", str(zip_path), "--metadata", str(csv_path),
        "--samples-per-shard", "4")
    rows = _ledger_rows(run)
    by_id = {r["id"]: r for r in rows}
    assert by_id["p3.jpg"]["status"] == "read_error", by_id["p3.jpg"]
    assert "p3.jpg" in by_id["p3.jpg"]["error_message"]
    assert all(by_id[n]["status"] == "ok" for n in names if n != "p3.jpg")
    got = samples(run)
    assert sorted(got) == sorted(n[:-4] for n in names if n != "p3.jpg")  # the unit lost only p3
    assert len(rows) == len(names) and len(got) + 1 == len(rows)  # counts add up


def test_exif_folder_broken_files_have_image_reasons(tmp_path):
    from shard_helpers import gps_exif

    imgs = tmp_path / "photos"
    imgs.mkdir()
    (imgs / "good.jpg").write_bytes(jpeg(exif=gps_exif(48.85, 2.29)))
    (imgs / "nogps.jpg").write_bytes(jpeg())
    (imgs / "empty.jpg").write_bytes(b"")
    (imgs / "trunc.jpg").write_bytes(jpeg(200, 150, exif=gps_exif(1.0, 2.0))[:600])
    (imgs / "text.jpg").write_bytes(b"this is not an image at all\n" * 10)
    run = tmp_path / "run"
    cli("shard", "--out", str(run), "--format", "exif", "--images", str(imgs))
    status = {k: v["status"] for k, v in ledger(run).items()}
    assert status == {"good.jpg": "ok", "nogps.jpg": "no_gps", "empty.jpg": "empty_file",
                      "trunc.jpg": "bad_image", "text.jpg": "bad_image"}
    assert sorted(samples(run)) == ["good"]


def test_out_path_is_an_existing_file(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a.jpg").write_bytes(jpeg())
    good = write_csv(tmp_path / "m.csv", HEADER, [["a.jpg", "x", 1, 2]])
    out = tmp_path / "taken"
    out.write_text("not a run folder\n")
    proc = cli("shard", "--out", str(out), "--format", "im2gps3k", "--images", str(imgs), "--metadata", str(good),
               check=False)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "exists and is not a run folder" in lines[0]


def test_cli_turns_a_stray_oserror_into_one_line(monkeypatch, capsys):
    from geobuild import cli as cli_mod

    def boom(*a, **k):
        raise FileExistsError(17, "File exists", "/some/where")

    monkeypatch.setattr(cli_mod, "app", boom)
    with pytest.raises(SystemExit) as exc:
        cli_mod.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: File exists: /some/where"]
