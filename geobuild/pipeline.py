"""Whole pipelines from one YAML file: load, validate, interpolate, run every stage, summarise.

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
import json
import os
import re
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import GeobuildError
from .log import get_logger
from .runfolder import RunFolder, _plain, atomic_path, remove_stale_temps

log = get_logger("pipeline")

#: stage name -> "module:StageClass:ConfigClass", in pipeline order
STAGE_MODULES: dict[str, str] = {
    "shard": "geobuild.stages.shard:ShardStage:ShardConfig",
    "embed": "geobuild.stages.embed:EmbedStage:EmbedConfig",
    "index": "geobuild.stages.index:IndexStage:IndexConfig",
    "mine": "geobuild.stages.mine:MineStage:MineConfig",
    "distances": "geobuild.stages.distances:DistancesStage:DistancesConfig",
    "publish": "geobuild.stages.publish:PublishStage:PublishConfig",
    "publish_upload": "geobuild.stages.publish:UploadStage:UploadConfig",
}

#: stats keys that count what came into and out of a stage, and the units they are summed over
SAMPLE_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str | None]] = {
    "shard": (("inputs",), ("samples",), None),
    "embed": (("samples",), ("embedded",), None),
    "index": (("input",), ("indexed",), "gallery"),
    "mine": (("queries",), ("mined",), None),
    "distances": (("queries", "rows_in", "input"), ("rows", "rows_out", "written"), None),
    "publish": ((), ("queries.train", "queries.validation"), "dataset"),
}

#: parameter names whose values never reach config.yaml, pipeline.yaml or the summary
SECRET_RE = re.compile(r"(token|secret|password|passwd|api_?key|credential)", re.IGNORECASE)
REDACTED = "<redacted>"

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
                cfg = _plain(dataclasses.asdict(s.config_cls(**s.params)))
            except (TypeError, ValueError):
                cfg = _plain(s.params)
            out["stages"][s.name] = redact(cfg)
        return out


def stage_classes(name: str, uses: str | None = None) -> tuple[type, type]:
    """(stage class, config class) for a stage name, or for ``module:Class`` given by ``uses``."""
    from .stage import Stage

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
    if name not in STAGE_MODULES:
        raise GeobuildError(f"unknown stage '{name}' (valid stages: {', '.join(STAGE_MODULES)}; or give 'uses: module:StageClass')")
    mod_name, stage_name, config_name = STAGE_MODULES[name].split(":")
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
    """A stage object from its config: the config itself, a ``config``/``cfg`` field or argument,
    or ``from_config(section_dict)``."""
    if isinstance(cfg, stage_cls):
        return cfg
    if dataclasses.is_dataclass(stage_cls):
        for f in dataclasses.fields(stage_cls):
            if f.name in ("config", "cfg") or f.type in (config_cls, config_cls.__name__):
                return stage_cls(**{f.name: cfg})
    try:
        return stage_cls(cfg)
    except TypeError:
        from_config = getattr(stage_cls, "from_config", None)
        if not callable(from_config):
            raise
    return from_config(dataclasses.asdict(cfg))


def config_fields(config_cls: type) -> dict[str, Any]:
    """Parameter name -> type hint for a config dataclass (init fields only)."""
    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # noqa: BLE001 - unresolved forward references: keep raw annotations
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(config_cls) if f.init and not f.name.startswith("_")}


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
    known = [n for n in names if n in STAGE_MODULES]
    if known != sorted(known, key=list(STAGE_MODULES).index):
        raise GeobuildError(f"{path}: stages out of order ({', '.join(known)}); the order is {', '.join(STAGE_MODULES)}")
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


def redact(obj: Any) -> Any:
    """Replace values of secret-looking keys (token, password, ...) with a placeholder."""
    if isinstance(obj, dict):
        return {k: (REDACTED if SECRET_RE.search(str(k)) and v not in (None, "") else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


# -- stage-specific steps that the stage commands also take ----------------------------------------


def _preflight_embed(stage, run: RunFolder) -> None:
    """Fail before any work on an unknown model or missing weights (as ``geobuild embed`` does)."""
    from .encoders import load_encoder

    # on the CPU: the driver (a cluster's head node) need not have the GPU the units will use
    enc = load_encoder(stage.cfg.model, "cpu")
    del enc


def _preflight_upload(stage, run: RunFolder) -> None:
    """No Hub token, or offline: fail now rather than after hours of work."""
    from .publish.hub import hub_token

    hub_token()


def _reset_embed(run: RunFolder) -> None:
    from .embeddings import model_info_path

    model_info_path(run).unlink(missing_ok=True)


def _after_publish(stage, run: RunFolder, summary) -> None:
    """New staged files: the upload compares them with the Hub again; staged folders must validate."""
    from .publish.validate import require_valid

    if summary is None or summary.done:
        run.reset_stage("publish_upload")
    require_valid(Path(stage.cfg.to), ["dataset", "images"] if stage.cfg.images else ["dataset"])


PREFLIGHT = {"embed": _preflight_embed, "publish_upload": _preflight_upload}
ON_RESET = {"embed": _reset_embed}
AFTER = {"publish": _after_publish}


def stage_runner(stage):
    """The stage module's own ``run_<name>(stage, run, executor, overwrite)`` if it has one (shard
    streams a tar in one pass), else None for the plain :func:`geobuild.stage.run_stage`."""
    import sys

    module = sys.modules.get(type(stage).__module__)
    fn = getattr(module, f"run_{stage.name}", None) if module else None
    return fn if callable(fn) else None


# -- running ----------------------------------------------------------------------------------


@dataclass
class StageReport:
    """What one stage did in this invocation, plus totals over all its units (done earlier too)."""

    stage: str
    units: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    samples_in: int | None = None
    samples_out: int | None = None
    rejects: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    unit_seconds: float = 0.0
    totals: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    status: str = "pending"


# stats keys that stages use for what came in and what went out, first match wins
_IN_KEYS = ("samples_in", "rows_in", "inputs", "input", "in", "queries", "rows", "total")
_OUT_KEYS = ("samples_out", "rows_out", "outputs", "output", "out", "written", "ok", "kept")


def stage_totals(run: RunFolder, stage: str, only_unit: str | None = None) -> tuple[dict[str, float], float]:
    """Sum every numeric counter over ``stats/<stage>/*.json`` (finished units only; nested
    counters as ``a.b``), and their seconds."""
    totals: dict[str, float] = {}
    seconds = 0.0
    d = run.path("stats", stage)
    done = set(run.done_units(stage))
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        if p.stem not in done or (only_unit is not None and p.stem != only_unit):
            continue
        try:
            stats = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        for k, v in _flatten(stats).items():
            if k == "seconds":
                seconds += float(v)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                totals[k] = totals.get(k, 0) + v
    return totals, seconds


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def ledger_rejects(run: RunFolder, stage: str) -> dict[str, int]:
    """Rejected samples by reason (ledger status other than ok) over ``ledger/<stage>/*.parquet``."""
    d = run.path("ledger", stage)
    if not d.is_dir():
        return {}
    import pyarrow.parquet as pq

    from .ledger import OK

    counts: dict[str, int] = {}
    for p in sorted(d.glob("*.parquet")):
        if ".tmp-" in p.name:
            continue
        try:
            col = pq.read_table(p, columns=["status"]).column("status").to_pylist()
        except Exception:  # noqa: BLE001 - a foreign or broken file must not sink the summary
            continue
        for s in col:
            if s != OK:
                counts[s or "unknown"] = counts.get(s or "unknown", 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _pick(totals: dict[str, float], keys: tuple[str, ...], add: bool = False) -> int | None:
    found = [totals[k] for k in keys if k in totals]
    if not found:
        return None
    return int(sum(found)) if add else int(found[0])


def fill_report(rep: StageReport, run: RunFolder) -> StageReport:
    """Totals over the stage's finished units, samples in/out, ledger rejects by reason."""
    rep.totals, rep.unit_seconds = stage_totals(run, rep.stage)
    if rep.stage in SAMPLE_KEYS:
        keys_in, keys_out, unit = SAMPLE_KEYS[rep.stage]
        counted = stage_totals(run, rep.stage, unit)[0] if unit else rep.totals
        rep.samples_in = _pick(counted, keys_in)
        rep.samples_out = _pick(counted, keys_out, add=rep.stage == "publish")
    else:
        rep.samples_in = _pick(rep.totals, _IN_KEYS)
        rep.samples_out = _pick(rep.totals, _OUT_KEYS)
    rep.rejects = ledger_rejects(run, rep.stage)
    return rep


@dataclass
class PipelineResult:
    pipeline: str
    run: str
    executor: str
    stages: list[StageReport]
    seconds: float
    ok: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "run": self.run,
            "executor": self.executor,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "stages": [
                {k: (round(v, 3) if isinstance(v, float) else v) for k, v in dataclasses.asdict(r).items()} for r in self.stages
            ],
        }


def check_configs(run: RunFolder, pipeline: Pipeline, stages: list[tuple[StageSpec, Any]], overwrite: bool) -> None:
    """Refuse changed stage configurations before any work; with ``overwrite`` redo from the first.

    Every stage after a changed one depends on its outputs, so its markers are removed too.
    """
    recorded = run.read_config()
    changed: list[str] = []
    for spec, stage in stages:
        old = recorded.get(spec.name)
        new = _plain(redact(_plain(stage.config())))
        if old is not None and old != new:
            keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) if isinstance(old, dict) and isinstance(new, dict) else []
            changed.append(f"{spec.name}" + (f" ({', '.join(keys)})" if keys else ""))
    if not changed:
        return
    if not overwrite:
        raise GeobuildError(
            f"run {run.root} was made with a different configuration for: {'; '.join(changed)}; "
            "use --overwrite to redo those stages and the ones after them, or another --out folder"
        )
    first = changed[0].split(" ")[0]
    names = pipeline.names()
    for name in names[names.index(first) :]:
        if run.done_units(name):
            log.warning("--overwrite: redoing stage %s", name)
        run.reset_stage(name)
        if name in ON_RESET:
            ON_RESET[name](run)


def write_pipeline_copy(run: RunFolder, pipeline: Pipeline) -> None:
    """RUN/pipeline.yaml: the resolved pipeline (variables substituted, defaults, no secrets)."""
    run.root.mkdir(parents=True, exist_ok=True)
    doc = {"source": str(pipeline.path.resolve()), **pipeline.resolved()}
    with atomic_path(run.path("pipeline.yaml")) as tmp:
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))


def run_pipeline(
    pipeline: Pipeline,
    run: RunFolder,
    executor=None,
    start: str | None = None,
    until: str | None = None,
    overwrite: bool = False,
    executor_name: str = "local",
) -> PipelineResult:
    """Run the selected stages in order; stop at the first stage with failed units.

    The summary is written to ``RUN/summary.json`` whether the run succeeded or not.
    """
    from .stage import run_stage

    t0 = time.time()
    selected = pipeline.select(start, until)
    names = pipeline.names()
    first = names.index(selected[0].name)
    for earlier in names[:first]:
        if not run.done_units(earlier):
            raise GeobuildError(f"--from {selected[0].name}: stage '{earlier}' has not run in {run.root}; run it first or drop --from")
    built = [(spec, spec.build()) for spec in selected]
    check_configs(run, pipeline, built, overwrite)
    write_pipeline_copy(run, pipeline)
    stale = remove_stale_temps(run.root)
    if stale:
        log.info("removed %d temporary file(s) left by an interrupted run", stale)
    reports = [StageReport(stage=spec.name) for spec, _ in built]
    result = PipelineResult(pipeline=str(pipeline.path), run=str(run.root), executor=executor_name, stages=reports, seconds=0.0, ok=False)
    try:
        for spec, stage in built:
            if spec.name in PREFLIGHT:
                PREFLIGHT[spec.name](stage, run)
        for (spec, stage), rep in zip(built, reports):
            run.check_config(spec.name, redact(_plain(stage.config())), overwrite=True)
            log.info("stage %s", spec.name)
            rep.status = "running"
            runner = stage_runner(stage)
            t1 = time.time()
            if runner is None:
                s = run_stage(stage, run, executor, record_config=False, raise_on_failure=False)
                rep.done, rep.skipped, rep.failed = len(s.done), len(s.skipped), len(s.failed)
                rep.failures = dict(s.failed)
            else:
                before = set(run.done_units(spec.name))
                try:
                    s = runner(stage, run, executor, overwrite=True)
                    rep.done, rep.skipped, rep.failed = len(s.done), len(s.skipped), len(s.failed)
                    rep.failures = dict(s.failed)
                except GeobuildError as exc:
                    now = set(run.done_units(spec.name))
                    rep.done, rep.skipped = len(now - before), len(before)
                    rep.failed = max(1, _count_units(stage, run) - len(now))
                    rep.failures = {"*": str(exc)}
            rep.units = rep.done + rep.skipped + rep.failed
            rep.seconds = time.time() - t1
            rep.status = "failed" if rep.failed else "ok"
            fill_report(rep, run)
            if rep.failed:
                unit, msg = next(iter(rep.failures.items()))
                raise GeobuildError(
                    f"stage {spec.name}: {rep.failed} of {rep.units - rep.skipped} units failed (first: {unit}: {msg}); "
                    "rerun the same command to retry them"
                )
            if spec.name in AFTER:
                AFTER[spec.name](stage, run, s)
        result.ok = True
        return result
    finally:
        for rep in reports:
            if rep.status == "pending":
                rep.status = "not run"
            elif rep.status == "running":
                rep.status = "interrupted"
                fill_report(rep, run)
        result.seconds = time.time() - t0
        run.write_json(run.path("summary.json"), result.to_json())


def _count_units(stage, run: RunFolder) -> int:
    try:
        return len(stage.units(run))
    except Exception:  # noqa: BLE001 - only for the report
        return 0


def render_summary(result: PipelineResult, file=None) -> None:
    """Print the per-stage summary as a rich table (on stderr by default)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=file is None, file=file)
    if not console.is_terminal:
        console.width = max(console.width, 150)
    table = Table(title=f"geobuild run {Path(result.pipeline).name} -> {result.run} ({result.executor})")
    for col in ("stage", "status", "units", "done", "skipped", "failed", "samples in", "samples out", "rejects by reason", "wall s", "unit s"):
        table.add_column(col, justify="left" if col in ("stage", "status", "rejects by reason") else "right")
    fmt = lambda v: "-" if v is None else str(v)  # noqa: E731
    for r in result.stages:
        rejects = ", ".join(f"{k}: {v}" for k, v in r.rejects.items()) or "-"
        table.add_row(
            r.stage, r.status, str(r.units), str(r.done), str(r.skipped), str(r.failed), fmt(r.samples_in), fmt(r.samples_out),
            rejects, f"{r.seconds:.1f}", f"{r.unit_seconds:.1f}",
        )
    console.print(table)
    console.print(f"total {result.seconds:.1f}s; summary saved to {Path(result.run) / 'summary.json'}")
