"""Ranker minus top-1 retrieval on the two halves of a salted author split's test queries.

A work folder of ``benchmarks/ranker_im2gps3k.py --split-salt S`` draws its test authors afresh, so
some of them were test authors of the unsalted split too. This re-evaluates every checkpoint the
benchmark evaluated (``WORK/eval/*.json``; the figures must match) and reports the difference to
top-1 retrieval separately for the queries of those authors (``old test``) and of the others
(``fresh``: gallery and training authors of the unsalted split, never a test query there), mean ±
std over seeds, as a markdown table.

    python -m benchmarks.ranker_split_overlap --work WORK
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

import numpy as np

from benchmarks.ranker_im2gps3k import THRESHOLDS, in_gallery


def halves(work: Path) -> dict[str, dict[str, list[list[float]]]]:
    """Per variant and half: one list of per-threshold differences (points) per seed, plus the count."""
    from geobuild.ranker.evaluate import evaluate
    from geobuild.ranker.metrics import summary

    if not (work / "split" / "salt.txt").exists():
        raise SystemExit(f"{work} holds the unsalted author split: every test query is an old test query")
    with open(work / "split" / "test.csv", newline="") as f:
        author = {r["IMG_ID"]: r["AUTHOR"] for r in csv.DictReader(f)}
    out: dict[str, dict[str, list[list[float]]]] = {}
    for path in sorted((work / "eval").glob("*.json")):
        saved = json.loads(path.read_text())
        info = saved["info"]
        res = evaluate(info["checkpoint"], run=info["source"], gallery=info["gallery"], protocol=info["protocol"],
                       cache_dir=work / "embed-cache", per_query=True)
        if res["rows"] != saved["rows"] or res["info"]["not_evaluated"]:
            raise SystemExit(f"{path}: the re-evaluation differs from the benchmark's, or counts unevaluated queries")
        each = res["per_query"]
        old_test = np.array([not in_gallery(author[q]) for q in each["query_id"]])
        variant = path.stem.split(f"-{info['loss']}-seed")[0]
        for half, sel in (("all", np.ones_like(old_test)), ("old test", old_test), ("fresh", ~old_test)):
            ranker, top1 = summary(each["ranker"][sel]), summary(each["top-1 retrieval"][sel])
            out.setdefault(variant, {}).setdefault(half, []).append(
                [ranker[f"acc@{t}km"] - top1[f"acc@{t}km"] for t in THRESHOLDS] + [float(sel.sum())])
    return out


def table(out: dict[str, dict[str, list[list[float]]]]) -> str:
    def fmt(v: list[float]) -> str:
        return f"{statistics.mean(v):+.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:+.2f}"

    lines = ["| ranker | test queries | n | " + " | ".join(f"< {t} km" for t in THRESHOLDS) + " | seeds |",
             "|---|---|---|" + "---|" * (len(THRESHOLDS) + 1)]
    for variant, parts in out.items():
        for half, seeds in parts.items():
            cols = list(zip(*seeds))
            lines.append(f"| {variant} | {half} | {int(cols[-1][0])} | " + " | ".join(fmt(list(c)) for c in cols[:-1])
                         + f" | {len(seeds)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="Work folder of a --split-salt benchmark run.")
    args = ap.parse_args()
    print(table(halves(args.work.resolve())))


if __name__ == "__main__":
    main()
