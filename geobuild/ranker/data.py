"""Groups of candidates to rank, read from a published GeoRanking dataset or a run folder.

A *group* is one query and ``group_size`` of its mined candidates, chosen from the sources asked
for (``image``, ``gps``, ``negative``) in list order, interleaved across sources by default so a
group mixes image neighbours and GPS-gallery points. Distances for the loss come from the
dataset's ``query_km`` column (the distances stage) or ``cand_dist_km`` (the mine stage), and are
recomputed with haversine only when neither is present, or always from the coordinates with the
method ``GroupSpec.distance`` names (``geodesic``: WGS-84, as GeoRanker computes them). A quota
(``GroupSpec.quota``, e.g. the first 12 image and first 3 GPS candidates, GeoRanker's evaluation)
takes the first candidates of each source in list order; with ``pad`` a shorter group is padded
(``mask`` False) instead of skipped.

GeoRanking rows (``img_id``, ``gps``, ``ref_gps``, ``ref_img_id``, ``ref_texts``: the ``georanker``
config of a published dataset, or GeoRanker's own Parquet file) are read as GeoRanker's trainer
reads them: entry 0 (the query's own hit) is skipped and entries ``1..group_size`` in order form the
group; photos are looked up by the key of each image id, and distances are haversine km unless
``GroupSpec.distance`` says otherwise.

Rows that cannot form a group are skipped and counted by reason (``Groups.skipped``); a missing
required column is a :class:`~geobuild.core.errors.GeobuildError`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..core.errors import GeobuildError
from ..geo.geodesic import METHODS as DISTANCE_METHODS, distance_km
from ..geo.sphere import valid_latlon
from ..artifacts.georanking import negative_example_texts
from ..core.log import get_logger

log = get_logger("ranker.data")

SOURCES = ("image", "gps", "negative")
SOURCE_CODE = {name: i for i, name in enumerate(SOURCES)}
REQUIRED = ("lat", "lon", "cand_lat", "cand_lon")
KEY_COLUMNS = ("key", "id", "img_id")
GEORANKING_COLUMNS = ("img_id", "gps", "ref_gps")


@dataclass
class GroupSpec:
    """How groups are cut from the candidate lists."""

    group_size: int = 8
    sources: tuple[str, ...] = ("image", "gps")
    select: str = "interleave"  # interleave | order | quota
    skip_first: bool = False  # GeoRanker's trainer drops entry 0 (the query's own retrieval hit)
    #: select="quota": the first n candidates of each source in list order, sources in this order
    #: (GeoRanker's evaluation: (("image", 12), ("gps", 3)))
    quota: tuple[tuple[str, int], ...] = ()
    pad: bool = False  # a shorter group is padded (mask False) instead of skipped
    #: "dataset": the row's own distances (query_km / cand_dist_km; haversine when absent), or
    #: recomputed from the coordinates with "haversine" or "geodesic" (WGS-84, as GeoRanker)
    distance: str = "dataset"

    def __post_init__(self) -> None:
        self.quota = tuple((str(s), int(n)) for s, n in self.quota)
        if self.quota:
            self.sources = tuple(s for s, _ in self.quota)
            self.select = "quota"
            self.group_size = sum(n for _, n in self.quota)
        self.sources = tuple(self.sources)
        bad = [s for s in self.sources if s not in SOURCES]
        if bad:
            raise GeobuildError(f"unknown candidate source(s) {bad}; choose from {', '.join(SOURCES)}")
        if self.select not in ("interleave", "order", "quota"):
            raise GeobuildError(f"unknown candidate selection '{self.select}' (interleave, order or quota)")
        if self.select == "quota" and not self.quota:
            raise GeobuildError("candidate selection 'quota' needs per-source counts, e.g. image:12,gps:3")
        if self.group_size < 2:
            raise GeobuildError(f"group size must be at least 2, got {self.group_size}")
        if self.distance != "dataset" and self.distance not in DISTANCE_METHODS:
            raise GeobuildError(f"unknown distance '{self.distance}' (dataset, {', '.join(DISTANCE_METHODS)})")


@dataclass
class Groups:
    """Fixed-size groups as aligned arrays (N queries x G candidates)."""

    name: str
    query_key: np.ndarray  # object [N]
    query_id: np.ndarray  # object [N]
    query_lat: np.ndarray  # float64 [N]
    query_lon: np.ndarray
    cand_key: np.ndarray  # object [N, G] (None: no photo)
    cand_id: np.ndarray  # object [N, G]
    cand_lat: np.ndarray  # float64 [N, G]
    cand_lon: np.ndarray
    cand_source: np.ndarray  # int64 [N, G] codes of SOURCES
    cand_rank: np.ndarray  # int64 [N, G] rank within its source
    cand_texts: np.ndarray  # object [N, G] tuples of strings
    dists: np.ndarray  # float32 [N, G] km to the query
    mask: np.ndarray  # bool [N, G]
    retrieval_km: np.ndarray  # float64 [N]: error of the first image candidate of the full list (nan: none)
    negative_texts: np.ndarray | None = None  # object [N]: GeoRanker's "negative examples" (last entries outside the group)
    cand_score: np.ndarray | None = None  # float32 [N, G]: retrieval score within its source (nan: unknown)
    skipped: dict[str, int] = field(default_factory=dict)
    rows_read: int = 0

    def __len__(self) -> int:
        return int(self.query_key.shape[0])

    @property
    def group_size(self) -> int:
        return int(self.cand_lat.shape[1])

    def subset(self, keep: np.ndarray, reason: str | None = None) -> "Groups":
        """The groups where ``keep`` (bool [N]) is true; the others are counted under ``reason``."""
        keep = np.asarray(keep, dtype=bool)
        skipped = dict(self.skipped)
        if reason and (~keep).any():
            skipped[reason] = skipped.get(reason, 0) + int((~keep).sum())
        arrays = {
            name: getattr(self, name)[keep]
            for name in (
                "query_key", "query_id", "query_lat", "query_lon", "cand_key", "cand_id", "cand_lat", "cand_lon",
                "cand_source", "cand_rank", "cand_texts", "dists", "mask", "retrieval_km",
            )
        }
        for name in ("negative_texts", "cand_score"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)[keep]
        return Groups(name=self.name, skipped=skipped, rows_read=self.rows_read, **arrays)


def _first_present(row: dict[str, Any], names: Iterable[str]):
    for n in names:
        v = row.get(n)
        if v is not None:
            return v
    return None


def is_georanking(columns: Iterable[str]) -> bool:
    """True for a GeoRanking table (``img_id``, ``gps``, ``ref_gps``, ...) rather than candidates."""
    cols = set(columns)
    return all(c in cols for c in GEORANKING_COLUMNS) and "cand_lat" not in cols


def georanking_spec(spec: GroupSpec) -> GroupSpec:
    """The group rule GeoRanker's trainer applies: skip entry 0, then entries 1..group_size in order
    (a per-source quota, padding and the distance method are kept)."""
    if spec.quota:
        return GroupSpec(quota=spec.quota, skip_first=True, pad=spec.pad, distance=spec.distance)
    return GroupSpec(group_size=spec.group_size, sources=SOURCES, select="order", skip_first=True,
                     pad=spec.pad, distance=spec.distance)


def from_georanking(row: dict[str, Any]) -> dict[str, Any] | None:
    """One GeoRanking row as a candidates row (keys from image ids, sources from ``gps:`` ids);
    None when its candidate lists are not aligned."""
    from ..sources.metadata import sanitize_key

    img_id = row.get("img_id")
    gps = row.get("gps") or [None, None]
    ref = [g if g is not None and len(g) == 2 else [None, None] for g in (row.get("ref_gps") or [])]
    n = len(ref)
    ids = list(row.get("ref_img_id") or [None] * n)
    texts = list(row.get("ref_texts") or [[]] * n)
    if len(ids) != n or len(texts) != n:
        return None
    is_gps = [isinstance(i, str) and i.startswith("gps:") for i in ids]
    return {
        "key": sanitize_key(str(img_id)) if img_id is not None else None,
        "id": img_id,
        "lat": gps[0],
        "lon": gps[1],
        "cand_lat": [g[0] if g[0] is not None else np.nan for g in ref],
        "cand_lon": [g[1] if g[1] is not None else np.nan for g in ref],
        "cand_id": ids,
        "cand_key": [None if (i is None or g) else sanitize_key(str(i)) for i, g in zip(ids, is_gps)],
        "cand_source": ["gps" if g else "image" for g in is_gps],
        "cand_rank": list(range(n)),
        "cand_texts": texts,
    }


def check_columns(columns: Iterable[str], where: str) -> None:
    """Refuse a table that lacks the columns a ranker needs."""
    cols = set(columns)
    if is_georanking(cols):
        return
    missing = [c for c in REQUIRED if c not in cols]
    if not any(k in cols for k in KEY_COLUMNS):
        missing.append("key (or id)")
    if missing:
        raise GeobuildError(
            f"{where} lacks required column(s) {', '.join(missing)}; expected a geobuild 'candidates' table "
            "(geobuild publish, or a run folder's candidates/)"
        )


def _select(sources: list[str], spec: GroupSpec, ok: np.ndarray) -> list[int]:
    """Indices of the candidates that form the group (at most group_size)."""
    start = 1 if spec.skip_first else 0
    per: dict[str, list[int]] = {s: [] for s in spec.sources}
    ordered: list[int] = []
    for i in range(start, len(sources)):
        s = sources[i]
        if s in per and ok[i]:
            per[s].append(i)
            ordered.append(i)
    if spec.select == "order":
        return ordered[: spec.group_size]
    if spec.select == "quota":
        return [i for s, n in spec.quota for i in per[s][:n]]
    out: list[int] = []
    pos = 0
    while len(out) < spec.group_size:
        took = False
        for s in spec.sources:
            if pos < len(per[s]):
                out.append(per[s][pos])
                took = True
                if len(out) == spec.group_size:
                    break
        if not took:
            break
        pos += 1
    return out


class _Builder:
    def __init__(self, spec: GroupSpec, name: str):
        self.spec = spec
        self.name = name
        self.rows: dict[str, list] = {k: [] for k in (
            "query_key", "query_id", "query_lat", "query_lon", "cand_key", "cand_id", "cand_lat", "cand_lon",
            "cand_source", "cand_rank", "cand_score", "cand_texts", "dists", "mask", "retrieval_km", "negative_texts")}
        self.skipped: Counter = Counter()
        self.read = 0

    def add(self, row: dict[str, Any]) -> None:
        self.read += 1
        spec, G = self.spec, self.spec.group_size
        if "cand_lat" not in row and "ref_gps" in row:
            row, spec = from_georanking(row), georanking_spec(spec)
            if row is None:
                self.skipped["misaligned_candidate_lists"] += 1
                return
        key = _first_present(row, KEY_COLUMNS)
        lat, lon = row.get("lat"), row.get("lon")
        if key is None or lat is None or lon is None or not valid_latlon(np.array([lat]), np.array([lon]))[0]:
            self.skipped["bad_query"] += 1
            return
        clat = np.asarray(row.get("cand_lat") or [], dtype=np.float64)
        clon = np.asarray(row.get("cand_lon") or [], dtype=np.float64)
        n = len(clat)
        if n == 0 or len(clon) != n:
            self.skipped["no_candidates"] += 1
            return
        sources = list(row.get("cand_source") or ["image"] * n)
        keys = list(row.get("cand_key") or [None] * n)
        ids = list(row.get("cand_id") or [None] * n)
        ranks = list(row.get("cand_rank") or list(range(n)))
        scores = row.get("cand_score")
        scores = [np.nan] * n if scores is None or len(scores) != n else [np.nan if x is None else x for x in scores]
        texts = list(row.get("cand_texts") or [[]] * n)
        dist = None if spec.distance != "dataset" else row.get("query_km")
        if dist is None and spec.distance == "dataset":
            dist = row.get("cand_dist_km")
        if dist is None or len(dist) != n:
            method = "haversine" if spec.distance == "dataset" else spec.distance
            with np.errstate(invalid="ignore"):
                dist = distance_km(float(lat), float(lon), clat, clon, method)
        dist = np.asarray([np.nan if x is None else x for x in dist], dtype=np.float64)
        if not (len(sources) == len(keys) == len(ids) == len(ranks) == len(texts) == n):
            self.skipped["misaligned_candidate_lists"] += 1
            return
        ok = valid_latlon(clat, clon) & np.isfinite(dist)
        image_idx = [i for i in range(n) if sources[i] == "image" and ok[i]]
        retrieval = float(dist[min(image_idx, key=lambda i: (ranks[i], i))]) if image_idx else np.nan
        sel = _select(sources, spec, ok)
        if len(sel) < G and not (spec.pad and sel):
            self.skipped["too_few_candidates" if sel else "no_candidates"] += 1
            return
        npad = G - len(sel)
        r = self.rows
        r["query_key"].append(str(key))
        r["query_id"].append(str(row.get("id") if row.get("id") is not None else key))
        r["query_lat"].append(float(lat))
        r["query_lon"].append(float(lon))
        # GeoRanker's "negative examples": the last retrieved entries outside the group (band
        # negatives are drawn around the true location, so showing them would leak it; under a
        # quota, as in GeoRanker's evaluation, only retrieval candidates)
        chosen = set(sel)
        rest = [i for i in range(n) if i not in chosen and ok[i] and sources[i] != "negative"
                and not (spec.skip_first and i == 0) and (spec.select != "quota" or sources[i] == "image")]
        r["mask"].append([True] * len(sel) + [False] * npad)
        sel = sel + [sel[0]] * npad  # padding repeats the first candidate, masked out
        r["cand_key"].append([str(keys[i]) if keys[i] not in (None, "") else None for i in sel])
        r["cand_id"].append([ids[i] for i in sel])
        r["cand_lat"].append(clat[sel])
        r["cand_lon"].append(clon[sel])
        r["cand_source"].append([SOURCE_CODE.get(sources[i], 0) for i in sel])
        r["cand_rank"].append([int(ranks[i]) if ranks[i] is not None else 0 for i in sel])
        r["cand_score"].append([float(scores[i]) for i in sel])
        r["cand_texts"].append([tuple(str(t) for t in (texts[i] or []) if t is not None) for i in sel])
        r["dists"].append(dist[sel])
        r["retrieval_km"].append(retrieval)
        r["negative_texts"].append(negative_example_texts({
            "ref_gps": [[float(clat[i]), float(clon[i])] for i in rest],
            "ref_texts": [[str(t) for t in (texts[i] or []) if t is not None] for i in rest],
        }) if rest else [])

    def build(self) -> Groups:
        r, G = self.rows, self.spec.group_size
        N = len(r["query_key"])

        def obj(rows, shape):
            a = np.empty(shape, dtype=object)
            for i, row in enumerate(rows):
                if len(shape) == 1:
                    a[i] = row
                else:
                    for j, v in enumerate(row):
                        a[i, j] = v
            return a

        groups = Groups(
            name=self.name,
            query_key=obj(r["query_key"], (N,)),
            query_id=obj(r["query_id"], (N,)),
            query_lat=np.asarray(r["query_lat"], dtype=np.float64),
            query_lon=np.asarray(r["query_lon"], dtype=np.float64),
            cand_key=obj(r["cand_key"], (N, G)),
            cand_id=obj(r["cand_id"], (N, G)),
            cand_lat=np.asarray(r["cand_lat"], dtype=np.float64).reshape(N, G),
            cand_lon=np.asarray(r["cand_lon"], dtype=np.float64).reshape(N, G),
            cand_source=np.asarray(r["cand_source"], dtype=np.int64).reshape(N, G),
            cand_rank=np.asarray(r["cand_rank"], dtype=np.int64).reshape(N, G),
            cand_score=np.asarray(r["cand_score"], dtype=np.float32).reshape(N, G),
            cand_texts=obj(r["cand_texts"], (N, G)),
            dists=np.asarray(r["dists"], dtype=np.float32).reshape(N, G),
            mask=np.asarray(r["mask"], dtype=bool).reshape(N, G),
            retrieval_km=np.asarray(r["retrieval_km"], dtype=np.float64),
            negative_texts=obj(r["negative_texts"], (N,)),
            skipped=dict(self.skipped),
            rows_read=self.read,
        )
        if self.skipped:
            log.warning(
                "%s: %d of %d rows skipped (%s)", self.name, sum(self.skipped.values()), self.read,
                ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())),
            )
        return groups


def groups_from_rows(rows: Iterable[dict[str, Any]], spec: GroupSpec, name: str) -> Groups:
    """Cut groups from an iterable of candidate rows (dicts of the candidates schema)."""
    b = _Builder(spec, name)
    for row in rows:
        b.add(row)
    return b.build()


def _batch_rows(batch: dict[str, list]) -> Iterator[dict[str, Any]]:
    names = list(batch)
    n = len(batch[names[0]]) if names else 0
    for i in range(n):
        yield {k: batch[k][i] for k in names}


# -- published datasets -----------------------------------------------------------------------------
def dataset_dir(source: str | Path) -> Path | None:
    """The local ``DIR/dataset`` folder of a published dataset (None when ``source`` is a Hub repo)."""
    p = Path(source)
    if (p / "dataset").is_dir():
        return p / "dataset"
    if p.is_dir() and (p / "candidates").is_dir():
        return p
    if p.exists():
        raise GeobuildError(f"{p} is not a published geobuild dataset (no dataset/candidates/ inside)")
    return None


def _local_cache_dir(local: Path) -> Path:
    """A datasets cache folder unique to the files of a local dataset.

    ``datasets`` names the cache of a local folder after the folder's name and its config, so two
    published folders both called ``dataset/`` would share (and silently reuse) one cache. The
    fingerprint of the file names, sizes and modification times keeps them apart.
    """
    import hashlib

    from datasets import config as ds_config

    h = hashlib.sha1(str(local.resolve()).encode())
    for p in sorted(local.rglob("*")):
        if p.is_file() and (p.suffix == ".parquet" or p.name == "README.md"):
            st = p.stat()
            h.update(f"{p.relative_to(local)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return Path(ds_config.HF_DATASETS_CACHE) / "geobuild-local" / h.hexdigest()[:16]


def _is_parquet_source(source: str | Path) -> bool:
    s = str(source)
    return s.endswith(".parquet") and (Path(s).is_file() or any(ch in s for ch in "*?["))


def load_split(source: str | Path, split: str, config: str = "candidates"):
    """``datasets.load_dataset(SOURCE, config, split=split)`` for a local folder or Hub repo.

    A Parquet file (or glob) such as GeoRanker's own ``GeoRanking.parquet`` loads with the
    ``parquet`` builder; it has one split, ``train``.
    """
    import os

    from ..core.errors import require

    datasets = require("datasets", "hub")
    if _is_parquet_source(source):
        if split != "train":
            raise GeobuildError(f"{source} is a single Parquet file: it has only the 'train' split, not '{split}'")
        try:
            return datasets.load_dataset("parquet", data_files=str(source), split="train")
        except Exception as exc:  # unreadable or not Parquet
            raise GeobuildError(f"cannot read {source} as Parquet: {exc}") from None
    local = dataset_dir(source)
    target = str(local) if local is not None else str(source)
    kwargs = {"cache_dir": str(_local_cache_dir(local))} if local is not None else {}
    try:
        return datasets.load_dataset(target, config, split=split, **kwargs)
    except ValueError as exc:
        if "split" in str(exc).lower() or "Unknown split" in str(exc):
            raise GeobuildError(f"{source} has no '{split}' split in config '{config}' ({exc})") from None
        raise GeobuildError(f"cannot load config '{config}' of {source}: {exc}") from None
    except FileNotFoundError as exc:
        offline = " (offline: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise GeobuildError(f"dataset {source} not found{offline}: {exc}") from None


def groups_from_dataset(
    source: str | Path, split: str, spec: GroupSpec, batch_size: int = 1024, config: str = "candidates"
) -> Groups:
    """Groups of one split of a published dataset, or of a GeoRanking Parquet file (streamed in batches)."""
    ds = load_split(source, split, config)
    check_columns(ds.column_names, f"{source} ({config}, {split})")
    wanted = set(REQUIRED) | set(KEY_COLUMNS) | {
        "cand_key", "cand_id", "cand_source", "cand_rank", "cand_score", "cand_texts", "cand_dist_km", "query_km"}
    if is_georanking(ds.column_names):
        wanted = {"img_id", "gps", "ref_gps", "ref_img_id", "ref_texts"}
    ds = ds.select_columns([c for c in ds.column_names if c in wanted])

    def rows():
        for batch in ds.iter(batch_size=batch_size):
            yield from _batch_rows(batch)

    return groups_from_rows(rows(), spec, f"{source}:{split}")


# -- run folders ------------------------------------------------------------------------------------
def groups_from_run(run_dir: str | Path, spec: GroupSpec) -> Groups:
    """Groups from a run folder's ``candidates/*.parquet`` joined with ``distances/*.parquet``."""
    import pyarrow.parquet as pq

    run_dir = Path(run_dir)
    cdir, ddir = run_dir / "candidates", run_dir / "distances"
    files = sorted(p for p in cdir.glob("*.parquet")) if cdir.is_dir() else []
    if not files:
        raise GeobuildError(f"no candidates in {cdir}; run 'geobuild mine' (and 'geobuild distances') first")

    def rows():
        for f in files:
            cand = pq.read_table(f)
            check_columns(cand.column_names, str(f))
            dist_file = ddir / f.name
            dist = pq.read_table(dist_file, columns=["key", "query_km"]) if dist_file.exists() else None
            cand_rows = cand.to_pylist()
            if dist is not None:
                dist_rows = dist.to_pylist()
                if len(dist_rows) != len(cand_rows) or any(
                    a.get("key") != b["key"] for a, b in zip(cand_rows, dist_rows)
                ):
                    raise GeobuildError(f"{dist_file} does not match {f} row by row; rerun 'geobuild distances'")
                for a, b in zip(cand_rows, dist_rows):
                    a["query_km"] = b["query_km"]
            yield from cand_rows

    return groups_from_rows(rows(), spec, str(run_dir))
