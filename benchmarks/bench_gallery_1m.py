"""A million-vector gallery: IVF-PQ index build and mining, on vectors made from real embeddings.

    python -m benchmarks.bench_gallery_1m --source runs/sample --work /tmp/g1m [--vectors 1000000]

Steps, all through the project's own code:

1. **Gallery vectors**, streamed to ``WORK/gallery/embeddings/<unit>.npy`` (float16, the embed
   stage's format, ``--unit-size`` rows per unit) with their ``.parquet`` metadata and ``done/embed``
   markers. Vector i is ``normalise(b + 0.3 (c - d) + 0.05 g / sqrt(D))`` with b, c, d three
   sample embeddings drawn uniformly (seeded) from ``SOURCE/embeddings`` and g a standard normal
   vector: a real embedding moved along a direction between two other real ones, plus a little
   isotropic noise. Its location is b's, moved by a normal 10 km in each direction; its author is
   ``a<i mod 5000>``; no location text.
2. **Held-out queries** (``--queries``, made the same way from another seed, never in the gallery)
   in ``WORK/queries`` as a one-unit embedded run.
3. ``geobuild index --run WORK/gallery`` in a subprocess (``--kind auto``: IVF-PQ with SQ8
   re-ranking above 250K vectors; the GPS gallery is GeoCLIP's 100K points): wall time, peak RSS
   (``VmHWM``), build seconds and recall@10 from ``index/info.json``, index bytes per vector.
4. recall@10 of the loaded gallery on the held-out queries against exact inner-product search
   (:func:`geobuild.retrieval.knn.topk_numpy` streamed over the float16 units), and the bare
   search's queries/s at depth k-image + 1.
5. mining the held-out queries against the gallery in this process (``mine_unit``, defaults) as
   queries/s and as a ratio to the bare search, then ``geobuild mine --gallery`` in a subprocess for
   its wall time and peak RSS.

Writes ``--json`` (default ``benchmarks/results/gallery_1m.json``) and prints markdown. Use
``--vectors 20000 --flat-max 5000`` for a quick run of the same path.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHIFT = 0.3  # weight of the direction between two other real embeddings
NOISE = 0.05  # norm of the isotropic noise
JITTER_KM = 10.0


def load_source(source: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """All embeddings (float32), latitudes and longitudes of a run, and its model.json."""
    from geobuild.artifacts.embeddings import embedded_units, read_embeddings, read_model_info

    xs, lats, lons = [], [], []
    for u in embedded_units(source):
        x, meta = read_embeddings(source, u)
        xs.append(x)
        lats.append(meta["lat"].to_numpy(np.float64))
        lons.append(meta["lon"].to_numpy(np.float64))
    return np.concatenate(xs), np.concatenate(lats), np.concatenate(lons), read_model_info(source)


def make_vectors(base: np.ndarray, lat: np.ndarray, lon: np.ndarray, n: int, rng: np.random.Generator, chunk: int = 8192):
    """``n`` vectors (float16, L2-normalised) and their (lat, lon), as the module docstring says."""
    b, c, d = (rng.integers(0, base.shape[0], n) for _ in range(3))
    out = np.empty((n, base.shape[1]), dtype=np.float16)
    for s in range(0, n, chunk):  # float32 work arrays of one chunk only
        e = min(n, s + chunk)
        x = base[b[s:e]] + SHIFT * (base[c[s:e]] - base[d[s:e]])
        x += (NOISE / np.sqrt(base.shape[1])) * rng.standard_normal(x.shape, dtype=np.float32)
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    dlat = rng.normal(0.0, JITTER_KM / 111.2, n)
    dlon = rng.normal(0.0, JITTER_KM / 111.2, n) / np.maximum(np.cos(np.radians(lat[b])), 0.05)
    la = np.clip(lat[b] + dlat, -89.9, 89.9)
    lo = (lon[b] + dlon + 540.0) % 360.0 - 180.0
    return out, la, lo


def write_unit(run, unit: str, x: np.ndarray, lat: np.ndarray, lon: np.ndarray, first: int, prefix: str) -> None:
    """embeddings/<unit>.npy + .parquet and the done/embed marker, as the embed stage writes them."""
    import pyarrow.parquet as pq

    from geobuild.artifacts.embeddings import meta_path, npy_path, save_npy
    from geobuild.core.schemas import table

    save_npy(npy_path(run, unit), x)
    n = x.shape[0]
    keys = [f"{prefix}{first + i:07d}" for i in range(n)]
    cols = {"key": keys, "id": keys, "lat": lat, "lon": lon, "author": [f"a{(first + i) % 5000}" for i in range(n)]}
    for f in ("neighbourhood", "city", "county", "state", "region", "country", "continent", "location_text"):
        cols[f] = [None] * n
    with open(meta_path(run, unit), "wb") as fh:
        pq.write_table(table("embeddings_meta", cols), fh)
    marker = run.marker_path("embed", unit)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"unit": unit}))


def write_run(root: Path, base, lat, lon, model: dict, n: int, unit_size: int, seed: int, prefix: str) -> float:
    """A run folder holding ``n`` generated vectors in units of ``unit_size``; returns seconds."""
    from geobuild.artifacts.embeddings import write_model_info
    from geobuild.core.runfolder import RunFolder

    t = time.time()
    run = RunFolder(root)
    rng = np.random.default_rng(seed)
    for u, first in enumerate(range(0, n, unit_size)):
        x, la, lo = make_vectors(base, lat, lon, min(unit_size, n - first), rng)
        write_unit(run, f"{u:05d}", x, la, lo, first, prefix)
    write_model_info(run, {k: model[k] for k in ("model", "dim", "dtype", "text", "has_text", "image_size") if k in model})
    return time.time() - t


def machine_state() -> dict:
    """Load average and the busiest other processes (the machine is shared)."""
    ps = subprocess.run(["ps", "-eo", "pcpu,rss,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout.splitlines()
    return {"loadavg": os.getloadavg(), "top_processes": ps[1:8]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="runs/sample", help="an embedded run whose vectors seed the gallery")
    ap.add_argument("--work", required=True, help="folder for the gallery and query runs (needs ~2.7 GB per 1M vectors)")
    ap.add_argument("--vectors", type=int, default=1_000_000)
    ap.add_argument("--unit-size", type=int, default=50_000, help="vectors per embeddings unit")
    ap.add_argument("--queries", type=int, default=1000, help="held-out queries (recall and mining)")
    ap.add_argument("--flat-max", type=int, default=250_000, help="geobuild index --flat-max (auto: IVF-PQ above)")
    ap.add_argument("--gps-gallery", default="geoclip", help="geobuild index --gps-gallery (geoclip or a CSV)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "gallery_1m.json"))
    args = ap.parse_args()
    os.environ.setdefault("GEOBUILD_NO_PROGRESS", "1")

    from benchmarks.bench_mine import peak_rss_mb
    from geobuild.artifacts.embeddings import embedded_units, read_embeddings
    from geobuild.artifacts.gallery import load_gallery
    from geobuild.core.runfolder import RunFolder
    from geobuild.retrieval.knn import recall_at_k, topk_numpy
    from geobuild.stages.mine.stage import MineConfig, mine_unit, mining_context

    work = Path(args.work).resolve()
    g_root, q_root = work / "gallery", work / "queries"
    res: dict = {"vectors": args.vectors, "queries": args.queries, "unit_size": args.unit_size, "seed": args.seed,
                 "source": str(Path(args.source).resolve()), "cpu_count": os.cpu_count(), "machine_before": machine_state(),
                 "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                 "recipe": f"normalise(b + {SHIFT} (c - d) + {NOISE} g / sqrt(D)), b, c, d sample embeddings, "
                           f"g ~ N(0, I); location of b jittered by N(0, {JITTER_KM} km)"}

    # 1-2. generated gallery and held-out queries (skipped when already complete)
    base, lat, lon, model = load_source(Path(args.source))
    res["source_vectors"] = int(base.shape[0])
    n_units = -(-args.vectors // args.unit_size)
    if len(embedded_units(RunFolder(g_root))) != n_units:
        res["write_gallery_seconds"] = write_run(g_root, base, lat, lon, model, args.vectors, args.unit_size, args.seed, "g")
    if len(embedded_units(RunFolder(q_root))) != 1:
        write_run(q_root, base, lat, lon, model, args.queries, args.queries, args.seed + 1_000_003, "q")
    del base
    res["gallery_npy_bytes"] = sum((g_root / "embeddings" / f"{u:05d}.npy").stat().st_size for u in range(n_units))

    # 3. the index stage, in its own process
    cmd = [sys.executable, "-m", "geobuild", "index", "--run", str(g_root), "--flat-max", str(args.flat_max), "--device", "cpu",
           "--gps-gallery", args.gps_gallery]
    step = work / "index_step.json"  # a rerun after a later failure reuses the measured build
    if step.exists() and (g_root / "done" / "index" / "gallery").exists():
        rss, wall = json.loads(step.read_text())
    else:
        rss, wall = peak_rss_mb(cmd)
        step.write_text(json.dumps([rss, wall]))
    info = json.loads((g_root / "index" / "info.json").read_text())
    # timings are the index stage's unit stats (info.json describes the index, not how long it took)
    g_run = RunFolder(g_root)
    gal_stats = json.loads(g_run.stats_path("index", "gallery").read_text())
    gps_path = g_run.stats_path("index", "gps")  # absent with --gps-gallery none
    gps_stats = json.loads(gps_path.read_text()) if gps_path.exists() else {}
    faiss_bytes = (g_root / "index" / "gallery.faiss").stat().st_size
    ids_bytes = (g_root / "index" / "ids.parquet").stat().st_size
    res["index"] = {
        "command": " ".join(cmd[1:]), "peak_rss_mib": rss, "wall_seconds": wall, "kind": info["kind"],
        "factory": info["params"]["factory"], "params": info["params"], "ntotal": info["ntotal"],
        "gallery_build_seconds": gal_stats["build_seconds"], "gps_encode_seconds": gps_stats.get("encode_seconds"),
        "recall@10_gallery_sample": info["recall@10"], "recall_sample": info["recall_sample"],
        "faiss_bytes": faiss_bytes, "faiss_bytes_per_vector": faiss_bytes / info["ntotal"],
        "ids_parquet_bytes_per_vector": ids_bytes / info["ntotal"],
    }

    # 4. recall@10 on the held-out queries vs exact search, and the bare search's speed
    q_run = RunFolder(q_root)
    (q_unit,) = embedded_units(q_run)
    q, _ = read_embeddings(q_run, q_unit)
    gallery = load_gallery(g_root, device="cpu")
    k_base = MineConfig().k_image + 1
    gallery.search(q[:10], k_base)  # warm
    t = time.time()
    _, approx = gallery.search(q, 10)
    search10_s = time.time() - t
    t = time.time()
    gallery.search(q, k_base)
    base_s = time.time() - t

    def blocks():
        for u in embedded_units(RunFolder(g_root)):
            vecs, _ = read_embeddings(RunFolder(g_root), u, mmap=True)
            for i in range(0, vecs.shape[0], 65536):
                yield vecs[i : i + 65536]

    t = time.time()
    _, exact = topk_numpy(blocks(), q, 10)
    exact_s = time.time() - t
    res["search"] = {
        "recall@10_heldout": recall_at_k(approx, exact, 10), "heldout_queries": int(q.shape[0]),
        "search_qps_k10": q.shape[0] / search10_s, "bare_search_qps": q.shape[0] / base_s, "bare_search_depth": k_base,
        "exact_numpy_qps": q.shape[0] / exact_s, "nprobe": info["params"].get("nprobe"), "k_factor": info["params"].get("k_factor"),
    }
    del gallery

    # 5. mining the held-out queries against the gallery: in process, then as a subprocess
    cfg = MineConfig(gallery=str(g_root), device="cpu")
    t = time.time()
    ctx = mining_context(q_run, cfg)
    context_s = time.time() - t
    from geobuild.geo.geocode import reverse_geocode

    reverse_geocode([0.0], [0.0])  # loaded once per process in real runs too
    t = time.time()
    ctx.gallery.search(q, k_base)
    base2_s = time.time() - t
    t = time.time()
    out = mine_unit(q_run, q_unit, cfg)
    mine_s = time.time() - t
    res["mine"] = {
        "context_seconds": context_s, "qps": q.shape[0] / mine_s, "bare_search_qps": q.shape[0] / base2_s,
        "ratio_to_bare_search": base2_s / mine_s, "stats": {k: v for k, v in out.stats.items() if k.startswith("seconds_")},
        "candidates": out.stats.get("candidates"),
    }
    del ctx
    shutil.rmtree(q_root / "done" / "mine", ignore_errors=True)  # mine the unit again (same config: no --overwrite reset)
    cmd = [sys.executable, "-m", "geobuild", "mine", "--run", str(q_root), "--gallery", str(g_root), "--device", "cpu"]
    rss, wall = peak_rss_mb(cmd)
    res["mine"].update({"command": " ".join(cmd[1:]), "subprocess_peak_rss_mib": rss, "subprocess_wall_seconds": wall})
    res["bench_process_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["machine_after"] = machine_state()

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2, default=float) + "\n")
    ix, s, m = res["index"], res["search"], res["mine"]
    print(f"gallery: {ix['ntotal']} vectors, {ix['factory']} (nprobe {s['nprobe']}, k_factor {s['k_factor']})")
    print("| figure | value |\n|---|---|")
    print(f"| index build (gallery unit) | {ix['gallery_build_seconds']:.0f} s |")
    gps_s = ix["gps_encode_seconds"]
    print(f"| geobuild index wall ({'no GPS gallery' if gps_s is None else f'incl. GPS gallery encoding {gps_s:.0f} s'}) | {ix['wall_seconds']:.0f} s |")
    print(f"| geobuild index peak RSS | {ix['peak_rss_mib']:.0f} MiB |")
    print(f"| index bytes per vector (gallery.faiss) | {ix['faiss_bytes_per_vector']:.0f} |")
    print(f"| recall@10, {s['heldout_queries']} held-out queries vs exact | {s['recall@10_heldout']:.4f} |")
    print(f"| recall@10, {ix['recall_sample']} gallery vectors (index stage's check) | {ix['recall@10_gallery_sample']:.4f} |")
    print(f"| bare search, depth {k_base} | {s['bare_search_qps']:.0f} queries/s |")
    print(f"| exact numpy search (float16 units streamed) | {s['exact_numpy_qps']:.1f} queries/s |")
    print(f"| mine (defaults, in process) | {m['qps']:.0f} queries/s ({m['ratio_to_bare_search']:.3f} of bare search) |")
    print(f"| mine context load (gallery, ids, GPS tree) | {m['context_seconds']:.1f} s |")
    print(f"| geobuild mine subprocess peak RSS / wall | {m['subprocess_peak_rss_mib']:.0f} MiB / {m['subprocess_wall_seconds']:.0f} s |")


if __name__ == "__main__":
    main()
