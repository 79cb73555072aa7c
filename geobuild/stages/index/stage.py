"""The ``index`` stage: a faiss index over every gallery embedding, and the GPS gallery.

Two units of work:

- ``gallery``: reads ``embeddings/<unit>.npy`` + ``.parquet`` of every finished ``embed`` unit
  (shards in order), builds ``index/gallery.faiss`` (flat, IVF-PQ or HNSW; see
  :mod:`geobuild.faiss_index`), its id map ``index/ids.parquet`` (schema ``gallery_ids``) and
  ``index/info.json``. IVF-PQ is trained on a seeded sample and filled shard by shard, so only the
  index itself is held in memory. After an approximate build, recall@10 against exact search is
  measured on a sample of gallery vectors and stored in ``info.json``. Rows with non-finite
  vectors or invalid coordinates go to the ledger.
- ``gps``: the GPS gallery (GeoCLIP's 100K points from the ``geoclip`` wheel, or a user CSV),
  encoded once with GeoCLIP's location encoder into ``index/gps_gallery.parquet`` + ``.npy``
  (+ ``gps_info.json``). Bad CSV rows go to the ledger.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np
import pandas as pd

from ...artifacts.embeddings import embedded_units, read_embeddings, read_model_info
from ...core.errors import GeobuildError
from ...geo.geocode import TEXT_FIELDS
from ...artifacts.gallery import (
    DEVICES,
    GALLERY_FILE,
    GALLERY_UNIT,
    GPS_FEATURES_FILE,
    GPS_FILE,
    GPS_INFO_FILE,
    GPS_UNIT,
    IDS_FILE,
    INDEX_DIR,
    INFO_FILE,
)
from ...geo.sphere import valid_latlon
from ...core.ledger import reject
from ...core.log import get_logger, progress
from ...core.runfolder import RunFolder, atomic_path, content_id, read_json, remove_leftovers
from ...core.stage import Accounting, Stage, StageSummary, UnitResult
from ...retrieval.faiss_index import KINDS

log = get_logger("index")

ADD_CHUNK = 65536


def embedding_units(run: RunFolder) -> list[str]:
    """Finished ``embed`` units; refuses a run whose shards are not all embedded yet."""
    units = embedded_units(run)
    if not units:
        raise GeobuildError(
            f"no finished embeddings in {run.root} (done/embed/ is empty); run: geobuild embed --run {run.root}"
        )
    shards = run.shard_units()
    missing = sorted(set(shards) - set(units))
    if missing:
        raise GeobuildError(
            f"{len(missing)} of {len(shards)} shards have no embeddings yet (first: {missing[0]}); "
            f"finish: geobuild embed --run {run.root}"
        )
    return units


def check_embeddings(run: RunFolder) -> tuple[list[str], dict[str, Any], list[int]]:
    """Units, model info and rows per unit; one clear error on missing files or a dimension mismatch."""
    units = embedding_units(run)
    info = read_model_info(run)
    if "dim" not in info:
        raise GeobuildError(f"{run.path('embeddings', 'model.json')} has no 'dim'; redo geobuild embed")
    dim = int(info["dim"])
    sizes = []
    for u in units:
        vecs, _ = read_embeddings(run, u, mmap=True)
        if vecs.shape[1] != dim:
            raise GeobuildError(
                f"embedding dimension mismatch: embeddings/{u}.npy is {vecs.shape[1]}-d but model.json says "
                f"{dim} ({info.get('model')}); embed every shard with the same model (geobuild embed --overwrite)"
            )
        sizes.append(int(vecs.shape[0]))
    if sum(sizes) == 0:
        raise GeobuildError(f"the gallery is empty: {len(units)} embedding units with 0 rows in {run.root}")
    return units, info, sizes


# -- the id map --------------------------------------------------------------------------------
def _ids_frame(meta: pd.DataFrame, unit: str, rows: np.ndarray) -> pd.DataFrame:
    """ids.parquet rows (schema gallery_ids) for ``rows`` of one unit's metadata."""
    sub = meta.iloc[rows]
    out: dict[str, Any] = {
        "key": sub["key"].astype(str).to_numpy(),
        "id": np.where(sub["id"].isna(), sub["key"], sub["id"]).astype(str) if "id" in sub else sub["key"].astype(str).to_numpy(),
        "lat": sub["lat"].astype(np.float64).to_numpy(),
        "lon": sub["lon"].astype(np.float64).to_numpy(),
        "author": _strings(sub, "author"),
    }
    for c in TEXT_FIELDS:
        out[c] = _strings(sub, c)
    out["shard"] = np.full(len(sub), unit, dtype=object)
    out["row"] = rows.astype(np.int64)
    return pd.DataFrame(out)


def _strings(df: pd.DataFrame, col: str) -> np.ndarray:
    if col not in df:
        return np.full(len(df), None, dtype=object)
    v = df[col].astype(object).to_numpy()
    return np.array([None if x is None or (isinstance(x, float) and np.isnan(x)) else str(x) for x in v], dtype=object)


# -- configuration and stage -------------------------------------------------------------------
@dataclass
class IndexConfig:
    """Options of ``geobuild index`` (the ``index`` section of config.yaml)."""

    kind: str = "auto"  # auto | flat | ivfpq | hnsw
    gps_gallery: str = "geoclip"  # geoclip | PATH.csv | none
    flat_max: int = 250_000  # auto: flat index up to this many vectors, IVF-PQ above
    nlist: int = 0  # IVF lists (0: power of two near 4*sqrt(n))
    pq_m: int = 0  # PQ sub-quantizers (0: dim/4)
    nprobe: int = 0  # IVF lists visited per query (0: nlist/64, >= 16)
    refine: str = "sq8"  # IVF-PQ re-ranking: sq8 | flat | none
    k_factor: int = 16  # IVF-PQ shortlist = k_factor * k before re-ranking
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    recall_sample: int = 1000  # queries for the recall@10 check of approximate indexes
    seed: int = 0
    device: str = "auto"  # where the GPS gallery is encoded; not part of the recorded config

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise GeobuildError(f"unknown --kind '{self.kind}' (choose {', '.join(KINDS)})")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise GeobuildError(f"unknown --device '{self.device}' (choose auto, cpu or cuda)")
        if self.gps_gallery not in ("geoclip", "none") and not str(self.gps_gallery).lower().endswith(".csv"):
            raise GeobuildError(f"--gps-gallery must be 'geoclip', 'none' or a .csv file, got '{self.gps_gallery}'")

    def recorded(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("device")
        if d["gps_gallery"] not in ("geoclip", "none"):
            d["gps_gallery"] = str(Path(d["gps_gallery"]).expanduser().resolve())
        return d


@dataclass
class IndexStage(Stage):
    """Builds the gallery index (unit ``gallery``) and the GPS gallery (unit ``gps``)."""

    cfg: IndexConfig = field(default_factory=IndexConfig)
    name: ClassVar[str] = "index"
    accounting: ClassVar[Accounting] = Accounting("input", ("indexed", "points"), "rejected")

    def units(self, run: RunFolder) -> list[str]:
        return [GALLERY_UNIT] + ([] if self.cfg.gps_gallery == "none" else [GPS_UNIT])

    def depends_on(self, run: RunFolder, unit: str) -> list[tuple[str, str]]:
        return [("embed", u) for u in embedded_units(run)] if unit == GALLERY_UNIT else []

    def input_paths(self) -> dict[str, str | None]:
        g = self.cfg.gps_gallery
        return {} if g in ("geoclip", "none") else {"gps_gallery": str(Path(g).expanduser().resolve())}

    def check_inputs(self, run: RunFolder, overwrite: bool = False) -> None:
        """Embeddings to index, all of one model and dimension."""
        check_embeddings(run)

    def preflight(self, run: RunFolder, overwrite: bool = False) -> None:
        """The GPS gallery CSV, when one is named."""
        if self.cfg.gps_gallery not in ("geoclip", "none") and not Path(self.cfg.gps_gallery).expanduser().exists():
            raise GeobuildError(f"GPS gallery CSV not found: {self.cfg.gps_gallery}")

    def prepare(self, run: RunFolder) -> None:
        """An index built from other embeddings (or with a damaged info.json) is rebuilt."""
        info_p = run.path(INDEX_DIR, INFO_FILE)
        if not (run.is_done(self.name, GALLERY_UNIT) and info_p.exists()):
            return
        try:
            built_from = read_json(info_p, "").get("embedding_units")
        except GeobuildError:
            built_from = None
        if built_from != embedding_units(run):
            log.warning("index: the embeddings changed since the index was built (or its info.json is damaged); rebuilding it")
            run.marker_path(self.name, GALLERY_UNIT).unlink()

    def after(self, run: RunFolder, summary: StageSummary) -> None:
        info_p = run.path(INDEX_DIR, INFO_FILE)
        if not info_p.exists():
            return
        info = read_json(info_p, f"rebuild it: geobuild index --run {run.root} --overwrite")
        what = "exact search" if info["kind"] == "flat" else f"recall@10 = {info.get('recall@10'):.4f} on {info['recall_sample']} queries"
        log.info("index: %s over %d vectors (%d-d, %s); %s", info["kind"], info["ntotal"], info["dim"], info.get("model"), what)

    def process(self, run: RunFolder, unit: str) -> UnitResult:
        if unit == GALLERY_UNIT:
            return build_gallery(run, self.cfg)
        if unit == GPS_UNIT:
            return build_gps_gallery(run, self.cfg)
        raise GeobuildError(f"index: unknown unit '{unit}'")


# -- gallery unit ------------------------------------------------------------------------------
def _chunks(vecs: np.ndarray, size: int = ADD_CHUNK) -> Iterator[tuple[int, np.ndarray]]:
    for i in range(0, vecs.shape[0], size):
        yield i, np.ascontiguousarray(vecs[i : i + size], dtype=np.float32)


def _sample_rows(sizes: list[int], n: int, seed: int) -> list[np.ndarray]:
    """A seeded uniform sample of ``n`` global rows, as sorted local rows per unit."""
    total = sum(sizes)
    pick = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    bounds = np.cumsum([0] + sizes)
    return [pick[(pick >= bounds[i]) & (pick < bounds[i + 1])] - bounds[i] for i in range(len(sizes))]


def _gather(run: RunFolder, units: list[str], rows: list[np.ndarray]) -> np.ndarray:
    parts = []
    for u, r in zip(units, rows):
        if r.size:
            vecs, _ = read_embeddings(run, u, mmap=True)
            parts.append(np.asarray(vecs[r], dtype=np.float32))
    x = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    return x[np.isfinite(x).all(axis=1)]


def build_gallery(run: RunFolder, cfg: IndexConfig) -> UnitResult:
    """Build index/gallery.faiss + ids.parquet + info.json from every embedding unit."""
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ...retrieval import faiss_index as fi
    from ...retrieval.knn import recall_at_k, topk_numpy
    from ...core.schemas import arrow_schema, json_version

    t0 = time.time()
    units, model, sizes = check_embeddings(run)
    n_in, dim = sum(sizes), int(model["dim"])
    kind = fi.choose_kind(n_in, cfg.kind, cfg.flat_max)
    p = fi.resolve_params(kind, n_in, dim, cfg.nlist, cfg.pq_m, cfg.nprobe, cfg.hnsw_m, cfg.ef_construction, cfg.ef_search, cfg.refine, cfg.k_factor)
    index = fi.new_index(p)
    log.info("index: %d vectors of %d-d (%s), building %s", n_in, dim, model.get("model"), p.factory())
    if not index.is_trained:
        train = _gather(run, units, _sample_rows(sizes, p.train_size, cfg.seed))
        if train.shape[0] < p.nlist:
            raise GeobuildError(f"IVF-PQ needs at least nlist={p.nlist} training vectors, have {train.shape[0]}; use --kind flat")
        t = time.time()
        index.train(train)
        log.info("index: trained on %d vectors in %.1fs", train.shape[0], time.time() - t)
        del train

    ledger: list[dict[str, Any]] = []
    schema = arrow_schema("gallery_ids")
    ids_path = run.path(INDEX_DIR, IDS_FILE)
    for name in (IDS_FILE, GALLERY_FILE, INFO_FILE):
        remove_leftovers(run.path(INDEX_DIR, name))
    bar = progress(total=n_in, desc="index add", unit="vec")
    with atomic_path(ids_path) as ids_tmp:
        writer = pq.ParquetWriter(ids_tmp, schema)
        try:
            for u in units:
                vecs, meta = read_embeddings(run, u, mmap=True)
                lat = pd.to_numeric(meta["lat"], errors="coerce").to_numpy(np.float64)
                lon = pd.to_numeric(meta["lon"], errors="coerce").to_numpy(np.float64)
                geo_ok = valid_latlon(lat, lon)
                for start, x in _chunks(vecs):
                    rows = np.arange(start, start + x.shape[0])
                    ok = np.isfinite(x).all(axis=1) & geo_ok[rows]
                    for r in rows[~ok]:
                        reason = ("bad_gps", f"invalid coordinates ({lat[r]}, {lon[r]})") if not geo_ok[r] else (
                            "bad_embedding", "embedding has non-finite values")
                        ledger.append(reject(str(meta["key"].iloc[r]), str(meta["id"].iloc[r]) if "id" in meta else None, *reason))
                    if ok.any():
                        index.add(x[ok])
                        frame = _ids_frame(meta, u, rows[ok])
                        writer.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))
                    bar.update(x.shape[0])
        finally:
            writer.close()
            bar.close()
        ntotal = int(index.ntotal)
        if ntotal == 0:
            raise GeobuildError(f"the gallery is empty: all {n_in} embedding rows were rejected (see the ledger reasons)")
        recall = None
        if kind != "flat" and cfg.recall_sample > 0:
            recall = _measure_recall(run, units, sizes, index, p, cfg, fi, recall_at_k, topk_numpy)
            log.info("index: recall@10 of %s vs exact search = %.4f (%d queries)", kind, recall, min(cfg.recall_sample, n_in))
        with atomic_path(run.path(INDEX_DIR, GALLERY_FILE)) as tmp:
            faiss.write_index(index, str(tmp))
    info = {
        "schema_version": json_version("index_info"),
        "model": model.get("model"),
        "dim": dim,
        "dtype": model.get("dtype"),
        "kind": kind,
        "ntotal": ntotal,
        "metric": "inner_product",
        "params": p.as_dict(),
        "recall@10": 1.0 if kind == "flat" else recall,
        "recall_sample": 0 if kind == "flat" else min(cfg.recall_sample, n_in),
        "embedding_units": units,
        "rejected": len(ledger),
        "faiss_version": faiss.__version__,
    }
    run.write_json(run.path(INDEX_DIR, INFO_FILE), info)
    stats = {"input": n_in, "indexed": ntotal, "rejected": len(ledger), "kind": kind, "recall@10": info["recall@10"],
             "build_seconds": round(time.time() - t0, 3)}
    return UnitResult(stats=stats, ledger=ledger or None)


def _measure_recall(run, units, sizes, index, p, cfg, fi, recall_at_k, topk_numpy) -> float:
    """recall@10 of ``index`` vs exact inner-product search, on a seeded sample of gallery vectors."""
    q = _gather(run, units, _sample_rows(sizes, cfg.recall_sample, cfg.seed + 1))
    fi.set_search_params(index, p)
    _, approx = index.search(q, 10)

    def blocks():
        for u in units:
            vecs, meta = read_embeddings(run, u, mmap=True)
            geo_ok = valid_latlon(pd.to_numeric(meta["lat"], errors="coerce"), pd.to_numeric(meta["lon"], errors="coerce"))
            for start, x in _chunks(vecs):
                ok = np.isfinite(x).all(axis=1) & geo_ok[start : start + x.shape[0]]
                yield x[ok]

    _, exact = topk_numpy(blocks(), q, 10)
    return recall_at_k(approx, exact, 10)


# -- gps unit ----------------------------------------------------------------------------------
_LAT_NAMES = ("lat", "latitude")
_LON_NAMES = ("lon", "lng", "long", "longitude")


def read_gps_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Valid (lat, lon) of a GPS gallery CSV and ledger rows for the others.

    Columns lat/lon (or latitude/longitude, any case). A row is rejected when a value is missing
    or not a number, out of range, or the (0, 0) placeholder. No valid row at all is an error.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise GeobuildError(f"GPS gallery CSV not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise GeobuildError(f"cannot read GPS gallery CSV {path}: {exc}") from None
    cols = {c.strip().lower(): c for c in df.columns}
    lat_c = next((cols[c] for c in _LAT_NAMES if c in cols), None)
    lon_c = next((cols[c] for c in _LON_NAMES if c in cols), None)
    if lat_c is None or lon_c is None:
        raise GeobuildError(
            f"GPS gallery CSV {path} needs columns lat and lon (any case); found: {', '.join(map(str, df.columns)) or 'none'}"
        )
    lat = pd.to_numeric(df[lat_c].str.strip(), errors="coerce").to_numpy(np.float64)
    lon = pd.to_numeric(df[lon_c].str.strip(), errors="coerce").to_numpy(np.float64)
    ok = valid_latlon(lat, lon)
    ledger = []
    for i in np.flatnonzero(~ok):
        raw = (df[lat_c].iloc[i], df[lon_c].iloc[i])
        if not (np.isfinite(lat[i]) and np.isfinite(lon[i])):
            status, msg = "bad_value", f"lat/lon not numeric: {raw[0]!r}, {raw[1]!r}"
        elif lat[i] == 0 and lon[i] == 0:
            status, msg = "zero_gps", "(0, 0) placeholder coordinates"
        else:
            status, msg = "out_of_range", f"lat/lon out of range: {lat[i]}, {lon[i]}"
        # CSV line number (header is line 1) identifies the row
        ledger.append(reject(None, f"{path.name}:{i + 2}", status, msg))
    if not ok.any():
        raise GeobuildError(f"the GPS gallery {path} is empty: 0 valid rows of {len(df)}")
    return lat[ok], lon[ok], ledger


def build_gps_gallery(run: RunFolder, cfg: IndexConfig) -> UnitResult:
    """Encode the GPS gallery once and write index/gps_gallery.parquet + .npy + gps_info.json."""
    import pyarrow.parquet as pq

    from ...encoders.location import FEATURE_DIM, encode_gps, geoclip_gallery_csv
    from ...core.schemas import json_version, table

    source = cfg.gps_gallery
    for name in (GPS_FILE, GPS_FEATURES_FILE, GPS_INFO_FILE):
        remove_leftovers(run.path(INDEX_DIR, name))
    path = geoclip_gallery_csv() if source == "geoclip" else Path(source)
    lat, lon, ledger = read_gps_csv(path)
    t = time.time()
    feats = encode_gps(lat, lon, device=cfg.device, progress_desc="encode gps gallery")
    seconds = time.time() - t
    log.info("index: encoded %d GPS gallery points in %.1fs", lat.shape[0], seconds)
    with atomic_path(run.path(INDEX_DIR, GPS_FEATURES_FILE)) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, feats)
    with atomic_path(run.path(INDEX_DIR, GPS_FILE)) as tmp:
        pq.write_table(table("gps_gallery", {"lat": lat, "lon": lon}), tmp)
    info = {
        "schema_version": json_version("gps_info"),
        "source": "geoclip:coordinates_100K" if source == "geoclip" else f"csv:{path.name}:{content_id(path)}",
        "n": int(lat.shape[0]),
        "rejected": len(ledger),
        "encoder": "geoclip.LocationEncoder (location_encoder_weights.pth)",
        "dim": FEATURE_DIM,
        "normalized": True,
    }
    run.write_json(run.path(INDEX_DIR, GPS_INFO_FILE), info)
    return UnitResult(stats={"input": int(lat.shape[0]) + len(ledger), "points": int(lat.shape[0]), "rejected": len(ledger),
                             "encode_seconds": round(seconds, 3)}, ledger=ledger or None)
