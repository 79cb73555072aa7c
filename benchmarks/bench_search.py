"""Gallery search throughput and approximate-index recall, against a plain numpy baseline.

    python -m benchmarks.bench_search [--sizes 3000 100000] [--dim 1280] [--queries 1000] [--device cpu|cuda|auto]

For each gallery size, in one process and on the same synthetic data (clustered, low-rank,
L2-normalised vectors, like image embeddings):

- baseline: one numpy matmul of all queries against the gallery + argpartition/argsort top-10;
- ``geobuild.artifacts.gallery``: the index stage's flat index built through ``IndexStage`` and searched
  with ``load_gallery(..., device=--device).search`` (faiss CPU by default; the backend used is
  reported as ``gallery_backend``);
- ``geobuild.retrieval.knn.topk_numpy``: the chunked exact numpy path (bounded memory);
- IVF-PQ (with SQ8 re-ranking) and HNSW built through the stage: recall@10 against exact search,
  queries/s, build seconds;
- when a GPU is present (whatever ``--device``): the same flat gallery searched with torch on
  CUDA (``geobuild.retrieval.knn.TorchGallery``) and, with a faiss GPU build, with faiss-GPU (flat and
  IVF-PQ), each with its queries/s, ratio to the baseline and recall@10 against it.

Speed is reported as queries/s and as a ratio to the baseline; memory as peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time

import numpy as np


def clustered(n: int, dim: int, seed: int, latent: int = 32, clusters: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, latent)) * 3
    z = centers[rng.integers(0, clusters, n)] + rng.normal(size=(n, latent))
    proj = np.random.default_rng(12345).normal(size=(latent, dim)).astype(np.float32)
    x = z.astype(np.float32) @ proj + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, repeat: int = 3):
    """Best of ``repeat`` wall times (the machine is shared) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def numpy_baseline(x: np.ndarray, q: np.ndarray, k: int = 10):
    sims = q @ x.T
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    s = np.take_along_axis(sims, part, axis=1)
    order = np.argsort(-s, axis=1)
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(part, order, axis=1)


def write_run(root: str, x: np.ndarray, per_unit: int = 50_000):
    """A run folder with x as float16 embeddings in the embed stage's format."""
    import pyarrow.parquet as pq

    from geobuild.core.runfolder import RunFolder
    from geobuild.core.schemas import arrow_schema, table

    run = RunFolder(root)
    run.path("embeddings").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for u, start in enumerate(range(0, x.shape[0], per_unit)):
        name = f"{u:05d}"
        block = x[start : start + per_unit]
        np.save(run.path("embeddings", f"{name}.npy"), block.astype(np.float16))
        n = block.shape[0]
        cols = {f: [None] * n for f in arrow_schema("embeddings_meta").names}
        cols.update(key=[f"{name}{i:07d}" for i in range(n)], id=[f"{start + i}.jpg" for i in range(n)],
                    lat=rng.uniform(-60, 60, n).tolist(), lon=rng.uniform(-180, 180, n).tolist())
        pq.write_table(table("embeddings_meta", cols), run.path("embeddings", f"{name}.parquet"))
        run.marker_path("embed", name).parent.mkdir(parents=True, exist_ok=True)
        run.marker_path("embed", name).write_text("{}")
    run.path("embeddings", "model.json").write_text(json.dumps({"model": "synthetic", "dim": x.shape[1], "dtype": "float16"}))
    return run


def gpu_info() -> dict:
    """What GPU search can use here: torch CUDA (and the device name), faiss GPUs."""
    from geobuild.retrieval import faiss_index as fi

    try:
        import torch

        cuda = bool(torch.cuda.is_available())
        name = torch.cuda.get_device_name(0) if cuda else None
    except ImportError:  # pragma: no cover
        cuda, name = False, None
    return {"torch_cuda": cuda, "gpu": name, "faiss_gpus": fi.num_gpus()}


def gpu_rows(run, x: np.ndarray, q: np.ndarray, r_base: np.ndarray, t_base: float, gpu: dict, tmp: str,
             nlist: int, pq_m: int, approx: bool) -> dict:
    """torch-CUDA and faiss-GPU search of the same gallery (empty without a GPU)."""
    from geobuild.artifacts.gallery import load_gallery
    from geobuild.retrieval.knn import TorchGallery, recall_at_k
    from geobuild.core.runner import run_stage
    from geobuild.stages.index.stage import IndexConfig, IndexStage

    out: dict = {}
    n_queries = q.shape[0]

    def row(search) -> dict:
        search()  # warm-up: CUDA context, kernels, transfers
        t, (_, r) = timed(search)
        return {"qps": n_queries / t, "vs_numpy": t_base / t, "recall@10_vs_numpy": recall_at_k(r, r_base)}

    if gpu["torch_cuda"]:
        tg = TorchGallery(x, device="cuda")
        out["torch_cuda_flat"] = row(lambda: tg.search(q, 10))
        del tg
    if gpu["faiss_gpus"] > 0:
        g = load_gallery(run, device="cuda")
        out["faiss_gpu_flat"] = dict(row(lambda: g.search(q, 10)), backend=g.backend)
        if approx:
            run_k = write_run(os.path.join(tmp, "run_ivfpq_gpu"), x)
            run_stage(IndexStage(IndexConfig(kind="ivfpq", gps_gallery="none", recall_sample=500, nlist=nlist, pq_m=pq_m)), run_k)
            gk = load_gallery(run_k, device="cuda")
            out["faiss_gpu_ivfpq"] = dict(row(lambda: gk.search(q, 10)), backend=gk.backend)
    return out


def bench_size(n: int, dim: int, n_queries: int, nlist: int, pq_m: int, approx: bool, device: str = "cpu",
               gpu: dict | None = None) -> dict:
    from geobuild.artifacts.gallery import load_gallery
    from geobuild.retrieval.knn import recall_at_k, topk_numpy
    from geobuild.core.runner import run_stage
    from geobuild.stages.index.stage import IndexConfig, IndexStage

    x = clustered(n, dim, seed=1).astype(np.float16).astype(np.float32)  # what the index stores
    q = clustered(n_queries, dim, seed=2)
    res: dict = {"n": n, "dim": dim, "queries": n_queries, "device": device}
    t_base, (_, r_base) = timed(lambda: numpy_baseline(x, q))
    res["numpy_baseline_qps"] = n_queries / t_base
    t_chunk, (_, r_chunk) = timed(lambda: topk_numpy((x[i : i + 65536] for i in range(0, n, 65536)), q, 10))
    res["knn_topk_numpy_qps"] = n_queries / t_chunk
    res["knn_topk_numpy_same_rows"] = float((r_chunk == r_base).mean())
    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(os.path.join(tmp, "run"), x)
        t = time.perf_counter()
        run_stage(IndexStage(IndexConfig(kind="flat", gps_gallery="none")), run)
        res["flat_build_s"] = time.perf_counter() - t
        g = load_gallery(run, device=device)
        res["gallery_backend"] = g.backend
        t_flat, (_, r_flat) = timed(lambda: g.search(q, 10))
        res["gallery_flat_qps"] = n_queries / t_flat
        res["gallery_flat_vs_numpy"] = t_base / t_flat
        res["gallery_flat_recall@10_vs_numpy"] = recall_at_k(r_flat, r_base)
        if approx:
            for kind, extra in (("hnsw", {}), ("ivfpq", {"nlist": nlist, "pq_m": pq_m})):
                run_k = write_run(os.path.join(tmp, f"run_{kind}"), x)
                t = time.perf_counter()
                run_stage(IndexStage(IndexConfig(kind=kind, gps_gallery="none", recall_sample=500, **extra)), run_k)
                build = time.perf_counter() - t
                gk = load_gallery(run_k, device=device)
                t_k, (_, r_k) = timed(lambda: gk.search(q, 10))
                res[kind] = {
                    "build_s": build,
                    "factory": gk.info["params"]["factory"],
                    "nprobe": gk.info["params"].get("nprobe"),
                    "stage_recall@10": gk.info["recall@10"],
                    "recall@10_new_queries": recall_at_k(r_k, r_base),
                    "qps": n_queries / t_k,
                    "vs_numpy": t_base / t_k,
                    "index_mb": os.path.getsize(run_k.path("index", "gallery.faiss")) / 2**20,
                    "backend": gk.backend,
                }
        if gpu and (gpu["torch_cuda"] or gpu["faiss_gpus"] > 0):
            res["gpu"] = gpu_rows(run, x, q, r_base, t_base, gpu, tmp, nlist, pq_m, approx)
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[3000, 100_000])
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--nlist", type=int, default=256, help="IVF lists for the IVF-PQ run")
    ap.add_argument("--pq-m", type=int, default=64, help="PQ sub-quantizers for the IVF-PQ run")
    ap.add_argument("--approx-min", type=int, default=50_000, help="build IVF-PQ/HNSW for sizes >= this")
    ap.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                    help="where load_gallery searches in the main rows (GPU rows are added whenever a GPU is present)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    import faiss

    gpu = gpu_info()
    print(f"faiss {faiss.__version__}, faiss GPUs: {gpu['faiss_gpus']}, torch CUDA: {gpu['torch_cuda']}, "
          f"GPU: {gpu['gpu'] or 'none'}, device: {args.device}, cpus: {os.cpu_count()}")
    if args.device == "cuda" and not (gpu["torch_cuda"] or gpu["faiss_gpus"]):
        raise SystemExit("error: --device cuda: no GPU here (torch CUDA unavailable, faiss has no GPUs)")
    out = []
    for n in args.sizes:
        r = bench_size(n, args.dim, args.queries, args.nlist, args.pq_m, approx=n >= args.approx_min, device=args.device, gpu=gpu)
        r["gpu_name"] = gpu["gpu"]
        out.append(r)
        print(json.dumps(r, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
