"""The ``mine`` stage: candidate locations for every query photo, one unit per query shard.

Per query (a row of ``embeddings/<unit>``):

1. image candidates: the top-K gallery neighbours after exclusions (the query itself, optionally
   photos by the same author and near-duplicates), see :mod:`geobuild.image_candidates`;
2. GPS candidates: the top-K GPS-gallery points by kernel density of the neighbours' locations
   (``kde``, any encoder) or by GeoCLIP's image head (``geoclip``, CLIP ViT-L/14 only), see
   :mod:`geobuild.gps_candidates`;
3. optionally (``negatives``, default none) distance-band points drawn around the true location
   (training-only, leak the answer), see :mod:`geobuild.stages.mine.bands`;
4. location text for every candidate (the gallery's own columns when it has them, else offline
   reverse geocoding, :mod:`geobuild.geocode`), the haversine km to the query and the
   within-1/25/200/750/2500-km flags.

Output: ``candidates/<unit>.parquet`` (schema ``candidates``), one row per mined query. Queries
with invalid coordinates or no candidate at all go to the ledger, so mined + ledger = queries.
The gallery is the run's own index, or another run's (``gallery``) built with the same model.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ...core.errors import GeobuildError
from ...geo.sphere import THRESHOLDS_KM, haversine_km, valid_latlon
from ...geo.geocode import GEOCODED_FIELDS, GeocodeConfig, geocode_arrays
from ...core.ledger import reject
from ...core.log import get_logger
from ...core.runfolder import RunFolder, atomic_path, remove_leftovers
from ...core.stage import Accounting, Stage, UnitResult
from ...artifacts.candidates import SCHEMA, candidates_path
from ...artifacts.embeddings import embedded_units, model_info_path, read_embeddings, read_model_info
from .columns import Codes, TextCodes

log = get_logger("mine")

GPS_SCORERS = ("kde", "geoclip")
NEGATIVE_POOLS = ("gallery", "gps", "both")
SOURCES = ("image", "gps", "negative")
#: rows per Parquet row group of candidates/<unit>.parquet: readers (the distances stage) decode
#: one row group at a time, so this bounds their memory whatever the shard size
CANDIDATES_ROW_GROUP = 1024


@dataclass
class MineConfig:
    """Options of ``geobuild mine`` (the ``mine`` section of config.yaml)."""

    gallery: str | None = None  # another run folder whose index is the gallery (None: this run)
    k_image: int = 20  # GeoRanker needs >= group_size 7 + 5 = 12 and its eval reads 20
    k_gps: int = 10
    # distance-band points drawn around the TRUE location (training-only, leak the answer): off unless asked for
    negatives: str = "none"
    band_edges_km: tuple[float, float] = (25.0, 750.0)
    negatives_from: str = "both"  # gallery | gps | both
    negative_pool: int = 1_000_000  # at most this many gallery photos in the negative pool (seeded)
    exclude_same_author: bool = False
    dedup_threshold: float | None = 0.98  # cosine at/above which a neighbour is a near-duplicate
    gps_scorer: str = "kde"
    kde_bandwidth_km: float = 25.0
    kde_temperature: float = 0.05
    kde_neighbours: int = 32
    gps_min_sep_km: float = 25.0  # kde: GPS candidates at least this far apart (0: pure top-K)
    geoclip_input_norm: float = 20.0
    place_max_km: float = 50.0
    country_max_km: float = 300.0
    overfetch: int = 8
    seed: int = 0
    device: str = "auto"  # where the gallery is searched (auto | cpu | cuda); not part of the recorded config

    def __post_init__(self) -> None:
        if self.gps_scorer not in GPS_SCORERS:
            raise GeobuildError(f"unknown --gps-scorer '{self.gps_scorer}' (choose kde or geoclip)")
        if self.negatives_from not in NEGATIVE_POOLS:
            raise GeobuildError(f"unknown --negatives-from '{self.negatives_from}' (choose gallery, gps or both)")
        if self.k_image < 0 or self.k_gps < 0:
            raise GeobuildError("--k-image and --k-gps must be >= 0")
        if self.kde_bandwidth_km <= 0 or self.kde_temperature <= 0:
            raise GeobuildError("--kde-bandwidth-km and --kde-temperature must be > 0")
        self.band_edges_km = tuple(float(e) for e in self.band_edges_km)  # type: ignore[assignment]
        from .bands import parse_bands

        parse_bands(self.negatives, self.band_edges_km)  # validate early

    def recorded(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("device")
        d["band_edges_km"] = list(self.band_edges_km)
        return d


# -- per-process context: gallery, GPS gallery, negative pool ----------------------------------
@dataclass
class MiningContext:
    gallery: Any
    same_run: bool
    g_key: Codes
    g_id: Codes
    g_author: Codes | None
    g_lat: np.ndarray
    g_lon: np.ndarray
    g_text: dict[str, TextCodes]  # GEOCODED_FIELDS -> own text, or geocoded once g_geocoded
    g_has_text: np.ndarray  # the gallery row has its own location text
    g_geocoded: np.ndarray  # a row without own text whose geocoded text is in g_text
    gps_lat: np.ndarray
    gps_lon: np.ndarray
    gps_features: np.ndarray | None
    gps_tree: Any
    gps_text: dict[str, np.ndarray]  # GEOCODED_FIELDS -> geocoded text of GPS points where gps_geocoded
    gps_geocoded: np.ndarray
    pool_rows: np.ndarray  # gallery rows in the negative pool (sorted)
    pool_n_gallery: int
    sampler: Any
    bands: list
    notes: dict[str, Any] = field(default_factory=dict)


_CONTEXTS: dict[tuple, MiningContext] = {}


def gallery_run(run: RunFolder, cfg: MineConfig) -> RunFolder:
    return RunFolder(cfg.gallery) if cfg.gallery else run


def _text_column(meta: pd.DataFrame, col: str) -> np.ndarray:
    if col not in meta:
        return np.full(len(meta), "", dtype=object)
    return meta[col].fillna("").astype(str).to_numpy(dtype=object)


def check_models(run: RunFolder, cfg: MineConfig) -> dict[str, Any]:
    """The query run's model info; one clear error if the gallery was built with another model."""
    from ...artifacts.gallery import INFO_FILE, index_path

    info = read_model_info(run)
    grun = gallery_run(run, cfg)
    gpath = index_path(grun, INFO_FILE)
    if not gpath.exists():
        raise GeobuildError(f"no gallery index in {grun.root} (missing {gpath}); run: geobuild index --run {grun.root}")
    from ...core.runfolder import read_json
    from ...artifacts.gallery import GALLERY_UNIT

    ginfo = read_json(gpath, f"redo the index: remove {gpath} and {grun.marker_path('index', GALLERY_UNIT)}, "
                             f"then run: geobuild index --run {grun.root}")
    if str(ginfo.get("model")) != str(info.get("model")) or int(ginfo.get("dim", -1)) != int(info.get("dim", -2)):
        raise GeobuildError(
            f"the gallery in {grun.root} was built with {ginfo.get('model')} ({ginfo.get('dim')}-d) but the queries in "
            f"{run.root} are embedded with {info.get('model')} ({info.get('dim')}-d); embed both with the same --model"
        )
    if cfg.gps_scorer == "geoclip":
        from .gps_candidates import check_geoclip_model

        check_geoclip_model(str(info.get("model")), int(info.get("dim", 0)))
    return info


def mining_context(run: RunFolder, cfg: MineConfig) -> MiningContext:
    """Load (once per process) the gallery, GPS gallery and negative pool that ``cfg`` needs."""
    from ...artifacts.gallery import load_gallery, load_gps_gallery
    from .bands import BandSampler, parse_bands
    from ...geo.spatial import PointTree

    grun = gallery_run(run, cfg)
    key = (str(run.root), str(grun.root), cfg.device, repr(sorted(cfg.recorded().items())))
    if key in _CONTEXTS:
        return _CONTEXTS[key]
    check_models(run, cfg)
    t0 = time.time()
    gallery = load_gallery(grun, device=cfg.device)
    # the id map as compact columns (codes into distinct values), not a pandas frame of Python strings
    have = set(gallery.ids_columns)
    want = ["key", "id", "lat", "lon"] + [c for c in ("author", *GEOCODED_FIELDS) if c in have]
    ids = gallery.read_ids(want)
    n_rows = ids.num_rows
    notes: dict[str, Any] = {}
    g_text = {f: TextCodes.of(ids.column(f) if f in have else None, n_rows) for f in GEOCODED_FIELDS}
    g_has_text = np.zeros(n_rows, dtype=bool)
    for f in GEOCODED_FIELDS:
        g_has_text |= g_text[f].has_text()
    try:
        gps = load_gps_gallery(grun)
        gps_lat, gps_lon, gps_feat = gps.lat, gps.lon, gps.features
    except GeobuildError as exc:
        log.warning("mine: no GPS gallery (%s); GPS candidates are skipped", exc)
        gps_lat = gps_lon = np.zeros(0)
        gps_feat = None
    if gps_lat.size == 0:
        notes["gps_gallery"] = "missing or empty: GPS candidates skipped"
    if cfg.gps_scorer == "geoclip" and gps_lat.size and gps_feat is None:
        from ...encoders.location import encode_gps

        gps_feat = encode_gps(gps_lat, gps_lon)
    gps_tree = PointTree(gps_lat, gps_lon)
    g_lat = ids.column("lat").to_numpy().astype(np.float64)
    g_lon = ids.column("lon").to_numpy().astype(np.float64)
    rng = np.random.default_rng(cfg.seed)
    bands = parse_bands(cfg.negatives, cfg.band_edges_km)
    # without bands no negative is drawn: no pool (its k-d tree would cost seconds at 1M photos)
    n_g = n_rows if bands and cfg.negatives_from in ("gallery", "both") else 0
    pool_rows = np.arange(n_g) if n_g <= cfg.negative_pool else np.sort(rng.choice(n_g, cfg.negative_pool, replace=False))
    use_gps = bool(bands) and cfg.negatives_from in ("gps", "both")
    p_lat = np.concatenate([g_lat[pool_rows], gps_lat if use_gps else []])
    p_lon = np.concatenate([g_lon[pool_rows], gps_lon if use_gps else []])
    g_id = Codes.of(ids.column("id"))
    p_ids = np.concatenate([g_id.take(pool_rows), np.full(gps_lat.size if use_gps else 0, None, dtype=object)])
    ctx = MiningContext(
        gallery=gallery,
        same_run=grun.root == run.root,
        g_key=Codes.of(ids.column("key")),
        g_id=g_id,
        g_author=Codes.of(ids.column("author")) if cfg.exclude_same_author and "author" in have else None,
        g_lat=g_lat,
        g_lon=g_lon,
        g_text=g_text,
        g_has_text=g_has_text,
        g_geocoded=np.zeros(n_rows, dtype=bool),
        gps_lat=np.asarray(gps_lat, dtype=np.float64),
        gps_lon=np.asarray(gps_lon, dtype=np.float64),
        gps_features=gps_feat,
        gps_tree=gps_tree,
        gps_text={f: np.full(gps_lat.size, "", dtype=object) for f in GEOCODED_FIELDS},
        gps_geocoded=np.zeros(gps_lat.size, dtype=bool),
        pool_rows=pool_rows,
        pool_n_gallery=int(pool_rows.size),
        sampler=BandSampler(p_lat, p_lon, keys=p_ids),
        bands=bands,
        notes=notes,
    )
    log.info(
        "mine: gallery %s (%d photos, %s), %d GPS points, negative pool %d, ready in %.1fs",
        grun.root, n_rows, gallery.model, gps_lat.size, len(p_lat), time.time() - t0,
    )
    del ids
    _release_arrow_memory()
    _CONTEXTS.clear()
    _CONTEXTS[key] = ctx
    return ctx


def _release_arrow_memory() -> None:
    """Return the Arrow pool's freed memory to the system: its allocator keeps freed blocks (the
    gallery's id map read as a table, a unit's candidates table), which would otherwise stay in
    every mining process's resident memory."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


# -- the stage ---------------------------------------------------------------------------------
@dataclass
class MineStage(Stage):
    """Mines candidates for the query shards ``selected`` (None: every embedded shard)."""

    cfg: MineConfig = field(default_factory=MineConfig)
    selected: list[str] | None = None
    name: ClassVar[str] = "mine"
    accounting: ClassVar[Accounting] = Accounting("queries", ("mined",), "rejected", upstream=("embed", "embedded"))

    def units(self, run: RunFolder) -> list[str]:
        have = embedded_units(run)
        return list(self.selected) if self.selected is not None else have

    def check_inputs(self, run: RunFolder, overwrite: bool = False) -> None:
        """Embedded queries, and a gallery index built with the same model."""
        if not run.root.exists():
            raise GeobuildError(f"run folder not found: {run.root}")
        if not model_info_path(run).exists():
            raise GeobuildError(f"no embeddings in {run.root}; run: geobuild embed --run {run.root}")
        check_models(run, self.cfg)
        if not self.units(run):
            raise GeobuildError(f"no embedded shards in {run.root}; run: geobuild embed --run {run.root}")

    def depends_on(self, run: RunFolder, unit: str) -> list[tuple[str, str]]:
        """The unit's embeddings, and the index when the gallery is this run's own."""
        from ...artifacts.gallery import GALLERY_UNIT, GPS_UNIT

        own = gallery_run(run, self.cfg).root == run.root
        return [("embed", unit)] + ([("index", GALLERY_UNIT), ("index", GPS_UNIT)] if own else [])

    def process(self, run: RunFolder, unit: str) -> UnitResult:
        return mine_unit(run, unit, self.cfg)


def mine_unit(run: RunFolder, unit: str, cfg: MineConfig) -> UnitResult:
    """Mine one query shard and write ``candidates/<unit>.parquet``."""
    import pyarrow.parquet as pq

    from .gps_candidates import geoclip_candidates, kde_candidates
    from .image_candidates import search_image_candidates
    from ...core.schemas import table

    t0 = time.time()
    x, qmeta = read_embeddings(run, unit)
    x = np.ascontiguousarray(x, dtype=np.float32)
    ctx = mining_context(run, cfg)
    n_in = len(qmeta)
    ledger: list[dict[str, Any]] = []
    q_key = qmeta["key"].astype(str).to_numpy(dtype=object)
    q_id = qmeta["id"].fillna("").astype(str).to_numpy(dtype=object) if "id" in qmeta else q_key.copy()
    q_lat = pd.to_numeric(qmeta["lat"], errors="coerce").to_numpy(np.float64)
    q_lon = pd.to_numeric(qmeta["lon"], errors="coerce").to_numpy(np.float64)
    ok = valid_latlon(q_lat, q_lon)
    finite = np.isfinite(x).all(axis=1) if x.size else np.ones(n_in, dtype=bool)
    for i in np.flatnonzero(~ok):
        ledger.append(reject(q_key[i], q_id[i], "invalid_coordinates", f"query coordinates ({q_lat[i]}, {q_lon[i]}) are invalid"))
    for i in np.flatnonzero(ok & ~finite):
        ledger.append(reject(q_key[i], q_id[i], "bad_embedding", "query embedding has non-finite values"))
    keep = np.flatnonzero(ok & finite)
    x, q_key, q_id, q_lat, q_lon = x[keep], q_key[keep], q_id[keep], q_lat[keep], q_lon[keep]
    q_author = qmeta["author"].to_numpy(dtype=object)[keep] if "author" in qmeta else np.full(keep.size, None, dtype=object)
    n = keep.size
    stats: dict[str, Any] = {"queries": n_in, "gallery": str(gallery_run(run, cfg).root), "gallery_size": int(ctx.gallery.ntotal)}
    stats.update(ctx.notes)

    # 1. image candidates (and the neighbours the KDE scorer weighs)
    available = int(ctx.gallery.ntotal) - (1 if ctx.same_run else 0)
    k_img = cfg.k_image
    if k_img > available:
        log.warning("mine: --k-image %d exceeds the gallery (%d photos besides the query); using %d", k_img, available, available)
        stats["k_image_clamped_to"] = k_img = max(available, 0)
    k_fetch = max(k_img, cfg.kde_neighbours if cfg.gps_scorer == "kde" and cfg.k_gps > 0 else 0)
    k_fetch = min(k_fetch, max(available, 0))
    t = time.time()
    pick = search_image_candidates(
        ctx.gallery, x, q_key, q_id, q_author, k_fetch, ctx.same_run, ctx.g_key, ctx.g_id,
        ctx.g_author, cfg.dedup_threshold, cfg.overfetch,
    )
    stats["seconds_image"] = round(time.time() - t, 3)
    stats["excluded"] = pick.excluded
    img_rows, img_scores = pick.rows[:, :k_img], pick.scores[:, :k_img]
    stats["image_short"] = int((img_rows < 0).sum())

    # 2. GPS candidates
    t = time.time()
    k_gps = cfg.k_gps
    n_gps_points = int(ctx.gps_lat.size)
    if k_gps > 0 and n_gps_points == 0:
        stats["gps_skipped"] = n
        k_gps = 0
    elif k_gps > n_gps_points:
        log.warning("mine: --k-gps %d exceeds the GPS gallery (%d points); using %d", k_gps, n_gps_points, n_gps_points)
        stats["k_gps_clamped_to"] = k_gps = n_gps_points
    if k_gps > 0 and n:
        if cfg.gps_scorer == "geoclip":
            gp = geoclip_candidates(x, ctx.gps_features, k_gps, cfg.geoclip_input_norm)
        else:
            nb = pick.rows
            valid = nb >= 0
            safe = np.where(valid, nb, 0)
            gp = kde_candidates(
                ctx.g_lat[safe], ctx.g_lon[safe], pick.scores, valid, ctx.gps_tree, k_gps,
                cfg.kde_bandwidth_km, cfg.kde_temperature, min_sep_km=cfg.gps_min_sep_km,
            )
        gps_rows, gps_scores = gp.rows, gp.scores
    else:
        gps_rows = np.full((n, 0), -1, dtype=np.int64)
        gps_scores = np.zeros((n, 0), dtype=np.float32)
    stats["seconds_gps"] = round(time.time() - t, 3)

    # 3. distance-band negatives (pool = gallery rows ctx.pool_rows, then GPS points)
    t = time.time()
    exclude = []
    for i in range(n if ctx.bands else 0):
        taken: set[int] = set()
        r = img_rows[i][img_rows[i] >= 0]
        if r.size and ctx.pool_rows.size:
            pos = np.minimum(np.searchsorted(ctx.pool_rows, r), ctx.pool_rows.size - 1)
            taken.update(pos[ctx.pool_rows[pos] == r].tolist())  # image candidates that are in the pool
        if cfg.negatives_from != "gallery":
            taken.update((ctx.pool_n_gallery + gps_rows[i][gps_rows[i] >= 0]).tolist())
        exclude.append(taken)
    negs = ctx.sampler.sample(q_lat, q_lon, q_id, ctx.bands, cfg.seed, exclude)
    stats["negatives_short"] = int(negs.short)
    stats["seconds_negatives"] = round(time.time() - t, 3)

    # 4. assemble, per query: image, gps, negatives (each in rank order); kind 0 = gallery row, 1 = GPS point
    t = time.time()
    parts = _candidate_grid(img_rows, img_scores, gps_rows, gps_scores, negs, ctx.pool_rows, ctx.pool_n_gallery)
    valid = parts.pop("valid")
    per_query = valid.sum(axis=1)
    for i in np.flatnonzero(per_query == 0):
        ledger.append(reject(q_key[i], q_id[i], "no_candidates", "no image, GPS or negative candidate found"))
    m = np.flatnonzero(per_query > 0)
    flat = {name: a[valid] for name, a in parts.items()}  # row-major: query by query, in grid order
    kinds_a, rows_a = flat["kind"], flat["row"]
    offsets = np.concatenate([[0], np.cumsum(per_query[m])])
    counts = np.diff(offsets)
    qidx = np.repeat(np.arange(m.size), counts)
    src = np.asarray(SOURCES, dtype=object)[flat["source"]]
    band_names = np.asarray([None] + [b.name for b in ctx.bands], dtype=object)
    band = band_names[flat["band"] + 1]
    n_by_source = {s: (parts["source"] == c)[m] & valid[m] for c, s in enumerate(SOURCES)}

    is_g = kinds_a == 0
    gr = np.where(is_g, rows_a, 0)
    pr = np.where(is_g, 0, rows_a)
    c_lat = np.where(is_g, ctx.g_lat[gr] if ctx.g_lat.size else 0.0, ctx.gps_lat[pr] if ctx.gps_lat.size else 0.0)
    c_lon = np.where(is_g, ctx.g_lon[gr] if ctx.g_lon.size else 0.0, ctx.gps_lon[pr] if ctx.gps_lon.size else 0.0)
    c_key = np.full(is_g.size, None, dtype=object)
    c_key[is_g] = ctx.g_key.take(gr[is_g])
    c_id = np.full(is_g.size, None, dtype=object)
    c_id[is_g] = ctx.g_id.take(gr[is_g])
    c_id[~is_g] = [f"gps:{r}" for r in pr[~is_g].tolist()]

    # location text: the gallery's own columns where it has them, else reverse geocoding (each
    # gallery row and GPS point once per process, kept in the context for the next units)
    ql, qo = q_lat[m], q_lon[m]
    q_text_src = {f: _text_column(qmeta.iloc[keep[m]].reset_index(drop=True), f) for f in GEOCODED_FIELDS}
    q_has = np.zeros(m.size, dtype=bool)
    for f in GEOCODED_FIELDS:
        q_has |= q_text_src[f] != ""
    new_g = np.unique(gr[is_g & ~ctx.g_has_text[gr]]) if ctx.g_has_text.size else np.zeros(0, np.int64)
    new_g = new_g[~ctx.g_geocoded[new_g]]
    new_p = np.unique(pr[~is_g]) if ctx.gps_lat.size else np.zeros(0, np.int64)
    new_p = new_p[~ctx.gps_geocoded[new_p]]
    geo = geocode_arrays(
        np.concatenate([ctx.g_lat[new_g], ctx.gps_lat[new_p], ql[~q_has]]),
        np.concatenate([ctx.g_lon[new_g], ctx.gps_lon[new_p], qo[~q_has]]),
        GeocodeConfig(cfg.place_max_km, cfg.country_max_km),
    )
    ends = np.cumsum([new_g.size, new_p.size])
    c_text = {}
    for f in GEOCODED_FIELDS:
        found = geo[f]
        ctx.g_text[f].set(new_g, found[: ends[0]])
        ctx.gps_text[f][new_p] = found[ends[0] : ends[1]]
        col = np.empty(is_g.size, dtype=object)
        col[is_g] = ctx.g_text[f].get(gr[is_g])
        col[~is_g] = ctx.gps_text[f][pr[~is_g]]
        c_text[f] = col
        qcol = q_text_src[f].copy()
        qcol[~q_has] = found[ends[1] :]
        q_text_src[f] = qcol
    ctx.g_geocoded[new_g] = True
    ctx.gps_geocoded[new_p] = True
    stats["geocoded_points"] = int(geo["place_km"].size)
    dist = haversine_km(ql[qidx], qo[qidx], c_lat, c_lon).astype(np.float32)
    stats["seconds_text"] = round(time.time() - t, 3)

    tbl = _build_table(
        unit, q_key[m], q_id[m], ql, qo, q_author[m], q_text_src, offsets.astype(np.int32),
        src, c_key, c_id, c_lat, c_lon, flat["score"], flat["rank"].astype(np.int32), c_text, dist, band,
        {s: v.sum(axis=1) for s, v in n_by_source.items()}, table,
    )
    remove_leftovers(candidates_path(run, unit))  # a killed attempt's temporary file
    with atomic_path(candidates_path(run, unit)) as tmp:
        pq.write_table(tbl, tmp, row_group_size=CANDIDATES_ROW_GROUP)
    del tbl
    _release_arrow_memory()
    by_source = {s: int(v.sum()) for s, v in n_by_source.items()}
    stats.update({
        "mined": int(m.size),
        "rejected": len(ledger),
        "rejected_by_reason": _count(r["status"] for r in ledger),
        "candidates": int(rows_a.size),
        "candidates_by_source": by_source,
        "seconds_total_unit": round(time.time() - t0, 3),
    })
    if m.size + len(ledger) != n_in:  # pragma: no cover - accounting guard
        raise RuntimeError(f"mine {unit}: {m.size} mined + {len(ledger)} ledger != {n_in} queries")
    return UnitResult(stats=stats, ledger=ledger or None)


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _candidate_grid(img_rows, img_scores, gps_rows, gps_scores, negs, pool_rows, pool_n_gallery) -> dict[str, np.ndarray]:
    """Every query's candidates as [n, image + gps + negative slots] arrays: ``kind`` (0 gallery row,
    1 GPS point), ``row``, ``source`` (index in SOURCES), ``score``, ``rank`` (within its source),
    ``band`` (index in the bands, -1 for none) and ``valid``; read row-major, the valid slots give
    each query's image, then GPS, then negative candidates."""
    n = img_rows.shape[0]
    n_neg = np.fromiter((a.size for a in negs.index), dtype=np.int64, count=n)
    kn = int(n_neg.max()) if n else 0
    vn = np.arange(kn)[None, :] < n_neg[:, None]
    neg = np.zeros((n, kn), np.int64)
    neg_band = np.full((n, kn), -1, np.int64)
    if kn:
        neg[vn] = np.concatenate(negs.index)
        neg_band[vn] = np.concatenate(negs.band)
    in_gallery = neg < pool_n_gallery
    pool_row = pool_rows[np.minimum(neg, pool_rows.size - 1)] if pool_rows.size else np.zeros_like(neg)
    vi, vg = img_rows >= 0, gps_rows >= 0
    ki, kg = vi.shape[1], vg.shape[1]

    def slots(a, b, c):
        return np.concatenate([np.broadcast_to(a, (n, ki)), np.broadcast_to(b, (n, kg)), np.broadcast_to(c, (n, kn))], axis=1)

    return {
        "kind": slots(np.int8(0), np.int8(1), np.where(in_gallery, 0, 1).astype(np.int8)),
        "row": slots(img_rows, gps_rows, np.where(in_gallery, pool_row, neg - pool_n_gallery)),
        "source": slots(np.int8(0), np.int8(1), np.int8(2)),
        "score": slots(img_scores.astype(np.float32), gps_scores.astype(np.float32), np.float32(0)),
        "rank": slots(np.cumsum(vi, axis=1) - 1, np.cumsum(vg, axis=1) - 1, np.arange(kn)),
        "band": slots(np.int64(-1), np.int64(-1), neg_band),
        "valid": slots(vi, vg, vn),
    }


def _text_lists(city, state, country):
    """GeoRanking's text list of each location, the non-empty of [city, state, country] (aligned
    arrays of strings, '' where unknown), as an Arrow list<string> array."""
    import pyarrow as pa

    parts = np.stack([np.asarray(city, dtype=object), np.asarray(state, dtype=object), np.asarray(country, dtype=object)], axis=1)
    keep = parts != ""
    inner_off = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(inner_off, type=pa.int32()), pa.array(parts[keep].tolist(), type=pa.string()))


def _build_table(unit, q_key, q_id, q_lat, q_lon, q_author, q_text, offsets, src, c_key, c_id, c_lat, c_lon,
                 score, rank, c_text, dist, band, n_by_source, table_fn):
    import pyarrow as pa

    off = pa.array(offsets, type=pa.int32())

    def lst(values, typ):
        return pa.ListArray.from_arrays(off, pa.array(values, type=typ))

    # cand_texts: list<list<string>>, non-empty of [city, state, country]
    texts_inner = _text_lists(c_text["city"], c_text["state"], c_text["country"])
    thr = np.asarray(THRESHOLDS_KM, dtype=np.float64)
    within = (dist.astype(np.float64)[:, None] < thr[None, :]).ravel()
    within_inner = pa.ListArray.from_arrays(
        pa.array(np.arange(0, within.size + 1, len(thr), dtype=np.int32)), pa.array(within, type=pa.bool_())
    )
    cols = {
        "key": pa.array(q_key.tolist(), type=pa.string()),
        "id": pa.array(q_id.tolist(), type=pa.string()),
        "shard": pa.array([unit] * len(q_key), type=pa.string()),
        "lat": pa.array(q_lat, type=pa.float64()),
        "lon": pa.array(q_lon, type=pa.float64()),
        "author": pa.array([None if a is None or (isinstance(a, float) and np.isnan(a)) else str(a) for a in q_author], type=pa.string()),
        "texts": _text_lists(q_text["city"], q_text["state"], q_text["country"]),
        "cand_source": lst(src.tolist(), pa.string()),
        "cand_key": lst(c_key.tolist(), pa.string()),
        "cand_id": lst([str(v) for v in c_id.tolist()], pa.string()),
        "cand_lat": lst(c_lat, pa.float64()),
        "cand_lon": lst(c_lon, pa.float64()),
        "cand_score": lst(score.astype(np.float32), pa.float32()),
        "cand_rank": lst(rank, pa.int32()),
        "cand_texts": pa.ListArray.from_arrays(off, texts_inner),
        "cand_city": lst(c_text["city"].tolist(), pa.string()),
        "cand_county": lst(c_text["county"].tolist(), pa.string()),
        "cand_state": lst(c_text["state"].tolist(), pa.string()),
        "cand_country": lst(c_text["country"].tolist(), pa.string()),
        "cand_continent": lst(c_text["continent"].tolist(), pa.string()),
        "cand_dist_km": lst(dist, pa.float32()),
        "cand_within": pa.ListArray.from_arrays(off, within_inner),
        "n_image": pa.array(n_by_source["image"], type=pa.int32()),
        "n_gps": pa.array(n_by_source["gps"], type=pa.int32()),
        "n_negative": pa.array(n_by_source["negative"], type=pa.int32()),
        "cand_band": lst(band.tolist(), pa.string()),
    }
    return table_fn(SCHEMA, cols)
