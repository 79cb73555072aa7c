"""Synthetic runs with known geometry for the mine stage: clusters of photos whose embeddings point
in one direction per city, written in the embed stage's file format and indexed with the real
index stage."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from geobuild.artifacts.embeddings import meta_path, npy_path, save_npy, write_model_info
from geobuild.core.runfolder import RunFolder
from geobuild.core.schemas import table
from geobuild.core.runner import run_stage
from geobuild.stages.index.stage import IndexConfig, IndexStage

CITIES = {
    "paris": (48.8566, 2.3522),
    "tokyo": (35.6895, 139.6917),
    "newyork": (40.7128, -74.0060),
    "sydney": (-33.8688, 151.2093),
    "cairo": (30.0444, 31.2357),
    "rio": (-22.9068, -43.1729),
}
DIM = 16
MODEL = "synthetic-16"


@dataclass
class Photo:
    key: str
    id: str
    lat: float
    lon: float
    author: str | None
    vec: np.ndarray
    city: str


def directions(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(DIM, DIM)))
    return {c: q[i] for i, c in enumerate(CITIES)}


def make_photos(per_city: int = 8, seed: int = 1, noise: float = 0.15, jitter_km: float = 3.0) -> list[Photo]:
    """``per_city`` photos around each city; authors alternate a/b within a city."""
    rng = np.random.default_rng(seed)
    dirs = directions()
    photos = []
    for ci, (city, (lat, lon)) in enumerate(CITIES.items()):
        for j in range(per_city):
            v = dirs[city] + noise * rng.normal(size=DIM)
            v /= np.linalg.norm(v)
            dlat = rng.normal() * jitter_km / 111.0
            dlon = rng.normal() * jitter_km / (111.0 * np.cos(np.radians(lat)))
            key = f"{city}{j:03d}"
            photos.append(Photo(key, f"{key}.jpg", lat + dlat, lon + dlon, f"{city}-{'ab'[j % 2]}", v, city))
    return photos


def write_embeddings(run: RunFolder, units: dict[str, list[Photo]], model: str = MODEL, dim: int = DIM,
                     with_text: bool = False) -> None:
    """embeddings/<unit>.npy + .parquet + model.json and done/embed markers, as the embed stage writes them."""
    for unit, photos in units.items():
        x = np.stack([p.vec for p in photos]).astype(np.float16) if photos else np.zeros((0, dim), np.float16)
        save_npy(npy_path(run, unit), x)
        n = len(photos)
        cols = {
            "key": [p.key for p in photos],
            "id": [p.id for p in photos],
            "lat": [p.lat for p in photos],
            "lon": [p.lon for p in photos],
            "author": [p.author for p in photos],
        }
        for f in ("neighbourhood", "city", "county", "state", "region", "country", "continent", "location_text"):
            cols[f] = [None] * n
        if with_text:
            cols["city"] = [f"City-{p.city}" for p in photos]
            cols["country"] = [f"Country-{p.city}" for p in photos]
        pq.write_table(table("embeddings_meta", cols), meta_path(run, unit))
        marker = run.marker_path("embed", unit)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"unit": unit}))
    write_model_info(run, {"model": model, "dim": dim, "dtype": "float16", "text": False})


def gps_csv(path, seed: int = 2, per_city: int = 40, world: int = 200, spread_km: float = 40.0) -> str:
    """A GPS gallery CSV: points around every city plus points spread over the world."""
    rng = np.random.default_rng(seed)
    rows = []
    for lat, lon in CITIES.values():
        for _ in range(per_city):
            rows.append((lat + rng.normal() * spread_km / 111.0, lon + rng.normal() * spread_km / (111.0 * np.cos(np.radians(lat)))))
    z = rng.uniform(-0.9, 0.9, world)
    rows += list(zip(np.degrees(np.arcsin(z)), rng.uniform(-180, 180, world)))
    pd.DataFrame(rows, columns=["lat", "lon"]).to_csv(path, index=False)
    return str(path)


def build_run(root, photos: list[Photo] | None = None, shards: int = 2, gps: str | None = "csv",
              model: str = MODEL, with_text: bool = False) -> tuple[RunFolder, list[Photo]]:
    """A run with embeddings split round-robin over ``shards`` units and a flat index."""
    run = RunFolder(root)
    photos = photos if photos is not None else make_photos()
    units = {f"{u:05d}": [p for i, p in enumerate(photos) if i % shards == u] for u in range(shards)}
    write_embeddings(run, units, model=model, with_text=with_text)
    gps_src = "none" if gps is None else gps_csv(run.path("gps.csv")) if gps == "csv" else gps
    run_stage(IndexStage(IndexConfig(kind="flat", gps_gallery=gps_src, device="cpu")), run)
    return run, photos


_BASE: dict[str, str] = {}


def base_run_copy(dst) -> RunFolder:
    """A copy of the default synthetic run (built once per test process) at ``dst``."""
    import shutil
    import tempfile

    if "default" not in _BASE:
        root = tempfile.mkdtemp(prefix="geobuild-mine-base-")
        build_run(f"{root}/run")
        _BASE["default"] = f"{root}/run"
    shutil.copytree(_BASE["default"], dst)
    return RunFolder(dst)
