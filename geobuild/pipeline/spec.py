"""The pipeline spec: a YAML file of stages and parameters, loaded, validated, interpolated, typed.

A pipeline file names a chain of stages with their parameters::

    name: sample
    stages:
      shard:
        source: ${GEOBUILD_SHARED:-../shared}/data/im2gps3k/im2gps3ktest.zip
      embed:
        model: efficientnet-lite0
      index: {kind: flat}
      ...

Each stage section is checked against the stage's config dataclass (``geobuild/stages/<name>.py``:
``<Name>Config`` and ``<Name>Stage``); ``uses: package.module:StageClass`` plugs in a stage of
your own. String values may hold ``${VAR}`` or ``${VAR:-default}``; besides the environment, the
variables ``RUN`` (the run folder) and ``GALLERY`` (``--gallery``) are defined by ``geobuild run``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import GeobuildError
from ..core.runfolder import plain
from ..core.shareable import REDACTED, SECRET_RE, redact  # noqa: F401 - part of this module's API
from ..core.stage import Stage
from ..stages import STAGES

#: stage name -> "module:StageClass:ConfigClass", in pipeline order

_TOP_KEYS = {"name", "description", "stages"}


# -- loading and validation ---------------------------------------------------------------------


@dataclass
class StageSpec:
    """One stage of a pipeline: its name, classes and resolved parameters."""

    name: str
    stage_cls: type
    config_cls: type
    params: dict[str, Any]
    missing_vars: list[str] = field(default_factory=list)

    def build(self):
        """Instantiate the stage from its config dataclass."""
        try:
            cfg = self.config_cls(**self.params)
        except (TypeError, ValueError) as exc:
            raise GeobuildError(f"stage '{self.name}': invalid parameters: {exc}") from exc
        return build_stage(self.stage_cls, self.config_cls, cfg)


@dataclass
class Pipeline:
    """A parsed pipeline file."""

    path: Path
    name: str
    stages: list[StageSpec]
    #: the ``geobuild run`` options besides the file that shaped it (``--set``, ``--gallery``), secrets redacted
    rerun_options: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def select(self, start: str | None = None, until: str | None = None) -> list[StageSpec]:
        """The stages from ``start`` through ``until`` (inclusive), in order."""
        names = self.names()
        for opt, value in (("--from", start), ("--until", until)):
            if value is not None and value not in names:
                raise GeobuildError(f"{opt} {value}: no such stage in {self.path.name} (stages: {', '.join(names)})")
        i = names.index(start) if start else 0
        j = names.index(until) if until else len(names) - 1
        if i > j:
            raise GeobuildError(f"--from {start} comes after --until {until} in {self.path.name}")
        return self.stages[i : j + 1]

    def resolved(self) -> dict[str, Any]:
        """The pipeline with variables substituted and defaults filled in, secrets redacted."""
        out: dict[str, Any] = {"name": self.name, "stages": {}}
        for s in self.stages:
            if s.missing_vars:
                out["stages"][s.name] = {"unresolved": sorted(set(s.missing_vars))}
                continue
            try:
                cfg = plain(dataclasses.asdict(s.config_cls(**s.params)))
            except (TypeError, ValueError):
                cfg = plain(s.params)
            out["stages"][s.name] = redact(cfg)
        return out


def stage_classes(name: str, uses: str | None = None) -> tuple[type, type]:
    """(stage class, config class) for a stage name, or for ``module:Class`` given by ``uses``."""
    if uses:
        mod_name, _, cls_name = uses.partition(":")
        if not cls_name:
            raise GeobuildError(f"stage '{name}': 'uses' must look like package.module:StageClass, got {uses!r}")
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise GeobuildError(f"stage '{name}': cannot import {mod_name} ({exc})") from exc
        stage_cls = getattr(module, cls_name, None)
        if not (isinstance(stage_cls, type) and issubclass(stage_cls, Stage)):
            raise GeobuildError(f"stage '{name}': {uses} is not a geobuild Stage subclass")
        config_cls = getattr(module, cls_name.removesuffix("Stage") + "Config", None) if cls_name.endswith("Stage") else None
        return stage_cls, (config_cls if dataclasses.is_dataclass(config_cls) else stage_cls)
    if name not in STAGES:
        raise GeobuildError(f"unknown stage '{name}' (valid stages: {', '.join(STAGES)}; or give 'uses: module:StageClass')")
    mod_name, stage_name, config_name = STAGES[name].split(":")
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        if exc.name == mod_name:
            raise GeobuildError(f"stage '{name}' is not available in this installation ({mod_name} is missing)") from exc
        raise
    stage_cls = getattr(module, stage_name, None)
    config_cls = getattr(module, config_name, None)
    if stage_cls is None:
        raise GeobuildError(f"stage '{name}': {mod_name} defines no {stage_name}")
    if not dataclasses.is_dataclass(config_cls):
        config_cls = stage_cls
    return stage_cls, config_cls


def build_stage(stage_cls: type, config_cls: type, cfg: Any):
    """A stage object from its config: the config itself (a stage that is its own config), or the
    stage dataclass holding it as ``cfg``."""
    if isinstance(cfg, stage_cls):
        return cfg
    return stage_cls(cfg)


def config_fields(config_cls: type) -> dict[str, Any]:
    """Parameter name -> type hint for a config dataclass (init fields only)."""
    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # noqa: BLE001 - unresolved forward references: keep raw annotations
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(config_cls) if f.init and not f.name.startswith("_")}


def rerun_options(overrides: list[str], gallery: str | None = None) -> list[str]:
    """The ``--set`` / ``--gallery`` options of a run, secret values redacted (``pipeline.yaml``
    records them so that a repair command repeats them)."""
    out: list[str] = []
    for o in overrides:
        key, sep, value = o.partition("=")
        out += ["--set", f"{key}={REDACTED}" if sep and value and SECRET_RE.search(key) else o]
    return out + (["--gallery", gallery] if gallery else [])


def load_pipeline(
    path: str | os.PathLike,
    variables: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    strict_stages: list[str] | None = None,
    overrides: list[str] | None = None,
) -> Pipeline:
    """Parse and validate a pipeline file.

    ``variables`` take precedence over ``env`` (default: ``os.environ``) for ``${VAR}``. A variable
    that is unset and has no default is an error for the stages in ``strict_stages`` (default: all);
    for the others it is only recorded, so ``--until shard`` does not need the Hub repository.
    """
    path = Path(path)
    if not path.is_file():
        raise GeobuildError(f"pipeline file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise GeobuildError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("stages"), dict) or not doc["stages"]:
        raise GeobuildError(f"{path}: expected a mapping with a non-empty 'stages:' section (stage name -> parameters)")
    extra = sorted(set(doc) - _TOP_KEYS)
    if extra:
        raise GeobuildError(f"{path}: unknown top-level key(s) {', '.join(extra)} (valid: {', '.join(sorted(_TOP_KEYS))})")
    lookup = dict(os.environ if env is None else env)
    lookup.update({k: str(v) for k, v in (variables or {}).items() if v is not None})
    specs = []
    _apply_overrides(path, doc["stages"], overrides or [])
    for name, params in doc["stages"].items():
        name = str(name)
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise GeobuildError(f"{path}: stage '{name}' must map parameter names to values, got {type(params).__name__}")
        params = dict(params)
        uses = params.pop("uses", None)
        stage_cls, config_cls = stage_classes(name, uses)
        if getattr(stage_cls, "name", name) != name:
            raise GeobuildError(f"{path}: stage '{name}' uses {stage_cls.__name__}, whose name is '{stage_cls.name}'; name the section '{stage_cls.name}'")
        fields = config_fields(config_cls)
        unknown = sorted(set(params) - set(fields))
        if unknown:
            raise GeobuildError(
                f"{path}: stage '{name}' has unknown parameter(s) {', '.join(unknown)} "
                f"(valid: {', '.join(sorted(fields)) or 'none'})"
            )
        missing: list[str] = []
        resolved = {k: _coerce(_interpolate(v, lookup, missing), fields[k]) for k, v in params.items()}
        strict = strict_stages is None or name in strict_stages
        if missing and strict:
            var = missing[0]
            raise GeobuildError(
                f"{path}: environment variable {var} is not set (used by stage '{name}'); "
                f"export {var}=... or write ${{{var}:-default}} in the pipeline"
            )
        specs.append(StageSpec(name=name, stage_cls=stage_cls, config_cls=config_cls, params=resolved, missing_vars=missing))
    names = [s.name for s in specs]
    known = [n for n in names if n in STAGES]
    if known != sorted(known, key=list(STAGES).index):
        raise GeobuildError(f"{path}: stages out of order ({', '.join(known)}); the order is {', '.join(STAGES)}")
    return Pipeline(path=path, name=str(doc.get("name") or path.stem), stages=specs)


def _interpolate(value: Any, lookup: dict[str, str], missing: list[str]) -> Any:
    """Substitute ${VAR} / ${VAR:-default} in strings (recursively in lists and mappings).

    Defaults may hold references themselves: ``${PUBLISH_TO:-${RUN}/publish}``.
    """
    if isinstance(value, dict):
        return {k: _interpolate(v, lookup, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, lookup, missing) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    out = _expand(value, lookup, missing)
    if out == "" and _whole_reference(value):
        return None  # ${X:-} stands for "not given"; typed by the config field in _coerce
    return out


def _apply_overrides(path: Path, stages: dict[str, Any], overrides: list[str]) -> None:
    """``stage.param=value`` strings (``--set``) replace or add parameters of the pipeline file."""
    for item in overrides:
        target, eq, raw = item.partition("=")
        stage, dot, param = target.partition(".")
        if not eq or not dot or not param:
            raise GeobuildError(f"--set {item!r}: expected STAGE.PARAM=VALUE, e.g. --set embed.batch_size=32")
        if stage not in stages:
            raise GeobuildError(f"--set {item!r}: no stage '{stage}' in {path.name} (stages: {', '.join(map(str, stages))})")
        value: Any = raw
        if raw.strip()[:1] in ("[", "{") or raw.strip() in ("null", "~"):
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise GeobuildError(f"--set {item!r}: not valid YAML ({str(exc).splitlines()[0]})") from exc
        if stages[stage] is None:
            stages[stage] = {}
        if isinstance(stages[stage], dict):
            stages[stage][param] = value


def _closing(text: str, start: int) -> int:
    """Index of the ``}`` closing the ``${`` at ``start`` (nesting allowed), or -1."""
    depth, i = 0, start
    while i < len(text):
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _whole_reference(text: str) -> bool:
    t = text.strip()
    return t.startswith("${") and _closing(t, 0) == len(t) - 1


def _expand(text: str, lookup: dict[str, str], missing: list[str]) -> str:
    out, i = [], 0
    while True:
        j = text.find("${", i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        k = _closing(text, j)
        if k < 0:
            raise GeobuildError(f"unclosed '${{' in {text!r}")
        out.append(text[i:j])
        body = text[j + 2 : k]
        var, sep, default = body.partition(":-")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
            raise GeobuildError(f"bad variable reference '${{{body}}}' in {text!r} (use ${{NAME}} or ${{NAME:-default}})")
        got = lookup.get(var)
        if got not in (None, ""):
            out.append(got)
        elif sep:
            out.append(_expand(default, lookup, missing))
        else:
            missing.append(var)
        i = k + 1


def _coerce(value: Any, hint: Any) -> Any:
    """Light coercion of strings to the config field's scalar type (int, float, bool, Path)."""
    if value is None and hint is str:
        return ""  # ${VAR:-} for a plain (non-optional) string field
    if not isinstance(value, str):
        return value
    args = typing.get_args(hint)
    candidates = [a for a in args if a is not type(None)] if args else [hint]
    for t in candidates:
        try:
            if t is bool:
                low = value.strip().lower()
                if low in ("true", "yes", "1", "on"):
                    return True
                if low in ("false", "no", "0", "off"):
                    return False
            elif t is int:
                return int(value)
            elif t is float:
                return float(value)
            elif t is str:
                return value
        except ValueError:
            continue
    return value
