"""``geobuild train-ranker``: train a ranker on a published GeoRanking dataset.

Output folder::

    OUT/config.yaml            resolved training configuration
    OUT/embed-cache/           frozen photo embeddings, per tar (reused by reruns and eval)
    OUT/checkpoints/epoch-NNNN.pt, last.pt   one checkpoint per epoch (model, optimiser, schedule, history)
    OUT/checkpoints/best.pt    with ``best_by``: the epoch (0 = the untrained model) with the best
                               validation figure; what ``geobuild eval OUT`` evaluates
    OUT/metrics.jsonl          one line per epoch: train loss, validation loss and ranking metrics
    OUT/final.json             the last epoch's metrics and the configuration

Determinism: the model is initialised from ``seed``, and every epoch reseeds its shuffling and
dropout from ``(seed, epoch)``, so the same seed gives the same metrics, and a run resumed from an
epoch checkpoint finishes in exactly the state an uninterrupted run reaches.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..core.errors import GeobuildError
from ..core.log import get_logger, progress
from ..core.runfolder import atomic_path
from .data import GroupSpec, Groups, groups_from_dataset
from .images import ImageSource, bundle_images, folder_images, georanker_bundle, published_images

log = get_logger("ranker.train")

CHECKPOINT_FORMAT = "geobuild-ranker"
CHECKPOINT_VERSION = 1
#: settings that may differ when a run is resumed (they do not change the result)
RESUME_FREE = ("stop_after", "device", "threads", "out", "progress", "embed_cache", "micro_batch",
               "keep_retrieval", "snap_km")  # fitted after the last epoch

#: ``--preset NAME``: settings applied before a --config file and the command-line options.
#: ``georanker`` is GeoRanker's published recipe (``finetune_geo_ranker.py`` with the README's
#: ``--group_size=7``): its VLM ranker (LoRA r 16 / alpha 32 / dropout 0.05 on q,k,v, value head
#: without bias drawn from N(0, (1/(hidden+1))^2)), its prompt word for word, multi-order loss
#: (lambda 0.7, K 1) over geodesic km, AdamW lr 1e-4 with weight decay 0.01, linear decay to 0
#: without warm-up (the Hugging Face Trainer's default), gradient clipping at 1.0, 1 epoch, 4
#: queries per optimiser step (1 per device on 4 devices there: here micro-batches of 1).
PRESETS: dict[str, dict[str, Any]] = {
    "georanker": dict(
        model="vlm", data_config="georanker", val_split=None, group_size=7, loss="multi-order", lam=0.7, k=1,
        epochs=1, lr=1e-4, schedule="linear", warmup_steps=0, weight_decay=0.01, grad_clip=1.0, batch_size=4,
        micro_batch=1, distance="geodesic", keep_retrieval="off",
        model_options={"prompt": "georanker", "value_head": "georanker", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05},
    ),
}


@dataclass
class TrainConfig:
    """Everything that defines a training run (CLI options or a YAML file with these keys)."""

    data: str = ""  # published dataset folder (with dataset/ and images/), Hub repo ORG/NAME, or a GeoRanking .parquet
    data_config: str = "candidates"  # dataset config to read: candidates, or georanker (GeoRanking columns)
    out: str = ""
    train_split: str = "train"
    val_split: str | None = "validation"
    images: str | None = None  # folder of photo tars, when not beside the dataset
    model: str = "compact"
    encoder: str = "efficientnet-lite0"
    group_size: int = 8
    sources: list[str] = field(default_factory=lambda: ["image", "gps"])
    select: str = "interleave"
    skip_first: bool = False
    loss: str = "multi-order"
    lam: float = 0.7
    k: int = 1
    margin: float = 1.0
    epochs: int = 10
    batch_size: int = 32
    micro_batch: int = 0  # groups per forward/backward (gradients accumulated over the batch); 0: the whole batch
    lr: float = 1e-3
    schedule: str = "cosine"  # cosine (after a linear warm-up) | linear (decay to 0 after the warm-up)
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0
    distance: str = "dataset"  # loss distances: the dataset's, or recomputed: haversine | geodesic
    seed: int = 0
    d_model: int = 128
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    residual: bool = False  # compact: score = learned (source, rank) prior + correction, starting at retrieval's order
    retrieval_features: bool = False  # compact: retrieval score, margin and ratio to the best of its source
    location: str = "rff"
    rff_dim: int = 128
    text_dim: int = 256
    model_options: dict = field(default_factory=dict)
    preset: str | None = None  # the --preset the settings started from (recorded only)
    device: str = "cpu"
    threads: int | None = None
    embed_cache: str | None = None  # photo-embedding cache folder (default OUT/embed-cache); shareable between runs
    keep_checkpoints: int = 0  # 0 keeps every epoch's checkpoint
    #: keep checkpoints/best.pt, the epoch (0: untrained) with the best validation figure: val_acc_mean
    #: (mean accuracy over the thresholds), a val_acc@<t>km, val_top1_hit (highest), or val_loss,
    #: val_median_km (lowest); none: evaluate the last epoch; auto: val_acc_mean for the compact
    #: model (chosen on the IM2GPS3K author split's validation authors), none for the VLM
    best_by: str | None = "auto"
    #: after training, fit on the validation split the margin by which the ranker's choice must beat
    #: retrieval's first photo to replace it (stored in the evaluated checkpoint; eval applies it)
    gate: bool = False
    #: after training, fit on the validation split the retrieval score at or above which retrieval's
    #: first photo is kept (auto; a number: that score; off), see geobuild.ranker.fallback
    keep_retrieval: str = "auto"
    #: snap-back: the prediction is the earliest retrieval-order candidate within this many km of the
    #: ranker's choice (auto: fitted on validation; a number: that radius; 0 or off: none)
    snap_km: str = "0"
    stop_after: int | None = None  # stop after this many epochs in this invocation (resume later)

    @classmethod
    def from_preset(cls, name: str | None) -> "TrainConfig":
        """The defaults, with preset ``name`` applied (none: the plain defaults)."""
        if not name:
            return cls()
        if name not in PRESETS:
            raise GeobuildError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
        return cls().merged({**PRESETS[name], "preset": name}, where=f"preset {name}", keep_none=True)

    @classmethod
    def from_yaml(cls, path: str | Path, base: "TrainConfig | None" = None) -> "TrainConfig":
        p = Path(path)
        if not p.exists():
            raise GeobuildError(f"config file not found: {p}")
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
            detail = " ".join(str(exc).split())
            raise GeobuildError(f"cannot read the training config {p} ({detail}); fix its YAML and rerun") from None
        if not isinstance(doc, dict):
            raise GeobuildError(f"{p} must hold a mapping of training settings")
        return (base or cls()).merged(doc, where=str(p), keep_none=True)

    def merged(self, values: dict[str, Any], where: str = "options", keep_none: bool = False) -> "TrainConfig":
        """A copy with ``values`` applied (``None`` means "not given" unless ``keep_none``)."""
        names = {f.name for f in fields(self)}
        unknown = sorted(str(k) for k in set(values) - names)
        if unknown:
            raise GeobuildError(
                f"unknown training setting(s) in {where}: {', '.join(unknown)}; known settings: {', '.join(sorted(names))}"
            )
        hints = _field_types()
        d = asdict(self)
        given = {k: _coerce(k, v, hints[k], where) for k, v in values.items() if keep_none or v is not None}
        d.update({k: v for k, v in given.items() if v is not _UNSET})
        cfg = TrainConfig(**d)
        cfg.sources = list(cfg.sources)
        return cfg

    def group_spec(self) -> GroupSpec:
        """The group rule; sources given as ``image:12,gps:3`` are a quota (the first n of each)."""
        if any(":" in s for s in self.sources):
            quota = []
            for item in self.sources:
                name, _, n = item.partition(":")
                if not n.strip().isdigit():
                    raise GeobuildError(f"candidate source '{item}': give every source a count (e.g. image:12,gps:3) or none")
                quota.append((name.strip(), int(n)))
            return GroupSpec(quota=tuple(quota), skip_first=self.skip_first, pad=True, distance=self.distance)
        return GroupSpec(self.group_size, tuple(self.sources), self.select, self.skip_first, distance=self.distance)

    def validate(self) -> None:
        from .loss import LOSSES

        if not self.data:
            raise GeobuildError("no dataset given: pass --data DIR_OR_REPO (or 'data:' in --config)")
        if not self.out:
            raise GeobuildError("no output folder given: pass --out DIR")
        if self.loss not in LOSSES:
            raise GeobuildError(f"unknown loss '{self.loss}'; choose one of: {', '.join(LOSSES)}")
        for name in ("epochs", "batch_size", "k", "group_size"):
            if getattr(self, name) < 1:
                raise GeobuildError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.micro_batch < 0:
            raise GeobuildError(f"micro_batch must be 0 (the whole batch) or more, got {self.micro_batch}")
        if self.schedule not in SCHEDULES:
            raise GeobuildError(f"unknown schedule '{self.schedule}'; choose one of: {', '.join(SCHEDULES)}")
        self.group_spec()  # an unknown distance or selection is one clear error
        fallback_setting("keep_retrieval", self.keep_retrieval)
        fallback_setting("snap_km", self.snap_km)
        if not 0.0 <= self.lam <= 1.0:
            raise GeobuildError(f"lam must lie in [0, 1], got {self.lam}")


def fallback_setting(name: str, value: str) -> str | float | None:
    """``keep_retrieval`` / ``snap_km`` read: "auto", a number, or None (off; a snap radius of 0)."""
    v = str(value).strip().lower()
    if v in ("auto", "off", "none", ""):
        return None if v != "auto" else "auto"
    try:
        x = float(v)
    except ValueError:
        raise GeobuildError(f"{name} must be auto, off or a number, got {value!r}") from None
    if name == "snap_km" and (x < 0 or np.isnan(x)):
        raise GeobuildError(f"snap_km must be auto, off or a radius of 0 km or more, got {value!r}")
    return None if name == "snap_km" and x == 0 else x


def _field_types() -> dict[str, Any]:
    import typing

    return typing.get_type_hints(TrainConfig)


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               list: "a list of strings", tuple: "a list of strings", dict: "a mapping"}
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_BAD, _UNSET = object(), object()


def _coerce(name: str, value: Any, hint: Any, where: str) -> Any:
    """``value`` converted to the simple type ``hint`` of setting ``name``; one clear error if it is not one."""
    import types
    import typing

    origin = typing.get_origin(hint)
    optional = False
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if value is None and optional:
            return None
        if len(args) != 1:
            return value
        hint = args[0]
        origin = typing.get_origin(hint)
    base = origin or hint
    if base not in _TYPE_NAMES:
        return value
    if value is None:
        return _UNSET  # an empty YAML value where null is no option: keep the default
    out: Any = _BAD
    if base is bool:
        if isinstance(value, bool):
            out = value
        elif isinstance(value, (int, str)) and str(value).strip().lower() in _TRUE + _FALSE:
            out = str(value).strip().lower() in _TRUE
    elif isinstance(value, bool):
        pass  # YAML yes/no/true/false where a number or a string belongs
    elif base is int:
        if isinstance(value, int):
            out = value
        elif isinstance(value, float) and value.is_integer():
            out = int(value)
        elif isinstance(value, str):
            try:
                out = int(value.strip())
            except ValueError:
                pass
    elif base is float:
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value.strip())  # YAML 1.1 reads 1e-3 as a string
            except ValueError:
                pass
    elif base is str:
        if isinstance(value, (str, int, float)):
            out = str(value)
    elif base in (list, tuple):
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if isinstance(items, (list, tuple)) and all(isinstance(v, str) for v in items):
            out = base(items)
    elif base is dict:
        if isinstance(value, dict):
            out = dict(value)
    if out is _BAD:
        raise GeobuildError(
            f"training setting '{name}' in {where} must be {_TYPE_NAMES[base]}"
            + (" (or null)" if optional else "")
            + f", got {value!r}"
        )
    return out


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GeobuildError(f"device '{device}' requested but no CUDA GPU is available; use --device cpu")
    return device


SCHEDULES = ("cosine", "linear")
#: ``best_by: auto`` per model
AUTO_BEST_BY = {"compact": "val_acc_mean"}


def _lr_lambda(warmup: int, total: int, schedule: str = "cosine"):
    """Learning-rate factor per optimiser step: ``cosine`` (warm-up (step+1)/warmup, then half a
    cosine to 0) or ``linear`` (the Hugging Face Trainer's: warm-up step/warmup, then a straight line
    from 1 at the end of the warm-up to 0 at ``total``)."""
    def cosine(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress_ = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))

    def linear(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return linear if schedule == "linear" else cosine


def image_source_for(cfg: TrainConfig) -> ImageSource:
    """Where the photos are: ``--images`` (a folder of tars or a GeoRanker bundle), the GeoRanker
    bundle ``--data`` belongs to, or the published dataset's images."""
    if cfg.images:
        if (Path(cfg.images) / "tar_index.pkl").is_file():
            return bundle_images(cfg.images)
        tars = folder_images(cfg.images)
        return ImageSource(tars, tars)
    bundle = georanker_bundle(cfg.data)
    if bundle is not None:
        return bundle_images(bundle)
    return published_images(cfg.data)


def data_source(cfg: TrainConfig) -> str:
    """The table ``--data`` names: a GeoRanker bundle folder stands for its ``GeoRanking.parquet``."""
    from ..artifacts.georanker_bundle import TRAIN_TABLE

    bundle = georanker_bundle(cfg.data)
    return str(bundle / TRAIN_TABLE) if bundle is not None and Path(cfg.data).is_dir() else cfg.data


def score_groups(model, groups: Groups, batch_size: int, device: str) -> np.ndarray:
    """Scores [N, G] of every group, in evaluation mode."""
    import torch

    from .models import make_batch

    model.eval()
    out = np.zeros(groups.dists.shape, dtype=np.float32)
    with torch.no_grad():
        for i in range(0, len(groups), batch_size):
            idx = np.arange(i, min(len(groups), i + batch_size))
            batch = make_batch(groups, idx).to(device)
            out[idx] = model(batch).float().cpu().numpy()
    return out


def validation_metrics(model, groups: Groups, cfg: TrainConfig, loss_fn, device: str) -> dict[str, float]:
    import torch

    from .metrics import ranker_errors, summary, top1_hit_rate

    scores = score_groups(model, groups, cfg.batch_size, device)
    loss = float(
        loss_fn(torch.from_numpy(scores), torch.from_numpy(groups.dists), mask=torch.from_numpy(groups.mask)).item()
    )
    s = summary(ranker_errors(scores, groups))
    out = {"val_loss": loss, "val_top1_hit": top1_hit_rate(scores, groups)}
    out.update({f"val_{k}": v for k, v in s.items() if k != "n"})
    out["val_acc_mean"] = float(np.mean([v for k, v in s.items() if k.startswith("acc@")]))
    return out


def usable_mask(model, groups: Groups) -> np.ndarray:
    """Bool [N]: the groups whose query photo the model can see."""
    emb = getattr(model, "embeddings", None)
    if emb is None or len(groups) == 0:
        return np.ones(len(groups), dtype=bool)
    return emb.rows(list(groups.query_key), "query") >= 0


def usable(model, groups: Groups) -> Groups:
    """Drop groups whose query photo the model cannot see (counted as query_photo_missing)."""
    keep = usable_mask(model, groups)
    if (~keep).any():
        log.warning("%s: %d groups have no query photo and are skipped", groups.name, int((~keep).sum()))
    return groups.subset(keep, "query_photo_missing")


def _checkpoints(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").glob("epoch-*.pt"))


def _save(obj: dict, path: Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by :func:`train` (refuses other files); for an output folder, its
    ``best.pt`` when training kept one, else ``last.pt``."""
    import torch

    p = Path(path)
    if p.is_dir():
        best = p / "checkpoints" / "best.pt"
        p = best if best.exists() else p / "checkpoints" / "last.pt"
    if not p.exists():
        raise GeobuildError(f"checkpoint not found: {p} (train one with 'geobuild train-ranker')")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # not a torch file at all: pickle, zip, magic-number or EOF errors
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise GeobuildError(
            f"{p} is not a geobuild ranker checkpoint: {detail}; pass a checkpoints/*.pt file or the "
            "output folder of 'geobuild train-ranker'"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise GeobuildError(f"{p} is not a geobuild ranker checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise GeobuildError(f"{p} has checkpoint version {ckpt.get('version')}, expected {CHECKPOINT_VERSION}")
    return ckpt


def _record_config(out: Path, cfg: TrainConfig, resume: bool) -> None:
    path = out / "config.yaml"
    new = asdict(cfg)
    if path.exists():
        old = yaml.safe_load(path.read_text()) or {}
        changed = sorted(k for k in set(old) | set(new) if k not in RESUME_FREE and old.get(k) != new.get(k))
        if changed and resume:
            raise GeobuildError(
                f"{out} was trained with different settings (changed: {', '.join(changed)}); "
                "resume with the same settings or use another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(new, sort_keys=False))


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train (or resume) a ranker; returns the final metrics record."""
    import torch

    from .loss import get_loss
    from .models import ModelContext, build_model, make_batch

    cfg.validate()
    out = Path(cfg.out)
    existing = _checkpoints(out)
    if existing and not resume:
        raise GeobuildError(f"{out} already holds checkpoints; pass --resume to continue, or use another --out")
    _record_config(out, cfg, resume)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    spec = cfg.group_spec()
    source = data_source(cfg)
    train_groups = groups_from_dataset(source, cfg.train_split, spec, config=cfg.data_config)
    val_groups = None
    if cfg.val_split:
        try:
            val_groups = groups_from_dataset(source, cfg.val_split, spec, config=cfg.data_config)
        except GeobuildError as exc:
            if cfg.val_split != "validation":
                raise
            log.warning("no validation metrics: %s", exc)
    if len(train_groups) == 0:
        raise GeobuildError(
            f"no usable training groups in {cfg.data} ({cfg.train_split}): {train_groups.skipped}; "
            "lower --group-size or add candidate sources"
        )

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2**32))
    ctx = ModelContext([g for g in (train_groups, val_groups) if g is not None], image_source_for(cfg), out, device,
                       embed_cache=Path(cfg.embed_cache) if cfg.embed_cache else None)
    model = build_model(cfg.model, asdict(cfg), ctx).to(device)
    train_groups = usable(model, train_groups)
    if val_groups is not None:
        val_groups = usable(model, val_groups)
        if len(val_groups) == 0:
            val_groups = None
    if len(train_groups) == 0:
        raise GeobuildError("no training group has a query photo; check the images/ tars of the dataset")

    loss_fn = get_loss(cfg.loss, lam=cfg.lam, k=cfg.k, margin=cfg.margin)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_groups) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps, cfg.epochs * steps_per_epoch, cfg.schedule))

    history: list[dict[str, Any]] = []
    start = 0
    if resume and existing:
        ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        history = list(ckpt["history"])
        start = int(ckpt["epoch"])
        log.info("resuming %s after epoch %d", out, start)
    elif resume:
        log.info("nothing to resume in %s; starting from scratch", out)

    data_info = {
        "train_groups": len(train_groups),
        "train_skipped": train_groups.skipped,
        "val_groups": len(val_groups) if val_groups is not None else 0,
        "val_skipped": val_groups.skipped if val_groups is not None else {},
    }
    log.info("training %s on %d groups of %d (%s loss), %d epochs", cfg.model, len(train_groups), spec.group_size, cfg.loss, cfg.epochs)

    def checkpoint(epoch: int, **extra) -> dict:
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "epoch": epoch, "config": asdict(cfg),
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "history": history, "data": data_info, **extra}

    best_path = out / "checkpoints" / "best.pt"
    best_value = None
    if cfg.best_by == "auto":
        cfg.best_by = AUTO_BEST_BY.get(cfg.model) if val_groups is not None else None
    elif cfg.best_by in ("none", ""):
        cfg.best_by = None

    def better(value: float, than: float) -> bool:
        """Higher is better, except for a loss or a median error (ties keep the earlier epoch)."""
        lower = "loss" in (cfg.best_by or "") or (cfg.best_by or "").endswith("median_km")
        return value < than if lower else value > than
    if cfg.best_by and val_groups is None:
        log.warning("best_by=%s needs a validation split; the last epoch is evaluated", cfg.best_by)
    elif cfg.best_by:
        if best_path.exists() and start > 0:
            best_value = load_checkpoint(best_path).get("best_value")
        elif start == 0:  # the untrained model competes too (for a residual model: retrieval's order)
            record0 = validation_metrics(model, val_groups, cfg, loss_fn, device)
            if cfg.best_by not in record0:
                raise GeobuildError(f"best_by '{cfg.best_by}' is not a validation figure; choose one of: {', '.join(sorted(record0))}")
            best_value = record0[cfg.best_by]
            _save(checkpoint(0, best_value=best_value, best_record=record0), best_path)
            log.info("epoch 0 (untrained): %s=%.4g", cfg.best_by, best_value)
    ran = 0
    for epoch in range(start, cfg.epochs):
        if cfg.stop_after is not None and ran >= cfg.stop_after:
            log.info("stopping after %d epoch(s) as asked; continue with --resume", ran)
            break
        t0 = time.time()
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train_groups))
        model.train()
        total, count = 0.0, 0
        bar = progress(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch")
        for i in range(0, len(order), cfg.batch_size):
            rows = order[i : i + cfg.batch_size]
            step = cfg.micro_batch or len(rows)
            opt.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for j in range(0, len(rows), step):  # gradients of the batch mean, accumulated per micro-batch
                batch = make_batch(train_groups, rows[j : j + step]).to(device)
                loss = loss_fn(model(batch), batch.dists, mask=batch.mask)
                part = len(rows[j : j + step]) / len(rows)
                (loss * part).backward()
                loss_sum += float(loss.item()) * part
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            n = len(rows)
            total += loss_sum * n
            count += n
            bar.update(1)
            bar.set_postfix(loss=f"{total / count:.4f}")
        bar.close()
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": total / max(1, count), "lr": sched.get_last_lr()[0]}
        if val_groups is not None:
            record.update(validation_metrics(model, val_groups, cfg, loss_fn, device))
        record["seconds"] = round(time.time() - t0, 3)
        history.append(record)
        ckpt = checkpoint(epoch + 1)
        value = record.get(cfg.best_by) if cfg.best_by and val_groups is not None else None
        if value is not None and (best_value is None or better(value, best_value)):
            best_value = value
            _save(checkpoint(epoch + 1, best_value=value, best_record=record), best_path)
        path = out / "checkpoints" / f"epoch-{epoch + 1:04d}.pt"
        _save(ckpt, path)
        _save(ckpt, out / "checkpoints" / "last.pt")
        if cfg.keep_checkpoints:
            for old in _checkpoints(out)[: -cfg.keep_checkpoints]:
                old.unlink(missing_ok=True)
        with atomic_path(out / "metrics.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in history))
        log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float)))
        ran += 1

    final = {"epochs_done": len(history), "finished": len(history) >= cfg.epochs, "data": data_info}
    if history:
        final["metrics"] = {k: v for k, v in history[-1].items() if k != "seconds"}
    if cfg.gate and final["finished"] and val_groups is not None:
        final["gate"] = fit_gate(model, val_groups, out, cfg, device)
    if final["finished"]:
        fallback = fit_fallback(model, val_groups, out, cfg, device)
        if fallback is not None:
            final["fallback"] = {"keep_score": fallback.keep_score, "snap_km": fallback.snap_km}
    if best_path.exists():
        best = load_checkpoint(best_path)
        final["best"] = {"epoch": best["epoch"], cfg.best_by: best.get("best_value")}
    final["config"] = asdict(cfg)
    if final["finished"]:
        out.joinpath("final.json").parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "final.json") as tmp:
            tmp.write_text(json.dumps(final, indent=2, sort_keys=True, default=str) + "\n")
    return final


def _evaluated(out: Path) -> Path:
    """The checkpoint ``geobuild eval OUT`` uses."""
    target = out / "checkpoints" / "best.pt"
    return target if target.exists() else out / "checkpoints" / "last.pt"


def fit_fallback(model, val_groups: Groups | None, out: Path, cfg: TrainConfig, device: str):
    """Fit (``auto``) or set the retrieval fallback (:mod:`geobuild.ranker.fallback`) of the checkpoint
    that ``geobuild eval OUT`` uses, on the validation groups (after its gate, if any), and store it
    there; None when both rules are off (or ``auto`` without a validation split)."""
    from .fallback import Fallback, choose_fallback
    from .metrics import apply_gate, ranker_errors, summary

    keep, snap = fallback_setting("keep_retrieval", cfg.keep_retrieval), fallback_setting("snap_km", cfg.snap_km)
    if val_groups is None and "auto" in (keep, snap):
        log.warning("keep_retrieval/snap_km auto need a validation split; no fallback is fitted")
        keep, snap = (None if keep == "auto" else keep), (None if snap == "auto" else snap)
    if keep is None and snap is None:
        return None
    target = _evaluated(out)
    ckpt = load_checkpoint(target)
    fallback = Fallback(None if keep == "auto" else keep, None if snap == "auto" else snap)
    if val_groups is not None:
        model.load_state_dict(ckpt["model"])
        scores = score_groups(model, val_groups, cfg.batch_size, device)
        if ckpt.get("gate") is not None:
            scores = apply_gate(scores, val_groups, float(ckpt["gate"]))
        if "auto" in (keep, snap):
            fallback = choose_fallback(
                scores, val_groups,
                floors=None if keep == "auto" else [np.inf if keep is None else keep],
                radii=None if snap == "auto" else [snap])
        else:
            fallback.record = summary(ranker_errors(fallback.apply(scores, val_groups), val_groups))
    ckpt["fallback"] = fallback.to_dict()
    _save(ckpt, target)
    log.info("retrieval fallback: retrieval's first photo kept at a retrieval score of %s or more; snap-back radius %s km",
             fallback.keep_score, fallback.snap_km)
    return fallback


def fit_gate(model, val_groups: Groups, out: Path, cfg: TrainConfig, device: str) -> float:
    """Fit the retrieval gate (:func:`geobuild.ranker.metrics.choose_gate`) of the checkpoint that
    ``geobuild eval OUT`` uses, on the validation groups, and store it in that checkpoint."""
    from .metrics import choose_gate

    target = _evaluated(out)
    ckpt = load_checkpoint(target)
    model.load_state_dict(ckpt["model"])
    tau, record = choose_gate(score_groups(model, val_groups, cfg.batch_size, device), val_groups)
    ckpt["gate"], ckpt["gate_record"] = tau, record
    _save(ckpt, target)
    log.info("retrieval gate: the ranker replaces retrieval's first photo when it beats it by more than %.4g", tau)
    return tau


def _validation_model(out: Path, device: str, **settings):
    """(config with ``settings`` applied, model, validation groups) of a finished training folder."""
    from .models import ModelContext, build_model

    cfg = TrainConfig(**{k: v for k, v in load_checkpoint(out)["config"].items() if k in {f.name for f in fields(TrainConfig)}})
    cfg = cfg.merged(settings)
    if not cfg.val_split:
        raise GeobuildError(f"{out} was trained without a validation split; the gate and the fallback are fitted on it")
    val = groups_from_dataset(data_source(cfg), cfg.val_split, cfg.group_spec(), config=cfg.data_config)
    ctx = ModelContext([val], image_source_for(cfg), out, device, embed_cache=Path(cfg.embed_cache) if cfg.embed_cache else None)
    model = build_model(cfg.model, asdict(cfg), ctx).to(device)
    return cfg, model, usable(model, val)


def gate_checkpoint(out: str | Path, device: str = "cpu") -> float:
    """Fit the retrieval gate of a finished training folder (as ``gate: true`` does at the end of training)."""
    cfg, model, val = _validation_model(Path(out), device)
    return fit_gate(model, val, Path(out), cfg, device)


def fallback_checkpoint(out: str | Path, device: str = "cpu", *, keep_retrieval: str = "auto", snap_km: str = "0"):
    """Fit the retrieval fallback of a finished training folder with these settings (as training does
    at its end), recording the settings in the evaluated checkpoint's configuration."""
    out = Path(out)
    cfg, model, val = _validation_model(out, device, keep_retrieval=keep_retrieval, snap_km=snap_km)
    fallback = fit_fallback(model, val, out, cfg, device)
    target = _evaluated(out)
    ckpt = load_checkpoint(target)
    ckpt["config"].update(keep_retrieval=cfg.keep_retrieval, snap_km=cfg.snap_km)
    _save(ckpt, target)
    return fallback
