"""Input metadata: column presets per format, sample keys, and the shard *plan*.

The plan is one Parquet table (``RUN/work/shard/plan.parquet``) with one row per input row, in
input order: ``row, id, key, bkey, lat, lon, author, status, message`` and the text/scene columns
under their own names. It is built once, in the main process, and read by units one row group at a
time (row group ``k`` = rows of unit ``k``), so workers never load the whole metadata.

``status`` holds reasons known from the metadata alone (``ok``, ``missing_id``, ``bad_latlon``,
``duplicate``); units add image problems.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ..geo.geocode import TEXT_FIELDS
from ..core.errors import GeobuildError
from ..geo.sphere import valid_latlon

SCENE_COLUMNS = ("S3_Label", "S16_Label", "S365_Label", "Prob_indoor", "Prob_natural", "Prob_urban")
INT_COLUMNS = {"S3_Label", "S16_Label", "S365_Label"}
FLOAT_COLUMNS = {"Prob_indoor", "Prob_natural", "Prob_urban"}
FORMATS = ("mp16pro", "im2gps3k", "yfcc", "exif", "csv")
IMAGE_EXT = re.compile(r"\.(jpe?g|png|gif|bmp|tiff?|webp|heic|heif|jfif)$", re.IGNORECASE)
UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def sanitize_key(name: str) -> str:
    """A dot- and slash-free sample key from a source id: drop an image extension, map the rest."""
    return UNSAFE.sub("_", IMAGE_EXT.sub("", name))


def member_keys(name: str) -> list[str]:
    """Candidate keys for an archive member or file path, most specific first.

    ``mp-16-images/45/77/3228511372.jpg`` gives ``mp-16-images_45_77_3228511372``,
    ``45_77_3228511372``, ``77_3228511372`` and ``3228511372``: a row whose id is the full path,
    the path without its leading folder(s), or the bare file name matches.
    """
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    return [sanitize_key("/".join(parts[i:])) for i in range(len(parts))]


@dataclass
class Columns:
    """Which CSV columns hold the id, coordinates, author and location/scene text."""

    id: str = "IMG_ID"
    lat: str = "LAT"
    lon: str = "LON"
    author: str | None = "AUTHOR"
    text: list[str] = field(default_factory=list)


def read_header(path: Path) -> list[str]:
    """The CSV header row; fatal errors name the file."""
    if not path.exists():
        raise GeobuildError(f"metadata CSV not found: {path}")
    if path.is_dir():
        raise GeobuildError(f"metadata path is a folder, expected a CSV file: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise GeobuildError(f"cannot read metadata CSV {path}: {exc}") from None
    if not header or not any(h.strip() for h in header):
        raise GeobuildError(f"metadata CSV {path} is empty or has no header row")
    return header


def is_numbered_header(header: list[str]) -> bool:
    """YFCC4K-style header: mostly numbers (``0,IMG_ID,2,3,...,LON,LAT,...``)."""
    digits = sum(h.strip().isdigit() for h in header)
    return len(header) > 13 and header[0].strip() == "0" and digits >= len(header) // 2


def resolve_columns(
    header: list[str],
    fmt: str,
    id_col: str | None = None,
    lat_col: str | None = None,
    lon_col: str | None = None,
    author_col: str | None = None,
    text_cols: list[str] | None = None,
) -> Columns:
    """Columns for ``fmt`` (presets, YFCC numbered header detected), overridden by explicit names."""
    cols = Columns()
    if fmt == "yfcc" or is_numbered_header(header):
        if len(header) < 14:
            raise GeobuildError(f"YFCC-style CSV needs at least 14 columns (LON, LAT at 12, 13); found {len(header)}")
        cols.id = "IMG_ID" if "IMG_ID" in header else header[1]
        cols.lon, cols.lat = header[12], header[13]
        cols.author = "3" if "3" in header else None
    elif fmt == "csv" and id_col is None:
        raise GeobuildError("--format csv needs --id-col (and --lat-col/--lon-col unless they are LAT/LON)")
    cols.id = id_col or cols.id
    cols.lat = lat_col or cols.lat
    cols.lon = lon_col or cols.lon
    if author_col is not None:
        cols.author = author_col or None
    elif cols.author and cols.author not in header:
        cols.author = None  # the preset author column is optional
    for what, name in (("--id-col", cols.id), ("--lat-col", cols.lat), ("--lon-col", cols.lon), ("--author-col", cols.author)):
        if name is not None and name not in header:
            raise GeobuildError(f"column '{name}' ({what}) not found in the metadata CSV; its columns are: {', '.join(header[:30])}")
    if text_cols:
        missing = [c for c in text_cols if c not in header]
        if missing:
            raise GeobuildError(f"text column(s) {', '.join(missing)} (--text-cols) not found in the metadata CSV; its columns are: {', '.join(header[:30])}")
        cols.text = list(dict.fromkeys(text_cols))
    else:
        used = {cols.id, cols.lat, cols.lon, cols.author}
        cols.text = [c for c in header if c in TEXT_FIELDS + SCENE_COLUMNS and c not in used]
    return cols


def _latlon_status(lat_s: pd.Series, lon_s: pd.Series) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    lat = pd.to_numeric(lat_s, errors="coerce").to_numpy(np.float64)
    lon = pd.to_numeric(lon_s, errors="coerce").to_numpy(np.float64)
    ok = valid_latlon(lat, lon)
    msgs: list[str | None] = [None] * len(lat)
    for i in np.flatnonzero(~ok):
        msgs[i] = latlon_problem(lat_s.iat[i], lon_s.iat[i], lat[i], lon[i])
    return lat, lon, msgs


def latlon_problem(lat_raw: Any, lon_raw: Any, lat: float, lon: float) -> str:
    """Why a coordinate pair is unusable, in words."""
    if lat_raw in (None, "") or lon_raw in (None, ""):
        return "LAT/LON missing"
    if not (np.isfinite(lat) and np.isfinite(lon)):
        return f"LAT/LON not a number: {lat_raw!r}, {lon_raw!r}"
    if lat == 0 and lon == 0:
        return "LAT/LON is the (0, 0) placeholder"
    return f"LAT/LON out of range: {lat}, {lon}"


def _dedupe(keys: pd.Series, ids: pd.Series, status: list[str], message: list[str | None],
            maybe: np.ndarray, first: dict[str, tuple[int, str]], offset: int = 0) -> None:
    """Mark every repeat of a key (same id, or ids that sanitise to the same key) as duplicate.

    ``maybe``: the rows that may repeat a key (the others are unique); ``first``: key -> (row, id)
    of its first row, carried from batch to batch; ``offset``: the row number of the batch's first row.
    """
    for i in np.flatnonzero(maybe):
        k = keys.iat[i]
        if k not in first:
            first[k] = (offset + int(i), ids.iat[i])
            continue
        j, id_j = first[k]
        if ids.iat[i] == id_j:
            message[i] = f"duplicate id {ids.iat[i]!r} (first at row {j})"
        else:
            message[i] = f"key {k!r} collides with id {id_j!r} (row {j})"
        status[i] = "duplicate"


def _key_hashes(keys: pd.Series) -> np.ndarray:
    return pd.util.hash_pandas_object(keys, index=False).to_numpy(np.uint64)


def _strings(table: pa.Table, name: str) -> pd.Series:
    return table.column(name).to_pandas().fillna("").astype(str)


def plan_from_table(table: pa.Table, cols: Columns | None, offset: int = 0,
                    repeated: np.ndarray | None = None, first: dict[str, tuple[int, str]] | None = None) -> pa.Table:
    """Build the plan from a table of string columns (``cols`` None: an EXIF file list in ``id``).

    A batch of a longer file (:func:`plan_batches`): ``offset`` is its first row's number,
    ``repeated`` the sorted hashes of keys that occur more than once in the whole file and ``first``
    the first row of each such key seen so far (updated).
    """
    import pyarrow.compute as pc

    n = table.num_rows
    ids = _strings(table, cols.id if cols else "id").str.strip()
    keys = ids.map(sanitize_key)
    if repeated is None:  # the whole file
        maybe, first = keys.duplicated(keep=False).to_numpy(copy=True), {}
    else:
        maybe = np.isin(_key_hashes(keys), repeated, assume_unique=False)
    maybe = maybe & (keys != "").to_numpy()
    bkeys = ids.map(lambda s: sanitize_key(s.replace("\\", "/").rsplit("/", 1)[-1]))
    status = ["ok"] * n
    message: list[str | None] = [None] * n
    if cols is not None:
        lat, lon, ll_msgs = _latlon_status(_strings(table, cols.lat).str.strip(), _strings(table, cols.lon).str.strip())
        for i, m in enumerate(ll_msgs):
            if m is not None:
                status[i], message[i] = "bad_latlon", m
        author = _strings(table, cols.author) if cols.author else pd.Series([""] * n)
    else:
        lat = np.full(n, np.nan)
        lon = np.full(n, np.nan)
        author = pd.Series([""] * n)
    _dedupe(keys, ids, status, message, maybe, first if first is not None else {}, offset)
    for i in np.flatnonzero((ids == "").to_numpy()):
        status[i], message[i] = "missing_id", "row has an empty id"
    data: dict[str, Any] = {
        "row": pa.array(np.arange(offset, offset + n, dtype=np.int64)),
        "id": pa.array(ids.tolist(), pa.string()),
        "key": pa.array(keys.tolist(), pa.string()),
        "bkey": pa.array(bkeys.tolist(), pa.string()),
        "lat": pa.array(lat, pa.float64()),
        "lon": pa.array(lon, pa.float64()),
        "author": pa.array([a if a else None for a in author.tolist()], pa.string()),
        "status": pa.array(status, pa.string()),
        "message": pa.array(message, pa.string()),
    }
    for c in cols.text if cols else []:
        col = pc.cast(table.column(c), pa.string())
        data[f"x:{c}"] = pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)
    return pa.table(data)


def _csv_options(cols: Columns, block_size: int = 1 << 24, use_threads: bool = True):
    from pyarrow import csv as pacsv

    usecols = list(dict.fromkeys([c for c in (cols.id, cols.lat, cols.lon, cols.author, *cols.text) if c]))
    return usecols, dict(
        read_options=pacsv.ReadOptions(encoding="utf8", block_size=block_size, use_threads=use_threads),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            include_columns=usecols,
            column_types={c: pa.string() for c in usecols},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )


def read_csv_table(path: Path, cols: Columns) -> pa.Table:
    """The needed columns of the CSV as Arrow strings (empty cells as '')."""
    from pyarrow import csv as pacsv

    _, options = _csv_options(cols)
    try:
        return pacsv.read_csv(path, **options)
    except (OSError, ValueError, pa.ArrowInvalid) as exc:
        raise GeobuildError(f"cannot read metadata CSV {path}: {str(exc).splitlines()[0]}") from None


def _record_end(buf: bytes, last: bool) -> int:
    """Offset just after the last (``last``) or first newline of ``buf`` that ends a CSV record (an
    even number of quote characters before it; doubled quotes keep the parity), or -1."""
    if last:
        i = buf.rfind(b"\n")
        if i < 0:
            return -1
        quotes = buf.count(b'"', 0, i)
        while i >= 0:
            if quotes % 2 == 0:
                return i + 1
            j = buf.rfind(b"\n", 0, i)
            quotes -= buf.count(b'"', j + 1 if j >= 0 else 0, i)
            i = j
        return -1
    i, quotes = buf.find(b"\n"), 0
    start = 0
    while i >= 0:
        quotes += buf.count(b'"', start, i)
        if quotes % 2 == 0:
            return i + 1
        start, i = i, buf.find(b"\n", i + 1)
    return -1


def _record_blocks(f, block_size: int):
    """The bytes of a CSV file in pieces of about ``block_size`` that each end at a record boundary."""
    carry = b""
    while True:
        block = f.read(block_size)
        if not block:
            if carry:
                yield carry
            return
        buf = carry + block
        cut = _record_end(buf, last=True)
        if cut < 0:
            carry = buf
            continue
        yield buf[:cut]
        carry = buf[cut:]


def csv_batches(path: Path, cols: Columns, block_size: int = 1 << 20):
    """The needed columns of the CSV as Arrow string tables of about ``block_size`` bytes of CSV each
    (one empty table for a CSV without rows)."""
    from pyarrow import csv as pacsv

    usecols, options = _csv_options(cols, max(block_size, 1 << 22), use_threads=False)
    try:
        # the file is cut at record boundaries here and each piece parsed on its own: Arrow's own
        # streaming reader reads ahead of the parser without bound (the whole file, from a path or
        # a Python file object alike), so only the piece being parsed is held
        with open(path, "rb") as f:
            header: bytes | None = None
            empty = True
            for piece in _record_blocks(f, block_size):
                if header is None:
                    cut = _record_end(piece, last=False)
                    header, piece = (piece, b"") if cut < 0 else (piece[:cut], piece[cut:])
                if not piece:
                    continue
                table = pacsv.read_csv(io.BytesIO(header + piece), **options)
                if table.num_rows:
                    empty = False
                    yield table.combine_chunks()
            if header is not None and empty:
                pacsv.read_csv(io.BytesIO(header), **options)  # a header without the needed columns fails here
        if empty:
            yield pa.table({c: pa.array([], pa.string()) for c in usecols})
    except (OSError, ValueError, pa.ArrowInvalid) as exc:
        raise GeobuildError(f"cannot read metadata CSV {path}: {str(exc).splitlines()[0]}") from None


def plan_batches(path: Path, cols: Columns, block_size: int = 1 << 20):
    """The plan of a metadata CSV, batch by batch, in two streamed passes: the first hashes every key
    (8 bytes per row are all that is kept), the second builds each batch's rows and checks exactly
    only the keys whose hash occurs more than once. Memory is one batch, not the file."""
    id_only = Columns(id=cols.id, lat="", lon="", author=None, text=[])
    hashes = []
    for table in csv_batches(path, id_only, block_size):
        keys = _strings(table, cols.id).str.strip().map(sanitize_key)
        hashes.append(_key_hashes(keys[keys != ""]))
    h = np.sort(np.concatenate(hashes)) if hashes else np.zeros(0, np.uint64)
    repeated = np.unique(h[1:][h[1:] == h[:-1]])
    first: dict[str, tuple[int, str]] = {}
    offset = 0
    for table in csv_batches(path, cols, block_size):
        yield plan_from_table(table, cols, offset, repeated, first)
        offset += table.num_rows


def text_value(column: str, raw: str | None) -> Any:
    """A text/scene cell as it goes into the sample JSON: ints and floats for scene columns."""
    if raw is None or raw == "":
        return None
    try:
        if column in INT_COLUMNS:
            return int(float(raw))
        if column in FLOAT_COLUMNS:
            v = float(raw)
            return v if np.isfinite(v) else None
    except ValueError:
        return raw
    return raw
