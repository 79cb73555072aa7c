"""``manifest.json``: sha256 and size of every file of a staged repository, plus row counts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ...core.runfolder import atomic_path

MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def repo_files(folder: Path) -> list[str]:
    """Relative POSIX paths of every file below ``folder`` except the manifest, sorted."""
    folder = Path(folder)
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST and not p.relative_to(folder).as_posix().startswith(".")
    )


def build_manifest(folder: Path, rows: dict[str, Any]) -> dict[str, Any]:
    """The manifest document: ``files`` (path -> sha256, size) and ``rows`` (what was counted)."""
    files = {rel: {"sha256": sha256_file(Path(folder) / rel), "size": (Path(folder) / rel).stat().st_size} for rel in repo_files(folder)}
    return {"files": files, "rows": rows}


def write_manifest(folder: Path, rows: dict[str, Any]) -> dict[str, Any]:
    doc = build_manifest(folder, rows)
    with atomic_path(Path(folder) / MANIFEST) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return doc


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / MANIFEST).read_text())


def verify_files(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """Problems found comparing the folder to its manifest (missing, extra, size or sha256 differ)."""
    folder = Path(folder)
    problems = []
    expected = manifest.get("files", {})
    present = set(repo_files(folder))
    for rel in sorted(set(expected) - present):
        problems.append(f"{rel}: listed in the manifest but missing")
    for rel in sorted(present - set(expected)):
        problems.append(f"{rel}: not listed in the manifest")
    for rel in sorted(present & set(expected)):
        p = folder / rel
        if p.stat().st_size != expected[rel]["size"]:
            problems.append(f"{rel}: size {p.stat().st_size} != {expected[rel]['size']} in the manifest")
        elif sha256_file(p) != expected[rel]["sha256"]:
            problems.append(f"{rel}: sha256 differs from the manifest")
    return problems
