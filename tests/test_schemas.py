"""Every schema the code names loads (from the checkout or an installed wheel), JSON artifacts are
versioned, and readers accept JSON artifacts with and without ``schema_version``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from geobuild.core import schemas
from geobuild.core.errors import GeobuildError

REPO = Path(__file__).resolve().parent.parent
CALLS = [
    re.compile(r"\b(?:table|arrow_schema|load|json_version|schema_descriptions)\(\s*[\"']([a-z_0-9]+)[\"']"),
    re.compile(r"\bcheck(?:_json)?\([^()]*?,\s*[\"']([a-z_0-9]+)[\"']"),
]


def referenced_names() -> set[str]:
    names: set[str] = set()
    for folder in ("geobuild", "benchmarks"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            if "schema" not in text:
                continue
            for pat in CALLS:
                names.update(pat.findall(text))
    return names


def test_every_schema_named_in_code_loads():
    names = referenced_names()
    assert {"ledger", "candidates", "distances", "gallery_ids", "embeddings_model", "index_info", "gps_info",
            "shard_stats"} <= names, names
    for name in sorted(names):
        doc = schemas.load(name)
        assert doc["name"] == name and isinstance(doc["version"], int), name
        if doc.get("format") == "json":
            assert schemas.json_version(name) == doc["version"]
        else:
            assert schemas.arrow_schema(name).names == [f["name"] for f in doc["fields"]]


def test_every_schema_file_is_well_formed():
    files = sorted((REPO / "schemas").glob("*.json"))
    assert schemas.SCHEMA_DIR == REPO / "schemas"
    for path in files:
        doc = json.loads(path.read_text())
        assert doc["name"] == path.stem and isinstance(doc["version"], int) and doc["description"], path
        for f in doc["fields"]:
            assert f["name"] and f["description"], (path, f)
            if f["type"] != "object":
                schemas.parse_type(f["type"])
    for name in ("shard_sizes", "shard_stats", "embeddings_model", "index_info", "gps_info"):
        assert schemas.load(name)["format"] == "json"


def test_check_json_accepts_missing_and_refuses_other_versions():
    schemas.check_json({"dim": 3}, "index_info")  # written before schema_version existed
    schemas.check_json({"schema_version": schemas.json_version("index_info")}, "index_info")
    with pytest.raises(GeobuildError, match="index_info schema v1"):
        schemas.check_json({"schema_version": 99}, "index_info", "x/info.json")


def test_model_info_readers_accept_with_and_without_version(tmp_path):
    from geobuild.artifacts.embeddings import model_info_path, read_model_info

    info = {"model": "m", "dim": 4, "dtype": "float32", "text": False, "has_text": False}
    path = model_info_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(info))
    assert read_model_info(tmp_path)["dim"] == 4
    path.write_text(json.dumps(dict(info, schema_version=1)))
    assert read_model_info(tmp_path)["schema_version"] == 1
    path.write_text(json.dumps(dict(info, schema_version=7)))
    with pytest.raises(GeobuildError, match="embeddings_model"):
        read_model_info(tmp_path)


def test_built_wheel_ships_the_schemas(tmp_path):
    """Build a wheel from a copy of the tree (about 2 s; nothing is written into the checkout)."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "geobuild", src / "geobuild", ignore=ignore)
    shutil.copytree(REPO / "schemas", src / "schemas")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    out = tmp_path / "whl"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "No module named pip" in proc.stderr:
        pytest.skip("pip not available")
    assert proc.returncode == 0, proc.stderr
    (wheel,) = out.glob("geobuild-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {Path(n).stem for n in zf.namelist() if "/share/geobuild/schemas/" in n and n.endswith(".json")}
    assert shipped == {p.stem for p in (REPO / "schemas").glob("*.json")}
    assert referenced_names() <= shipped
