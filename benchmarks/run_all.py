"""Run every benchmark in sequence, then rebuild benchmarks/RESULTS.md (what `make bench` calls).

    python -m benchmarks.run_all [--list] [--only NAME ...] [--skip NAME ...] [--run runs/sample]
        [--logs runs/bench]

Each step is one subprocess running a benchmark module with the default command from its
docstring; the steps that need a finished run folder (mine, recall, publish, leave-one-out) use
``--run``, which the first step builds (or resumes: finished units are skipped) with
``geobuild run pipelines/sample.yaml``. Every step's stdout and stderr go to ``LOGS/<name>.log``
(several benchmarks print their tables rather than write them). The first step that fails stops
the sequence with its name, exit status, log file and the log's last lines; RESULTS.md is then
left as it was. After the last step ``benchmarks.collect_results`` rebuilds RESULTS.md from
benchmarks/results/*.md.

Run on the 2-core reference machine, the whole sequence takes hours: the ranker step alone trains
3 losses x 3 seeds for 15 epochs. ``--only``/``--skip`` pick steps by name; ``--list`` prints the
steps and checks that every module resolves, without running anything.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def steps(run: str) -> list[tuple[str, list[str]]]:
    """(name, python -m arguments), in order."""
    return [
        ("sample", ["geobuild", "run", "pipelines/sample.yaml", "--out", run]),
        ("shard", ["benchmarks.bench_shard"]),
        ("embed", ["benchmarks.bench_embed"]),
        ("loo_knn", ["benchmarks.loo_knn", "--run", run]),
        ("search", ["benchmarks.bench_search"]),
        ("distances", ["benchmarks.bench_distances"]),
        ("mine", ["benchmarks.bench_mine", "--run", run]),
        ("mine_recall", ["benchmarks.mine_recall", "--run", run]),
        ("publish", ["benchmarks.bench_publish", "--run", run]),
        ("report", ["benchmarks.bench_report", "--run", run]),
        ("executors", ["benchmarks.bench_executors"]),
        ("vlm_ranker", ["benchmarks.bench_vlm_ranker"]),
        ("ranker", ["benchmarks.ranker_im2gps3k"]),
        ("collect", ["benchmarks.collect_results"]),
    ]


def tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print the steps and check their modules resolve; run nothing")
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only these steps")
    ap.add_argument("--skip", nargs="+", default=[], metavar="NAME", help="leave these steps out")
    ap.add_argument("--run", default="runs/sample", help="run folder of the sample pipeline (built by the 'sample' step)")
    ap.add_argument("--logs", default="runs/bench", help="folder for one log file per step")
    args = ap.parse_args(argv)

    todo = steps(args.run)
    names = [n for n, _ in todo]
    unknown = sorted((set(args.only or []) | set(args.skip)) - set(names))
    if unknown:
        ap.error(f"unknown step(s) {', '.join(unknown)}; steps are: {', '.join(names)}")
    todo = [(n, a) for n, a in todo if (args.only is None or n in args.only) and n not in args.skip]

    if args.list:
        missing = 0
        for i, (name, mod_args) in enumerate(todo, 1):
            found = importlib.util.find_spec(mod_args[0]) is not None
            missing += not found
            print(f"{i:2d}. {name:<12} python -m {' '.join(mod_args)}" + ("" if found else "   [MODULE NOT FOUND]"))
        return 1 if missing else 0

    logs = REPO / args.logs
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GEOBUILD_NO_PROGRESS="1")
    t_all = time.perf_counter()
    for i, (name, mod_args) in enumerate(todo, 1):
        cmd = [sys.executable, "-m", *mod_args]
        log = logs / f"{name}.log"
        print(f"[{i}/{len(todo)}] {name}: {' '.join(['python', '-m', *mod_args])}  (log: {log})", flush=True)
        t = time.perf_counter()
        with open(log, "w") as f:
            rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
        secs = time.perf_counter() - t
        if rc != 0:
            print(f"\nbenchmark step '{name}' failed with exit status {rc} after {secs:.1f} s; "
                  f"stopping (later steps not run, RESULTS.md not rebuilt).\nlog: {log}\n--- last lines ---\n"
                  f"{tail(log)}", file=sys.stderr)
            return rc
        print(f"    ok in {secs:.1f} s", flush=True)
    print(f"all {len(todo)} steps done in {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
