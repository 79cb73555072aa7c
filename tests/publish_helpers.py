"""A tiny but complete run folder for publish tests: real shards, candidates, distances, ledgers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml
from PIL import Image

from geobuild.core import schemas
from geobuild.geo.sphere import THRESHOLDS_KM, haversine_km
from geobuild.core.ledger import reject, write_ledger
from geobuild.core.runfolder import RunFolder
from geobuild.artifacts.shards import ShardWriter, json_bytes, write_sizes

AUTHORS = ["alice@N00", "bob@N01", "carol@N02", "dave@N03", "erin@N04", "frank@N05", "grace@N06", None]
CITIES = [("Paris", "Ile-de-France", "France"), ("Tokyo", "Tokyo", "Japan"), ("Lima", "Lima", "Peru"),
          ("Nairobi", "Nairobi", "Kenya"), ("Sydney", "NSW", "Australia"), ("Denver", "Colorado", "United States")]


def _jpeg(seed: int, size: tuple[int, int] = (96, 128)) -> bytes:
    """A noise JPEG of ``size`` (height, width): about 10 KB at the default, 1.2 KB at (24, 32)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def make_run(root: Path, per_shard: int = 12, shards: int = 2, k_image: int = 8, k_gps: int = 3,
             drop_distance: bool = True, missing_photo: bool = True, small: frozenset[int] = frozenset()) -> RunFolder:
    """Shards of ``per_shard`` photos; every photo is a query whose candidates are other photos,
    GPS points and one negative. Optionally one query lacks its distances row and one image
    candidate points at a photo no shard holds. Photos whose index is in ``small`` are 5120 bytes or
    less (GeoRanker's tar_index leaves them out)."""
    run = RunFolder(root)
    rng = np.random.default_rng(0)
    n = per_shard * shards
    k_image = min(k_image, n - 1)
    keys = [f"im{i:05d}" for i in range(n)]
    ids = [f"{1000 + i}_abc_{i}@N0{i % 8}.jpg" for i in range(n)]
    authors = [AUTHORS[i % len(AUTHORS)] for i in range(n)]
    lat = rng.uniform(-60, 70, n)
    lon = rng.uniform(-180, 180, n)
    city = [CITIES[i % len(CITIES)] for i in range(n)]
    for s in range(shards):
        unit = f"{s:05d}"
        with ShardWriter(run.shard_path(unit)) as w:
            for i in range(s * per_shard, (s + 1) * per_shard):
                meta = {"key": keys[i], "id": ids[i], "lat": float(lat[i]), "lon": float(lon[i]), "author": authors[i],
                        "source": "csv", "width": 32 if i in small else 128, "height": 24 if i in small else 96,
                        "city": city[i][0], "country": city[i][2]}
                w.write(keys[i], {"jpg": _jpeg(i, (24, 32) if i in small else (96, 128)), "json": json_bytes(meta)})
        run.marker_path("shard", unit).parent.mkdir(parents=True, exist_ok=True)
        run.marker_path("shard", unit).write_text("{}\n")
    write_sizes(run.shards_dir)
    write_ledger(run.ledger_path("shard", "00000"), [reject(None, "broken.jpg", "decode_error", "cannot identify image"),
                                                     reject("im00000", ids[0], "ok", None)])
    for s in range(shards):
        unit = f"{s:05d}"
        cols: dict[str, list] = {f["name"]: [] for f in schemas.load("candidates")["fields"]}
        dcols: dict[str, list] = {f["name"]: [] for f in schemas.load("distances")["fields"]}
        for q in range(s * per_shard, (s + 1) * per_shard):
            others = [j for j in rng.permutation(n) if j != q][:k_image]
            src = ["image"] * k_image + ["gps"] * k_gps + ["negative"]
            ckey = [keys[j] for j in others]
            cid = [ids[j] for j in others]
            if missing_photo and q == 1:
                ckey[-1], cid[-1] = "ghost00001", "ghost.jpg"
            clat = [float(lat[j]) for j in others] + list(rng.uniform(-60, 70, k_gps)) + [float(-lat[q])]
            clon = [float(lon[j]) for j in others] + list(rng.uniform(-180, 180, k_gps)) + [float(lon[q])]
            ckey += [None] * k_gps + [None]
            cid += [f"gps:{r}" for r in rng.integers(0, 1000, k_gps)] + ["gps:999"]
            ctexts = [list(city[j]) for j in others] + [["", "", "Nowhere"]] * (k_gps + 1)
            g = len(src)
            d = haversine_km(np.full(g, lat[q]), np.full(g, lon[q]), np.array(clat), np.array(clon)).astype(np.float32)
            m = haversine_km(np.repeat(clat, g), np.repeat(clon, g), np.tile(clat, g), np.tile(clon, g)).astype(np.float32)
            row = {"key": keys[q], "id": ids[q], "shard": unit, "lat": float(lat[q]), "lon": float(lon[q]), "author": authors[q],
                   "texts": list(city[q]), "cand_source": src, "cand_key": ckey, "cand_id": cid, "cand_lat": clat, "cand_lon": clon,
                   "cand_score": [float(x) for x in np.linspace(1, 0, g)], "cand_rank": list(range(g)), "cand_texts": ctexts,
                   "cand_city": [t[0] for t in ctexts], "cand_county": [""] * g, "cand_state": [t[1] for t in ctexts],
                   "cand_country": [t[2] for t in ctexts], "cand_continent": [""] * g, "cand_dist_km": [float(x) for x in d],
                   "cand_within": [[bool(x < t) for t in THRESHOLDS_KM] for x in d],
                   "n_image": k_image, "n_gps": k_gps, "n_negative": 1, "cand_band": [None] * (g - 1) + ["far"]}
            for k in cols:  # fields appended to the schema later are left null
                cols[k].append(row.get(k))
            if drop_distance and q == n - 1:
                continue
            for k, v in {"key": keys[q], "id": ids[q], "n_candidates": g, "query_km": [float(x) for x in d],
                         "matrix_km": [float(x) for x in m], "method": "haversine"}.items():
                dcols[k].append(v)
        for name, c in (("candidates", cols), ("distances", dcols)):
            path = run.path(name, f"{unit}.parquet")
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(schemas.table(name, c), path)
    (root / "config.yaml").write_text(yaml.safe_dump({
        "shard": {"source": "csv", "shard_size": per_shard},
        "mine": {"gallery": None, "k_image": k_image, "k_gps": k_gps},
        "distances": {"method": "haversine"},
    }, sort_keys=False))
    return run
