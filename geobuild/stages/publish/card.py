"""Dataset cards (README.md): YAML front matter that ``datasets`` and the Hub read, and a body
with loading instructions, columns, counts, statistics pictures, provenance and citation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from ... import __version__
from ...core import schemas

GEORANKER_BIB = """@inproceedings{jia2025georanker,
  title     = {GeoRanker: Distance-Aware Ranking for Worldwide Image Geolocalization},
  author    = {Jia, Pengyue and Park, Seongheon and Gao, Song and Zhao, Xiangyu and Li, Yixuan},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2025}
}"""

GEOBUILD_BIB = f"""@software{{geobuild,
  title   = {{geobuild: reproducible construction of GeoRanking-style geolocalization datasets}},
  version = {{{__version__}}},
  year    = {{2026}}
}}"""

TAGS = ["geolocalization", "image-geolocalization", "gps", "geospatial", "georanker", "geobuild"]


def features_yaml(schema: pa.Schema) -> list[dict[str, Any]]:
    """``dataset_info.features`` of an Arrow schema, in the spelling ``datasets`` writes."""
    from datasets import Features

    return Features.from_arrow_schema(schema)._to_yaml_list()


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


def git_commit(start: Path | None = None) -> str | None:
    """The commit of the geobuild source checkout, read from ``.git`` (None when not a checkout)."""
    root = Path(start or Path(__file__).resolve().parents[3])
    git = root / ".git"
    try:
        if git.is_file():
            git = (root / git.read_text().split("gitdir:", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(" ", 1)[1]
        if (git / ref).exists():
            return (git / ref).read_text().strip()
        packed = git / "packed-refs"
        if packed.exists():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split(" ", 1)[0]
    except (OSError, IndexError):
        return None
    return None


def front_matter(meta: dict[str, Any]) -> str:
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def parse_front_matter(text: str) -> dict[str, Any]:
    """The YAML mapping between the leading ``---`` lines of a card."""
    if not text.startswith("---\n"):
        raise ValueError("card has no YAML front matter")
    end = text.index("\n---\n", 4)
    return yaml.safe_load(text[4:end]) or {}


def _config_entry(name: str, splits: dict[str, dict[str, Any]], pattern: str, default: bool = False) -> dict[str, Any]:
    entry: dict[str, Any] = {"config_name": name}
    if default:
        entry["default"] = True
    entry["data_files"] = [{"split": s, "path": pattern.format(split=s)} for s in splits if splits[s]["rows"] > 0]
    return entry


def _info_entry(name: str, schema: pa.Schema, splits: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "config_name": name,
        "features": features_yaml(schema),
        "splits": [{"name": s, "num_bytes": int(v["bytes"]), "num_examples": int(v["rows"])} for s, v in splits.items() if v["rows"] > 0],
    }


def _column_table(schema: pa.Schema, descriptions: dict[str, str]) -> str:
    lines = ["| column | type | description |", "|---|---|---|"]
    for f in schema:
        typ = str(f.type).replace("item: ", "")
        text = descriptions.get(f.name, "").replace("|", "\\|")
        lines.append(f"| `{f.name}` | `{typ}` | {text} |")
    return "\n".join(lines)


def dataset_card(
    *,
    configs: dict[str, dict[str, Any]],
    pretty_name: str,
    license: str,
    counts: dict[str, dict[str, int]],
    rejects: dict[str, dict[str, int]],
    pipeline_config: dict[str, Any],
    validation_fraction: float,
    plots: list[tuple[str, str]],
) -> str:
    """README.md of the dataset repository.

    ``configs`` maps config name -> {"schema": pa.Schema, "splits": {split: {"rows", "bytes"}},
    "pattern": "candidates/{split}-*.parquet", "descriptions": {column: text}}; the first is the
    default. ``counts`` maps split -> counters (queries, candidates, image/gps/negative candidates).
    """
    names = list(configs)
    n_rows = sum(v["rows"] for v in configs[names[0]]["splits"].values())
    meta = {
        "license": license,
        "pretty_name": pretty_name,
        "task_categories": ["image-feature-extraction"],
        "tags": TAGS,
        "size_categories": [size_category(n_rows)],
        "configs": [_config_entry(n, c["splits"], c["pattern"], default=(i == 0)) for i, n in enumerate(names) for c in [configs[n]]],
        "dataset_info": [_info_entry(n, configs[n]["schema"], configs[n]["splits"]) for n in names],
    }
    commit = git_commit()
    out = [front_matter(meta), f"# {pretty_name}\n"]
    out.append(
        "Training data for distance-aware ranking in worldwide image geolocalization, in the layout of "
        "GeoRanking (the dataset GeoRanker trains on): for each query photo, a group of candidate locations "
        "(image neighbours retrieved from a gallery, GPS-gallery points and, only when mined with --negatives, "
        "distance-band points drawn around the true location (training-only, leak the answer)) with their "
        "coordinates, location text and great-circle distances. The photos are in the companion repository whose "
        "name ends in `-images` (WebDataset tars, keyed by `key`).\n"
    )
    out.append("## Loading\n\n```python\nfrom datasets import load_dataset\n")
    for n in names:
        out.append(f'{n} = load_dataset("<this repository>", "{n}")')
    out.append("```\n")
    out.append("## Configurations\n")
    for n in names:
        c = configs[n]
        out.append(f"### `{n}`{' (default)' if n == names[0] else ''}\n")
        if c.get("about"):
            out.append(c["about"] + "\n")
        out.append(_column_table(c["schema"], c.get("descriptions", {})) + "\n")
    out.append("## Splits\n")
    out.append(
        f"`validation` holds the queries whose author falls in the first {validation_fraction:.2%} of a stable hash "
        "(sha1 of the author name; of the image id when there is no author), `train` the rest, so one author's photos "
        "never span both splits. The images repository uses the same rule per photo.\n"
    )
    out.append("## Counts\n")
    splits = list(counts)
    keys = sorted({k for v in counts.values() for k in v})
    out.append("| | " + " | ".join(splits) + " |\n|---|" + "---|" * len(splits))
    for k in keys:
        out.append(f"| {k} | " + " | ".join(str(counts[s].get(k, 0)) for s in splits) + " |")
    out.append("")
    if rejects:
        out.append("Samples set aside by the pipeline (the run's ledger, by stage and reason):\n")
        out.append("| stage | reason | samples |\n|---|---|---|")
        for stage in sorted(rejects):
            for reason, n in sorted(rejects[stage].items()):
                out.append(f"| {stage} | {reason} | {n} |")
        out.append("")
    else:
        out.append("No sample was set aside by the pipeline.\n")
    if plots:
        out.append("## Statistics\n")
        for title, rel in plots:
            out.append(f"**{title}**\n\n![{title}]({rel})\n")
    out.append("## How it was built\n")
    out.append(
        f"Built with geobuild {__version__}" + (f" (commit `{commit}`)" if commit else "") + ". "
        "Stages: shard → embed → index → mine → distances → publish. The resolved pipeline configuration "
        "(`config.yaml` of the run):\n"
    )
    out.append("```yaml\n" + yaml.safe_dump(pipeline_config, sort_keys=False, allow_unicode=True).rstrip() + "\n```\n")
    out.append("## Citation\n\n```bibtex\n" + GEORANKER_BIB + "\n\n" + GEOBUILD_BIB + "\n```\n")
    return "\n".join(out)


def images_card(
    *, pretty_name: str, license: str, counts: dict[str, int], features: list[dict[str, Any]], validation_fraction: float
) -> str:
    """README.md of the images repository (WebDataset)."""
    total = sum(counts.values())
    meta = {
        "license": license,
        "pretty_name": f"{pretty_name} (images)",
        "task_categories": ["image-feature-extraction"],
        "tags": TAGS + ["webdataset"],
        "size_categories": [size_category(total)],
        "configs": [
            {
                "config_name": "default",
                "default": True,
                "data_files": [{"split": s, "path": f"{s}/*.tar"} for s, n in counts.items() if n > 0],
            }
        ],
        "dataset_info": [
            {
                "config_name": "default",
                "features": features,
                "splits": [{"name": s, "num_examples": int(n)} for s, n in counts.items() if n > 0],
            }
        ],
    }
    commit = git_commit()
    body = [
        front_matter(meta),
        f"# {pretty_name} (images)\n",
        "The photos of the queries and image candidates of the companion dataset repository (same name without "
        "`-images`), as WebDataset tars: per sample `<key>.jpg` and `<key>.json` (key, id, lat, lon, author, source, "
        "width, height). Join with the dataset on `key` (queries) and `cand_key` (image candidates).\n",
        "```python\nfrom datasets import load_dataset\nimages = load_dataset(\"<this repository>\", split=\"train\", streaming=True)\n```\n",
        f"Split by author as in the dataset (validation fraction {validation_fraction:.2%}).\n",
        "| split | photos |\n|---|---|",
        *[f"| {s} | {n} |" for s, n in counts.items()],
        "",
        f"Built with geobuild {__version__}" + (f" (commit `{commit}`)" if commit else "") + ".\n",
        "## Citation\n\n```bibtex\n" + GEORANKER_BIB + "\n\n" + GEOBUILD_BIB + "\n```\n",
    ]
    return "\n".join(body)


def schema_descriptions(name: str) -> dict[str, str]:
    """Column descriptions from ``schemas/<name>.json``."""
    return {f["name"]: f.get("description", "") for f in schemas.load(name)["fields"]}
