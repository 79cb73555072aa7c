"""Embed throughput: the full embed path (tar read + parallel JPEG decode + model + writes) as a
ratio to the bare model forward pass on pre-decoded tensors, same batch size, same process.

    python -m benchmarks.bench_embed [--model efficientnet-lite0] [--images 384] [--batch-size 64]
        [--workers 0,1,2] [--threads 2] [--repeats 3]

Builds one shard of ``--images`` IM2GPS3K photos (``$GEOBUILD_SHARED/data/im2gps3k``) in a
temporary run folder. For every (threads, num_workers) setting it alternates baseline and full
runs ``--repeats`` times and reports medians. A ratio near 1 means decoding is hidden behind the
model; on a GPU the baseline is far faster and the decode workers are what keeps up.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    return Path(os.environ.get("GEOBUILD_SHARED", REPO.parent / "shared")).resolve()


def build_run(root: Path, n: int) -> tuple[Path, list[bytes]]:
    """One finished shard unit with ``n`` real photos; returns (run dir, the JPEG bytes)."""
    from geobuild.core.runfolder import RunFolder, atomic_path
    from geobuild.artifacts.shards import ShardWriter, json_bytes

    run = RunFolder(root)
    jpegs = []
    with zipfile.ZipFile(shared_dir() / "data" / "im2gps3k" / "im2gps3ktest.zip") as z:
        names = sorted(m for m in z.namelist() if m.lower().endswith(".jpg"))[:n]
        with ShardWriter(run.shard_path("00000")) as w:
            for i, name in enumerate(names):
                data = z.read(name)
                jpegs.append(data)
                w.write(f"{i:06d}", {"jpg": data, "json": json_bytes({"key": f"{i:06d}", "id": name, "lat": 0.0, "lon": 0.0})})
    with atomic_path(run.marker_path("shard", "00000")) as tmp:
        tmp.write_text("{}\n")
    return root, jpegs


def forward_ips(enc, tensors, batch_size: int) -> float:
    """Images/s of encode_images over pre-decoded tensors."""
    import torch

    t0 = time.perf_counter()
    for s in range(0, len(tensors), batch_size):
        enc.encode_images(torch.stack(tensors[s : s + batch_size]))
    return len(tensors) / (time.perf_counter() - t0)


def full_ips(cfg, run_dir: Path) -> float:
    """Images/s of one embed unit (outputs removed before each run)."""
    import shutil

    from geobuild.core.runfolder import RunFolder
    from geobuild.stages.embed.encode import embed_unit

    shutil.rmtree(run_dir / "embeddings", ignore_errors=True)
    t0 = time.perf_counter()
    res = embed_unit(cfg, RunFolder(run_dir), "00000")
    dt = time.perf_counter() - t0
    return res.stats["embedded"] / dt


def main(argv: list[str] | None = None) -> None:
    import torch
    from PIL import Image

    from geobuild.encoders import load_encoder
    from geobuild.stages.embed.config import EmbedConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--images", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", default="0,1,2", help="comma-separated num_workers settings")
    ap.add_argument("--threads", default=str(torch.get_num_threads()), help="comma-separated torch thread counts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", help="also write the results as JSON here")
    args = ap.parse_args(argv)

    enc = load_encoder(args.model, args.device)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir, jpegs = build_run(Path(tmp) / "run", args.images)
        tensors = [enc.image_transform(Image.open(io.BytesIO(b)).convert("RGB")) for b in jpegs]
        rows = []
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            forward_ips(enc, tensors[: args.batch_size], args.batch_size)  # warm-up
            for workers in [int(w) for w in args.workers.split(",")]:
                cfg = EmbedConfig(model=args.model, device=args.device, batch_size=args.batch_size,
                                  num_workers=workers, torch_threads=threads)
                base, full = [], []
                for _ in range(args.repeats):
                    base.append(forward_ips(enc, tensors, args.batch_size))
                    full.append(full_ips(cfg, run_dir))
                row = {
                    "threads": threads,
                    "num_workers": workers,
                    "forward_ips": round(statistics.median(base), 1),
                    "embed_ips": round(statistics.median(full), 1),
                    "ratio": round(statistics.median(f / b for f, b in zip(full, base)), 3),
                    "ratios": [round(f / b, 3) for f, b in zip(full, base)],
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = torch.cuda.get_device_name(torch.device(enc.device)) if str(enc.device).startswith("cuda") else "none"
    print(f"device={enc.device} gpu={gpu!r} model={args.model} images={args.images} batch={args.batch_size} "
          f"cpus={os.cpu_count()} load_avg={os.getloadavg()[0]:.1f} peak_rss_mb={peak_mb:.0f}")
    print("| torch threads | decode workers | forward img/s | embed img/s | ratio (median) | ratios |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['threads']} | {r['num_workers']} | {r['forward_ips']} | {r['embed_ips']} | {r['ratio']} | {r['ratios']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "peak_rss_mb": peak_mb, "device": str(enc.device), "gpu": gpu}, indent=2))


if __name__ == "__main__":
    main()
