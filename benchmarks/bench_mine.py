"""Mining throughput (queries/s) and peak memory per shard, on a run with embeddings and an index.

    python -m benchmarks.bench_mine --run runs/sample [--reference 0465934]

Measured in one process on a temporary copy of the run:

- baseline: the bare gallery search of every query (depth K+1), the floor any miner pays;
- ``mine`` units (image + GPS + negatives + text) with the default kde scorer, with
  ``--exclude-same-author``, with distance-band negatives and with GPS candidates off; speed as
  queries/s and as a ratio to the baseline, for this checkout's code and for the mining code of
  git revision ``--reference`` (loaded from ``git archive`` as a second package,
  ``geobuild_ref``), their passes interleaved, each with a freshly loaded context (one process
  mining every unit: per-process caches start empty); whether both wrote the same candidates bytes;
- the kde step alone, this code against the reference's (rows and scores compared bytewise);
- the kde scorer's nearest-point probe against a dense evaluation over the whole GPS gallery
  (speed ratio and top-1 agreement);
- peak RSS (``VmHWM``) of ``geobuild mine`` subprocesses mining one shard and every shard (a flat
  curve means memory does not grow with the number of shards).

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
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
#: the last revision before the batched kde and the vectorised candidate assembly
REFERENCE = "0465934a067a2d4bc42466d63baa0012d5e8cc65"


def load_reference(ref: str, dst: Path) -> types.ModuleType:
    """``geobuild`` (and ``schemas/``) as of git revision ``ref``, imported as package ``geobuild_ref``."""
    import importlib.util
    import io
    import tarfile

    tar = subprocess.run(["git", "-C", str(REPO), "archive", ref, "geobuild", "schemas"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        tf.extractall(dst, filter="data")
    spec = importlib.util.spec_from_file_location("geobuild_ref", dst / "geobuild" / "__init__.py",
                                                  submodule_search_locations=[str(dst / "geobuild")])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["geobuild_ref"] = mod
    spec.loader.exec_module(mod)
    return mod


def _copy_inputs(src: Path, dst: Path) -> None:
    """Only what mining reads: embeddings, index, done/embed, config."""
    for sub in ("embeddings", "index"):
        shutil.copytree(src / sub, dst / sub)
    shutil.copytree(src / "done" / "embed", dst / "done" / "embed")
    if (src / "done" / "shard").exists():
        shutil.copytree(src / "done" / "shard", dst / "done" / "shard")


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one subprocess.

    The peak is the high-water mark (``VmHWM``) of the child's own address space, read from
    ``/proc`` every 20 ms: ``wait4``'s ``ru_maxrss`` is not used because Linux carries the parent's
    peak over into the child through vfork + exec, so it reports at least the parent's peak.
    """
    t = time.time()
    env = dict(os.environ, GEOBUILD_NO_PROGRESS="1")
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        hwm_kb = 0
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            hwm_kb = max(hwm_kb, int(line.split()[1]))
            except (FileNotFoundError, ProcessLookupError, ValueError):
                pass
            time.sleep(0.02)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed: {err.read().decode()[-3000:]}")
    return hwm_kb / 1024.0, time.time() - t


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


def _mine_all(mine_unit, run, units, cfg) -> tuple[float, list[dict], dict[str, bytes]]:
    """(seconds, per-unit stats, candidates bytes per unit) of mining every unit in turn."""
    from geobuild.artifacts.candidates import candidates_path

    per_unit, out = [], {}
    t = time.time()
    for u in units:
        tu = time.time()
        res = mine_unit(run, u, cfg)
        per_unit.append({"unit": u, "queries": res.stats["queries"], "seconds": time.time() - tu,
                         **{k: v for k, v in res.stats.items() if k.startswith("seconds_")}})
        out[u] = candidates_path(run, u).read_bytes()
    return time.time() - t, per_unit, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/sample", help="run folder with embeddings/ and index/")
    ap.add_argument("--reference", default=REFERENCE, help="git revision whose mining code is the 'before' (empty: skip)")
    ap.add_argument("--repeat", type=int, default=2, help="timed passes per variant and code, interleaved (best kept)")
    ap.add_argument("--kde-sample", type=int, default=200, help="queries for the probe-vs-dense kde comparison")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "mine_bench.json"))
    args = ap.parse_args()
    os.environ.setdefault("GEOBUILD_NO_PROGRESS", "1")

    from geobuild.artifacts.embeddings import embedded_units, read_embeddings
    from geobuild.stages.mine.gps_candidates import kde_candidates
    from geobuild.stages.mine.image_candidates import search_image_candidates
    from geobuild.core.runfolder import RunFolder
    from geobuild.stages.mine import stage as this_stage
    from geobuild.stages.mine.stage import MineConfig, mining_context

    src = Path(args.run).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="bench-mine-"))
    _copy_inputs(src, tmp / "run")
    run = RunFolder(tmp / "run")
    units = embedded_units(run)
    results: dict = {"run": str(src), "units": units, "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
                     "loadavg_before": os.getloadavg(), "reference": args.reference or None}
    ref = None
    if args.reference:
        ref = load_reference(args.reference, tmp / "ref")
        import importlib

        ref_stage = importlib.import_module("geobuild_ref.stages.mine.stage")
        ref_gps = importlib.import_module("geobuild_ref.stages.mine.gps_candidates")
        ref_run = importlib.import_module("geobuild_ref.core.runfolder").RunFolder(tmp / "run")

    cfg = MineConfig()
    t = time.time()
    ctx = mining_context(run, cfg)
    results["context_seconds"] = round(time.time() - t, 3)
    results["gallery_size"] = int(ctx.gallery.ntotal)
    results["gps_points"] = int(ctx.gps_lat.size)
    queries = {u: read_embeddings(run, u) for u in units}
    n_q = sum(len(m) for _, m in queries.values())
    results["queries"] = n_q

    def bare_search() -> float:
        t = time.time()
        for x, _ in queries.values():
            ctx.gallery.search(np.ascontiguousarray(x, dtype=np.float32), cfg.k_image + 1)
        return n_q / (time.time() - t)

    # reverse geocoder loaded before timing (it is loaded once per process in real runs too)
    from geobuild.geo.geocode import reverse_geocode

    reverse_geocode([0.0], [0.0])
    variants = {
        "mine (kde, defaults)": {},
        "mine --exclude-same-author": {"exclude_same_author": True},
        "mine --negatives near=2,regional=2,far=2": {"negatives": "near=2,regional=2,far=2"},
        "mine --k-gps 0": {"k_gps": 0},
    }
    results["variants"] = {}
    base_qps = []
    for name, opts in variants.items():
        codes = {"this": (run, MineConfig(**opts), this_stage)}
        if ref is not None:
            codes["reference"] = (ref_run, ref_stage.MineConfig(**opts), ref_stage)
        passes: dict[str, list] = {label: [] for label in codes}
        for _ in range(max(args.repeat, 1)):  # the two codes' passes interleaved
            for label, (vrun, vcfg, stage) in codes.items():
                # a fresh context per pass, loaded outside the timing: each pass is one process's
                # first mining of every unit (its per-process caches start empty)
                stage._CONTEXTS.clear()
                stage.mining_context(vrun, vcfg)
                base_qps.append(bare_search())
                passes[label].append(_mine_all(stage.mine_unit, vrun, units, vcfg))
        row: dict = {}
        for label, done in passes.items():
            secs, per_unit, _ = min(done, key=lambda p: p[0])
            row[label] = {"qps": n_q / secs, "seconds": secs, "per_unit": per_unit,
                          "seconds_all_passes": [p[0] for p in done]}
        if "reference" in row:
            row["identical_candidates_bytes"] = all(p[2] == passes["reference"][0][2] for p in passes["this"])
            row["speedup"] = row["this"]["qps"] / row["reference"]["qps"]
            row["speedup_by_pass"] = [r[0] / t[0] for t, r in zip(passes["this"], passes["reference"])]
        results["variants"][name] = row
    # the bare search is timed before every mining pass; its best is the baseline of every ratio
    results["baseline_search_qps"] = max(base_qps)
    results["baseline_search_qps_all"] = base_qps
    for row in results["variants"].values():
        for label in ("this", "reference"):
            if label in row:
                row[label]["ratio_to_baseline"] = row[label]["qps"] / results["baseline_search_qps"]

    # the kde step alone: this code vs the reference's, same neighbours
    x, meta = queries[units[0]]
    xs = np.ascontiguousarray(x, dtype=np.float32)
    keys = meta["key"].astype(str).to_numpy()
    pick = search_image_candidates(ctx.gallery, xs, keys, meta["id"].astype(str).to_numpy(), None,
                                   cfg.kde_neighbours, True, ctx.g_key, ctx.g_id, None, cfg.dedup_threshold)
    valid = pick.rows >= 0
    safe = np.where(valid, pick.rows, 0)
    nb = (ctx.g_lat[safe], ctx.g_lon[safe], pick.scores, valid)
    kde_args = (cfg.k_gps, cfg.kde_bandwidth_km, cfg.kde_temperature)
    t = time.time()
    this = kde_candidates(*nb, ctx.gps_tree, *kde_args, min_sep_km=cfg.gps_min_sep_km)
    this_s = time.time() - t
    results["kde_step"] = {"queries": int(len(xs)), "qps": len(xs) / this_s}
    if ref is not None:
        t = time.time()
        before = ref_gps.kde_candidates(*nb, ctx.gps_tree, *kde_args, min_sep_km=cfg.gps_min_sep_km)
        before_s = time.time() - t
        results["kde_step"].update({
            "reference_qps": len(xs) / before_s, "speedup": before_s / this_s,
            "identical_rows": bool(np.array_equal(this.rows, before.rows)),
            "identical_scores_bytes": this.scores.tobytes() == before.scores.tobytes(),
        })

    # kde: nearest-point probe vs dense over the whole GPS gallery
    n_s = min(args.kde_sample, len(xs))
    nb_s = tuple(a[:n_s] for a in nb)
    t = time.time()
    probe = kde_candidates(*nb_s, ctx.gps_tree, *kde_args)
    probe_s = time.time() - t
    t = time.time()
    dense = dense_kde(*nb_s, ctx.gps_lat, ctx.gps_lon, *kde_args)
    dense_s = time.time() - t
    results["kde"] = {
        "queries": int(n_s),
        "probe_qps": n_s / probe_s,
        "dense_qps": n_s / dense_s,
        "speedup_probe_vs_dense": dense_s / probe_s,
        "top1_agreement": float((probe.rows[:, 0] == dense[:, 0]).mean()),
        "top10_overlap": float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(probe.rows, dense)])),
    }

    # peak RSS of geobuild mine subprocesses: one shard vs every shard
    mem = {}
    for label, spec in (("1 shard", units[0]), (f"{len(units)} shards", "all")):
        d = Path(tempfile.mkdtemp(prefix="bench-mine-rss-"))
        _copy_inputs(src, d / "run")
        rss, secs = peak_rss_mb([sys.executable, "-m", "geobuild", "mine", "--run", str(d / "run"), "--shards", spec])
        mem[label] = {"peak_rss_mib": rss, "wall_seconds": secs}
        shutil.rmtree(d, ignore_errors=True)
    results["peak_rss"] = mem
    results["loadavg_after"] = os.getloadavg()
    shutil.rmtree(tmp, ignore_errors=True)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"run: {src}  queries: {n_q}  gallery: {results['gallery_size']}  GPS points: {results['gps_points']}")
    print(f"context load (gallery, GPS tree, negative pool): {results['context_seconds']:.2f}s; "
          f"load average {results['loadavg_before'][0]:.1f} before, {results['loadavg_after'][0]:.1f} after\n")
    print(f"| configuration | queries/s | ratio to bare search | reference ({str(args.reference)[:7]}) queries/s | "
          "reference ratio | speedup, best passes (pass by pass) | same bytes |")
    print("|---|---|---|---|---|---|---|")
    print(f"| bare gallery search (baseline) | {results['baseline_search_qps']:.0f} | 1.00 | | | | |")
    for name, v in results["variants"].items():
        r = v.get("reference")
        print(f"| {name} | {v['this']['qps']:.0f} | {v['this']['ratio_to_baseline']:.3f} | "
              + (f"{r['qps']:.0f} | {r['ratio_to_baseline']:.3f} | {v['speedup']:.2f}x "
                 f"({', '.join(f'{x:.2f}' for x in v['speedup_by_pass'])}) | {v['identical_candidates_bytes']} |"
                 if r else "| | | |"))
    ks = results["kde_step"]
    if "speedup" in ks:
        print(f"\nkde step alone ({ks['queries']} queries, GPS candidates >= {cfg.gps_min_sep_km:g} km apart): "
              f"{ks['qps']:.0f} vs {ks['reference_qps']:.0f} queries/s ({ks['speedup']:.2f}x), identical rows "
              f"{ks['identical_rows']}, identical score bytes {ks['identical_scores_bytes']}")
    k = results["kde"]
    print(f"\nkde probe vs dense ({k['queries']} queries): {k['speedup_probe_vs_dense']:.1f}x faster, "
          f"top-1 agreement {100 * k['top1_agreement']:.1f}%, top-10 overlap {100 * k['top10_overlap']:.1f}%")
    print("\n| geobuild mine subprocess | peak RSS (MiB) | wall (s) |\n|---|---|---|")
    for label, v in mem.items():
        print(f"| {label} | {v['peak_rss_mib']:.0f} | {v['wall_seconds']:.1f} |")


if __name__ == "__main__":
    main()
