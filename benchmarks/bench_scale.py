"""How each stage's time, memory and disk grow with the number of photos: ``pipelines/mp16pro.yaml``
on MP16-Pro-shaped inputs of N photos (``benchmarks.make_mp16_like``), local executor.

    python -m benchmarks.bench_scale --sizes 10000,50000,200000 --work /data/scale [--workers 2]

For every N: the input is generated once (``WORK/input-N``), then every stage of the pipeline runs
as its own ``geobuild run --from S --until S`` (the Hub upload stage is left out) in a fresh wrapper
process, so each stage gets its own figures:

- wall seconds, units/s and photos/s (samples the stage read per second);
- peak RSS of the largest process of the stage (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of the
  wrapper: the largest of the stage's processes, workers included);
- disk bytes per photo of the stage's output folder;
- ledger accounting: samples in = samples out + rejects for every stage, and the shard ledger equal
  to the input's ``expected.json``.

The model: EfficientNet-Lite0 (real pretrained features) for N up to ``--effnet-upto``, above it a
small randomly initialised open_clip ViT (``SMALL_CLIP``) on the CPU: the point is how the pipeline's
own costs grow, not embedding quality. A run folder already finished is not redone (delete it to
re-measure). Writes ``benchmarks/results/scale.json`` and ``scale.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STAGES = ("shard", "embed", "index", "mine", "distances", "publish")
OUTPUTS = {"shard": "shards", "embed": "embeddings", "index": "index", "mine": "candidates",
           "distances": "distances", "publish": "publish"}
#: a small open_clip ViT (random weights): 64 px input, 2 layers, 256-d embeddings. Patch tokens are
#: average-pooled: a random ViT's class token barely depends on the photo (median cosine 0.95 between
#: IM2GPS3K photos, so mine's 0.98 near-duplicate rule dropped most neighbours); the pooled patches
#: are as varied as photos are (median cosine 0.18, 6% of 300 photos with a neighbour at 0.98 or more)
SMALL_CLIP = {
    "embed_dim": 256,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "head_width": 32, "patch_size": 16, "pool_type": "avg"},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}

# The wrapper: run one command, report its wall seconds and the peak RSS of its largest process.
WRAPPER = (
    "import json, resource, subprocess, sys, time\n"
    "t = time.perf_counter(); p = subprocess.run(sys.argv[1:])\n"
    "print(json.dumps({'rc': p.returncode, 'seconds': time.perf_counter() - t,\n"
    "                  'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
)


def small_clip_dir(folder: Path) -> Path:
    """A local-dir open_clip model with :data:`SMALL_CLIP` and seeded random weights."""
    import open_clip
    import torch

    cfg_file = folder / "open_clip_config.json"
    if cfg_file.exists() and json.loads(cfg_file.read_text())["model_cfg"] == SMALL_CLIP:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(open_clip.CLIP(**SMALL_CLIP).state_dict(), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": SMALL_CLIP, "preprocess_cfg": {}}))
    return folder


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def measure(n: int, work: Path, workers: int, effnet_upto: int, per_shard: int,
            only: tuple[str, ...] = STAGES, redo: bool = False) -> dict[str, Any]:
    """Run the stages ``only`` of the pipeline at N photos, each in its own wrapper process; ``redo``: forget
    those stages' completion first and run them again over the finished run (new code, same inputs)."""
    inp, run = work / f"input-{n}", work / f"run-{n}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "GEOBUILD_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1",
           "MP16_DIR": str(inp), "EMBED_DEVICE": "cpu", "EMBED_DECODERS": "0"}
    model = "efficientnet-lite0" if n <= effnet_upto else f"open_clip:local-dir:{small_clip_dir(work / 'small-clip')}"
    env["MP16_MODEL"] = model
    t = time.perf_counter()
    if not (inp / "expected.json").exists():
        subprocess.run([sys.executable, "-m", "benchmarks.make_mp16_like", "--rows", str(n), "--out", str(inp)],
                       cwd=REPO, env=env, check=True)
    make_s = time.perf_counter() - t
    expected = json.loads((inp / "expected.json").read_text())
    stages: dict[str, dict[str, Any]] = {}
    for stage in only:
        cmd = [sys.executable, "-m", "geobuild", "run", str(REPO / "pipelines" / "mp16pro.yaml"), "--out", str(run),
               "--from", stage, "--until", stage, "--workers", str(workers), "--no-report",
               "--set", f"shard.samples_per_shard={per_shard}"]
        if redo:  # a fresh stage: no completion marker and no output (publish's record of a validation included)
            for marker in (run / "done" / stage).glob("*"):
                marker.unlink()
            shutil.rmtree(run / OUTPUTS[stage], ignore_errors=True)
            cmd.append("--overwrite")  # the stage's recorded configuration may have gained options
        proc = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], cwd=work, env=env, capture_output=True, text=True)
        last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
        res = json.loads(last)
        if res.get("rc") != 0:
            raise SystemExit(f"{stage} at N={n} failed:\n{proc.stderr[-3000:]}")
        summary = {s["stage"]: s for s in json.loads((run / "summary.json").read_text())["stages"]}[stage]
        stages[stage] = {
            "seconds": round(res["seconds"], 1), "stage_seconds": summary["seconds"], "units": summary["units"],
            "done": summary["done"], "skipped": summary["skipped"],
            "samples_in": summary["samples_in"], "samples_out": summary["samples_out"], "rejects": summary["rejects"],
            "peak_rss_mb": round(res["maxrss_kb"] / 1024, 1), "disk_bytes": du(run / OUTPUTS[stage]),
            "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "revision": _revision(),
        }
        print(f"N={n} {stage}: {stages[stage]}", file=sys.stderr, flush=True)
    if only != STAGES:
        return {"n": n, "stages": stages}
    ledger_ok = _check_ledgers(run, expected, stages)
    return {"n": n, "model": "efficientnet-lite0" if n <= effnet_upto else "small open_clip ViT (random)",
            "workers": workers, "samples_per_shard": per_shard, "make_input_seconds": round(make_s, 1),
            "expected": {k: expected[k] for k in ("rows", "ok", "broken", "tiny", "missing", "extra")},
            "ledger_adds_up": ledger_ok, "stages": stages}


def _revision() -> str:
    """The checked-out commit (with ``+`` when tracked files other than the results this benchmark
    writes have changes), or '' outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results"],
                               cwd=REPO, capture_output=True, text=True).stdout.strip()
        return rev + ("+" if dirty else "")
    except OSError:
        return ""


def _check_ledgers(run: Path, expected: dict, stages: dict[str, dict]) -> bool:
    import pyarrow.parquet as pq

    status = pq.read_table(run / "ledger" / "shard", columns=["status"]).column("status").to_pylist()
    counts = {s: status.count(s) for s in set(status)}
    ok = counts == expected["ledger_by_status"]["min_bytes=5121"]
    photos = counts.get("ok", 0)
    for s in ("embed", "index", "mine", "distances"):
        st = stages[s]
        ok &= st["samples_in"] == st["samples_out"] + sum(st["rejects"].values())
    # what each stage reads: embed the shard's photos; index and mine the embeddings; distances mine's rows
    ok &= stages["embed"]["samples_in"] == photos
    ok &= stages["index"]["samples_in"] == stages["mine"]["samples_in"] == stages["embed"]["samples_out"]
    ok &= stages["distances"]["samples_in"] == stages["mine"]["samples_out"]
    return bool(ok)


def table(results: list[dict[str, Any]]) -> str:
    out = ["| N photos | stage | model | wall s | units/s | photos/s | peak RSS MB (largest process) | disk bytes/photo | in | out | rejects | ledger adds up |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        photos = r["stages"]["shard"]["samples_out"]
        for name, s in r["stages"].items():
            sec = max(s["stage_seconds"], 1e-9)
            rej = ", ".join(f"{k} {v}" for k, v in sorted(s["rejects"].items())) or "-"
            out.append(f"| {r['n']:,} | {name} | {r['model'] if name == 'embed' else ''} | {s['stage_seconds']:.1f} | "
                       f"{s['done'] / sec:.2f} | {s['samples_in'] / sec if s['samples_in'] else photos / sec:,.0f} | "
                       f"{s['peak_rss_mb']:,.0f} | {s['disk_bytes'] / max(photos, 1):,.0f} | {s['samples_in']} | "
                       f"{s['samples_out']} | {rej} | {'yes' if r.get('ledger_adds_up') else 'NO'} |")
    return "\n".join(out)


MP16PRO = 4_700_000


def extrapolation(results: list[dict[str, Any]]) -> str:
    """Seconds per photo at the largest N measured, times 4.7M: a linear extrapolation, marked as such."""
    big = max(results, key=lambda r: r["n"])
    photos = big["stages"]["shard"]["samples_out"]
    out = [f"| stage | s per 1K photos at N={big['n']:,} | linear extrapolation to 4.7M photos, this machine ({big['workers']} workers) |",
           "|---|---|---|"]
    for name, s in big["stages"].items():
        per = s["stage_seconds"] / max(photos, 1)
        note = ""
        if name == "index":
            note = " (not linear: the 100K-point GPS gallery is a fixed cost and IVF-PQ training is sampled; see gallery_1m)"
        if name == "embed":
            note = f" ({big['model']}; a real ViT-L/14 on GPUs is not measured here)"
        out.append(f"| {name} | {per * 1000:.1f} | {per * MP16PRO / 3600:,.1f} h{note} |")
    return "\n".join(out)


def growth(results: list[dict[str, Any]]) -> str:
    """Peak RSS of each stage at the two largest N: the issue's "< 20% growth" check (index exempt)."""
    if len(results) < 2:
        return "(one size only)"
    lo, hi = sorted(results, key=lambda r: r["n"])[-2:]
    out = [f"| stage | peak RSS MB at {lo['n']:,} | at {hi['n']:,} | growth | under 20% |", "|---|---|---|---|---|"]
    for name in hi["stages"]:
        a, b = lo["stages"][name]["peak_rss_mb"], hi["stages"][name]["peak_rss_mb"]
        g = b / a - 1
        ok = "exempt (the index is in memory)" if name == "index" else ("yes" if g < 0.20 else "NO")
        out.append(f"| {name} | {a:,.0f} | {b:,.0f} | {g:+.0%} | {ok} |")
    return "\n".join(out)


def million(path: Path = REPO / "benchmarks" / "results" / "gallery_1m.json") -> str:
    """The 1M-vector index and mine rows, from ``benchmarks.bench_gallery_1m``'s results."""
    if not path.exists():
        return "(not measured: run `python -m benchmarks.bench_gallery_1m`)"
    d = json.loads(path.read_text())
    ix, se, mi = d["index"], d["search"], d["mine"]
    return "\n".join([
        f"{d['vectors']:,} gallery vectors of 1280 dims made from the sample's EfficientNet-Lite0 embeddings "
        "(recipe and commands in [gallery_1m.md](gallery_1m.md)):", "",
        "| figure | value |", "|---|---|",
        f"| index (`--kind auto`) | `{ix['factory']}`, nprobe {se['nprobe']} |",
        f"| `geobuild index` wall / peak RSS | {ix['wall_seconds']:,.0f} s / {ix['peak_rss_mib']:,.0f} MiB |",
        f"| index bytes per vector | {ix['faiss_bytes_per_vector']:,.0f} (+ {ix['ids_parquet_bytes_per_vector']:.0f} in ids.parquet) |",
        f"| recall@10 vs exact search, {se['heldout_queries']:,} held-out queries | {se['recall@10_heldout']:.3f} |",
        f"| `geobuild mine` of {d['queries']:,} queries | {mi['qps']:.0f} queries/s = {mi['ratio_to_bare_search']:.2f} of the bare search; "
        f"peak RSS {mi['subprocess_peak_rss_mib']:,.0f} MiB |",
    ])


def markdown(doc: dict[str, Any]) -> str:
    res = doc["results"]
    sizes = ", ".join(f"{r['n'] // 1000}K" for r in res)
    return "\n".join([
        f"# Scale: pipelines/mp16pro.yaml at {sizes} photos", "",
        f"Machine: {doc['machine']}, no GPU. {doc.get('load', 'Load not recorded.')}", "",
        "Commands (inputs from `benchmarks/make_mp16_like.py`, seed 0; each stage in its own process):", "",
        "```", *doc.get("commands", []), "```", "",
        table(res), "",
        "\"in\" of shard counts metadata rows plus tar members without a row; every later stage reads the shard",
        "stage's ok photos. \"ledger adds up\": the shard ledger equals the input's `expected.json` (min_bytes 5121)",
        "and samples in = out + rejects for embed, index, mine and distances, each reading what the stage before",
        "it wrote. The input reuses IM2GPS3K's 2,997 photos under new ids, so at N photos each photo appears",
        "about N / 2,997 times: every query has that many byte-identical copies in the gallery, which mine's",
        "near-duplicate rule (cosine >= 0.98) drops, searching deeper as N grows; a real collection has far fewer.", "",
        "## Peak memory from the second-largest to the largest size", "",
        growth(res), "",
        "## A 1M-vector gallery", "",
        million(), "",
        "## Extrapolation to MP16-Pro (4.7M photos), not measured", "",
        extrapolation(res), "",
        *(["## Notes", "", *doc["notes"], ""] if doc.get("notes") else []),
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,50000,200000")
    ap.add_argument("--work", required=True, help="Folder for the inputs and runs (tens of GB at 200K).")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--effnet-upto", type=int, default=10000, help="EfficientNet-Lite0 up to this N, the small open_clip above.")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scale.json"))
    ap.add_argument("--render", action="store_true", help="Only re-check the ledgers of the runs in --work and print the table.")
    ap.add_argument("--redo", default="", metavar="STAGES",
                    help="Comma-separated stages to run again over the finished runs of --sizes (e.g. after a change to "
                         "them); their rows are replaced, the other stages' rows are kept.")
    a = ap.parse_args()
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = Path(a.out)
    results = json.loads(out.read_text())["results"] if out.exists() else []
    if a.render:
        for r in results:
            inp = work / f"input-{r['n']}" / "expected.json"
            if inp.exists():
                r["ledger_adds_up"] = _check_ledgers(work / f"run-{r['n']}", json.loads(inp.read_text()), r["stages"])
        doc = json.loads(out.read_text())
        doc["results"] = results
        out.write_text(json.dumps(doc, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(doc))
        print(table(results))
        return
    redo = tuple(s for s in STAGES if s in a.redo.split(","))
    if a.redo and not redo:
        raise SystemExit(f"--redo: no stage of {', '.join(STAGES)} in '{a.redo}'")
    for n in (int(x) for x in a.sizes.split(",")):
        if redo:
            old = next((r for r in results if r["n"] == n), None)
            if old is None:
                raise SystemExit(f"--redo: N={n} has no row in {out}; measure it first")
            old["stages"].update(measure(n, work, a.workers, a.effnet_upto, a.per_shard, only=redo, redo=True)["stages"])
            old["ledger_adds_up"] = _check_ledgers(work / f"run-{n}", json.loads((work / f"input-{n}" / "expected.json").read_text()), old["stages"])
            doc = json.loads(out.read_text())
            doc["results"] = results
            cmd = "python -m benchmarks.bench_scale " + " ".join(sys.argv[1:])
            doc["commands"] = [c for c in doc.get("commands", []) if c != cmd] + [cmd]
            out.write_text(json.dumps(doc, indent=2) + "\n")
            out.with_suffix(".md").write_text(markdown(doc))
            print(table(results), flush=True)
            continue
        res = measure(n, work, a.workers, a.effnet_upto, a.per_shard)
        results = [r for r in results if r["n"] != n] + [res]
        results.sort(key=lambda r: r["n"])
        # the rows of the other sizes, the commands that made them and the notes are kept
        doc = json.loads(out.read_text()) if out.exists() else {}
        cmd = "python -m benchmarks.bench_scale " + " ".join(sys.argv[1:])
        commands = doc.get("commands", [])
        doc.update({"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                    "commands": [c for c in commands if c != cmd] + [cmd], "results": results})
        out.write_text(json.dumps(doc, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(doc))
        print(table(results), flush=True)


if __name__ == "__main__":
    main()
