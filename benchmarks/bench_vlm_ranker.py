"""VLM ranker benchmark: photo access by key, and the cost of the ranker's options per training step.

1. Photos: a WebDataset tar of the IM2GPS3K sample photos (synthetic photos when the sample is
   absent). :class:`geobuild.ranker.vlm_data.PhotoStore` reads and decodes 64 random keys by seeking;
   the baseline streams the tar with ``geobuild.artifacts.shards.iter_shard`` until it has seen those keys and
   decodes them. Reported: seconds and the ratio baseline / PhotoStore.
2. Training step of the tiny random Qwen2-VL (``geobuild.ranker.tiny_vlm``; CPU, float32) on a
   batch of 2 groups x 8 candidates made of real photos (half the candidates with their own photo),
   AdamW on LoRA + head, multi-order loss. Variants as a ratio to the default settings: gradient
   checkpointing, pairs run in chunks of 4, no candidate photos. The tiny model measures the
   ranker's own overhead (prompting, processor, padding, gathering): absolute times say nothing
   about a 2B model on a GPU, which could not be measured here.

    python -m benchmarks.bench_vlm_ranker [--out benchmarks/results/vlm_ranker.md]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

#: CPU time of this process: the machine is shared, and wall time would mostly measure the neighbours
clock = time.process_time

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("GEOBUILD_SHARED", REPO.parent / "shared")).resolve()
ZIP = SHARED / "data/im2gps3k/im2gps3ktest.zip"


def write_photo_tar(path: Path, limit: int | None = None) -> tuple[list[str], str]:
    """A tar of the sample photos (keys p00000...); returns keys and a description."""
    from geobuild.artifacts.shards import ShardWriter

    keys = []
    with ShardWriter(path) as w:
        if ZIP.exists():
            with zipfile.ZipFile(ZIP) as z:
                names = [i.filename for i in z.infolist() if not i.is_dir()][:limit]
                for i, name in enumerate(names):
                    key = f"p{i:05d}"
                    w.write(key, {"jpg": z.read(name), "json": b"{}"})
                    keys.append(key)
            return keys, f"IM2GPS3K sample photos ({len(keys)} JPEGs, 384 px)"
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(0)
        for i in range(limit or 500):
            buf = io.BytesIO()
            Image.fromarray((rng.random((256, 320, 3)) * 255).astype("uint8")).save(buf, format="JPEG")
            key = f"p{i:05d}"
            w.write(key, {"jpg": buf.getvalue(), "json": b"{}"})
            keys.append(key)
        return keys, f"synthetic photos ({len(keys)} JPEGs, 320x256; the IM2GPS3K sample was not found)"


def bench_photos(tar: Path, keys: list[str], n: int = 64) -> dict:
    from PIL import Image

    from geobuild.ranker.vlm_data import PhotoStore
    from geobuild.artifacts.shards import iter_shard

    want = random.Random(0).sample(keys, n)
    t0 = clock()
    store = PhotoStore([tar])
    t_index = clock() - t0
    t0 = clock()
    got = [store.get(k) for k in want]
    t_store = clock() - t0
    assert all(g is not None for g in got)

    t0 = clock()
    todo = set(want)
    for sample in iter_shard(tar):
        if sample["__key__"] in todo:
            Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
            todo.discard(sample["__key__"])
            if not todo:
                break
    t_scan = clock() - t0
    return {"photos": len(store), "n": n, "index_s": t_index, "store_s": t_store, "scan_s": t_scan}


def bench_steps(tiny: Path, tar: Path, keys: list[str], steps: int = 5) -> list[dict]:
    import torch

    from geobuild.ranker.loss import multi_order_loss
    from geobuild.ranker.vlm import RankCandidate, RankGroup, VlmRanker, VlmSettings
    from geobuild.ranker.vlm_data import PhotoStore

    store = PhotoStore([tar])

    def groups(candidate_photos: bool):
        rng = random.Random(1)  # the same coordinates and photos for every variant
        out = []
        for b in range(2):
            cands = []
            for j in range(8):
                has = candidate_photos and j % 2 == 0
                cands.append(RankCandidate(rng.uniform(-60, 60), rng.uniform(-180, 180), "Some City Some State Some Country",
                                           store.get(rng.choice(keys)) if has else None))
            out.append(RankGroup(store.get(keys[b]), cands))
        return out

    dists = torch.rand(2, 8) * 10000
    variants = [
        ("default (candidate photos, one forward for all 16 pairs)", {}, True),
        ("gradient checkpointing", {"gradient_checkpointing": True}, True),
        ("pairs in chunks of 4", {"max_pairs_per_forward": 4}, True),
        ("no candidate photos (one image per prompt)", {}, False),
    ]
    runs = []
    for name, kw, photos in variants:
        torch.manual_seed(0)
        model = VlmRanker.from_pretrained(VlmSettings(vlm_path=str(tiny), device="cpu", **kw))
        model.train()
        opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
        runs.append((name, model, opt, groups(photos), []))

    def step(model, opt, batch) -> float:
        t0 = clock()
        loss = multi_order_loss(model(batch), dists)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return clock() - t0

    for i in range(steps + 1):  # round-robin over the variants, so drifting load hits all alike
        for name, model, opt, batch, times in runs:
            t = step(model, opt, batch)
            if i:  # the first round warms up
                times.append(t)
    rows = []
    for name, model, opt, batch, times in runs:
        enc = model.encode([(g, c) for g in batch for c in g.candidates])
        rows.append({"name": name, "median_s": statistics.median(times), "tokens": int(enc["attention_mask"].sum()),
                     "seq_len": int(enc["input_ids"].shape[1])})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/vlm_ranker.md"))
    ap.add_argument("--steps", type=int, default=9)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GEOBUILD_NO_PROGRESS", "1")
    import torch

    from geobuild.ranker.tiny_vlm import build_tiny_vlm

    torch.set_num_threads(1)  # one thread: CPU time is not inflated by threads spinning on a busy machine

    load0 = f"{os.getloadavg()[0]:.1f}"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tar = tmp / "photos.tar"
        keys, what = write_photo_tar(tar)
        photos = bench_photos(tar, keys)
        tiny = build_tiny_vlm(tmp / "tiny")
        steps = bench_steps(tiny, tar, keys, args.steps)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    base = steps[0]["median_s"]
    lines = [
        "# VLM ranker (Qwen2-VL + LoRA + value head)",
        "",
        "Command: `python -m benchmarks.bench_vlm_ranker`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs), Python "
        f"{sys.version.split()[0]}, torch {torch.__version__}; no GPU available in this environment, so "
        "GPU figures (bf16, a real 2B/7B model) could not be measured.",
        "",
        f"## Photo access by key ({what})",
        "",
        "All times are CPU seconds of the benchmark process (`time.process_time`): the 2 cores are shared "
        f"with other jobs (load average {load0} at the start, {os.getloadavg()[0]:.1f} at the end), so wall "
        "time would mostly measure them. One run of the script; see the results file for the spread between runs.",
        "",
        "| method | CPU seconds for 64 random photos | ratio |",
        "|---|---|---|",
        f"| stream the tar until all 64 are seen (`iter_shard`, baseline) | {photos['scan_s']:.3f} | 1.00 |",
        f"| `PhotoStore.get` (seek + decode) | {photos['store_s']:.3f} | {photos['scan_s'] / photos['store_s']:.1f}x faster |",
        "",
        f"Indexing the tar once ({photos['photos']} photos, headers only): {photos['index_s']:.3f} s.",
        "",
        "## Training step, tiny random Qwen2-VL on CPU (2 groups x 8 candidates, real photos)",
        "",
        f"Median of {args.steps} steps per variant after one warm-up step, the variants run round-robin; forward + multi-order loss + backward + AdamW; torch threads: " + str(torch.get_num_threads()) + ".",
        "",
        "| variant | step CPU seconds | ratio to default | prompt tokens (padded length) |",
        "|---|---|---|---|",
    ]
    for r in steps:
        lines.append(f"| {r['name']} | {r['median_s']:.3f} | {r['median_s'] / base:.2f} | {r['tokens']} ({r['seq_len']}) |")
    lines += ["", f"Peak RSS of the benchmark process: {peak_mb:.0f} MB.", ""]
    text = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
