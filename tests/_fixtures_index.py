"""Tiny run folders for the index and distances stages: embeddings and candidates in their formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from geobuild.core.runfolder import RunFolder


def clustered(n: int, dim: int, seed: int = 0, latent: int = 8, clusters: int = 40) -> np.ndarray:
    """L2-normalised vectors from a clustered low-rank latent space (like image embeddings)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, latent)) * 3
    z = centers[rng.integers(0, clusters, n)] + rng.normal(size=(n, latent))
    x = z @ rng.normal(size=(latent, dim)) + 0.5 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_embeddings(
    run: RunFolder, sizes: list[int], dim: int = 32, seed: int = 0, dtype: str = "float16",
    model: str = "test-model", model_dim: int | None = None, mark_done: bool = True,
) -> np.ndarray:
    """embeddings/<unit>.npy + .parquet + model.json and done/embed markers; returns all vectors."""
    x = clustered(sum(sizes), dim, seed)
    rng = np.random.default_rng(seed + 1)
    emb = run.path("embeddings")
    emb.mkdir(parents=True, exist_ok=True)
    start = 0
    for u, n in enumerate(sizes):
        name = f"{u:05d}"
        np.save(emb / f"{name}.npy", x[start : start + n].astype(dtype))
        write_meta(
            run, name,
            {
                "key": [f"{name}{i:07d}" for i in range(n)],
                "id": [f"{rng.integers(1e9)}_{u}_{i}.jpg" for i in range(n)],
                "lat": rng.uniform(-60, 60, n),
                "lon": rng.uniform(-180, 180, n),
                "author": [f"user{i % 7}" for i in range(n)],
                "city": [f"city{i % 5}" for i in range(n)],
                "country": ["Testland"] * n,
            },
        )
        if mark_done:
            run.marker_path("embed", name).parent.mkdir(parents=True, exist_ok=True)
            run.marker_path("embed", name).write_text("{}\n")
        start += n
    (emb / "model.json").write_text(
        json.dumps({"model": model, "dim": model_dim or dim, "dtype": dtype, "text": False})
    )
    return np.asarray(x.astype(dtype), dtype=np.float32)


def write_meta(run: RunFolder, unit: str, columns: dict) -> None:
    """embeddings/<unit>.parquet with the embed stage's schema (embeddings_meta)."""
    from geobuild.core.schemas import arrow_schema, table

    n = len(columns["key"])
    cols = {f: columns.get(f, [None] * n) for f in arrow_schema("embeddings_meta").names}
    pq.write_table(table("embeddings_meta", cols), run.path("embeddings", f"{unit}.parquet"))


def candidate_columns(n: int, g: int, seed: int = 0, unit: str = "00000") -> dict:
    """Columns of a candidates table (schema candidates) with ``n`` queries of ``g`` candidates."""
    rng = np.random.default_rng(seed)
    lat = rng.uniform(-80, 80, n)
    lon = rng.uniform(-180, 180, n)
    clat = np.clip(lat[:, None] + rng.normal(0, 20, (n, g)), -89.9, 89.9)
    clon = (lon[:, None] + rng.normal(0, 40, (n, g)) + 180) % 360 - 180
    s = lambda v: [[v] * g for _ in range(n)]  # noqa: E731
    cols = {
        "key": [f"{unit}{i:07d}" for i in range(n)],
        "id": [f"q{unit}_{i}.jpg" for i in range(n)],
        "shard": [unit] * n,
        "lat": lat,
        "lon": lon,
        "author": [None] * n,
        "texts": [["c", "s", "k"]] * n,
        "cand_source": s("image"),
        "cand_key": s("x"),
        "cand_id": [[f"c{i}_{j}" for j in range(g)] for i in range(n)],
        "cand_lat": clat.tolist(),
        "cand_lon": clon.tolist(),
        "cand_score": np.zeros((n, g), np.float32).tolist(),
        "cand_rank": [list(range(g))] * n,
        "cand_texts": [[["c", "s", "k"]] * g] * n,
        "cand_city": s("c"),
        "cand_county": s(""),
        "cand_state": s("s"),
        "cand_country": s("k"),
        "cand_continent": s("Europe"),
        "cand_dist_km": np.zeros((n, g), np.float32).tolist(),
        "cand_within": [[[False] * 5] * g] * n,
    }
    cols.update(_schema_defaults(cols, n, g))
    return cols


def _schema_defaults(cols: dict, n: int, g: int) -> dict:
    """Values for candidates fields added to the schema after these fixtures were written."""
    import pyarrow as pa

    from geobuild.core.schemas import arrow_schema

    out = {}
    for f in arrow_schema("candidates"):
        if f.name in cols:
            continue
        if pa.types.is_list(f.type):
            out[f.name] = [[""] * g if pa.types.is_string(f.type.value_type) else [None] * g for _ in range(n)]
        elif pa.types.is_integer(f.type):
            out[f.name] = [g] * n if f.name == "n_image" else [0] * n
        elif pa.types.is_floating(f.type):
            out[f.name] = [0.0] * n
        else:
            out[f.name] = [""] * n
    return out


def write_candidates(run: RunFolder, unit: str, columns: dict, mark_done: bool = True) -> Path:
    from geobuild.core.schemas import table

    path = run.path("candidates", f"{unit}.parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table("candidates", columns), path)
    if mark_done:
        run.marker_path("mine", unit).parent.mkdir(parents=True, exist_ok=True)
        run.marker_path("mine", unit).write_text("{}\n")
    return path
