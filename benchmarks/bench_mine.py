"""Mining throughput (queries/s) and peak memory per shard, on a run with embeddings and an index.

    python -m benchmarks.bench_mine --run runs/mine-sample

Measured in one process on a temporary copy of the run:

- baseline: the bare gallery search of every query (depth K+1), the floor any miner pays;
- ``mine`` units (image + GPS + negatives + text) with the default kde scorer, with
  ``--exclude-same-author``, and with GPS candidates off; speed as queries/s and as a ratio to the
  baseline;
- the kde scorer's nearest-point probe against a dense evaluation over the whole GPS gallery
  (speed ratio and top-1 agreement);
- peak RSS of ``geobuild mine`` subprocesses mining one shard and every shard (a flat curve means
  memory does not grow with the number of shards).

Writes a JSON of the figures to ``benchmarks/results/mine_bench.json`` and prints markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def _copy_inputs(src: Path, dst: Path) -> None:
    """Only what mining reads: embeddings, index, done/embed, config."""
    for sub in ("embeddings", "index"):
        shutil.copytree(src / sub, dst / sub)
    shutil.copytree(src / "done" / "embed", dst / "done" / "embed")
    if (src / "done" / "shard").exists():
        shutil.copytree(src / "done" / "shard", dst / "done" / "shard")


def _peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one subprocess, via wait4."""
    t = time.time()
    env = dict(os.environ, GEOBUILD_NO_PROGRESS="1")
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024.0, time.time() - t


def dense_kde(nb_lat, nb_lon, nb_sim, nb_valid, gps_lat, gps_lon, k, bandwidth_km, temperature):
    """Reference kde: density at every GPS-gallery point (no probe), top-k rows per query."""
    from geobuild.geo.sphere import haversine_matrix_km

    rows = np.full((nb_lat.shape[0], k), -1)
    for i in range(nb_lat.shape[0]):
        ok = nb_valid[i]
        w = np.exp((nb_sim[i, ok] - nb_sim[i, ok].max()) / temperature)
        w /= w.sum()
        d = haversine_matrix_km(nb_lat[i, ok], nb_lon[i, ok], gps_lat, gps_lon)
        dens = (w[:, None] * np.exp(-0.5 * (d / bandwidth_km) ** 2)).sum(0)
        rows[i] = np.argsort(-dens, kind="stable")[:k]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/mine-sample", help="run folder with embeddings/ and index/")
    ap.add_argument("--kde-sample", type=int, default=200, help="queries for the probe-vs-dense kde comparison")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "mine_bench.json"))
    args = ap.parse_args()
    os.environ.setdefault("GEOBUILD_NO_PROGRESS", "1")

    from geobuild.artifacts.embeddings import embedded_units, read_embeddings
    from geobuild.stages.mine.gps_candidates import kde_candidates
    from geobuild.stages.mine.image_candidates import search_image_candidates
    from geobuild.core.runfolder import RunFolder
    from geobuild.stages.mine.stage import MineConfig, mine_unit, mining_context

    src = Path(args.run).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="bench-mine-"))
    _copy_inputs(src, tmp / "run")
    run = RunFolder(tmp / "run")
    units = embedded_units(run)
    results: dict = {"run": str(src), "units": units, "python": sys.version.split()[0], "cpu_count": os.cpu_count()}

    cfg = MineConfig()
    t = time.time()
    ctx = mining_context(run, cfg)
    results["context_seconds"] = round(time.time() - t, 3)
    results["gallery_size"] = int(ctx.gallery.ntotal)
    results["gps_points"] = int(ctx.gps_lat.size)
    queries = {u: read_embeddings(run, u) for u in units}
    n_q = sum(len(m) for _, m in queries.values())
    results["queries"] = n_q

    # baseline: the bare gallery search
    t = time.time()
    for x, _ in queries.values():
        ctx.gallery.search(np.ascontiguousarray(x, dtype=np.float32), cfg.k_image + 1)
    base_s = time.time() - t
    results["baseline_search_qps"] = n_q / base_s

    # reverse geocoder loaded before timing (it is loaded once per process in real runs too)
    from geobuild.geo.geocode import reverse_geocode

    reverse_geocode([0.0], [0.0])
    variants = {
        "mine (kde, defaults)": MineConfig(),
        "mine --exclude-same-author": MineConfig(exclude_same_author=True),
        "mine --k-gps 0": MineConfig(k_gps=0),
        "mine --negatives none": MineConfig(negatives="none"),
    }
    results["variants"] = {}
    for name, vcfg in variants.items():
        mining_context(run, vcfg)  # load outside the timing
        per_unit = []
        t = time.time()
        for u in units:
            tu = time.time()
            res = mine_unit(run, u, vcfg)
            per_unit.append({"unit": u, "queries": res.stats["queries"], "seconds": time.time() - tu,
                             **{k: v for k, v in res.stats.items() if k.startswith("seconds_")}})
        secs = time.time() - t
        results["variants"][name] = {"qps": n_q / secs, "ratio_to_baseline": (n_q / secs) / results["baseline_search_qps"],
                                     "seconds": secs, "per_unit": per_unit}

    # kde: nearest-point probe vs dense over the whole GPS gallery
    x, meta = queries[units[0]]
    xs = np.ascontiguousarray(x[: args.kde_sample], dtype=np.float32)
    keys = meta["key"].astype(str).to_numpy()[: len(xs)]
    pick = search_image_candidates(ctx.gallery, xs, keys, meta["id"].astype(str).to_numpy()[: len(xs)], None,
                                   cfg.kde_neighbours, True, ctx.g_key, ctx.g_id, None, cfg.dedup_threshold)
    valid = pick.rows >= 0
    safe = np.where(valid, pick.rows, 0)
    nb = (ctx.g_lat[safe], ctx.g_lon[safe], pick.scores, valid)
    t = time.time()
    probe = kde_candidates(*nb, ctx.gps_tree, cfg.k_gps, cfg.kde_bandwidth_km, cfg.kde_temperature)
    probe_s = time.time() - t
    t = time.time()
    dense = dense_kde(*nb, ctx.gps_lat, ctx.gps_lon, cfg.k_gps, cfg.kde_bandwidth_km, cfg.kde_temperature)
    dense_s = time.time() - t
    results["kde"] = {
        "queries": int(len(xs)),
        "probe_qps": len(xs) / probe_s,
        "dense_qps": len(xs) / dense_s,
        "speedup_probe_vs_dense": dense_s / probe_s,
        "top1_agreement": float((probe.rows[:, 0] == dense[:, 0]).mean()),
        "top10_overlap": float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(probe.rows, dense)])),
    }

    # peak RSS of geobuild mine subprocesses: one shard vs every shard
    mem = {}
    for label, spec in (("1 shard", units[0]), (f"{len(units)} shards", "all")):
        d = Path(tempfile.mkdtemp(prefix="bench-mine-rss-"))
        _copy_inputs(src, d / "run")
        rss, secs = _peak_rss_mb([sys.executable, "-m", "geobuild", "mine", "--run", str(d / "run"), "--shards", spec])
        mem[label] = {"peak_rss_mib": rss, "wall_seconds": secs}
        shutil.rmtree(d, ignore_errors=True)
    results["peak_rss"] = mem
    shutil.rmtree(tmp, ignore_errors=True)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"run: {src}  queries: {n_q}  gallery: {results['gallery_size']}  GPS points: {results['gps_points']}")
    print(f"context load (gallery, GPS tree, negative pool): {results['context_seconds']:.2f}s\n")
    print("| configuration | queries/s | ratio to bare search |")
    print("|---|---|---|")
    print(f"| bare gallery search (baseline) | {results['baseline_search_qps']:.0f} | 1.00 |")
    for name, v in results["variants"].items():
        print(f"| {name} | {v['qps']:.0f} | {v['ratio_to_baseline']:.3f} |")
    k = results["kde"]
    print(f"\nkde probe vs dense ({k['queries']} queries): {k['speedup_probe_vs_dense']:.1f}x faster, "
          f"top-1 agreement {100 * k['top1_agreement']:.1f}%, top-10 overlap {100 * k['top10_overlap']:.1f}%")
    print("\n| geobuild mine subprocess | peak RSS (MiB) | wall (s) |\n|---|---|---|")
    for label, v in mem.items():
        print(f"| {label} | {v['peak_rss_mib']:.0f} | {v['wall_seconds']:.1f} |")


if __name__ == "__main__":
    main()
