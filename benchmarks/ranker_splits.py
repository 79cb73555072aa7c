"""Ranker minus top-1 retrieval over several author splits: per split (mean ± std over seeds) and
pooled over every (split, seed) run, from the evaluations ``benchmarks/ranker_im2gps3k.py`` wrote.

Each ``--work`` folder is one benchmark run with its own ``--split-salt`` (its test authors drawn
afresh); only the figures in ``WORK/eval/VARIANT-*.json`` are read, nothing is re-evaluated.

    python -m benchmarks.ranker_splits --variant default \\
        --work confirm1=WORK1 --work confirm2=WORK2 --work confirm3=WORK3 --out benchmarks/results/ranker_splits.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.ranker_im2gps3k import THRESHOLDS


def runs(work: Path, variant: str) -> list[dict]:
    """One entry per evaluated seed of ``variant``: seed, queries, top-1 and ranker accuracy per threshold."""
    out = []
    for path in sorted((work / "eval").glob(f"{variant}-*.json")):
        saved = json.loads(path.read_text())
        info, rows = saved["info"], saved["rows"]
        if path.stem.split(f"-{info['loss']}-seed")[0] != variant:
            continue
        out.append({"seed": info["seed"], "queries": rows["ranker"]["n"],
                    "top1": [rows["top-1 retrieval"][f"acc@{t}km"] for t in THRESHOLDS],
                    "ranker": [rows["ranker"][f"acc@{t}km"] for t in THRESHOLDS]})
    if not out:
        raise SystemExit(f"no evaluation of variant '{variant}' in {work / 'eval'}")
    return sorted(out, key=lambda r: r["seed"])


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(values: list[float]) -> str:
    m, s = _stats(values)
    return f"{m:+.2f} ± {s:.2f}"


def report(splits: dict[str, list[dict]], variant: str) -> str:
    head = "| " + " | ".join(f"< {t} km" for t in THRESHOLDS) + " |"
    lines = ["## Ranker minus top-1 retrieval (points; mean ± sample std)", "",
             "| split | test queries | runs " + head, "|---|---|---|" + "---|" * len(THRESHOLDS)]
    pooled: list[list[float]] = [[] for _ in THRESHOLDS]
    for salt, rs in splits.items():
        diffs = [[r["ranker"][i] - r["top1"][i] for r in rs] for i in range(len(THRESHOLDS))]
        for i, d in enumerate(diffs):
            pooled[i] += d
        lines.append(f"| {salt} | {rs[0]['queries']} | {len(rs)} | " + " | ".join(_fmt(d) for d in diffs) + " |")
    n = len(pooled[0])
    lines.append(f"| **pooled** | | {n} | " + " | ".join(f"**{_fmt(d)}**" for d in pooled) + " |")
    lines.append(f"| runs below top-1 | | {n} | " + " | ".join(str(sum(v < -1e-9 for v in d)) for d in pooled) + " |")
    lines.append(f"| runs above top-1 | | {n} | " + " | ".join(str(sum(v > 1e-9 for v in d)) for d in pooled) + " |")
    lines += ["", "Per split: top-1 retrieval's accuracy (%) and the ranker's per seed.", "",
              "| split | method " + head, "|---|---|" + "---|" * len(THRESHOLDS)]
    for salt, rs in splits.items():
        lines.append(f"| {salt} | top-1 retrieval | " + " | ".join(f"{v:.2f}" for v in rs[0]["top1"]) + " |")
        for r in rs:
            lines.append(f"| {salt} | {variant}, seed {r['seed']} | " + " | ".join(f"{v:.2f}" for v in r["ranker"]) + " |")
    verdict = []
    for t, d in zip(THRESHOLDS, pooled):
        m, s = _stats(d)
        se = s / len(d) ** 0.5
        word = "above" if m - 2 * se > 0 else "below" if m + 2 * se < 0 else "not distinguishable from"
        verdict.append(f"- < {t} km: pooled {m:+.2f} ± {s:.2f} (standard error {se:.2f}): {word} top-1 retrieval "
                       f"at two standard errors; mean + std {'>=' if m + s >= 0 else '<'} 0.")
    return "\n".join(lines + ["", "## Reading (computed)", "", *verdict])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", action="append", required=True, metavar="SALT=DIR", help="A benchmark work folder and its split salt.")
    ap.add_argument("--variant", default="default", help="The variant label of the evaluations to read.")
    ap.add_argument("--out", type=Path, help="Write the markdown here (printed otherwise).")
    ap.add_argument("--preamble", default="", help="Markdown put before the tables (title, commands, machine).")
    a = ap.parse_args()
    splits = {}
    for item in a.work:
        salt, _, folder = item.partition("=")
        if not folder:
            raise SystemExit(f"--work wants SALT=DIR, got '{item}'")
        splits[salt] = runs(Path(folder).resolve(), a.variant)
    text = (a.preamble + "\n\n" if a.preamble else "") + report(splits, a.variant) + "\n"
    if a.out:
        a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
