"""The shard stage on each kind of source, through the CLI, on tiny collections built here."""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from geobuild.cli import app
sys.path.insert(0, str(Path(__file__).resolve().parent))
from shard_helpers import gps_exif, jpeg, ledger, run_files, samples, split_bytes, write_csv, write_tar  # noqa: E402

MP16_HEADER = ["IMG_ID", "AUTHOR", "LAT", "LON", "S3_Label", "S16_Label", "S365_Label", "Prob_indoor",
               "Prob_natural", "Prob_urban", "neighbourhood", "city", "county", "state", "region", "country", "continent"]


def shard(*args: str):
    res = CliRunner().invoke(app, ["shard", *args])
    if res.exit_code != 0:
        raise AssertionError(f"exit {res.exit_code}: {res.output}\n{res.exception!r}")
    return res


def mp16_collection(tmp_path, n=12):
    """An MP16-style tar (leading folder, ids with '/') split into byte parts, and its CSV."""
    rows, members = [], []
    for i in range(n):
        img_id = f"{i % 3:02x}/{i % 5:02x}/{3228511370 + i}.jpg"
        rows.append([img_id, f"{i}@N00", 10 + i, 20 + i, 1, 5, 21, 0.5, 0.25, 0.25, "", "Paris" if i % 2 else "", "", "IDF", "", "France", "Europe"])
        members.append((f"mp-16-images/{img_id}", jpeg(64, 48, (i * 20, 100, 50))))
    members.insert(3, ("mp-16-images/ff/ff/999.jpg", jpeg()))  # orphan: no row
    members.insert(6, (members[1][0], members[1][1]))  # second copy of a member
    del members[9]  # row 7's image missing (index shifted by the two inserts)
    csv_path = write_csv(tmp_path / "MP16_Pro_places365.csv", MP16_HEADER, rows)
    tar = write_tar(tmp_path / "mp-16-images.tar", members)
    parts = split_bytes(tar, tmp_path / "parts", "mp-16-images", 3)
    return csv_path, tar, parts, rows


def test_mp16_parts_streamed_as_one_tar(tmp_path):
    csv_path, tar, parts, rows = mp16_collection(tmp_path)
    run = tmp_path / "run"
    shard("--out", str(run), "--format", "mp16pro", "--images", str(parts[0]), "--metadata", str(csv_path), "--samples-per-shard", "4")
    got = samples(run)
    led = ledger(run)
    assert len(got) == 11
    assert led[rows[7][0]]["status"] == "missing_image"
    assert led["mp-16-images/ff/ff/999.jpg"]["status"] == "no_metadata"
    assert led[rows[1][0]]["status"] == "ok"
    assert led[f"mp-16-images/{rows[1][0]}"]["status"] == "duplicate_image"
    assert sum(r["status"] == "ok" for r in led.values()) == len(got)
    assert len(led) == len(rows) + 2  # every row + the orphan + the duplicate member
    s = got["01_01_3228511371"]
    meta = s["json"]
    assert meta["id"] == "01/01/3228511371.jpg" and meta["lat"] == 11.0 and meta["lon"] == 21.0
    assert meta["city"] == "Paris" and meta["neighbourhood"] is None and meta["country"] == "France"
    assert meta["S365_Label"] == 21 and meta["Prob_indoor"] == 0.5 and meta["source"] == "mp16pro"
    assert (meta["width"], meta["height"]) == (64, 48)
    sizes = (run / "shards" / "sizes.json").read_text()
    assert '"00000.tar": 4' in sizes and '"00002.tar": 3' in sizes
    # the unsplit tar gives the same bytes
    run2 = tmp_path / "run2"
    shard("--out", str(run2), "--format", "mp16pro", "--images", str(tar), "--metadata", str(csv_path), "--samples-per-shard", "4")
    assert run_files(run) == run_files(run2)
    # the README's quoted glob, the bare stem and a bracket glob name the same parts
    for i, form in enumerate(["mp-16-images??", "mp-16-images*", "mp-16-images", "mp-16-images[0-9][0-9]"]):
        run3 = tmp_path / f"run-glob{i}"
        shard("--out", str(run3), "--format", "mp16pro", "--images", str(parts[0].parent / form), "--metadata", str(csv_path),
              "--samples-per-shard", "4")
        assert run_files(run3) == run_files(run), form
    from geobuild.sources.mp16pro import find_parts

    assert find_parts(parts[0].parent / "mp-16-images??") == parts
    from geobuild.core.errors import GeobuildError

    with pytest.raises(GeobuildError, match="images not found"):
        find_parts(parts[0].parent / "nothing-here??")


def test_mp16_min_bytes_and_basename_match(tmp_path):
    img = jpeg(64, 48)
    rows = [["45/77/1.jpg", "a", 1, 2], ["45/77/2.jpg", "b", 3, 4]]
    csv_path = write_csv(tmp_path / "m.csv", ["IMG_ID", "AUTHOR", "LAT", "LON"], rows)
    tar = write_tar(tmp_path / "flat.tar", [("images/1.jpg", img), ("images/2.jpg", img[:300] + b"\xff\xd9")])
    run = tmp_path / "run"
    shard("--out", str(run), "--format", "mp16pro", "--images", str(tar), "--metadata", str(csv_path), "--min-bytes", "400")
    led = ledger(run)
    assert led["45/77/1.jpg"]["status"] == "ok"
    assert led["45/77/2.jpg"]["status"] == "too_few_bytes"


@pytest.mark.parametrize("container", ["zip", "dir"])
def test_im2gps3k_zip_and_folder(tmp_path, container):
    ids = [f"{1000 + i}_ab{i}_12_7884@N00.jpg" for i in range(7)]
    rows = [[x, "7884@N00", 40 + i, -70 - i, 1, 2, 3, 0.1, 0.2, 0.7] for i, x in enumerate(ids)]
    csv_path = write_csv(tmp_path / "im2gps3k_places365.csv", MP16_HEADER[:10], rows)
    files = {f"im2gps3ktest/{x}": jpeg(50 + i, 40) for i, x in enumerate(ids)}
    files["im2gps3ktest/orphan.jpg"] = jpeg()
    if container == "zip":
        images = tmp_path / "im2gps3ktest.zip"
        with zipfile.ZipFile(images, "w") as z:
            for name, data in files.items():
                z.writestr(name, data)
    else:
        images = tmp_path / "imgs"
        for name, data in files.items():
            (images / name).parent.mkdir(parents=True, exist_ok=True)
            (images / name).write_bytes(data)
    run = tmp_path / "run"
    shard("--out", str(run), "--format", "im2gps3k", "--images", str(images), "--metadata", str(csv_path), "--samples-per-shard", "3")
    got = samples(run)
    assert sorted(got) == sorted(x[:-4].replace("@", "_") for x in ids)
    first = got["1000_ab0_12_7884_N00"]
    assert first["jpg"] == files[f"im2gps3ktest/{ids[0]}"]  # a valid RGB baseline JPEG is kept byte for byte
    assert first["json"]["S3_Label"] == 1 and first["json"]["author"] == "7884@N00"
    led = ledger(run)
    assert led["im2gps3ktest/orphan.jpg"]["status"] == "no_metadata"
    assert len(led) == 8
    assert sorted(p.name for p in (run / "ledger" / "shard").iterdir()) == ["00000.parquet", "00001.parquet", "00002.parquet"]


def test_yfcc_numbered_header(tmp_path):
    header = ["0", "IMG_ID"] + [str(i) for i in range(2, 12)] + ["LON", "LAT"] + [str(i) for i in range(14, 25)]
    rows = []
    for i in range(3):
        r = [str(i), f"1020127552{i}.jpg", "hash", f"5528977{i}@N00"] + ["x"] * 8 + [f"{-79.3 + i}", f"{43.6 + i}"] + ["y"] * 11
        rows.append(r)
    csv_path = write_csv(tmp_path / "yfcc4k_places365.csv", header, rows)
    images = tmp_path / "yfcc"
    images.mkdir()
    for r in rows:
        (images / r[1]).write_bytes(jpeg())
    run = tmp_path / "run"
    shard("--out", str(run), "--format", "yfcc", "--images", str(images), "--metadata", str(csv_path))
    s = samples(run)["10201275521"]["json"]
    assert (s["lat"], s["lon"]) == (pytest.approx(44.6), pytest.approx(-78.3))
    assert s["author"] == "55289771@N00" and s["source"] == "yfcc"


def test_exif_only_folder(tmp_path):
    images = tmp_path / "photos"
    (images / "trip").mkdir(parents=True)
    (images / "trip" / "paris.jpg").write_bytes(jpeg(exif=gps_exif(48.8584, 2.2945)))
    (images / "rio.jpg").write_bytes(jpeg(exif=gps_exif(-22.9519, -43.2105)))
    (images / "nogps.jpg").write_bytes(jpeg())
    (images / "null_island.jpg").write_bytes(jpeg(exif=gps_exif(0.0, 0.0)))
    run = tmp_path / "run"
    shard("--out", str(run), "--format", "exif", "--images", str(images))
    got = samples(run)
    assert sorted(got) == ["rio", "trip_paris"]
    assert got["trip_paris"]["json"]["lat"] == pytest.approx(48.8584, abs=1e-5)
    assert got["rio"]["json"]["lon"] == pytest.approx(-43.2105, abs=1e-5)
    assert got["rio"]["json"]["lat"] < 0
    led = ledger(run)
    assert led["nogps.jpg"]["status"] == "no_gps"
    assert led["null_island.jpg"]["status"] == "bad_latlon"


def test_any_csv_with_named_columns(tmp_path):
    csv_path = write_csv(tmp_path / "mine.csv", ["photo", "y", "x", "who", "town", "notes"],
                         [["a/b.png", 51.5, -0.12, "me", "London", "n"], ["c.jpg", 35.7, 139.7, "", "Tokyo", "m"]])
    images = tmp_path / "imgs"
    (images / "a").mkdir(parents=True)
    (images / "a" / "b.png").write_bytes(jpeg(fmt="PNG"))
    (images / "c.jpg").write_bytes(jpeg())
    run = tmp_path / "run"
    shard("--out", str(run), "--format", "csv", "--images", str(images), "--metadata", str(csv_path),
          "--id-col", "photo", "--lat-col", "y", "--lon-col", "x", "--author-col", "who", "--text-cols", "town")
    got = samples(run)
    assert sorted(got) == ["a_b", "c"]
    assert got["a_b"]["json"] == {"key": "a_b", "id": "a/b.png", "lat": 51.5, "lon": -0.12, "author": "me",
                                  "source": "csv", "width": 64, "height": 48, "town": "London"}
    assert got["c"]["json"]["author"] is None
    from geobuild.core.schemas import load

    assert {f["name"] for f in load("shard_sample")["fields"]} <= set(got["c"]["json"])
    assert Image.open(io.BytesIO(got["a_b"]["jpg"])).format == "JPEG"


def test_key_index_finds_the_first_row_of_each_key():
    import pyarrow as pa

    from geobuild.sources.mp16pro import KeyIndex

    keys = pa.chunked_array([["a", "", "b"], ["a", None, "c"], ["b"]], pa.string())
    idx = KeyIndex(keys, chunk=2)
    assert [idx.get(k) for k in ("a", "b", "c", "d", "")] == [0, 2, 5, -1, -1]
    assert idx._r.dtype == np.int32 and idx._p.dtype == np.int32
    listed = KeyIndex(["x", "y", "x"], rows=np.array([10, 11, 12]))
    assert (listed.get("x"), listed.get("y")) == (10, 11)
