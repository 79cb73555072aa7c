"""The rows to publish: candidates joined with their distances, per run unit.

Config ``candidates`` keeps the full ``candidates`` schema and adds, from ``distances``:
``n_candidates``, ``query_km`` (query -> candidate i) and ``matrix_km`` (the G x G candidate
matrix as a list of G rows), plus ``distance_method``. Rows whose distances are missing or do not
match their candidate lists become ledger rows; the run goes on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...core import schemas
from ...core.ledger import reject
from ...core.runfolder import RunFolder
from ...artifacts.candidates import read_candidates
from ...artifacts.distances import read_distances

DISTANCE_FIELDS = [
    pa.field("n_candidates", pa.int32(), nullable=False),
    pa.field("query_km", pa.list_(pa.float32()), nullable=False),
    pa.field("matrix_km", pa.list_(pa.list_(pa.float32())), nullable=False),
    pa.field("distance_method", pa.string(), nullable=False),
]


def candidates_schema() -> pa.Schema:
    """Schema of the published ``candidates`` config (no geobuild metadata: plain Parquet)."""
    base = schemas.arrow_schema("candidates")
    return pa.schema(list(base) + DISTANCE_FIELDS)


def _nested_matrix(flat: pa.Array, sizes: np.ndarray) -> pa.Array:
    """list<float32> of G*G values per row -> list<list<float32>> of G rows of G."""
    values = pa.concat_arrays([c.flatten() for c in flat.chunks]) if isinstance(flat, pa.ChunkedArray) else flat.flatten()
    inner_lengths = np.repeat(sizes, sizes).astype(np.int64)
    inner_offsets = np.concatenate([[0], np.cumsum(inner_lengths)]).astype(np.int32)
    outer_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    inner = pa.ListArray.from_arrays(pa.array(inner_offsets), values)
    return pa.ListArray.from_arrays(pa.array(outer_offsets), inner)


def joined_unit(run: RunFolder, unit: str) -> tuple[pa.Table, list[dict[str, Any]]]:
    """The unit's candidates joined with its distances, and ledger rows for rows left out."""
    cand = read_candidates(run, unit)
    dist = read_distances(run, unit)
    ckeys = cand.column("key").to_pylist()
    dkeys = dist.column("key").to_pylist()
    if ckeys == dkeys:
        take = np.arange(len(ckeys))
    else:
        where = {k: i for i, k in enumerate(dkeys)}
        take = np.array([where.get(k, -1) for k in ckeys], dtype=np.int64)
    ids = cand.column("id").to_pylist()
    n_cand = np.array([len(x) for x in cand.column("cand_lat").to_pylist()], dtype=np.int64)
    g = dist.column("n_candidates").to_numpy().astype(np.int64)
    qlen = np.asarray(pc.list_value_length(dist.column("query_km")).to_numpy(zero_copy_only=False), dtype=np.int64)
    mlen = np.asarray(pc.list_value_length(dist.column("matrix_km")).to_numpy(zero_copy_only=False), dtype=np.int64)
    keep, rejects = [], []
    for i, j in enumerate(take):
        if j < 0:
            rejects.append(reject(ckeys[i], ids[i], "no_distances", f"no row for this query in distances/{unit}.parquet"))
        elif not (g[j] == n_cand[i] == qlen[j] and mlen[j] == g[j] * g[j]):
            rejects.append(
                reject(ckeys[i], ids[i], "distance_mismatch",
                       f"{n_cand[i]} candidates but n_candidates={g[j]}, {qlen[j]} query distances, {mlen[j]} matrix entries")
            )
        else:
            keep.append(i)
    keep_idx = pa.array(np.asarray(keep, dtype=np.int64))
    d = dist.take(pa.array(take[keep] if keep else np.zeros(0, dtype=np.int64)))
    out = cand.take(keep_idx)
    sizes = d.column("n_candidates").to_numpy().astype(np.int64)
    matrix = _nested_matrix(d.column("matrix_km").combine_chunks(), sizes) if len(d) else pa.array([], pa.list_(pa.list_(pa.float32())))
    table = out.select(schemas.arrow_schema("candidates").names).replace_schema_metadata(None)
    extra = {"n_candidates": d.column("n_candidates"), "query_km": d.column("query_km"), "matrix_km": matrix, "distance_method": d.column("method")}
    for f in DISTANCE_FIELDS:
        table = table.append_column(f, extra[f.name])
    return table.cast(candidates_schema()), rejects


