"""The publish stage's file writers: Parquet files capped by rows and by bytes, and the key set of
the photos to copy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from geobuild.stages.publish.images import KeySet
from geobuild.stages.publish.stage import ParquetSplitWriter


def _table(n: int, start: int = 0) -> pa.Table:
    rng = np.random.default_rng(start)
    return pa.table({"i": np.arange(start, start + n), "km": [rng.random(400).astype(np.float32) for _ in range(n)]})


def test_files_close_at_the_byte_cap_and_keep_every_row_in_order(tmp_path):
    cap = 200_000  # bytes; each 6,000-row write (random float32 lists) is ~9.6 MB
    w = ParquetSplitWriter(tmp_path, "train", rows_per_file=10**9, max_file_bytes=cap)
    for start in range(0, 24_000, 6_000):
        w.write(_table(6_000, start))
    out = w.close()
    files = sorted(tmp_path.glob("train-*.parquet"))
    assert out == {"rows": 24_000, "bytes": out["bytes"], "files": len(files)} and len(files) > 3
    assert [f.name for f in files] == [f"train-{i:05d}-of-{len(files):05d}.parquet" for i in range(len(files))]
    sizes = [f.stat().st_size for f in files]
    # every file but the last reached the cap; none holds more than one 10,000-row group past it
    assert all(s >= cap for s in sizes[:-1])
    assert all(pq.ParquetFile(f).metadata.num_row_groups == 1 for f in files[:-1])
    got = pa.concat_tables([pq.read_table(f) for f in files])
    assert got.column("i").to_pylist() == list(range(24_000))


def test_row_cap_still_applies_under_a_large_byte_cap(tmp_path):
    w = ParquetSplitWriter(tmp_path, "validation", rows_per_file=7, max_file_bytes=2**30)
    w.write(_table(10)), w.write(_table(5, 10))
    assert w.close()["files"] == 3
    counts = [pq.ParquetFile(f).metadata.num_rows for f in sorted(tmp_path.glob("validation-*.parquet"))]
    assert counts == [7, 7, 1]


def test_key_set_is_exact():
    ks = KeySet()
    ks.add(["00_2b_1000888286", "", "a", "ü_ключ"])
    ks.add(["a", "00_2b_100088828", "zz"])
    ks.freeze()
    assert len(ks) == 5
    assert [k.decode() for k in ks.keys] == sorted(["00_2b_1000888286", "a", "ü_ключ", "00_2b_100088828", "zz"])
    for k in ("00_2b_1000888286", "00_2b_100088828", "a", "ü_ключ", "zz"):
        assert ks.keys[ks.index(k)].decode() == k
    for k in ("00_2b_10008882860", "00_2b_10008882", "b", "", "ü"):
        assert ks.index(k) == -1
    assert KeySet().freeze().index("a") == -1


def test_key_set_merges_as_it_grows_and_stays_exact():
    ks = KeySet()
    for start in range(0, 150_000, 10_000):  # overlapping chunks: every key added twice
        ks.add(f"k{i:07d}" for i in range(start, start + 20_000))
        assert len(ks._parts) <= 7  # merged into the sorted array once they outnumber it
    ks.freeze()
    assert len(ks) == 160_000 and (ks.keys[:-1] < ks.keys[1:]).all()
    assert ks.index("k0000000") == 0 and ks.index("k0159999") == 159_999 and ks.index("k0160000") == -1
