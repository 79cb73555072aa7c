"""``geobuild eval``: rank benchmark groups with a trained checkpoint and report geolocation accuracy.

Rows of the report: ``top-1 retrieval`` (the first image candidate of the mined list), ``oracle``
(the closest candidate of each group: the ceiling of any ranker of these groups) and ``ranker``
(the candidate the checkpoint scores highest). Accuracy is the share of errors strictly below
1 / 25 / 200 / 750 / 2500 km (GeoRanker's and G3's count), or at most with ``strict=False``.
Which candidates are ranked and which queries are counted is the evaluation protocol
(:mod:`geobuild.ranker.protocol`), named in every report.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import GeobuildError
from ..core.ledger import OK, read_ledgers
from ..core.log import get_logger
from ..core.runfolder import atomic_path
from .data import GroupSpec, Groups, groups_from_dataset, groups_from_run
from .images import ImageSource, folder_images, published_images
from .fallback import Fallback
from .metrics import apply_gate, gap_closed, oracle_errors, ranker_errors, retrieval_errors, summary, top1_hit_rate
from .protocol import PROTOCOLS, Protocol, get_protocol

log = get_logger("ranker.eval")

def checkpoint_root(path: str | Path) -> Path:
    """The training output folder of a checkpoint file (or the folder itself)."""
    p = Path(path)
    if p.is_dir():
        return p
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def config_from_checkpoint(ckpt: dict):
    from .train import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in ckpt["config"].items() if k in names})


def load_groups(
    spec, *, data: str | None = None, split: str = "validation", run: str | Path | None = None,
    gallery: str | Path | None = None, images: str | Path | None = None,
) -> tuple[Groups, ImageSource]:
    """Groups to evaluate and where their photos are: a published split, or a run folder."""
    if (data is None) == (run is None):
        raise GeobuildError("give exactly one of --data (a published dataset) or --run (a run folder)")
    if run is not None:
        run = Path(run)
        if not run.is_dir():
            raise GeobuildError(f"run folder not found: {run}")
        groups = groups_from_run(run, spec)
        query_tars = folder_images(run)
        cand_tars = folder_images(images or gallery or run)
        return groups, ImageSource(query_tars, cand_tars)
    groups = groups_from_dataset(data, split, spec)
    if images:
        tars = folder_images(images)
        return groups, ImageSource(tars, tars)
    return groups, published_images(data)


def run_query_count(run: str | Path) -> int | None:
    """Photos the shard stage took into ``run`` (the benchmark's queries); None without a shard ledger."""
    folder = Path(run) / "ledger" / "shard"
    if not folder.is_dir():
        return None
    status = read_ledgers(folder).column("status").to_pylist()
    return sum(1 for s in status if s == OK)


def evaluate(
    checkpoint: str | Path,
    *,
    data: str | None = None,
    split: str = "validation",
    run: str | Path | None = None,
    gallery: str | Path | None = None,
    images: str | Path | None = None,
    strict: bool = True,
    protocol: str | Protocol = "groups",
    group_size: int | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
    per_query: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint under ``protocol`` (``strict=False`` counts errors <= threshold, ``groups``
    only); returns ``{"rows": {name: metrics}, "gap_closed": ..., "protocol": ..., "info": ...}``
    (and each group's errors with ``per_query``, see :func:`report`)."""
    from .models import ModelContext, build_model
    from .train import load_checkpoint, resolve_device, score_groups, usable_mask

    proto = protocol if isinstance(protocol, Protocol) else get_protocol(protocol, le=not strict)
    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_checkpoint(ckpt)
    if group_size:
        if proto.quota:
            raise GeobuildError(f"--group-size does not apply to the '{proto.name}' protocol (it fixes the candidates)")
        cfg = replace(cfg, group_size=group_size)
    spec = GroupSpec(quota=proto.quota, pad=True, distance=proto.distance) if proto.quota else cfg.group_spec()
    if not proto.quota and proto.distance != "dataset":
        spec = replace(spec, distance=proto.distance)
    groups, image_source = load_groups(spec, data=data, split=split, run=run, gallery=gallery, images=images)
    if len(groups) == 0:
        raise GeobuildError(f"no groups of {spec.group_size} candidates to evaluate ({groups.skipped})")
    device = resolve_device(device)
    ctx = ModelContext([groups], image_source, checkpoint_root(checkpoint), device,
                       embed_cache=Path(cache_dir) if cache_dir else Path(cfg.embed_cache) if cfg.embed_cache else None)
    model = build_model(cfg.model, asdict(cfg), ctx)
    model.load_state_dict(ckpt["model"])
    model.to(device)
    seen = usable_mask(model, groups)
    if not seen.any():
        raise GeobuildError("no group to evaluate has a query photo; check the image tars")
    missing = 0
    if proto.all_queries:
        not_mined = max(0, (run_query_count(run) or 0) - groups.rows_read) if run is not None else 0
        if not_mined:
            groups.skipped["not_mined"] = not_mined
        missing = sum(groups.skipped.values())
    else:
        groups = groups.subset(seen, "query_photo_missing")
        seen = np.ones(len(groups), dtype=bool)
    scores = np.zeros(groups.dists.shape, dtype=np.float32)
    scores[seen] = score_groups(model, groups.subset(seen), batch_size, device)
    gate = ckpt.get("gate")
    if gate is not None:  # fitted on the validation split: retrieval's first photo stays unless clearly beaten
        scores = apply_gate(scores, groups, float(gate))
    fallback = Fallback.from_dict(ckpt.get("fallback"))
    if fallback is not None:  # fitted on the validation split too (keep retrieval / snap-back)
        scores = fallback.apply(scores, groups)
    return report(groups, scores, strict=proto.strict, protocol=proto, evaluated=seen, missing=missing, per_query=per_query, info={
        "checkpoint": str(checkpoint),
        "epoch": int(ckpt["epoch"]),
        "model": cfg.model,
        "loss": cfg.loss,
        "seed": cfg.seed,
        "source": str(run if run is not None else f"{data}:{split}"),
        "gallery": str(gallery) if gallery else None,
        "gate": gate,
        "fallback": {"keep_score": fallback.keep_score, "snap_km": fallback.snap_km} if fallback else None,
    })


def report(
    groups: Groups,
    scores: np.ndarray,
    strict: bool = True,
    info: dict | None = None,
    *,
    protocol: Protocol | None = None,
    evaluated: np.ndarray | None = None,
    missing: int = 0,
    per_query: bool = False,
) -> dict[str, Any]:
    """The accuracy table of a ranking of ``groups`` (scores [N, G]).

    ``evaluated`` (bool [N], default all): the groups the ranker scored; the others count as wrong
    for the ranker. ``missing``: queries that formed no group at all, wrong for every row.
    ``per_query``: add ``"per_query"``, each group's query id and error (km) of every row (inf where
    the ranker did not score it; the ``missing`` queries have no group and are not listed), e.g. to
    measure a subset of the queries.
    """
    proto = protocol or PROTOCOLS["groups"]
    evaluated = np.ones(len(groups), dtype=bool) if evaluated is None else np.asarray(evaluated, dtype=bool)
    ranker = np.full(len(groups), np.inf)
    ranker[evaluated] = ranker_errors(scores[evaluated], groups.subset(evaluated))
    wrong = np.full(int(missing), np.inf)
    rows = {
        "top-1 retrieval": summary(np.concatenate([retrieval_errors(groups), wrong]), strict=strict),
        "oracle": summary(np.concatenate([oracle_errors(groups), wrong]), strict=strict),
        "ranker": summary(np.concatenate([ranker, wrong]), strict=strict),
    }
    skipped = dict(groups.skipped)
    if (~evaluated).any():
        skipped["query_photo_missing"] = skipped.get("query_photo_missing", 0) + int((~evaluated).sum())
    out_info = dict(info or {})
    out_info.update({
        "protocol": proto.name,
        "groups": len(groups),
        "group_size": groups.group_size,
        "skipped": groups.skipped,
        "rows_read": groups.rows_read,
        "queries": len(groups) + int(missing),
        "not_evaluated": int(missing + (~evaluated).sum()),
        "strict": strict,
        "top1_hit": top1_hit_rate(scores[evaluated], groups.subset(evaluated)),
    })
    record = dict(proto.record(), not_evaluated_reasons=skipped if proto.all_queries else {},
                  comparison="<" if strict else "<=")
    result = {"rows": rows, "gap_closed": gap_closed(rows["ranker"], rows["top-1 retrieval"], rows["oracle"]),
              "protocol": record, "info": out_info}
    if per_query:
        result["per_query"] = {"query_id": [str(q) for q in groups.query_id], "top-1 retrieval": retrieval_errors(groups),
                               "oracle": oracle_errors(groups), "ranker": ranker}
    return result


def metric_names(result: dict[str, Any]) -> list[str]:
    first = next(iter(result["rows"].values()))
    return [k for k in first if k.startswith("acc@")] + ["median_km", "n"]


def print_table(result: dict[str, Any], title: str = "") -> None:
    """The report as a rich table on the terminal (stdout)."""
    from rich.console import Console
    from rich.table import Table

    cmp = "<" if result["info"].get("strict", True) else "<="
    proto = (result.get("protocol") or {}).get("description", "")
    info = result["info"]
    table = Table(title=title or f"accuracy (% of errors {cmp} threshold), {info.get('queries', info.get('groups'))} queries"
                  + (f", {info['not_evaluated']} not evaluated" if info.get("not_evaluated") else "")
                  + (f"\nprotocol {proto}" if proto else ""))
    table.add_column("method", no_wrap=True)
    names = metric_names(result)
    for n in names:
        table.add_column(n.replace("acc@", cmp) if n.startswith("acc@") else n.replace("_km", " km"), justify="right", no_wrap=True)
    for row, m in result["rows"].items():
        table.add_row(row, *[f"{m[n]:.2f}" if n != "n" else str(m[n]) for n in names])
    gap = result.get("gap_closed") or {}
    if gap:
        table.add_row("gap closed", *[f"{100 * gap[n]:.1f}%" if n in gap and np.isfinite(gap[n]) else "" for n in names])
    Console().print(table)


def write_report(result: dict[str, Any], out: str | Path) -> list[Path]:
    """Write ``out`` as JSON (``.json``), CSV (``.csv``), or both into a folder (eval.json, eval.csv)."""
    out = Path(out)
    if out.suffix == ".json":
        targets = [out]
    elif out.suffix == ".csv":
        targets = [out]
    else:
        targets = [out / "eval.json", out / "eval.csv"]
    for t in targets:
        t.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(t) as tmp:
            if t.suffix == ".json":
                tmp.write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
            else:
                names = metric_names(result)
                with open(tmp, "w", newline="") as f:
                    w = csv.writer(f)
                    proto = (result.get("protocol") or {}).get("name", "")
                    w.writerow(["method", *names, "protocol"])
                    for row, m in result["rows"].items():
                        w.writerow([row, *[m[n] for n in names], proto])
    return targets
