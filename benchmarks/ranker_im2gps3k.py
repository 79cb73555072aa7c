"""Compact ranker on the IM2GPS3K sample, split by author, through the whole geobuild pipeline.

Authors with ``int(sha1(AUTHOR), 16) % 10 < 7`` form the gallery and the training queries; the
other authors' photos are test queries mined against that gallery (``--split-salt S`` draws another
author split, ``int(sha1(S + AUTHOR), 16) % 10 < 7``, e.g. to confirm a result on test authors that
played no part in choosing a setting). Steps (each resumable: a rerun
skips what is finished):

1. split the metadata CSV by author (``WORK/split/{gallery,test}.csv``);
2. ``geobuild shard`` / ``embed`` (EfficientNet-Lite0) for both runs, ``index`` (flat + GeoCLIP GPS
   gallery) for the gallery, ``mine`` (the gallery's own queries; the test queries with
   ``--gallery``), ``distances``, ``publish`` the gallery run as a dataset folder;
3. ``geobuild train-ranker`` on the published folder: variants x losses x seeds (a variant is a
   label and extra train-ranker options, ``--variant 'residual=--residual --best-by val_acc_mean'``);
4. ``geobuild eval`` of every checkpoint on the test run under ``--protocol`` (default ``georanker``:
   first 12 retrieval + first 3 GPS candidates, geodesic km, strict <, all test queries counted);
   mean and spread over seeds, and the share of the top-1 retrieval -> oracle gap the ranker
   closes; writes ``benchmarks/results/ranker.md``.

    python -m benchmarks.ranker_im2gps3k [--work runs/ranker_im2gps3k] [--epochs 15]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("GEOBUILD_SHARED", REPO.parent / "shared")).resolve()
ZIP = SHARED / "data/im2gps3k/im2gps3ktest.zip"
CSV = SHARED / "data/im2gps3k/im2gps3k_places365.csv"
THRESHOLDS = (1, 25, 200, 750, 2500)

COMMANDS: list[str] = []


SKIP = False  # set when the data pipeline already finished: its commands are recorded, not rerun


def gb(*args: str, log: Path | None = None, stage: bool = False, done: bool = False) -> None:
    """Run one geobuild command (always recorded for the results file; skipped when ``done``); fail loudly."""
    cmd = [sys.executable, "-m", "geobuild", *args]
    shown = "geobuild " + " ".join(shlex.quote(a) for a in args)
    COMMANDS.append(shown)
    if done or (stage and SKIP):
        return
    print(f"$ {shown}", flush=True)
    env = dict(os.environ, GEOBUILD_NO_PROGRESS="1", HF_HUB_OFFLINE="1")
    t0 = time.time()
    with open(log, "a") if log else open(os.devnull, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f if log else None, stderr=subprocess.STDOUT if log else None)
    print(f"  ({time.time() - t0:.0f}s)", flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {shown}" + (f"; see {log}" if log else ""))


def in_gallery(author: str, salt: str = "") -> bool:
    """Whether an author's photos go to the gallery (and training), not to the test queries."""
    return int(hashlib.sha1((salt + author).encode()).hexdigest(), 16) % 10 < 7


def split_by_author(work: Path, salt: str = "") -> tuple[Path, Path, int, int]:
    out = work / "split"
    out.mkdir(parents=True, exist_ok=True)
    marker = out / "salt.txt"  # absent: the unsalted split (folders made before --split-salt)
    made = marker.read_text() if marker.exists() else ("" if (out / "gallery.csv").exists() else None)
    if made is not None and made != salt:
        raise SystemExit(f"{work} holds the author split of --split-salt {made!r}, not {salt!r}; use another --work")
    if salt and made is None:
        marker.write_text(salt)
    with open(CSV, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames
        rows = list(reader)
    gallery = [r for r in rows if in_gallery(r["AUTHOR"], salt)]
    test = [r for r in rows if not in_gallery(r["AUTHOR"], salt)]
    paths = []
    for name, part in (("gallery", gallery), ("test", test)):
        p = out / f"{name}.csv"
        if not p.exists():
            tmp = p.with_suffix(".tmp")
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                w.writeheader()
                w.writerows(part)
            tmp.rename(p)
        paths.append(p)
    return paths[0], paths[1], len(gallery), len(test)


def pipeline(work: Path, log: Path, k_image: int, k_gps: int, salt: str = "") -> dict:
    g_csv, t_csv, n_gallery, n_test = split_by_author(work, salt)
    gal, test, pub = work / "gallery", work / "test", work / "published"
    info = {"gallery_photos": n_gallery, "test_photos": n_test}
    global SKIP
    if (pub / "dataset" / "manifest.json").exists() and (test / "distances").is_dir():
        print(f"pipeline already finished in {work}; delete {pub} to redo it", flush=True)
        SKIP = True
    for run, meta in ((gal, g_csv), (test, t_csv)):
        gb("shard", "--format", "im2gps3k", "--images", str(ZIP), "--metadata", str(meta), "--run", str(run),
           "--samples-per-shard", "500", log=log, stage=True)
        gb("embed", "--run", str(run), "--model", "efficientnet-lite0", "--device", "cpu", log=log, stage=True)
    gb("index", "--run", str(gal), "--kind", "flat", "--gps-gallery", "geoclip", "--device", "cpu", log=log, stage=True)
    mine = ["--k-image", str(k_image), "--k-gps", str(k_gps), "--exclude-same-author"]
    gb("mine", "--run", str(gal), *mine, log=log, stage=True)
    gb("mine", "--run", str(test), "--gallery", str(gal), *mine, log=log, stage=True)
    for run in (gal, test):
        gb("distances", "--run", str(run), log=log, stage=True)
    gb("publish", "--run", str(gal), "--to", str(pub), "--validation-fraction", "0.1", log=log, stage=True)
    return info


def seed_embed_cache(work: Path, encoder: str = "efficientnet-lite0") -> int:
    """Fill train-ranker's photo-embedding cache from the embed stage's outputs of the two runs (the
    same EfficientNet-Lite0 vectors the index searched), instead of embedding every photo again."""
    from geobuild.artifacts.embeddings import embedded_units, read_embeddings
    from geobuild.ranker.images import seed_cache

    vectors = {}
    for run in (work / "gallery", work / "test"):
        for unit in embedded_units(run):
            emb, meta = read_embeddings(run, unit)
            vectors.update(zip(meta["key"].tolist(), emb))
    tars = sorted((work / "published" / "images").rglob("*.tar")) + sorted((work / "gallery" / "shards").glob("*.tar")) \
        + sorted((work / "test" / "shards").glob("*.tar"))
    return sum(seed_cache(work / "embed-cache", encoder, t, vectors) for t in tars)


def train_and_eval(work: Path, log: Path, losses: list[str], seeds: list[int], epochs: int, extra: list[str],
                   tag: str = "", protocol: str = "groups", label: str = "") -> dict:
    pub, gal, test = work / "published", work / "gallery", work / "test"
    cache = work / "embed-cache"
    results: dict[str, list[dict]] = {}
    for loss in losses:
        for seed in seeds:
            name = f"{tag + '-' if tag else ''}{loss}-seed{seed}-{epochs}ep{'-' + protocol if protocol != 'groups' else ''}"
            out = work / "train" / name
            finished = (out / "final.json").exists()
            resume = ["--resume"] if not finished and (out / "checkpoints" / "last.pt").exists() else []
            gb("train-ranker", "--data", str(pub), "--out", str(out), "--loss", loss, "--seed", str(seed),
               "--epochs", str(epochs), "--embed-cache", str(cache), *extra, *resume, log=log, done=finished)
            report = work / "eval" / f"{name}.json"
            gb("eval", "--checkpoint", str(out), "--run", str(test), "--gallery", str(gal), "--protocol", protocol,
               "--cache", str(cache), "--out", str(report), log=log, done=report.exists())
            results.setdefault(f"{label}, {loss}" if label else loss, []).append(json.loads(report.read_text()))
    return results


def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def validation_record(result: dict) -> dict:
    """The validation figures (training authors' validation split) of the checkpoint a result evaluated."""
    import torch

    out = Path(result["info"]["checkpoint"])
    epoch = int(result["info"]["epoch"])
    used = out / "checkpoints" / "best.pt"
    ckpt = torch.load(used if used.exists() else out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    fitted = (ckpt.get("fallback") or {}).get("record") or ckpt.get("gate_record")
    if fitted:  # the ranking after the gate and the retrieval fallback, as eval applies them
        rec = {f"val_{k}": v for k, v in fitted.items()}
        rec["val_acc_mean"] = statistics.mean(v for k, v in fitted.items() if k.startswith("acc@"))
        return rec
    if epoch == 0:
        return ckpt["best_record"]
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["epoch"] == epoch:
            return record
    return {}


def fallback_note(info: dict) -> str:
    """The fitted retrieval fallback of an evaluated checkpoint, for the per-seed lines."""
    fb = info.get("fallback") or {}
    parts = ([f"retrieval kept at score >= {fb['keep_score']:.3f}"] if fb.get("keep_score") is not None else []) \
        + ([f"snap-back {fb['snap_km']:g} km"] if fb.get("snap_km") is not None else [])
    return ", " + ", ".join(parts) if parts else ""


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def write_results(path: Path, results: dict, info: dict, args, seconds: float, loads: tuple[str, str] = ("", "")) -> None:
    cols = [f"acc@{t}km" for t in THRESHOLDS]
    first = next(iter(results.values()))[0]
    base = first["info"]
    proto = first.get("protocol", {}).get("description", "groups of the checkpoint")
    lines = [
        f"# Compact ranker on IM2GPS3K (split by author{' with salt ' + repr(args.split_salt) if args.split_salt else ''}, {args.epochs} epochs{', ' + args.label if args.label else ''})",
        "",
        f"Command: `python -m benchmarks.ranker_im2gps3k {shlex.join(sys.argv[1:])}`".rstrip() + " (from the repository root)",
        "",
        f"Machine: {platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores (shared with other jobs), "
        f"Python {platform.python_version()}; CPU only (no GPU in this environment, so no GPU figures). "
        f"Wall time of this invocation: {seconds / 60:.1f} min"
        + (" (the data pipeline, and any finished training or evaluation, was reused from an earlier invocation)." if SKIP else ".")
        + (f" Load average (1/5/15 min) at the start {loads[0]}, at the end {loads[1]}: other people's tests, "
           "embedding and training jobs shared the 2 cores throughout, so no timing here is a clean figure." if loads[0] else ""),
        "",
        "## Setup",
        "",
        f"- Gallery and training queries: authors with "
        + (f"`int(sha1({args.split_salt!r} + AUTHOR), 16) % 10 < 7`" if args.split_salt else "`int(sha1(AUTHOR), 16) % 10 < 7`")
        + f" ({info['gallery_photos']} photos); "
        f"test queries: the other {info['test_photos']} photos, mined against the gallery only (`mine --gallery`).",
        f"- Features: EfficientNet-Lite0 (frozen), flat faiss index, GeoCLIP GPS gallery; candidates per query: "
        f"{args.k_image} image + {args.k_gps} GPS (same-author gallery photos excluded).",
        f"- Evaluation protocol: {proto}; test queries: {base.get('queries', base['groups'])} "
        f"(not evaluated, counted wrong: {base.get('not_evaluated', 0)}).",
        f"- Ranker: compact cross-encoder (transformer over [query, candidates]), {args.epochs} epochs, "
        f"seeds {', '.join(map(str, args.seeds))}; extra train-ranker options: `{args.train_args or 'none'}`"
        + "".join(f"; variant `{v}`: `{a or 'none'}`" for v, a in args.variants) + ".",
        "",
        "## Accuracy on the test queries (%; mean ± sample std over seeds)",
        "",
        "| method | " + " | ".join(f"< {t} km" for t in THRESHOLDS) + " | median km |",
        "|---|" + "---|" * (len(THRESHOLDS) + 1),
    ]
    for name in ("top-1 retrieval", "oracle"):
        row = first["rows"][name]
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.2f}" for c in cols) + f" | {row['median_km']:.1f} |")
    for loss, runs in results.items():
        vals = [fmt([r["rows"]["ranker"][c] for r in runs]) for c in cols]
        med = fmt([r["rows"]["ranker"]["median_km"] for r in runs])
        lines.append(f"| ranker, {loss} | " + " | ".join(vals) + f" | {med} |")
    lines += [
        "",
        "## Ranker minus top-1 retrieval (points; mean ± std over seeds)",
        "",
        "| ranker | " + " | ".join(f"< {t} km" for t in THRESHOLDS) + " |",
        "|---|" + "---|" * len(THRESHOLDS),
    ]
    for loss, runs in results.items():
        lines.append(f"| {loss} | " + " | ".join(
            fmt([r["rows"]["ranker"][c] - r["rows"]["top-1 retrieval"][c] for r in runs]) for c in cols) + " |")
    lines += [
        "",
        "## Validation split of the training authors (what the defaults are chosen on)",
        "",
        "Mean over seeds of the evaluated checkpoint's validation figures (publish's validation split: "
        "gallery authors only, never a test author); epoch = the checkpoint `geobuild eval` used per seed.",
        "",
        "| ranker | val mean acc | " + " | ".join(f"val < {t} km" for t in THRESHOLDS) + " | epochs |",
        "|---|---|" + "---|" * (len(THRESHOLDS) + 1),
    ]
    for loss, runs in results.items():
        recs = [validation_record(r) for r in runs]
        if not all(recs):
            continue
        lines.append(f"| {loss} | {fmt([x.get('val_acc_mean', float('nan')) for x in recs])} | "
                     + " | ".join(fmt([x[f'val_{c}'] for x in recs]) for c in cols)
                     + f" | {', '.join(str(r['info']['epoch']) for r in runs)} |")
    lines += [
        "",
        "## Share of the retrieval -> oracle gap closed by the ranker (mean ± std over seeds)",
        "",
        "gap closed = (ranker − top-1 retrieval) / (oracle − top-1 retrieval), per threshold; negative = worse than retrieval.",
        "",
        "| loss | " + " | ".join(f"< {t} km" for t in THRESHOLDS) + " |",
        "|---|" + "---|" * len(THRESHOLDS),
    ]
    for loss, runs in results.items():
        lines.append(f"| {loss} | " + " | ".join(fmt([100 * r["gap_closed"][c] for r in runs]) + "%" for c in cols) + " |")
    lines += ["", "Per seed (ranker acc %):", ""]
    for loss, runs in results.items():
        for r in runs:
            lines.append(f"- {loss}, seed {r['info']['seed']}: " + " / ".join(f"{r['rows']['ranker'][c]:.2f}" for c in cols)
                         + f", median {r['rows']['ranker']['median_km']:.1f} km, top-1 hit {100 * r['info']['top1_hit']:.1f}%"
                         + f", checkpoint epoch {r['info']['epoch']}" + fallback_note(r["info"]))
    lines += ["", "## Commands", "", "```"] + COMMANDS + ["```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "ranker_im2gps3k", help="Working folder (run folders, checkpoints).")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ranker.md", help="Results markdown.")
    ap.add_argument("--losses", default="multi-order,first-order,pointwise", help="Comma-separated losses.")
    ap.add_argument("--seeds", default="0,1,2", help="Comma-separated seeds.")
    ap.add_argument("--epochs", type=int, default=15, help="Training epochs.")
    ap.add_argument("--k-image", type=int, default=10, help="Image candidates mined per query.")
    ap.add_argument("--k-gps", type=int, default=10, help="GPS candidates mined per query.")
    ap.add_argument("--group-size", type=int, default=0, help="Candidates per ranked group (0: train-ranker's default or --train-args).")
    ap.add_argument("--train-args", default="", help="Extra train-ranker options for every run, e.g. '--sources image:12,gps:3'.")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=OPTIONS",
                    help="A labelled set of extra train-ranker options (repeatable); default: one unlabelled variant.")
    ap.add_argument("--protocol", default="georanker", help="geobuild eval --protocol (georanker or groups).")
    ap.add_argument("--all-losses", default="", metavar="LABEL",
                    help="The variant that also runs --more-losses (the others run --losses only).")
    ap.add_argument("--more-losses", default="first-order,pointwise,pairwise", help="Losses of the --all-losses variant.")
    ap.add_argument("--label", default="", help="Label for the results heading.")
    ap.add_argument("--split-salt", default="", metavar="TEXT",
                    help="Draw another author split: gallery authors are int(sha1(TEXT + AUTHOR), 16) %% 10 < 7 "
                         "(default empty: the usual split; a work folder keeps the split it was made with).")
    ap.add_argument("--until", choices=("pipeline", "all"), default="all", help="Stop after the data pipeline.")
    args = ap.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.variants = [tuple(v.split("=", 1)) if "=" in v else (v, "") for v in args.variant] or [("", "")]
    losses = [s.strip() for s in args.losses.split(",") if s.strip()]
    if not ZIP.exists():
        raise SystemExit(f"sample data not found: {ZIP} (set GEOBUILD_SHARED)")
    t0 = time.time()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    info = pipeline(work, log, args.k_image, args.k_gps, args.split_salt)
    if args.until == "pipeline":
        return
    extra = (["--group-size", str(args.group_size)] if args.group_size else []) + shlex.split(args.train_args)
    load0 = load_average()
    print(f"embedding cache seeded from the runs' embeddings for {seed_embed_cache(work)} tars", flush=True)
    results: dict[str, list[dict]] = {}
    for label, opts in args.variants:
        tag = "-".join(x for x in (args.label.replace(" ", "_"), label) if x)
        more = [x for x in args.more_losses.split(",") if x and x not in losses] if label == args.all_losses else []
        results.update(train_and_eval(work, log, losses + more, args.seeds, args.epochs, extra + shlex.split(opts),
                                      tag=tag, protocol=args.protocol, label=label))
    write_results(args.out, results, info, args, time.time() - t0, (load0, load_average()))


if __name__ == "__main__":
    main()
