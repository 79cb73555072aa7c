"""GeoRanker's vision-language ranker: a Qwen2-VL model with LoRA adapters and a scalar value head.

For every (query, candidate) pair the model reads one chat turn: the query photo, the candidate's
coordinates and location text (``latitude: {lat}, longitude: {lon}, city state country``), the
candidate's own photo when it has one (a second image), and optionally the "negative examples"
text GeoRanker shows; it is asked how far the candidate is from where the query photo was taken.
The final hidden state of the last non-padding token goes through ``Linear(hidden, 1)``: a higher
score means closer. A batch of ``B`` groups of ``G`` candidates is run as ``B×G`` padded sequences
and the scores come back as ``[B, G]``, ready for :func:`geobuild.ranker.loss.multi_order_loss`.

Training follows GeoRanker: LoRA (r=16, α=32, dropout 0.05) on the ``q_proj``/``k_proj``/``v_proj``
projections of the language model, the value head trained in full, every base weight frozen.
``prompt="georanker"`` uses GeoRanker's prompt word for word and left padding (the reward is the
last position's), and ``value_head="georanker"`` its head: ``Linear(hidden, 1, bias=False)`` with
weights drawn from N(0, (1 / (hidden + 1))^2); the default head has a zero bias and std
1 / sqrt(hidden + 1).

Weights are only read from a local folder (``--vlm-path DIR``, e.g. a downloaded
``Qwen/Qwen2-VL-2B-Instruct``, or a Hub name already in the local Hugging Face cache); nothing is
downloaded at run time. On CUDA the model runs in bfloat16, on the CPU in float32.

A checkpoint folder holds ``ranker.json`` (settings and the base model path), ``adapter/`` (the
LoRA adapter, ``peft`` format) and ``value_head.safetensors``.

The model interface the trainer uses (shared with the other rankers)::

    scores = model(groups)            # list[RankGroup] -> float tensor [B, G] (padding scores 0)
    mask = group_mask(groups)         # bool [B, G], False where a group has fewer candidates
    loss = multi_order_loss(scores, dists, mask=mask)
    model.trainable_parameters(); model.save(dir); VlmRanker.load(dir)
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..core.errors import GeobuildError, require
from ..core.log import get_logger
from .vlm_prompts import STYLES, RankCandidate, RankGroup, build_messages, format_location, location_text

log = get_logger(__name__)

CHECKPOINT_FORMAT = "geobuild-vlm-ranker"
CHECKPOINT_VERSION = 1
#: bump when the prompt wording changes (a checkpoint remembers the prompt it was trained with)
PROMPT_VERSION = 1

#: model_type in config.json -> transformers class of the Qwen2-VL family
_MODEL_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# --------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------


def group_mask(groups: Sequence[RankGroup]):
    """Bool ``[B, G]``: True for real candidates, False for the padding of shorter groups."""
    width = max((len(g.candidates) for g in groups), default=0)
    mask = torch.zeros(len(groups), width, dtype=torch.bool)
    for b, g in enumerate(groups):
        mask[b, : len(g.candidates)] = True
    return mask


# --------------------------------------------------------------------------------------------------
# settings, device and loading
# --------------------------------------------------------------------------------------------------


@dataclass
class LoraSettings:
    """LoRA on the language model's attention projections (GeoRanker: r=16, α=32, dropout 0.05)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")


#: value heads: geobuild's (with bias) and GeoRanker's (without)
HEADS = ("geobuild", "georanker")


@dataclass
class VlmSettings:
    """How to load and run the backbone."""

    vlm_path: str = ""
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16
    gradient_checkpointing: bool = False
    max_pairs_per_forward: int = 0  # 0 = all B×G pairs in one forward; else chunks of this many
    lora: LoraSettings = field(default_factory=LoraSettings)
    prompt: str = "geobuild"  # geobuild | georanker (GeoRanker's wording, left padding)
    value_head: str = "geobuild"  # geobuild (bias, std 1/sqrt(h+1)) | georanker (no bias, std 1/(h+1))

    def __post_init__(self) -> None:
        if self.prompt not in STYLES:
            raise GeobuildError(f"unknown VLM prompt '{self.prompt}' (choose {' or '.join(STYLES)})")
        if self.value_head not in HEADS:
            raise GeobuildError(f"unknown value head '{self.value_head}' (choose {' or '.join(HEADS)})")


def resolve_device_dtype(device: str = "auto", dtype: str = "auto"):
    """(torch.device, torch.dtype): cuda + bfloat16 when CUDA is available, else cpu + float32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GeobuildError(f"device '{device}' requested but CUDA is not available; use --device cpu")
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        if dev.type == "cuda":
            dt = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dt = torch.float32
    elif dtype in names:
        dt = names[dtype]
    else:
        raise GeobuildError(f"unknown dtype '{dtype}'; choose auto, float32, bfloat16 or float16")
    return dev, dt


def resolve_model_dir(vlm_path: str | os.PathLike) -> Path:
    """The local folder holding the model: ``vlm_path`` itself, or a Hub name found in the local cache.

    Never downloads: a Hub name that is not cached fails with one line naming the local-path way.
    """
    text = str(vlm_path)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise GeobuildError(f"--vlm-path {path} is not a model folder (no config.json in it)")
        return path.resolve()
    if _HUB_NAME.match(text) and not path.exists():
        try:
            hub = require("huggingface_hub", "hub")
            cached = hub.snapshot_download(text, local_files_only=True)
            if (Path(cached) / "config.json").is_file():
                return Path(cached)
        except GeobuildError:
            pass
        except Exception:  # not in the local cache (LocalEntryNotFoundError and friends)
            pass
        raise GeobuildError(
            f"--vlm-path '{text}' is not a local folder nor a Hub model in the local cache, and models are never "
            f"downloaded at run time: download it first (huggingface-cli download {text} --local-dir DIR) "
            "and pass --vlm-path DIR"
        )
    raise GeobuildError(f"--vlm-path {path} not found: pass a local folder holding a Qwen2-VL model")


def load_backbone(settings: VlmSettings):
    """Load (language+vision backbone without the LM head, processor, device, dtype) from a local folder."""
    transformers = require("transformers", "ranker")

    folder = resolve_model_dir(settings.vlm_path)
    device, dtype = resolve_device_dtype(settings.device, settings.dtype)
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise GeobuildError(f"cannot read the model config in {folder}: {_one_line(exc)}") from exc
    cls_name = _MODEL_CLASSES.get(getattr(config, "model_type", ""))
    if cls_name is None:
        raise GeobuildError(
            f"{folder} holds a '{config.model_type}' model; the VLM ranker needs a Qwen2-VL family model "
            f"({', '.join(_MODEL_CLASSES)}), e.g. Qwen/Qwen2-VL-2B-Instruct"
        )
    cls = getattr(transformers, cls_name)
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": dtype}
    if device.type == "cuda":
        kwargs["device_map"] = {"": str(device)}
    try:
        full = cls.from_pretrained(folder, **kwargs)
        processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise GeobuildError(f"cannot load the model in {folder}: {_one_line(exc)}") from exc
    backbone = full.model  # Qwen2VLModel: vision tower + language model; the LM head is not needed
    del full
    backbone.to(device)
    backbone.requires_grad_(False)
    processor.tokenizer.padding_side = "right"
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    if settings.gradient_checkpointing:
        if hasattr(backbone, "activation_checkpointing_enable"):  # transformers >= 5.x
            backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    log.info("loaded %s from %s on %s (%s)", cls_name, folder, device, str(dtype).replace("torch.", ""))
    return backbone, processor, folder, device, dtype


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _lora_config(lora: LoraSettings):
    peft = require("peft", "ranker")
    names = "|".join(re.escape(m) for m in lora.target_modules)
    return peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        # the language model's projections only (the vision tower's attention is left alone)
        target_modules=rf".*language_model\..*\.({names})$",
        bias="none",
    )


# --------------------------------------------------------------------------------------------------
# the ranker
# --------------------------------------------------------------------------------------------------


class VlmRanker(torch.nn.Module):
    """Qwen2-VL + LoRA + value head; ``forward(groups) -> scores [B, G]`` (higher = closer)."""

    def __init__(self, backbone, processor, settings: VlmSettings, base_folder: Path, device, dtype):
        super().__init__()
        self.backbone = backbone
        self.processor = processor
        self.settings = settings
        self.base_folder = Path(base_folder)
        self.dtype_ = dtype
        self.photos: tuple[Any, Any] | None = None  # (query PhotoStore, candidate PhotoStore), see attach_photos
        hidden = _hidden_size(backbone.config)
        georanker = settings.value_head == "georanker"
        self.value_head = torch.nn.Linear(hidden, 1, bias=not georanker).to(device=device, dtype=torch.float32)
        torch.nn.init.normal_(self.value_head.weight, std=1.0 / (hidden + 1) if georanker else 1.0 / (hidden + 1) ** 0.5)
        if self.value_head.bias is not None:
            torch.nn.init.zeros_(self.value_head.bias)
        if settings.prompt == "georanker":
            processor.tokenizer.padding_side = "left"  # GeoRanker's collator; the reward is the last position's

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, settings: VlmSettings) -> "VlmRanker":
        """A fresh ranker: the base model from ``settings.vlm_path``, new LoRA adapters, new head."""
        peft = require("peft", "ranker")
        backbone, processor, folder, device, dtype = load_backbone(settings)
        backbone = peft.get_peft_model(backbone, _lora_config(settings.lora))
        return cls(backbone, processor, settings, folder, device, dtype)

    @classmethod
    def load(
        cls,
        checkpoint: str | os.PathLike,
        vlm_path: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        trainable: bool = False,
        gradient_checkpointing: bool = False,
    ) -> "VlmRanker":
        """Reload a checkpoint written by :meth:`save` (``vlm_path`` overrides the recorded base model)."""
        peft = require("peft", "ranker")
        st = require("safetensors.torch", "ranker")

        ckpt = Path(checkpoint)
        meta_path = ckpt / "ranker.json"
        if not meta_path.is_file():
            raise GeobuildError(f"{ckpt} is not a VLM ranker checkpoint (no ranker.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != CHECKPOINT_FORMAT or int(meta.get("version", 0)) > CHECKPOINT_VERSION:
            raise GeobuildError(
                f"{meta_path}: unsupported checkpoint format {meta.get('format')} v{meta.get('version')}"
            )
        saved = meta["settings"]
        settings = VlmSettings(
            vlm_path=str(vlm_path or meta["base_model"]),
            device=device,
            dtype=dtype,
            gradient_checkpointing=gradient_checkpointing,
            max_pairs_per_forward=int(saved.get("max_pairs_per_forward", 0)),
            lora=LoraSettings(**{**saved["lora"], "target_modules": tuple(saved["lora"]["target_modules"])}),
            prompt=str(saved.get("prompt", "geobuild")),
            value_head=str(saved.get("value_head", "geobuild")),
        )
        backbone, processor, folder, dev, dt = load_backbone(settings)
        backbone = peft.PeftModel.from_pretrained(backbone, ckpt / "adapter", is_trainable=trainable)
        model = cls(backbone, processor, settings, folder, dev, dt)
        head = st.load_file(str(ckpt / "value_head.safetensors"))
        model.value_head.load_state_dict({k: v.to(torch.float32) for k, v in head.items()})
        model.value_head.requires_grad_(trainable)
        model.train(trainable)
        return model

    def save(self, checkpoint: str | os.PathLike) -> Path:
        """Write ``ranker.json``, ``adapter/`` and ``value_head.safetensors`` (replaces the folder atomically)."""
        from ..core.runfolder import atomic_path

        st = require("safetensors.torch", "ranker")
        final = Path(checkpoint)
        with atomic_path(final) as tmp:
            tmp.mkdir(parents=True)
            self.backbone.save_pretrained(str(tmp / "adapter"))
            head = {k: v.detach().to("cpu").contiguous() for k, v in self.value_head.state_dict().items()}
            st.save_file(head, str(tmp / "value_head.safetensors"))
            settings = asdict(self.settings)
            settings["lora"]["target_modules"] = list(self.settings.lora.target_modules)
            for k in ("vlm_path", "device", "dtype", "gradient_checkpointing"):
                settings.pop(k)
            meta = {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "prompt_version": PROMPT_VERSION,
                "base_model": str(self.base_folder),
                "model_type": self.backbone.config.model_type,
                "hidden_size": self.value_head.in_features,
                "settings": settings,
            }
            (tmp / "ranker.json").write_text(json.dumps(meta, indent=2) + "\n")
            if final.exists():
                shutil.rmtree(final)
        return final

    # ---- trainer interface (geobuild.ranker.models) ---------------------------------------------

    @property
    def device(self):
        return self.value_head.weight.device

    def attach_photos(self, query_photos, cand_photos=None) -> "VlmRanker":
        """Photo stores (:class:`geobuild.ranker.vlm_data.PhotoStore`) that a ``GroupBatch`` is read from."""
        self.photos = (query_photos, cand_photos if cand_photos is not None else query_photos)
        return self

    @property
    def embeddings(self):
        """Which photos the model can see: ``.rows(keys, namespace) >= 0`` (used to drop groups without a query photo)."""
        return _PhotoRows(*self.photos) if self.photos is not None else None

    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        """Only what training changes: the LoRA weights and the value head (the base model stays on disk)."""
        full = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        for key in [k for k in full if not _is_trained_key(k[len(prefix):] if k.startswith(prefix) else k)]:
            del full[key]
        return full

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        """Load a :meth:`state_dict` (LoRA + value head); base weights come from the base model folder."""
        expected = set(self.state_dict())
        given = set(state_dict)
        unexpected = sorted(given - expected)
        missing = sorted(expected - given)
        if unexpected or (strict and missing):
            raise GeobuildError(
                f"checkpoint does not match this VLM ranker ({len(missing)} missing, {len(unexpected)} unexpected "
                f"weights, e.g. {(missing or unexpected)[0]}); were the LoRA settings or the base model changed?"
            )
        return super().load_state_dict(state_dict, strict=False, assign=assign)

    # ---- running ------------------------------------------------------------------------------

    def trainable_parameters(self) -> list:
        """The LoRA and value-head parameters (everything else is frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    def encode(self, pairs: Sequence[tuple[RankGroup, RankCandidate]]):
        """Processor outputs (padded token ids, attention mask, pixel values, grids) for the pairs."""
        texts, images = [], []
        for group, cand in pairs:
            messages, imgs = build_messages(group, cand, style=self.settings.prompt)
            texts.append(self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            images.extend(imgs)
        batch = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        return batch.to(self.device)

    def score_pairs(self, pairs: Sequence[tuple[RankGroup, RankCandidate]]):
        """Float32 scores ``[N]`` for (group, candidate) pairs."""
        step = self.settings.max_pairs_per_forward or len(pairs)
        out = []
        for start in range(0, len(pairs), max(step, 1)):
            batch = self.encode(pairs[start : start + step])
            hidden = self.backbone(**batch, use_cache=False).last_hidden_state  # [n, T, H]
            mask = batch["attention_mask"]
            last = mask.shape[1] - 1 - mask.flip(1).to(torch.int64).argmax(1)  # last non-padding token
            h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
            out.append(self.value_head(h.to(torch.float32)).squeeze(-1))
        return torch.cat(out) if out else torch.zeros(0, device=self.device)

    def forward(self, groups):
        """Scores ``[B, G]`` for a list of :class:`RankGroup` or a trainer ``GroupBatch``.

        For a list, G is the largest group and padding scores are 0.
        """
        if hasattr(groups, "query_key"):
            groups = self.groups_from_batch(groups)
        if not groups:
            raise ValueError("empty batch of groups")
        pairs = [(g, c) for g in groups for c in g.candidates]
        width = max(len(g.candidates) for g in groups)
        flat = self.score_pairs(pairs)
        index = torch.tensor(
            [b * width + j for b, g in enumerate(groups) for j in range(len(g.candidates))],
            device=flat.device,
        )
        scores = torch.zeros(len(groups) * width, dtype=flat.dtype, device=flat.device)
        return scores.index_copy(0, index, flat).view(len(groups), width)


    def groups_from_batch(self, batch) -> list[RankGroup]:
        """RankGroups for a trainer ``GroupBatch`` (photos read by key from the attached stores)."""

        if self.photos is None:
            raise GeobuildError("the VLM ranker has no photos attached; build it with geobuild.ranker.vlm.build")
        qstore, cstore = self.photos
        rows = batch.index.detach().cpu().numpy()
        lat = batch.groups.cand_lat[rows].tolist()  # float64 as stored (the batch tensors are float32)
        lon = batch.groups.cand_lon[rows].tolist()
        style = self.settings.prompt
        out = []
        for b, qkey in enumerate(batch.query_key):
            query = qstore.get(qkey)
            if query is None:
                raise GeobuildError(f"no decodable photo for query '{qkey}' in the image tars")
            cands = [
                RankCandidate(lat[b][j], lon[b][j], location_text(batch.cand_texts[b][j], style), cstore.get(ckey))
                for j, ckey in enumerate(batch.cand_key[b])
            ]
            negatives = batch.negative_texts[b] if batch.negative_texts is not None else []
            out.append(RankGroup(query, cands, negatives=list(negatives)))
        return out


class _PhotoRows:
    """``rows(keys, namespace) -> int64 [n]`` (>= 0 when the photo exists), as the trainer expects."""

    def __init__(self, query_photos, cand_photos):
        self.stores = {"query": query_photos, "cand": cand_photos}

    def rows(self, keys, namespace: str = "cand"):
        """Query photos must also decode (a broken one would stop training mid-epoch)."""
        import numpy as np

        store = self.stores["query" if namespace == "query" else "cand"]
        rows = [store.row(k) for k in keys]
        if namespace == "query":
            rows = [r if r >= 0 and store.get(k) is not None else -1 for r, k in zip(rows, keys)]
        return np.asarray(rows, dtype=np.int64)


def _is_trained_key(key: str) -> bool:
    return "lora_" in key or key.startswith("value_head.")


def build(cfg: dict, ctx) -> VlmRanker:
    """Builder for ``geobuild train-ranker --model vlm`` (see :mod:`geobuild.ranker.models`).

    ``cfg["model_options"]``: ``vlm_path`` (required), ``lora_r`` (16), ``lora_alpha`` (32),
    ``lora_dropout`` (0.05), ``dtype`` (auto), ``gradient_checkpointing`` (false),
    ``max_pairs_per_forward`` (0 = all), ``max_side`` (downscale photos to this longest side; none),
    ``candidate_photos`` (true: show a candidate's own photo as a second image), ``prompt``
    (geobuild or georanker), ``value_head`` (geobuild or georanker). Photos come from the WebDataset
    tars of ``ctx.images``, or through the ``tar_index.pkl`` of a GeoRanker bundle.
    """
    from .vlm_data import PhotoStore, TarIndexPhotos

    opts = dict(cfg.get("model_options") or {})
    known = {"vlm_path", "lora_r", "lora_alpha", "lora_dropout", "dtype", "gradient_checkpointing",
             "max_pairs_per_forward", "max_side", "candidate_photos", "prompt", "value_head"}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise GeobuildError(f"unknown VLM model option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if not opts.get("vlm_path"):
        raise GeobuildError("--model vlm needs the base model: pass --vlm-path DIR (a local Qwen2-VL folder)")
    lora = LoraSettings(
        r=int(opts.get("lora_r", 16)), alpha=int(opts.get("lora_alpha", 32)), dropout=float(opts.get("lora_dropout", 0.05))
    )
    settings = VlmSettings(
        vlm_path=str(opts["vlm_path"]),
        device=str(getattr(ctx, "device", "auto") or "auto"),
        dtype=str(opts.get("dtype", "auto")),
        gradient_checkpointing=bool(opts.get("gradient_checkpointing", False)),
        max_pairs_per_forward=int(opts.get("max_pairs_per_forward", 0)),
        lora=lora,
        prompt=str(opts.get("prompt", "geobuild")),
        value_head=str(opts.get("value_head", "geobuild")),
    )
    model = VlmRanker.from_pretrained(settings)
    max_side = opts.get("max_side")
    max_side = int(max_side) if max_side else None
    if ctx.images.tar_index is not None:
        qstore = cstore = TarIndexPhotos(ctx.images.query_tars[0], ctx.images.tar_index, max_side=max_side)
    else:
        qstore = PhotoStore(ctx.images.query_tars, max_side=max_side)
        cstore = qstore if ctx.images.shared else PhotoStore(ctx.images.cand_tars, max_side=max_side)
    if not opts.get("candidate_photos", True):
        cstore = _NoPhotos()
    return model.attach_photos(qstore, cstore)


class _NoPhotos:
    """A candidate photo store without photos (``candidate_photos: false``)."""

    def get(self, key):
        return None

    def row(self, key) -> int:
        return -1


def _hidden_size(config) -> int:
    text = getattr(config, "text_config", None)
    size = getattr(text, "hidden_size", None) or getattr(config, "hidden_size", None)
    if not size:
        raise GeobuildError("cannot find the language model's hidden size in the model config")
    return int(size)


__all__ = [
    "build",
    "RankCandidate",
    "RankGroup",
    "LoraSettings",
    "VlmSettings",
    "VlmRanker",
    "build_messages",
    "format_location",
    "group_mask",
    "load_backbone",
    "resolve_device_dtype",
    "resolve_model_dir",
]
