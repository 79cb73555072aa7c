"""A small synthetic GeoRanking dataset written in the published layout (real Parquet, real tars).

Six regions around the world each have a colour; every photo (queries and gallery) is a noisy
JPEG of its region's colour, located near the region's centre. Each query gets image candidates
(one from its own region, the others from other regions, in random order) and GPS candidates
(points of other regions), so the closest candidate is the one whose photo matches the query's
colour: a ranker that learns to compare photos beats random ranking and top-1 retrieval.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from geobuild.geo.sphere import haversine_km
from geobuild.artifacts.shards import ShardWriter, json_bytes

REGIONS = [
    # lat, lon, colour, city, state, country
    (48.85, 2.35, (200, 40, 40), "Paris", "Ile-de-France", "France"),
    (40.71, -74.0, (40, 200, 40), "New York", "New York", "United States"),
    (-33.87, 151.2, (40, 40, 200), "Sydney", "New South Wales", "Australia"),
    (35.68, 139.69, (200, 200, 40), "Tokyo", "Tokyo", "Japan"),
    (-22.9, -43.2, (200, 40, 200), "Rio de Janeiro", "Rio de Janeiro", "Brazil"),
    (30.04, 31.24, (40, 200, 200), "Cairo", "Cairo", "Egypt"),
]

CARD = """---
configs:
- config_name: candidates
  default: true
  data_files:
  - split: train
    path: candidates/train-*.parquet
  - split: validation
    path: candidates/validation-*.parquet
---
# synthetic
"""


def jpeg(colour, rng, size=24) -> bytes:
    from PIL import Image

    arr = np.clip(np.asarray(colour, np.float32)[None, None, :] + rng.normal(0, 25, (size, size, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _near(rng, r, km=30.0):
    lat, lon = REGIONS[r][0], REGIONS[r][1]
    return lat + rng.uniform(-1, 1) * km / 111.0, lon + rng.uniform(-1, 1) * km / 111.0


def make_rows(n: int, prefix: str, rng, gallery: list[dict], n_image: int = 4, n_gps: int = 2) -> tuple[list[dict], list[dict]]:
    """Candidate rows (candidates schema + query_km) and the query photos."""
    rows, photos = [], []
    by_region = {r: [g for g in gallery if g["region"] == r] for r in range(len(REGIONS))}
    for i in range(n):
        r = int(rng.integers(len(REGIONS)))
        lat, lon = _near(rng, r)
        key = f"{prefix}{i:04d}"
        photos.append({"key": key, "region": r, "lat": lat, "lon": lon})
        others = [x for x in range(len(REGIONS)) if x != r]
        img_regions = [r] + list(rng.choice(others, n_image - 1, replace=False))
        rng.shuffle(img_regions)
        cands = []
        for rank, cr in enumerate(img_regions):
            g = by_region[int(cr)][int(rng.integers(len(by_region[int(cr)])))]
            cands.append(("image", g["key"], g["key"], g["lat"], g["lon"], rank, int(cr)))
        for rank, cr in enumerate(rng.choice(others, n_gps, replace=False)):
            glat, glon = _near(rng, int(cr), km=80)
            cands.append(("gps", None, f"gps:{int(cr)}{rank}", glat, glon, rank, int(cr)))
        clat = np.array([c[3] for c in cands])
        clon = np.array([c[4] for c in cands])
        d = haversine_km(lat, lon, clat, clon).astype(np.float32)
        rows.append({
            "key": key, "id": f"{key}.jpg", "shard": "00000", "lat": lat, "lon": lon, "author": f"a{i % 7}",
            "texts": list(REGIONS[r][3:]),
            "cand_source": [c[0] for c in cands], "cand_key": [c[1] for c in cands], "cand_id": [c[2] for c in cands],
            "cand_lat": clat.tolist(), "cand_lon": clon.tolist(),
            "cand_score": [1.0 - 0.1 * c[5] for c in cands], "cand_rank": [c[5] for c in cands],
            "cand_texts": [list(REGIONS[c[6]][3:]) for c in cands],
            "cand_dist_km": d.tolist(), "query_km": d.tolist(),
        })
    return rows, photos


def make_gallery(rng, per_region: int = 6) -> list[dict]:
    out = []
    for r in range(len(REGIONS)):
        for j in range(per_region):
            lat, lon = _near(rng, r, km=10)
            out.append({"key": f"g{r}{j:03d}", "region": r, "lat": lat, "lon": lon})
    return out


def write_tar(path: Path, photos: list[dict], rng) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with ShardWriter(path) as w:
        for p in photos:
            meta = {"key": p["key"], "id": p["key"], "lat": p["lat"], "lon": p["lon"], "author": None, "source": "synthetic"}
            w.write(p["key"], {"jpg": jpeg(REGIONS[p["region"]][2], rng), "json": json_bytes(meta)})


def make_dataset(root: Path, n_train: int = 96, n_val: int = 40, seed: int = 0, drop_columns: tuple = ()) -> Path:
    """Write ``root/dataset`` (Parquet configs) and ``root/images`` (WebDataset tars)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    gallery = make_gallery(rng)
    train_rows, train_photos = make_rows(n_train, "t", rng, gallery)
    val_rows, val_photos = make_rows(n_val, "v", rng, gallery)
    ds = root / "dataset"
    (ds / "candidates").mkdir(parents=True, exist_ok=True)
    (ds / "README.md").write_text(CARD)
    for split, rows in (("train", train_rows), ("validation", val_rows)):
        table = pa.Table.from_pylist(rows)
        if drop_columns:
            table = table.drop_columns(list(drop_columns))
        pq.write_table(table, ds / "candidates" / f"{split}-00000-of-00001.parquet")
    write_tar(root / "images" / "train" / "00000.tar", train_photos + gallery, rng)
    write_tar(root / "images" / "validation" / "00000.tar", val_photos, rng)
    (root / "images" / "manifest.json").write_text(json.dumps({"synthetic": True}))
    return root


def make_runs(root: Path, n: int = 30, seed: int = 5) -> tuple[Path, Path, list[dict]]:
    """A gallery run folder (shards) and a query run folder (shards, candidates/, distances/)."""
    from geobuild.core.schemas import arrow_schema, table
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    gallery = make_gallery(rng)
    rows, photos = make_rows(n, "q", rng, gallery)
    gal, run = root / "gallery", root / "queries"
    write_tar(gal / "shards" / "00000.tar", gallery, rng)
    write_tar(run / "shards" / "00000.tar", photos, rng)
    cand_cols = {k: [] for k in (
        "key", "id", "shard", "lat", "lon", "author", "texts", "cand_source", "cand_key", "cand_id", "cand_lat",
        "cand_lon", "cand_score", "cand_rank", "cand_texts", "cand_city", "cand_county", "cand_state",
        "cand_country", "cand_continent", "cand_dist_km", "cand_within", "n_image", "n_gps", "n_negative", "cand_band")}
    dist_cols = {k: [] for k in ("key", "id", "n_candidates", "query_km", "matrix_km", "method")}
    for r in rows:
        G = len(r["cand_lat"])
        for k in cand_cols:
            if k in r:
                cand_cols[k].append(r[k])
        cand_cols["cand_key"][-1] = [k or "" for k in r["cand_key"]]
        cand_cols["cand_city"].append([t[0] for t in r["cand_texts"]])
        cand_cols["cand_county"].append([""] * G)
        cand_cols["cand_state"].append([t[1] for t in r["cand_texts"]])
        cand_cols["cand_country"].append([t[2] for t in r["cand_texts"]])
        cand_cols["cand_continent"].append([""] * G)
        cand_cols["n_image"].append(sum(1 for x in r["cand_source"] if x == "image"))
        cand_cols["n_gps"].append(sum(1 for x in r["cand_source"] if x == "gps"))
        cand_cols["n_negative"].append(0)
        cand_cols["cand_band"].append([None] * G)
        cand_cols["cand_within"].append([[d < t for t in (1, 25, 200, 750, 2500)] for d in r["cand_dist_km"]])
        m = haversine_km(np.array(r["cand_lat"])[:, None], np.array(r["cand_lon"])[:, None],
                         np.array(r["cand_lat"])[None, :], np.array(r["cand_lon"])[None, :])
        dist_cols["key"].append(r["key"])
        dist_cols["id"].append(r["id"])
        dist_cols["n_candidates"].append(G)
        dist_cols["query_km"].append(r["query_km"])
        dist_cols["matrix_km"].append(m.astype(np.float32).reshape(-1).tolist())
        dist_cols["method"].append("haversine")
    (run / "candidates").mkdir(parents=True)
    (run / "distances").mkdir(parents=True)
    cand_cols = {k: v for k, v in cand_cols.items() if k in arrow_schema("candidates").names}
    pq.write_table(table("candidates", cand_cols), run / "candidates" / "00000.parquet")
    pq.write_table(table("distances", dist_cols), run / "distances" / "00000.parquet")
    return gal, run, rows
