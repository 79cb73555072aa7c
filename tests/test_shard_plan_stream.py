"""The shard plan is built from the metadata CSV in streamed batches: the same rows as a plan of the
whole file, duplicates found across batches, and memory that does not grow with the file."""

from __future__ import annotations

import pyarrow as pa

from geobuild.sources.metadata import plan_batches, plan_from_table, read_csv_table, read_header, resolve_columns


def _csv(path, rows: int):
    lines = ["IMG_ID,AUTHOR,LAT,LON,city"]
    for i in range(rows):
        name = f"{i % 97:02x}/{i % 13:02x}/{i}.jpg"
        if i % 41 == 40:
            name = f"{(i - 35) % 97:02x}/{(i - 35) % 13:02x}/{i - 35}.jpg"  # an earlier row's id, in another batch
        if i % 59 == 58:
            name = f"{(i - 3) % 97:02x}_{(i - 3) % 13:02x}/{i - 3}.jpg"  # another id with an earlier row's key
        lat = "abc" if i % 31 == 0 else f"{(i % 170) - 85}.5"
        lines.append(f"{'' if i % 67 == 66 else name},a{i % 7},{lat},{i % 300 - 150},c{i}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows(table: pa.Table) -> list[dict]:
    return [{k: ("nan" if v != v else v) for k, v in r.items()} for r in table.to_pylist()]  # nan != nan


def test_streamed_plan_equals_the_plan_of_the_whole_file(tmp_path):
    meta = _csv(tmp_path / "m.csv", 900)
    cols = resolve_columns(read_header(meta), "im2gps3k", None, None, None, None, ["city"])
    whole = plan_from_table(read_csv_table(meta, cols), cols)
    batches = list(plan_batches(meta, cols, block_size=2048))  # ~60 rows per batch
    assert len(batches) > 10
    streamed = pa.concat_tables(batches)
    assert _rows(streamed) == _rows(whole)
    status = streamed.column("status").to_pylist()
    msgs = streamed.column("message").to_pylist()
    assert status.count("duplicate") >= 30 and status.count("missing_id") >= 10 and status.count("bad_latlon") >= 20
    i = status.index("duplicate")
    assert msgs[i] == f"duplicate id {streamed.column('id')[i].as_py()!r} (first at row {i - 35})"
    assert any(m and "collides with id" in m for m in msgs)


def test_a_csv_without_rows_gives_an_empty_plan(tmp_path):
    meta = tmp_path / "m.csv"
    meta.write_text("IMG_ID,AUTHOR,LAT,LON\n")
    cols = resolve_columns(read_header(meta), "im2gps3k", None, None, None, None, None)
    (plan,) = list(plan_batches(meta, cols))
    assert plan.num_rows == 0 and plan.schema == plan_from_table(read_csv_table(meta, cols), cols).schema


def test_batches_cut_only_between_records(tmp_path):
    """Quoted cells holding newlines, commas and doubled quotes, CRLF line ends and no final newline:
    every block size gives the rows of the whole file, each batch parsed on its own."""
    from geobuild.sources.metadata import csv_batches

    rows = ['"IMG_ID",AUTHOR,LAT,LON,city']
    for i in range(40):
        city = f'"line one\nline ""{i}"", two\r\nthree"' if i % 3 == 0 else ('""' if i % 5 == 0 else f"c{i}")
        rows.append(f"{i:02x}/aa/{i}.jpg,a{i % 4},{i - 20}.25,{i},{city}")
    meta = tmp_path / "q.csv"
    meta.write_bytes("\r\n".join(rows).encode())  # no newline after the last record
    cols = resolve_columns(read_header(meta), "im2gps3k", None, None, None, None, ["city"])
    whole = read_csv_table(meta, cols)
    assert whole.num_rows == 40 and whole.column("city")[0].as_py() == 'line one\nline "0", two\r\nthree'
    for block in (1, 7, 31, 64, 257, 10_000):
        parts = list(csv_batches(meta, cols, block))
        assert pa.concat_tables(parts).equals(whole), block
        assert block >= 10_000 or len(parts) > 1


def test_a_header_only_csv_gives_one_empty_batch(tmp_path):
    from geobuild.sources.metadata import csv_batches

    meta = tmp_path / "h.csv"
    meta.write_text("IMG_ID,AUTHOR,LAT,LON,city\n")
    cols = resolve_columns(read_header(meta), "im2gps3k", None, None, None, None, ["city"])
    (only,) = list(csv_batches(meta, cols))
    assert only.num_rows == 0 and set(only.column_names) == {"IMG_ID", "AUTHOR", "LAT", "LON", "city"}
