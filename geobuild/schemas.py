"""Versioned schemas for every artifact a stage writes (``schemas/<name>.json``).

A schema file is JSON: ``{"name", "version", "description", "fields": [{"name", "type",
"nullable", "description"}]}`` with Arrow type strings (``string``, ``float32``, ``int64``,
``bool``, ``binary``, ``list<float64>``, ``list<list<string>>`` ...). Writers attach the name and
version to the Parquet metadata; readers call :func:`check` and refuse other versions.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from .errors import GeobuildError

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
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
    """Arrow type from its schema-file spelling, e.g. ``list<list<float32>>``."""
    text = text.strip()
    if text.startswith("list<") and text.endswith(">"):
        return pa.list_(parse_type(text[5:-1]))
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
