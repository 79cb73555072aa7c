"""Distance matrices (query->candidate + candidate x candidate) per second, against baselines.

    python -m benchmarks.bench_distances [--queries 20000] [--group 21] [--geopy-pairs 20000]

Two units are reported for every method. A query with G candidates gets G query->candidate
distances and a G x G candidate matrix:

- *matrix entries*: G + G^2 per query, what the output holds (and what the stage's ``pairs``
  stat counts);
- *distinct pairs*: G + G(G-1)/2 per query, the distances that are actually different (the matrix
  is symmetric with a zero diagonal; ``geobuild.geodesic.pairwise_km`` computes each unordered
  pair once and mirrors it for the geodesic method).

Every ratio is a ratio of the time per query group, so it is the same in either unit.

Same process, same data (random queries with G candidates each):

- baseline 1: ``geopy.distance.geodesic`` one call per distinct pair (GeoRanker's scripts call it
  pair by pair; calling it for the diagonal and both halves would double its cost);
- baseline 2: scikit-learn ``haversine_distances`` per query group;
- ``geobuild.geodesic`` haversine and WGS-84 geodesic (pyproj), vectorised over many groups;
- the whole ``distances`` stage unit (Parquet in -> Parquet out) for both methods.

Peak memory of the stage unit is measured in fresh subprocesses for two shard sizes, to show how
it grows with the shard (the input's row group is decoded whole; see benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def groups(n: int, g: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    lat = rng.uniform(-80, 80, n)
    lon = rng.uniform(-180, 180, n)
    clat = np.clip(lat[:, None] + rng.normal(0, 20, (n, g)), -89.9, 89.9)
    clon = (lon[:, None] + rng.normal(0, 40, (n, g)) + 180) % 360 - 180
    return lat, lon, clat, clon


def entries_per_group(g: int) -> int:
    """Matrix entries per query: G query distances + the G x G candidate matrix (what is stored)."""
    return g + g * g


def distinct_per_group(g: int) -> int:
    """Distinct distances per query: G query distances + G(G-1)/2 unordered candidate pairs."""
    return g + g * (g - 1) // 2


def geopy_loop(lat, lon, clat, clon, max_pairs: int) -> tuple[float, int]:
    """geopy, one call per distinct pair, until ``max_pairs`` distinct pairs; (seconds, groups)."""
    from geopy.distance import geodesic

    done = groups_done = 0
    t = time.perf_counter()
    for i in range(len(lat)):
        q = (lat[i], lon[i])
        pts = list(zip(clat[i], clon[i]))
        _ = [geodesic(q, p).km for p in pts]
        _ = [geodesic(pts[a], pts[b]).km for a in range(len(pts)) for b in range(a + 1, len(pts))]
        done += distinct_per_group(len(pts))
        groups_done += 1
        if done >= max_pairs:
            break
    return time.perf_counter() - t, groups_done


def sklearn_loop(lat, lon, clat, clon) -> tuple[float, int]:
    from sklearn.metrics.pairwise import haversine_distances

    t = time.perf_counter()
    for i in range(len(lat)):
        pts = np.radians(np.c_[clat[i], clon[i]])
        _ = haversine_distances(np.radians([[lat[i], lon[i]]]), pts) * 6371.0088
        _ = haversine_distances(pts) * 6371.0088
    return time.perf_counter() - t, len(lat)


def vectorised(lat, lon, clat, clon, method: str, batch: int = 4096) -> tuple[float, int]:
    from geobuild.geo.geodesic import distance_km, pairwise_km

    t = time.perf_counter()
    for s in range(0, len(lat), batch):
        sl = slice(s, s + batch)
        _ = distance_km(lat[sl, None], lon[sl, None], clat[sl], clon[sl], method).astype(np.float32)
        _ = pairwise_km(clat[sl], clon[sl], method).astype(np.float32)
    return time.perf_counter() - t, len(lat)


def write_candidates(run, unit: str, lat, lon, clat, clon) -> None:
    import pyarrow.parquet as pq

    from geobuild.core.schemas import arrow_schema, table

    n, g = clat.shape
    cols = {}
    for f in arrow_schema("candidates"):
        t = f.type
        if t.equals(arrow_schema("candidates").field("cand_lat").type) and f.name in ("cand_lat", "cand_lon"):
            continue
        import pyarrow as pa

        if pa.types.is_list(t):
            inner = t.value_type
            v = [] if pa.types.is_list(inner) else ("" if pa.types.is_string(inner) else 0)
            cols[f.name] = [[v] * g] * n
        elif pa.types.is_string(t):
            cols[f.name] = [""] * n
        else:
            cols[f.name] = [0] * n
    cols["key"] = [f"{unit}{i:07d}" for i in range(n)]
    cols["id"] = [f"{i}.jpg" for i in range(n)]
    cols["lat"], cols["lon"] = lat, lon
    cols["cand_lat"], cols["cand_lon"] = clat.tolist(), clon.tolist()
    cols["cand_within"] = [[[False] * 5] * g] * n
    path = run.path("candidates", f"{unit}.parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    from geobuild.stages.mine.stage import CANDIDATES_ROW_GROUP

    pq.write_table(table("candidates", cols), path, row_group_size=CANDIDATES_ROW_GROUP)  # as mine writes it
    run.marker_path("mine", unit).parent.mkdir(parents=True, exist_ok=True)
    run.marker_path("mine", unit).write_text("{}")


def stage_unit(root: str, method: str, batch_rows: int) -> dict:
    """Run one distances unit on RUN/candidates/00000.parquet; seconds, pairs, peak RSS."""
    from geobuild.core.runfolder import RunFolder
    from geobuild.core.runner import run_stage
    from geobuild.stages.distances.stage import DistancesConfig, DistancesStage

    import pyarrow.compute  # noqa: F401  imported once per process by a real run, not per unit
    import pyarrow.parquet  # noqa: F401

    run = RunFolder(root)
    t = time.perf_counter()
    s = run_stage(DistancesStage(DistancesConfig(method=method, batch_rows=batch_rows)), run, overwrite=True)
    secs = time.perf_counter() - t
    st = s.stats["00000"]
    return {"method": method, "seconds": secs, "rows": st["rows"], "entries": st["pairs"], "entries_per_s": st["pairs"] / secs,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=20000)
    ap.add_argument("--group", type=int, default=21, help="candidates per query (G)")
    ap.add_argument("--geopy-pairs", type=int, default=20000, help="distinct pairs timed with the geopy loop")
    ap.add_argument("--stage-sizes", type=int, nargs="+", default=[20000, 80000], help="shard sizes for the stage runs")
    ap.add_argument("--batch-rows", type=int, default=4096)
    ap.add_argument("--stage-child", nargs=3, metavar=("ROOT", "METHOD", "BATCH"), help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.stage_child:
        print(json.dumps(stage_unit(args.stage_child[0], args.stage_child[1], int(args.stage_child[2]))))
        return

    g = args.group
    lat, lon, clat, clon = groups(args.queries, g)
    out: dict = {"queries": args.queries, "G": g, "entries_per_query": entries_per_group(g),
                 "distinct_pairs_per_query": distinct_per_group(g)}

    def rates(key: str, seconds: float, n_groups: int) -> float:
        """Record both units for ``n_groups`` query groups done in ``seconds``; groups/s."""
        out[f"{key}_groups"] = n_groups
        out[f"{key}_seconds"] = seconds
        out[f"{key}_entries_per_s"] = n_groups * entries_per_group(g) / seconds
        out[f"{key}_distinct_pairs_per_s"] = n_groups * distinct_per_group(g) / seconds
        return n_groups / seconds

    geopy = rates("geopy_loop", *geopy_loop(lat, lon, clat, clon, args.geopy_pairs))
    sk = rates("sklearn_haversine", *sklearn_loop(lat[:2000], lon[:2000], clat[:2000], clon[:2000]))
    for method in ("haversine", "geodesic"):
        r = rates(f"geobuild_{method}", *vectorised(lat, lon, clat, clon, method))
        out[f"geobuild_{method}_vs_geopy"] = r / geopy
        out[f"geobuild_{method}_vs_sklearn"] = r / sk
    stage = []
    with tempfile.TemporaryDirectory() as tmp:
        from geobuild.core.runfolder import RunFolder

        for size in args.stage_sizes:
            root = os.path.join(tmp, f"run{size}")
            la, lo, cla, clo = groups(size, g, seed=size)
            write_candidates(RunFolder(root), "00000", la, lo, cla, clo)
            for method in ("haversine", "geodesic"):
                r = subprocess.run(
                    [sys.executable, "-m", "benchmarks.bench_distances", "--stage-child", root, method, str(args.batch_rows)],
                    capture_output=True, text=True, check=True, env=dict(os.environ, GEOBUILD_NO_PROGRESS="1"),
                )
                res = json.loads(r.stdout.strip().splitlines()[-1])
                assert res["entries"] == res["rows"] * entries_per_group(g), res
                res["shard_rows"] = size
                res["distinct_pairs"] = res["rows"] * distinct_per_group(g)
                res["distinct_pairs_per_s"] = res["distinct_pairs"] / res["seconds"]
                res["vs_geopy"] = (res["rows"] / res["seconds"]) / geopy
                stage.append(res)
    out["stage_unit"] = stage
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
