"""Versioned schemas for every artifact a stage writes (``schemas/<name>.json``).

A schema file is JSON: ``{"name", "version", "description", "fields": [{"name", "type",
"nullable", "description"}]}`` with Arrow type strings (``string``, ``float32``, ``int64``,
``bool``, ``binary``, ``list<float64>``, ``list<list<string>>`` ...). Writers attach the name and
version to the Parquet metadata; readers call :func:`check` and refuse other versions.

JSON artifacts (``info.json``, ``model.json``, stats ...) have schema files with ``"format":
"json"``; their field types add ``map<string, T>`` and ``object`` (free-form). Their writers put
``"schema_version"`` in the object (:func:`json_version`); readers call :func:`check_json`, which
accepts files written before the field existed (no ``schema_version``) and refuses other versions.

The schema files live in the top-level ``schemas/`` folder of the checkout (the single source);
a wheel installs the same files as data files under ``<prefix>/share/geobuild/schemas``.
"""

from __future__ import annotations

import json
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from .errors import GeobuildError

#: ``schemas/`` beside the package in a checkout or an editable install.
CHECKOUT_SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
#: where ``[tool.setuptools.data-files]`` puts them, relative to an install prefix.
INSTALLED_SUBDIR = Path("share", "geobuild", "schemas")
JSON_VERSION_KEY = "schema_version"


def _installed_dirs() -> list[Path]:
    """Candidate install locations of the schema files, most likely first."""
    out: list[Path] = []
    for scheme in (sysconfig.get_default_scheme(), sysconfig.get_preferred_scheme("user")):
        try:
            data = sysconfig.get_path("data", scheme)
        except KeyError:
            continue
        if data:
            out.append(Path(data) / INSTALLED_SUBDIR)
    out += [Path(sys.prefix) / INSTALLED_SUBDIR, Path(sys.base_prefix) / INSTALLED_SUBDIR]
    try:  # wherever the installer recorded the files (e.g. --prefix / --target installs)
        from importlib.metadata import PackageNotFoundError, distribution

        for f in distribution("geobuild").files or []:
            if f.name.endswith(".json") and Path(*f.parts[-3:-1]) == INSTALLED_SUBDIR.relative_to("share"):
                out.append(Path(str(f.locate())).resolve().parent)
                break
    except (ImportError, PackageNotFoundError, OSError, ValueError):
        pass
    return out


def find_schema_dir() -> Path:
    """The checkout's ``schemas/`` when present, else the installed copy."""
    for d in (CHECKOUT_SCHEMA_DIR, *_installed_dirs()):
        if d.is_dir() and any(d.glob("*.json")):
            return d
    return CHECKOUT_SCHEMA_DIR


SCHEMA_DIR = find_schema_dir()
META_NAME = b"geobuild.schema"
META_VERSION = b"geobuild.schema_version"

_PRIMITIVES = {
    "string": pa.string(),
    "large_string": pa.large_string(),
    "binary": pa.binary(),
    "bool": pa.bool_(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float16": pa.float16(),
    "float32": pa.float32(),
    "float64": pa.float64(),
}


def parse_type(text: str) -> pa.DataType:
    """Arrow type from its schema-file spelling, e.g. ``list<list<float32>>``, ``map<string, int64>``."""
    text = text.strip()
    if text.startswith("list<") and text.endswith(">"):
        return pa.list_(parse_type(text[5:-1]))
    if text.startswith("map<") and text.endswith(">") and "," in text:
        key, value = text[4:-1].split(",", 1)
        return pa.map_(parse_type(key), parse_type(value))
    try:
        return _PRIMITIVES[text]
    except KeyError:
        raise GeobuildError(f"unknown type '{text}' in a schema file") from None


@lru_cache(maxsize=None)
def load(name: str) -> dict[str, Any]:
    """The schema document ``schemas/<name>.json``."""
    path = SCHEMA_DIR / f"{name}.json"
    if not path.exists():
        raise GeobuildError(f"no schema named '{name}' in {SCHEMA_DIR}")
    return json.loads(path.read_text())


def arrow_schema(name: str) -> pa.Schema:
    """The Arrow schema of ``name``, with its name and version in the metadata."""
    doc = load(name)
    if doc.get("format") == "json":
        raise GeobuildError(f"schema '{name}' describes a JSON file, not a table")
    fields = [pa.field(f["name"], parse_type(f["type"]), nullable=f.get("nullable", True)) for f in doc["fields"]]
    return pa.schema(fields, metadata={META_NAME: doc["name"].encode(), META_VERSION: str(doc["version"]).encode()})


def table(name: str, columns: dict[str, Any]) -> pa.Table:
    """Build a table of schema ``name`` from a dict of columns (extra keys are an error)."""
    schema = arrow_schema(name)
    extra = set(columns) - set(schema.names)
    if extra:
        raise ValueError(f"columns not in schema '{name}': {sorted(extra)}")
    return pa.table({n: columns.get(n) for n in schema.names}, schema=schema)


def check(obj: pa.Table | pa.Schema, name: str, source: str = "") -> None:
    """Refuse data whose schema name/version differ from ``schemas/<name>.json`` or lacks columns."""
    schema = obj.schema if isinstance(obj, pa.Table) else obj
    doc = load(name)
    meta = schema.metadata or {}
    where = f" in {source}" if source else ""
    got_name = meta.get(META_NAME, b"").decode()
    got_version = meta.get(META_VERSION, b"").decode()
    if got_name != doc["name"] or got_version != str(doc["version"]):
        raise GeobuildError(
            f"expected schema {doc['name']} v{doc['version']}{where}, found "
            f"{got_name or 'none'} v{got_version or '?'}; rebuild it with this geobuild version"
        )
    missing = [f["name"] for f in doc["fields"] if f["name"] not in schema.names]
    if missing:
        raise GeobuildError(f"missing columns{where}: {', '.join(missing)}")


def json_version(name: str) -> int:
    """The version a writer records as ``"schema_version"`` in the JSON artifact ``name``."""
    return int(load(name)["version"])


def check_json(obj: Any, name: str, source: str = "") -> None:
    """Refuse a JSON artifact whose ``schema_version`` differs from ``schemas/<name>.json``.

    Files without the field (written before it existed) are accepted as they are.
    """
    got = obj.get(JSON_VERSION_KEY) if isinstance(obj, dict) else None
    if got is None:
        return
    want = json_version(name)
    if str(got) != str(want):
        where = f" in {source}" if source else ""
        raise GeobuildError(f"expected {name} schema v{want}{where}, found v{got}; rebuild it with this geobuild version")
