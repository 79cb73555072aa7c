"""Assemble benchmarks/RESULTS.md from the per-area result files in benchmarks/results/.

Each benchmark script writes its own ``benchmarks/results/<area>.md`` with the command that made
every figure; this script concatenates them in pipeline order under one table of contents.

    python -m benchmarks.collect_results
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["shard", "embed", "index_distances", "mine", "gallery_1m", "publish", "pipeline", "scale", "report",
         "ranker_protocol", "ranker_confirm", "ranker_splits", "ranker_15ep", "ranker_consensus", "vlm_ranker"]

HEADER = """# Benchmark results

Every figure below was measured on the reference machine (x86-64 Linux, 2 CPU cores shared with
other jobs, Python 3.11, torch 2.14.1 on the CPU) by the command given with it; speeds are ratios
to a baseline run in the same process. **No GPU was available, so no GPU figures were measured**;
the GPU code paths (CUDA embedding, faiss-GPU / torch-CUDA search, the Qwen2-VL ranker in bf16)
are written and exercised on the CPU only. Regenerate this file with
`python -m benchmarks.collect_results` after running the benchmarks.

"""


def main() -> None:
    results = HERE / "results"
    files = {p.stem: p for p in results.glob("*.md")}
    names = [n for n in ORDER if n in files] + sorted(set(files) - set(ORDER))
    parts = [HEADER, "## Contents\n"]
    parts += [f"- [{n}](results/{n}.md)" for n in names]
    parts.append("")
    for n in names:
        text = files[n].read_text().strip()
        # demote headings one level so each area is a section of this document
        lines, fenced = [], False
        for line in text.splitlines():
            if line.startswith("```"):
                fenced = not fenced
            lines.append("#" + line if line.startswith("#") and not fenced else line)
        text = "\n".join(lines)
        parts.append(text)
        parts.append("")
    (HERE / "RESULTS.md").write_text("\n".join(parts))
    print(f"wrote {HERE / 'RESULTS.md'} from {len(names)} result files")


if __name__ == "__main__":
    main()
