"""Leave-one-out nearest-neighbour geolocation over a run's embeddings.

Each photo is located at the GPS of its most similar other photo (cosine similarity of the
L2-normalised embeddings), never one by the same author; the error is the haversine distance.
The baseline picks a random allowed neighbour instead (mean over seeds). Accuracy counts an
error strictly below 1 / 25 / 200 / 750 / 2500 km (``geobuild.geo.sphere.accuracy_at``).

    python -m benchmarks.loo_knn --run RUN [--seeds 5] [--out benchmarks/results/embed.md]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from geobuild.artifacts.embeddings import embedded_units, read_embeddings, read_model_info
from geobuild.geo.sphere import THRESHOLDS_KM, accuracy_at, haversine_km, valid_latlon


def load_run(run: str) -> tuple[np.ndarray, pd.DataFrame]:
    parts = [read_embeddings(run, u) for u in embedded_units(run)]
    emb = np.concatenate([p[0] for p in parts])
    meta = pd.concat([p[1] for p in parts], ignore_index=True)
    ok = valid_latlon(meta["lat"].to_numpy(float), meta["lon"].to_numpy(float))
    return emb[ok], meta[ok].reset_index(drop=True)


def allowed_mask(authors: pd.Series, rows: np.ndarray) -> np.ndarray:
    """[len(rows), N] True where a neighbour may be used: not itself, not the same author."""
    a = authors.fillna("").to_numpy(object)
    n = len(a)
    mask = np.ones((len(rows), n), dtype=bool)
    mask[np.arange(len(rows)), rows] = False
    same = (a[rows][:, None] == a[None, :]) & (a[rows][:, None] != "")
    return mask & ~same


def loo_nearest(emb: np.ndarray, meta: pd.DataFrame, block: int = 512) -> np.ndarray:
    """Error (km) of each photo located at its nearest allowed neighbour."""
    lat, lon = meta["lat"].to_numpy(float), meta["lon"].to_numpy(float)
    err = np.empty(len(meta))
    for s in range(0, len(meta), block):
        rows = np.arange(s, min(s + block, len(meta)))
        sims = emb[rows] @ emb.T
        sims[~allowed_mask(meta["author"], rows)] = -np.inf
        nn = sims.argmax(1)
        err[rows] = haversine_km(lat[rows], lon[rows], lat[nn], lon[nn])
    return err


def random_neighbour(meta: pd.DataFrame, seed: int, block: int = 512) -> np.ndarray:
    """Error (km) of each photo located at a uniformly random allowed neighbour."""
    rng = np.random.default_rng(seed)
    lat, lon = meta["lat"].to_numpy(float), meta["lon"].to_numpy(float)
    err = np.empty(len(meta))
    for s in range(0, len(meta), block):
        rows = np.arange(s, min(s + block, len(meta)))
        scores = rng.random((len(rows), len(meta)))
        scores[~allowed_mask(meta["author"], rows)] = -1.0
        pick = scores.argmax(1)
        err[rows] = haversine_km(lat[rows], lon[rows], lat[pick], lon[pick])
    return err


def table(run: str, seeds: int = 5) -> str:
    emb, meta = load_run(run)
    info = read_model_info(run)
    knn = accuracy_at(loo_nearest(emb, meta))
    rand = [accuracy_at(random_neighbour(meta, seed)) for seed in range(seeds)]
    keys = [f"acc@{t:g}km" for t in THRESHOLDS_KM]
    head = "| method | " + " | ".join(f"< {t:g} km" for t in THRESHOLDS_KM) + " |"
    sep = "|---|" + "---|" * len(keys)
    row_knn = f"| LOO 1-NN, {info['model']} ({info['dim']}-d) | " + " | ".join(f"{100 * knn[k]:.2f}" for k in keys) + " |"
    row_rand = f"| random neighbour (mean of {seeds} seeds) | " + " | ".join(
        f"{100 * np.mean([r[k] for r in rand]):.2f} ± {100 * np.std([r[k] for r in rand]):.2f}" for k in keys
    ) + " |"
    n_auth = meta["author"].nunique()
    return (
        f"{len(meta)} photos with valid GPS, {n_auth} authors; neighbours by the same author excluded; "
        f"accuracy in % (error strictly below the threshold).\n\n{head}\n{sep}\n{row_knn}\n{row_rand}\n"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="run folder with embeddings/")
    ap.add_argument("--seeds", type=int, default=5, help="random-baseline seeds")
    args = ap.parse_args(argv)
    sys.stdout.write(table(args.run, args.seeds))


if __name__ == "__main__":
    main()
