"""Check a run folder against what it claims (``geobuild verify RUN [--deep]``).

Per stage: every completion marker against the files it records (sizes; ``deep``: content
hashes) and against the earlier units it was made from; the ledger + outputs = inputs
accounting of every unit (:class:`geobuild.core.stage.Accounting`); the schema name and version
of every Parquet file and versioned JSON file; that every tar reads to its end; and that no
temporary of an interrupted run is left. Each problem names the file and the command that
repairs it: rerunning a stage redoes exactly the units whose markers no longer hold.
"""

from __future__ import annotations

import json
import shlex
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from ..core import schemas
from ..core.ledger import OK
from ..core.markers import HASH, marker_problem, read_marker, resolve_record, stale_input, unit_problem
from ..core.runfolder import TMP_MARK, RunFolder, in_run
from ..stages import STAGES
from .spec import stage_classes

#: the stage that writes each top folder of a run
FOLDER_STAGE = {"shards": "shard", "embeddings": "embed", "index": "index", "candidates": "mine",
                "distances": "distances", "publish": "publish", "work": "shard"}
#: versioned JSON files of a run (path relative to the run -> schema name)
JSON_FILES = {"embeddings/model.json": "embeddings_model", "index/info.json": "index_info", "index/gps_info.json": "gps_info"}


@dataclass
class Finding:
    """One row of the report: what was checked, and a problem (``ok`` False) with its repair."""

    stage: str
    check: str
    target: str
    ok: bool
    detail: str = ""
    repair: str = ""


def stage_names(run: RunFolder) -> list[str]:
    """Stages with markers, in pipeline order (others after, sorted)."""
    d = run.path("done")
    have = sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []
    order = list(STAGES)
    return sorted(have, key=lambda s: (order.index(s) if s in order else len(order), s))


def repair_command(run: RunFolder, stage: str, flags: str = "") -> str:
    """The command that redoes what no longer holds in ``stage``: the pipeline the run was made
    with, or the stage's own command with the options it was run with (plus ``flags``)."""
    try:
        recorded = yaml.safe_load(run.path("pipeline.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        recorded = {}
    source = recorded.get("source")
    if source:
        options = recorded.get("rerun_options")
        if options is None:  # recorded before rerun_options existed
            return f"geobuild run {source} --out {run.root}{flags} (with the --set options it was run with)"
        return shlex.join(["geobuild", "run", str(source), "--out", str(run.root), *map(str, options)]) + flags
    cmd = "publish" if stage == "publish_upload" else stage
    flag = "--out" if stage == "shard" else "--run"
    return f"geobuild {cmd} {flag} {run.root}{flags} (with the options it was run with)"


def verify_run(run: RunFolder, deep: bool = False, classes: dict[str, type] | None = None) -> list[Finding]:
    """Every check of the run folder; problems have ``ok`` False. ``classes``: stage classes by
    name, for stages outside geobuild's own (whose accounting is known)."""
    out: list[Finding] = []
    for stage in stage_names(run):
        out += list(check_markers(run, stage, deep))
        out += list(check_accounting(run, stage, (classes or {}).get(stage)))
    if "dataset" in run.done_units("publish"):
        out += list(check_publish_accounting(run))
    out += list(check_schemas(run))
    out += list(check_tars(run))
    out += list(check_temporaries(run))
    return out


def check_markers(run: RunFolder, stage: str, deep: bool) -> Iterator[Finding]:
    units = run.done_units(stage)
    fix = repair_command(run, stage)
    checked = old = files = 0
    for unit in units:
        target = f"done/{stage}/{unit}"
        bad = marker_problem(run, stage, unit)
        if bad:
            yield Finding(stage, "marker", target, False, bad, f"rm {run.marker_path(stage, unit)}; {fix}")
            continue
        marker = read_marker(run, stage, unit)
        assert marker is not None
        if marker.outputs is None:
            old += 1
            continue
        checked += 1
        files += len(marker.outputs)
        why = unit_problem(run, marker, deep)
        if why:
            yield Finding(stage, "outputs", why.split(" ", 1)[0], False, f"unit {unit}: {why}", fix)
            continue
        stale = stale_input(run, marker)
        if stale:
            yield Finding(stage, "inputs", target, False, f"unit {unit} was made from {stale}, which was redone since", fix)
    what = f"{checked} markers, {files} files ({'sizes and ' + HASH if deep else 'sizes'})"
    if old:
        what += f"; {old} markers from before outputs were recorded (not checked)"
    yield Finding(stage, "outputs", f"done/{stage}/", True, what)


def _stats(run: RunFolder, stage: str, unit: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(run.stats_path(stage, unit).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _ledger_counts(run: RunFolder, stage: str, unit: str) -> tuple[int, int] | None:
    """(rows, rows with status ok) of a unit's ledger; (0, 0) when it has none; None if unreadable."""
    import pyarrow.parquet as pq

    path = run.ledger_path(stage, unit)
    if not path.exists():
        return 0, 0
    try:
        status = pq.read_table(path, columns=["status"]).column("status").to_pylist()
    except Exception:  # noqa: BLE001 - any unreadable Parquet is one finding
        return None
    return len(status), sum(1 for s in status if s == OK)


def check_accounting(run: RunFolder, stage: str, cls: type | None = None) -> Iterator[Finding]:
    """inputs = outputs + rejected per unit, the ledger agrees, and inputs = the upstream unit's outputs."""
    try:
        cls = cls or (stage_classes(stage)[0] if stage in STAGES else None)
    except Exception:  # noqa: BLE001 - a stage this installation lacks: nothing to account
        cls = None
    acc = getattr(cls, "accounting", None)
    if acc is None:
        return
    fix = repair_command(run, stage)
    units = run.done_units(stage)
    bad = 0
    for unit in units:
        problems = []
        st = _stats(run, stage, unit)
        led = _ledger_counts(run, stage, unit)
        if st is None:
            problems.append(f"stats/{stage}/{unit}.json is missing or unreadable")
        elif led is None:
            problems.append(f"ledger/{stage}/{unit}.parquet is unreadable")
        else:
            n_in = st.get(acc.inputs)
            n_out = next((st[k] for k in acc.outputs if k in st), None)
            rows, ok_rows = led
            if not isinstance(n_in, int) or not isinstance(n_out, int):
                problems.append(f"stats/{stage}/{unit}.json lacks {acc.inputs} or {'/'.join(acc.outputs)}")
            elif acc.rejected is None:
                if rows != n_in or ok_rows != n_out:
                    problems.append(f"{n_in} inputs, {n_out} outputs but the ledger has {rows} rows, {ok_rows} ok")
            else:
                n_rej = st.get(acc.rejected, 0)
                if n_in != n_out + n_rej:
                    problems.append(f"{n_in} inputs != {n_out} outputs + {n_rej} rejected")
                elif rows - ok_rows != n_rej:
                    problems.append(f"{n_rej} rejected but {rows - ok_rows} rows in the ledger")
            if not problems and acc.upstream is not None and isinstance(n_in, int):
                up_stage, key = acc.upstream
                up = _stats(run, up_stage, unit)
                if up is not None and up.get(key) != n_in:
                    problems.append(f"{n_in} inputs but {up_stage} unit {unit} has {up.get(key)} {key}")
        for p in problems:
            bad += 1
            yield Finding(stage, "accounting", f"{stage}/{unit}", False, p, f"rm {run.marker_path(stage, unit)}; {fix}")
    if not bad:
        yield Finding(stage, "accounting", f"stats/{stage}/", True, f"{len(units)} units: outputs + ledger = inputs")
    if stage == "shard":
        yield from _check_sizes(run, units, fix)


def check_publish_accounting(run: RunFolder) -> Iterator[Finding]:
    """The published dataset holds every query row mine wrote, less the ledgered rejects: published
    rows + rejects = candidates rows; the manifest's rows equal the stats (the ``georanker`` config less
    its own ``georanker_*`` rejects, which stay in ``candidates``)."""
    import pyarrow.parquet as pq

    fix = f"rm {run.marker_path('publish', 'dataset')}; {repair_command(run, 'publish')}"
    st = _stats(run, "publish", "dataset")
    if st is None:
        yield Finding("publish", "accounting", "publish/dataset", False, "stats/publish/dataset.json is missing or unreadable", fix)
        return
    try:  # what publish read: the query rows of the candidates files (each joined with its distances)
        rows_in = sum(pq.ParquetFile(p).metadata.num_rows for p in sorted(run.path("candidates").glob("*.parquet")))
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the schema check
        rows_in = -1
    queries = {s: int(n) for s, n in (st.get("queries") or {}).items()}
    path = run.ledger_path("publish", "dataset")
    try:
        status = pq.read_table(path, columns=["status"]).column("status").to_pylist() if path.exists() else []
    except Exception:  # noqa: BLE001 - any unreadable Parquet is one finding
        yield Finding("publish", "accounting", "publish/dataset", False, f"{_rel(run, path)} is unreadable", fix)
        return
    own = sum(1 for x in status if str(x).startswith("georanker_"))
    problems = []
    if len(status) != st.get("rejected"):
        problems.append(f"{st.get('rejected')} rejected but {len(status)} rows in the ledger")
    if sum(queries.values()) + len(status) - own != rows_in:
        problems.append(f"mine wrote {rows_in} query rows but {sum(queries.values())} were published and "
                        f"{len(status) - own} rejected")
    to = (run.read_config().get("publish") or {}).get("to")
    manifest = Path(in_run(run, to)) / "dataset" / "manifest.json" if to else None
    if manifest is not None and manifest.exists():
        try:
            rows = json.loads(manifest.read_text()).get("rows", {})
        except ValueError:
            rows = None
        if not isinstance(rows, dict):
            problems.append(f"{manifest} is unreadable")
        else:
            got = {s: (rows.get("candidates") or {}).get(s, 0) for s in queries}
            if got != queries:
                problems.append(f"manifest: candidates rows {got}, the stats say {queries}")
            if "georanker" in rows and sum(rows["georanker"].values()) != sum(queries.values()) - own:
                problems.append(f"manifest: georanker has {sum(rows['georanker'].values())} rows, expected "
                                f"{sum(queries.values()) - own} ({own} georanker_* rejects)")
    for p in problems:
        yield Finding("publish", "accounting", "publish/dataset", False, p, fix)
    if not problems:
        yield Finding("publish", "accounting", "publish/dataset", True,
                      f"{rows_in} query rows = {sum(queries.values())} published + {len(status) - own} rejected; manifest agrees")


def _check_sizes(run: RunFolder, units: list[str], fix: str) -> Iterator[Finding]:
    path = run.shards_dir / "sizes.json"
    try:
        sizes = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        yield Finding("shard", "accounting", "shards/sizes.json", False, f"unreadable ({exc})", fix)
        return
    for unit in units:
        st = _stats(run, "shard", unit) or {}
        if sizes.get(f"{unit}.tar") != st.get("samples"):
            yield Finding("shard", "accounting", "shards/sizes.json", False,
                          f"{unit}.tar: {sizes.get(f'{unit}.tar')} samples listed, {st.get('samples')} written", fix)


def _recorded_files(run: RunFolder) -> Iterator[tuple[str, Path]]:
    """(stage, path) of every output recorded in a marker, of every ledger file, and of every file
    in the stages' folders of the run (markers of older runs record none)."""
    for folder, stage in FOLDER_STAGE.items():
        if folder != "work" and run.path(folder).is_dir():
            for p in sorted(run.path(folder).rglob("*")):
                if p.is_file() and TMP_MARK not in str(p.relative_to(run.root)):
                    yield stage, p
    for stage in stage_names(run):
        for unit in run.done_units(stage):
            m = read_marker(run, stage, unit)
            for rec in (m.outputs if m and m.outputs else []):
                yield stage, resolve_record(run, str(rec["path"]))
            if run.ledger_path(stage, unit).exists():
                yield stage, run.ledger_path(stage, unit)


def check_schemas(run: RunFolder) -> Iterator[Finding]:
    """Schema name and version of every Parquet file that carries one, and of the versioned JSON files."""
    import pyarrow.parquet as pq

    seen: set[Path] = set()
    n = 0
    for stage, path in _recorded_files(run):
        if path in seen or not path.exists():
            continue
        seen.add(path)
        rel = _rel(run, path)
        if path.suffix == ".parquet":
            try:
                meta = pq.read_schema(path).metadata or {}
            except Exception as exc:  # noqa: BLE001
                yield Finding(stage, "schema", rel, False, f"not readable as Parquet ({type(exc).__name__})", repair_command(run, stage))
                continue
            name = meta.get(schemas.META_NAME, b"").decode()
            if not name:
                continue  # published tables follow the Hub's layout, not a geobuild schema
            n += 1
            try:
                want = str(schemas.load(name)["version"])
            except Exception:  # noqa: BLE001 - an unknown schema name
                want = None
            got = meta.get(schemas.META_VERSION, b"").decode()
            if want != got:
                yield Finding(stage, "schema", rel, False, f"schema {name} v{got}, this geobuild writes v{want}",
                              repair_command(run, stage, " --overwrite"))
        elif rel in JSON_FILES:
            n += 1
            try:
                schemas.check_json(json.loads(path.read_text()), JSON_FILES[rel], rel)
            except Exception as exc:  # noqa: BLE001 - unreadable or another version
                yield Finding(stage, "schema", rel, False, str(exc), repair_command(run, stage, " --overwrite"))
    yield Finding("*", "schema", "*.parquet, *.json", True, f"{n} files of known schemas")


def check_tars(run: RunFolder) -> Iterator[Finding]:
    """Every recorded tar reads to its end (headers and data)."""
    n = 0
    seen: set[Path] = set()
    for stage, path in _recorded_files(run):
        if path.suffix != ".tar" or path in seen or not path.exists():
            continue
        seen.add(path)
        n += 1
        try:
            with tarfile.open(path, "r|") as tar:
                for member in tar:
                    f = tar.extractfile(member)
                    if f is not None:
                        while f.read(1 << 20):
                            pass
        except (tarfile.TarError, OSError, EOFError) as exc:
            yield Finding(stage, "tar", _rel(run, path), False, f"unreadable tar ({exc})", repair_command(run, stage))
    yield Finding("*", "tar", "*.tar", True, f"{n} tars read to the end")


def check_temporaries(run: RunFolder) -> Iterator[Finding]:
    for p in sorted(run.root.rglob(f"*{TMP_MARK}*")):
        if TMP_MARK in p.parent.name:
            continue
        parts = _rel(run, p).split("/")
        stage = parts[1] if parts[0] in ("done", "ledger", "stats", "logs") and len(parts) > 2 else FOLDER_STAGE.get(parts[0], parts[0])
        yield Finding(stage, "temporary", _rel(run, p), False, "left by an interrupted run",
                      f"the next run of the stage removes it: {repair_command(run, stage)}")


def _rel(run: RunFolder, path: Path) -> str:
    try:
        return path.relative_to(run.root).as_posix()
    except ValueError:
        return str(path)
