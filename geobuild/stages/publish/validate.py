"""Validate a staged folder before anything is uploaded.

Checks, per repository: every file against ``manifest.json`` (sha256 and size, nothing missing or
extra), the card's YAML front matter, and that the real ``datasets`` library streams every config
(Parquet repository) and the WebDataset tars (images repository) to the end with the row counts the
manifest records. Checksums are verified on every call; the loading is skipped when the manifests are those
of the last successful load (``validated.json`` beside the repositories). Loading runs in a child process with ``HF_HUB_OFFLINE=1`` and a temporary cache, so it
cannot touch the network or the user's cache.

Child entry point: ``python -m geobuild.stages.publish.validate DIR`` prints a JSON report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ...core.errors import GeobuildError
from .layout import DATASET_REPO, IMAGES_REPO
from .card import parse_front_matter
from ...core.runfolder import atomic_path
from .manifest import MANIFEST, read_manifest, sha256_file, verify_files

#: beside the repositories (never uploaded): manifest digests of the last folder that loaded fine
VALIDATED = "validated.json"


def _card(folder: Path) -> dict[str, Any]:
    return parse_front_matter((folder / "README.md").read_text(encoding="utf-8"))


def _count(split: Any, arrow: bool, batch_size: int = 1000) -> int:
    """Rows of a streamed split, read to the end in batches with its features applied: as Arrow
    tables (Parquet), or as columns with the photos left undecoded (WebDataset)."""
    batches = split.with_format("arrow") if arrow else split.decode(False)
    return sum(len(b) if arrow else len(next(iter(b.values()))) for b in batches.iter(batch_size=batch_size))


def load_counts(staged: Path, cache_dir: Path) -> dict[str, Any]:
    """Stream every config with ``datasets`` to its end and count rows per split (runs in the child).

    Streaming reads each file once and keeps no Arrow copy: memory is bounded by one Parquet file
    (``--max-file-mb``) or one tar, not by the dataset, and no second copy of the photos goes to disk.
    """
    import datasets

    datasets.disable_progress_bars()
    out: dict[str, Any] = {"rows": {}, "errors": []}
    ds_dir = staged / DATASET_REPO
    if ds_dir.is_dir():
        for cfg in _card(ds_dir).get("configs", []):
            name = cfg["config_name"]
            try:
                dd = datasets.load_dataset(str(ds_dir), name, cache_dir=str(cache_dir), streaming=True)
                out["rows"][f"{DATASET_REPO}/{name}"] = {s: _count(dd[s], arrow=True) for s in dd}
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                out["errors"].append(f"{DATASET_REPO}: config '{name}' does not load: {type(exc).__name__}: {_first_line(exc)}")
    im_dir = staged / IMAGES_REPO
    if im_dir.is_dir():
        card = _card(im_dir)
        features = datasets.Features._from_yaml_list(card["dataset_info"][0]["features"])
        files = {s: sorted(str(p) for p in (im_dir / s).glob("*.tar")) for s in ("train", "validation")}
        files = {s: v for s, v in files.items() if v}
        try:
            dd = datasets.load_dataset("webdataset", data_files=files, features=features, cache_dir=str(cache_dir), streaming=True)
            out["rows"][f"{IMAGES_REPO}/default"] = {s: _count(dd[s], arrow=False) for s in dd}
        except Exception as exc:  # noqa: BLE001
            out["errors"].append(f"{IMAGES_REPO}: tars do not load as WebDataset: {type(exc).__name__}: {_first_line(exc)}")
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause).strip():
        msg += f" ({type(cause).__name__}: {str(cause).strip().splitlines()[0]})"
    return msg[:300]


def validate_staged(staged: Path, repos: list[str] | None = None) -> list[str]:
    """Problems found in a staged folder (empty list: ready to upload)."""
    staged = Path(staged)
    repos = repos or [r for r in (DATASET_REPO, IMAGES_REPO) if (staged / r).is_dir()]
    problems: list[str] = []
    expected_rows: dict[str, Any] = {}
    declared: dict[str, Any] = {}  # split sizes the cards' dataset_info states
    if DATASET_REPO not in repos:
        problems.append(f"{staged / DATASET_REPO}: not staged")
    for repo in repos:
        folder = staged / repo
        if not (folder / MANIFEST).exists():
            problems.append(f"{repo}: no {MANIFEST}")
            continue
        manifest = read_manifest(folder)
        problems += [f"{repo}/{p}" for p in verify_files(folder, manifest)]
        try:
            card = _card(folder)
            if not card.get("configs") or not card.get("dataset_info"):
                problems.append(f"{repo}/README.md: front matter lacks configs or dataset_info")
        except (OSError, ValueError) as exc:
            problems.append(f"{repo}/README.md: {exc}")
        for cfg, splits in manifest.get("rows", {}).items():
            expected_rows[f"{repo}/{cfg}"] = {s: n for s, n in splits.items() if n > 0}
        if not problems:
            for info in card.get("dataset_info") or []:
                declared[f"{repo}/{info.get('config_name', 'default')}"] = {
                    sp["name"]: int(sp["num_examples"]) for sp in info.get("splits") or [] if "num_examples" in sp}
    if problems:
        return problems
    digest = {repo: sha256_file(staged / repo / MANIFEST) for repo in repos}
    if _read_record(staged) == digest:
        return []  # these exact files (checksums just verified) already loaded with datasets
    with tempfile.TemporaryDirectory(prefix="geobuild-validate-") as tmp:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(Path(tmp) / "hf"),
               "HF_DATASETS_CACHE": str(Path(tmp) / "cache")}
        proc = subprocess.run(
            [sys.executable, "-m", "geobuild.stages.publish.validate", str(staged), str(Path(tmp) / "cache")],
            env=env, capture_output=True, text=True,
        )
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return [f"loading with datasets failed: {tail}"]
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    problems += report["errors"]
    for name, splits in expected_rows.items():
        got = report["rows"].get(name)
        if got is None:
            if not any(name.split("/")[0] in e for e in report["errors"]):
                problems.append(f"{name}: not loaded")
        elif got != splits:
            problems.append(f"{name}: datasets loads {got} rows, manifest says {splits}")
        elif declared.get(name, got) != got:
            problems.append(f"{name}: datasets loads {got} rows, the card's dataset_info declares {declared[name]}")
    if not problems:
        with atomic_path(staged / VALIDATED) as tmp:
            tmp.write_text(json.dumps(digest, indent=2, sort_keys=True) + "\n")
    return problems


def _read_record(staged: Path) -> dict[str, str] | None:
    try:
        return json.loads((staged / VALIDATED).read_text())
    except (OSError, ValueError):
        return None


def require_valid(staged: Path, repos: list[str] | None = None) -> None:
    """Raise GeobuildError (one line) naming the first problem, if any."""
    problems = validate_staged(staged, repos)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise GeobuildError(f"validation of {staged} failed, nothing uploaded: {problems[0]}{more}")


def main(argv: list[str]) -> int:
    staged, cache = Path(argv[0]), Path(argv[1])
    report = load_counts(staged, cache)
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
