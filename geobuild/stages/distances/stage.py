"""The ``distances`` stage: query->candidate and candidate x candidate distances per mined shard.

One unit per finished ``mine`` unit: reads ``candidates/<unit>.parquet`` (schema ``candidates``;
only key, id, lat, lon, cand_lat, cand_lon are used) in row batches and writes
``distances/<unit>.parquet`` (schema ``distances``): per query ``query_km`` (G) and ``matrix_km``
(G x G, row-major), float32 km, same rows and candidate order as the candidates file. Rows whose
query or candidate coordinates are invalid go to the ledger, so output rows + ledger rows = input
rows. Memory is bounded by ``batch_rows`` rows and ``max_cells`` matrix cells at a time (plus one
Parquet row group being decoded: mine writes candidates in row groups of ``CANDIDATES_ROW_GROUP`` rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ...core.errors import GeobuildError
from ...geo.sphere import valid_latlon
from ...geo.geodesic import METHODS, distance_km, pairwise_km
from ...core.ledger import reject
from ...core.log import get_logger
from ...core.runfolder import RunFolder, atomic_path, remove_leftovers
from ...core.stage import Accounting, Stage, UnitResult
from ...artifacts.candidates import candidates_path, open_candidates, redo_hint

log = get_logger("distances")

READ_COLUMNS = ["key", "id", "lat", "lon", "cand_lat", "cand_lon"]
# km values are high-entropy floats: dictionary pages, statistics and compression on them cost time
# and save almost nothing (1.8x faster writes at 20K rows x 21 candidates, 3 % larger files)
WRITER_OPTIONS: dict[str, Any] = {
    "use_dictionary": ["key", "id", "method"],
    "write_statistics": ["key", "id", "n_candidates"],
    "compression": {"key": "snappy", "id": "snappy", "method": "snappy", "n_candidates": "snappy",
                    "query_km": "none", "matrix_km": "none"},
}


@dataclass
class DistancesConfig:
    """Options of ``geobuild distances`` (the ``distances`` section of config.yaml)."""

    method: str = "haversine"  # haversine | geodesic (WGS-84, pyproj)
    batch_rows: int = 4096  # candidate rows read and written at a time (not recorded: same output)
    max_cells: int = 4_000_000  # matrix cells computed at once

    def recorded(self) -> dict[str, Any]:
        return {"method": self.method}


@dataclass
class DistancesStage(Stage):
    """Distances for every finished ``mine`` unit."""

    cfg: DistancesConfig = field(default_factory=DistancesConfig)
    name: ClassVar[str] = "distances"
    accounting: ClassVar[Accounting] = Accounting("input", ("rows",), "rejected", upstream=("mine", "mined"))

    def __post_init__(self) -> None:
        if self.cfg.method not in METHODS:
            raise GeobuildError(f"unknown --method '{self.cfg.method}' (choose {', '.join(METHODS)})")

    def units(self, run: RunFolder) -> list[str]:
        return run.done_units("mine")

    def depends_on(self, run: RunFolder, unit: str) -> list[tuple[str, str]]:
        return [("mine", unit)]

    def process(self, run: RunFolder, unit: str) -> UnitResult:
        return compute_unit(run, unit, self.cfg)


def compute_unit(run: RunFolder, unit: str, cfg: DistancesConfig) -> UnitResult:
    """Write distances/<unit>.parquet from candidates/<unit>.parquet; return stats + ledger."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ...core.schemas import arrow_schema

    pf = open_candidates(run, unit)
    path, redo = candidates_path(run, unit), redo_hint(run, unit)
    schema = arrow_schema("distances")
    ledger: list[dict[str, Any]] = []
    n_in = n_out = pairs = 0
    out = run.path("distances", f"{unit}.parquet")
    remove_leftovers(out)
    with atomic_path(out) as tmp:
        writer = pq.ParquetWriter(tmp, schema, **WRITER_OPTIONS)
        try:
            batches = pf.iter_batches(batch_size=cfg.batch_rows, columns=READ_COLUMNS)
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except (pa.ArrowException, OSError) as exc:
                    raise GeobuildError(f"unreadable candidates file {path} ({exc}); {redo}") from None
                table, rejected, n_pairs = _distances_batch(batch, cfg)
                n_in += batch.num_rows
                n_out += table.num_rows
                pairs += n_pairs
                ledger.extend(rejected)
                writer.write_table(table)
        finally:
            writer.close()
        if n_out + len(ledger) != n_in or n_in != pf.metadata.num_rows:
            raise GeobuildError(f"distances {unit}: {n_out} rows + {len(ledger)} rejected != {n_in} input rows")
    stats = {"input": n_in, "rows": n_out, "rejected": len(ledger), "pairs": pairs, "method": cfg.method}
    return UnitResult(stats=stats, ledger=ledger or None)


def _distances_batch(batch, cfg: DistancesConfig):
    """Distances of one record batch: (distances table, ledger rows, pairs computed)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from ...core.schemas import table

    keys = batch.column("key").to_pylist()
    ids = batch.column("id").to_pylist()
    qlat = batch.column("lat").to_numpy(zero_copy_only=False).astype(np.float64)
    qlon = batch.column("lon").to_numpy(zero_copy_only=False).astype(np.float64)
    clat_l, clon_l = batch.column("cand_lat"), batch.column("cand_lon")
    n = batch.num_rows

    lengths = np.asarray(pc.list_value_length(clat_l).fill_null(-1), dtype=np.int64)
    lengths_lon = np.asarray(pc.list_value_length(clon_l).fill_null(-1), dtype=np.int64)
    starts_lat = np.asarray(clat_l.offsets, dtype=np.int64)[:-1]
    starts_lon = np.asarray(clon_l.offsets, dtype=np.int64)[:-1]
    flat_lat = clat_l.values.to_numpy(zero_copy_only=False).astype(np.float64)
    flat_lon = clon_l.values.to_numpy(zero_copy_only=False).astype(np.float64)

    # per-row validity, vectorised over the flattened candidate lists
    same = (lengths >= 0) & (lengths == lengths_lon)
    g_all = np.where(same, lengths, 0)
    row_of = np.repeat(np.arange(n), g_all)
    within = np.arange(int(g_all.sum())) - np.repeat(np.concatenate([[0], np.cumsum(g_all)[:-1]]), g_all)
    cand_ok = valid_latlon(flat_lat[starts_lat[row_of] + within], flat_lon[starts_lon[row_of] + within])
    bad_cands = np.bincount(row_of, weights=~cand_ok, minlength=n) > 0
    q_ok = valid_latlon(qlat, qlon)
    keep = same & q_ok & ~bad_cands
    rejected = []
    for i in np.flatnonzero(~keep):
        if lengths[i] < 0 or lengths_lon[i] < 0:
            reason = ("no_candidates", "cand_lat/cand_lon is null")
        elif lengths[i] != lengths_lon[i]:
            reason = ("bad_candidates", f"{lengths[i]} cand_lat values but {lengths_lon[i]} cand_lon values")
        elif not q_ok[i]:
            reason = ("bad_gps", f"invalid query coordinates ({qlat[i]}, {qlon[i]})")
        else:
            j = int(np.flatnonzero(~cand_ok[row_of == i])[0])
            reason = ("bad_candidate_gps", f"candidate {j} has invalid coordinates "
                      f"({flat_lat[starts_lat[i] + j]}, {flat_lon[starts_lon[i] + j]})")
        rejected.append(reject(keys[i], ids[i], *reason))

    rows = np.flatnonzero(keep)
    g_k = lengths[rows]
    q_off = np.concatenate([[0], np.cumsum(g_k)])
    m_off = np.concatenate([[0], np.cumsum(g_k * g_k)])
    qv = np.empty(int(q_off[-1]), dtype=np.float32)
    mv = np.empty(int(m_off[-1]), dtype=np.float32)
    for g in np.unique(g_k):
        g = int(g)
        sel = np.flatnonzero(g_k == g)  # positions among kept rows
        step = max(1, cfg.max_cells // max(1, g * g))
        for s in range(0, sel.size, step):
            pos = sel[s : s + step]
            src = rows[pos]
            ar = np.arange(g)
            lat = flat_lat[starts_lat[src][:, None] + ar]
            lon = flat_lon[starts_lon[src][:, None] + ar]
            dq = distance_km(qlat[src][:, None], qlon[src][:, None], lat, lon, cfg.method)
            dm = pairwise_km(lat, lon, cfg.method)
            qv[q_off[pos][:, None] + ar] = dq
            mv[m_off[pos][:, None] + np.arange(g * g)] = dm.reshape(pos.size, g * g)
    keys_k = [keys[i] for i in rows]
    ids_k = [ids[i] for i in rows]
    t = table(
        "distances",
        {
            "key": pa.array(keys_k, pa.string()),
            "id": pa.array(ids_k, pa.string()),
            "n_candidates": pa.array(g_k.astype(np.int32), pa.int32()),
            "query_km": pa.ListArray.from_arrays(pa.array(q_off, pa.int64()).cast(pa.int32()), pa.array(qv, pa.float32())),
            "matrix_km": pa.ListArray.from_arrays(pa.array(m_off, pa.int64()).cast(pa.int32()), pa.array(mv, pa.float32())),
            "method": pa.array([cfg.method] * rows.size, pa.string()),
        },
    )
    return t, rejected, int(q_off[-1] + m_off[-1])
