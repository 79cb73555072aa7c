"""A compact cross-encoder ranker that trains on a CPU in minutes.

Inputs per group: the frozen embedding of the query photo, and per candidate the frozen embedding
of its photo (a learned "no photo" token when it has none), its coordinates (random Fourier
features of 3-D unit vectors, or the pretrained location encoder), its location text (a hashed bag
of words and character 3-grams of ``[city, state, country]``), its source (image / gps / negative)
and its rank within that source, the cosine similarity between query and candidate photos, and
optionally (``consensus``, off by default) how many of the group's other candidates lie within
25 / 200 / 750 / 2500 km of it, plain and weighted by their photo similarity to the query. On the
IM2GPS3K author split the agreement features made the ranker worse (benchmarks/RESULTS.md), so
they are opt-in.
A small transformer encoder runs over ``[query token, candidate tokens]`` so candidates of one
query are scored jointly; a head maps each candidate token to its score. There are no position
embeddings: the model is equivariant to the order of the candidates.

Two settings let it keep the retrieval order when it has nothing better (``train-ranker`` settings;
older checkpoints name them in ``model_options``):

* ``retrieval_features``: each candidate's retrieval score, its margin to the best score of its
  source in the group and its ratio to it (cosine similarity for photos, kernel density for GPS
  points);
* ``residual``: score = a learned prior per (source, rank) + the head's correction; the prior starts
  as a descending ramp (image 0 first, GPS candidates after image 1) and the head's last layer at
  zero, so the untrained model ranks exactly as retrieval does (top-1 retrieval first).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..core.errors import GeobuildError
from ..core.log import get_logger
from ..geo.sphere import unit_vectors
from .features import hashed_text, location_encoder_features, rff_matrix
from .images import Embeddings, embed_images
from .models import GroupBatch, ModelContext

log = get_logger("ranker.compact")

MAX_RANK = 64
CONSENSUS_KM = (25.0, 200.0, 750.0, 2500.0)
CONSENSUS_TEMP = 0.05  # softmax temperature over photo similarities for the weighted agreement


def consensus_features(lat: torch.Tensor, lon: torch.Tensor, cos: torch.Tensor, has: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """Per candidate, agreement with the group's other candidates, ``[B, G, 2 * len(CONSENSUS_KM)]``.

    For each radius: the share of the other valid candidates within it, and their share weighted
    by ``softmax(cos / T)`` over the other candidates that have a photo.
    """
    la, lo = torch.deg2rad(lat.double()), torch.deg2rad(lon.double())
    xyz = torch.stack([la.cos() * lo.cos(), la.cos() * lo.sin(), la.sin()], -1)
    chord = (xyz[:, :, None, :] - xyz[:, None, :, :]).norm(dim=-1).clamp(max=2.0)
    km = 2.0 * 6371.0088 * torch.asin(chord / 2.0)  # haversine via the chord; exact at small distances
    G = lat.shape[1]
    others = mask[:, None, :] & ~torch.eye(G, dtype=torch.bool, device=lat.device)[None]
    n_other = others.sum(-1).clamp(min=1).double()
    photo = others & has[:, None, :]
    logits = (cos.double() / CONSENSUS_TEMP)[:, None, :].expand(-1, G, -1).masked_fill(~photo, float("-inf"))
    w = torch.softmax(logits, -1).nan_to_num(0.0)  # rows with no other photo: all zero
    feats = []
    for t in CONSENSUS_KM:
        near = (km < t) & others
        feats.append(near.sum(-1).double() / n_other)
        feats.append((w * near).sum(-1))
    return torch.stack(feats, -1).float()


def retrieval_features(score: torch.Tensor, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per candidate ``[score, score - best of its source, score / best of its source, known]``,
    ``[B, G, 4]`` (0 where the score is unknown)."""
    known = torch.isfinite(score) & mask
    s = torch.where(known, score, torch.zeros_like(score))
    margin = torch.zeros_like(s)
    ratio = torch.zeros_like(s)
    for code in range(3):
        same = known & (source == code)
        top = torch.where(same, s, torch.full_like(s, float("-inf"))).amax(1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        margin = torch.where(same, s - top, margin)
        ratio = torch.where(same & (top > 0), s / top.clamp(min=1e-12), ratio)
    return torch.stack([s, margin, ratio, known.float()], -1)


def rank_prior() -> torch.Tensor:
    """The residual model's starting prior ``[3, MAX_RANK]``: image rank r at -r, GPS and negative
    candidates at -(r + 1.5), so retrieval's first photo ranks first."""
    r = torch.arange(MAX_RANK, dtype=torch.float32)
    return torch.stack([-r, -(r + 1.5), -(r + 1.5)])


class CompactRanker(nn.Module):
    """Transformer cross-encoder over [query, candidates]; see the module docstring."""

    def __init__(
        self,
        img_dim: int,
        loc_dim: int,
        text_dim: int = 256,
        d_model: int = 128,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.1,
        location: str = "rff",
        rff_seed: int = 0,
        consensus: bool = False,
        retrieval: bool = False,
        residual: bool = False,
    ):
        super().__init__()
        if location not in ("rff", "geoclip"):
            raise GeobuildError(f"unknown location features '{location}' (rff or geoclip)")
        self.location = location
        self.text_dim = text_dim
        self.img_dim = img_dim
        if location == "rff":
            self.register_buffer("rff", torch.from_numpy(rff_matrix(loc_dim, seed=rff_seed)))
        self.q_proj = nn.Linear(img_dim, d_model)
        self.c_proj = nn.Linear(img_dim, d_model)
        self.no_photo = nn.Parameter(torch.zeros(d_model))
        self.loc_proj = nn.Linear(loc_dim, d_model)
        self.text_proj = nn.Linear(text_dim, d_model)
        self.pair_proj = nn.Linear(2, d_model)  # cosine(query, candidate photo), has-photo flag
        self.source_emb = nn.Embedding(3, d_model)
        self.rank_emb = nn.Embedding(MAX_RANK, d_model)
        self.type_emb = nn.Embedding(2, d_model)
        self.consensus_proj = nn.Linear(2 * len(CONSENSUS_KM), d_model) if consensus else None
        self.retrieval_proj = nn.Linear(4, d_model) if retrieval else None
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=2 * d_model, dropout=dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, 1))
        self.prior = nn.Parameter(rank_prior()) if residual else None
        if residual:  # the untrained model is the prior: retrieval order
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)
        # frozen, per-dataset features (not part of the state dict)
        self.embeddings: Embeddings | None = None
        self._emb_tensor: torch.Tensor | None = None
        self._loc_rows: dict[tuple[float, float], int] = {}
        self._loc_tensor: torch.Tensor | None = None

    # -- frozen features ----------------------------------------------------------------------
    def attach(self, embeddings: Embeddings, loc_table: tuple[dict, np.ndarray] | None = None) -> "CompactRanker":
        """Give the model the photo embeddings (and location-encoder features) of its groups."""
        if embeddings.dim != self.img_dim:
            raise GeobuildError(
                f"photo embeddings have dimension {embeddings.dim}, the model expects {self.img_dim}; "
                "use the encoder the model was trained with"
            )
        self.embeddings = embeddings
        self._emb_tensor = torch.from_numpy(np.ascontiguousarray(embeddings.matrix, dtype=np.float32))
        if loc_table is not None:
            self._loc_rows, mat = loc_table
            self._loc_tensor = torch.from_numpy(np.ascontiguousarray(mat, dtype=np.float32))
        return self

    def _photos(self, keys, namespace: str, device) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.embeddings is not None and self._emb_tensor is not None, "call attach() first"
        rows = torch.from_numpy(self.embeddings.rows(keys, namespace))
        has = rows >= 0
        emb = self._emb_tensor[rows.clamp(min=0)] * has[:, None].to(torch.float32)
        return emb.to(device), has.to(device)

    def _locations(self, lat: torch.Tensor, lon: torch.Tensor) -> torch.Tensor:
        if self.location == "rff":
            la, lo = torch.deg2rad(lat.double()), torch.deg2rad(lon.double())
            xyz = torch.stack([la.cos() * lo.cos(), la.cos() * lo.sin(), la.sin()], -1).float()
            proj = 2 * torch.pi * (xyz @ self.rff)
            return torch.cat([proj.sin(), proj.cos()], -1)
        assert self._loc_tensor is not None, "location-encoder features missing; call attach() with them"
        keys = zip(lat.reshape(-1).tolist(), lon.reshape(-1).tolist())
        rows = torch.tensor([self._loc_rows[(round(a, 5), round(b, 5))] for a, b in keys], dtype=torch.long)
        return self._loc_tensor[rows].reshape(*lat.shape, -1).to(lat.device)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, batch: GroupBatch) -> torch.Tensor:
        B, G = batch.mask.shape
        dev = batch.mask.device
        q, _ = self._photos(batch.query_key, "query", dev)  # [B, D]
        flat = [k for row in batch.cand_key for k in row]
        c, has = self._photos(flat, "cand", dev)
        c, has = c.reshape(B, G, -1), has.reshape(B, G)
        cos = (q[:, None, :] * c).sum(-1)
        text = torch.from_numpy(
            np.stack([np.stack([hashed_text(t, self.text_dim) for t in row]) for row in batch.cand_texts])
        ).to(dev)
        photo_tok = torch.where(has[..., None], self.c_proj(c), self.no_photo.expand(B, G, -1))
        cand = (
            photo_tok
            + self.loc_proj(self._locations(batch.cand_lat, batch.cand_lon))
            + self.text_proj(text)
            + self.pair_proj(torch.stack([cos, has.float()], -1))
            + self.source_emb(batch.cand_source.clamp(0, 2))
            + self.rank_emb(batch.cand_rank.clamp(0, MAX_RANK - 1))
            + self.type_emb.weight[1]
        )
        if self.consensus_proj is not None:
            cand = cand + self.consensus_proj(consensus_features(batch.cand_lat, batch.cand_lon, cos, has, batch.mask))
        if self.retrieval_proj is not None:
            score = batch.cand_score if batch.cand_score is not None else torch.full((B, G), float("nan"), device=dev)
            cand = cand + self.retrieval_proj(retrieval_features(score, batch.cand_source, batch.mask))
        query = self.q_proj(q) + self.type_emb.weight[0]
        x = torch.cat([query[:, None, :], cand], 1)
        pad = torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=dev), ~batch.mask], 1)
        h = self.encoder(x, src_key_padding_mask=pad)
        out = self.head(h[:, 1:]).squeeze(-1)
        if self.prior is not None:
            out = out + self.prior[batch.cand_source.clamp(0, 2), batch.cand_rank.clamp(0, MAX_RANK - 1)]
        return out


def _location_table(ctx: ModelContext) -> tuple[dict, np.ndarray]:
    pts: dict[tuple[float, float], int] = {}
    for g in ctx.groups:
        for a, b in zip(g.cand_lat.reshape(-1).tolist(), g.cand_lon.reshape(-1).tolist()):
            # float32 round trip: the batch carries coordinates as float32
            key = (round(float(np.float32(a)), 5), round(float(np.float32(b)), 5))
            pts.setdefault(key, len(pts))
    lat = np.array([k[0] for k in pts], dtype=np.float64)
    lon = np.array([k[1] for k in pts], dtype=np.float64)
    return pts, location_encoder_features(lat, lon)


def build(cfg: dict, ctx: ModelContext) -> CompactRanker:
    """Builder for the registry: embed the photos of ``ctx`` once and build the model."""
    opts = dict(cfg.get("model_options") or {})
    unknown = sorted(set(opts) - {"consensus", "retrieval_features", "residual"})
    if unknown:
        raise GeobuildError(f"unknown compact model option(s) {', '.join(unknown)}; known: consensus, residual, retrieval_features")
    emb = embed_images(ctx.images, cfg.get("encoder", "efficientnet-lite0"), ctx.cache_dir, device=ctx.device)
    location = cfg.get("location", "rff")
    loc_table = _location_table(ctx) if location == "geoclip" else None
    loc_dim = int(loc_table[1].shape[1]) if loc_table is not None else int(cfg.get("rff_dim", 128))
    model = CompactRanker(
        img_dim=emb.dim,
        loc_dim=loc_dim,
        text_dim=int(cfg.get("text_dim", 256)),
        d_model=int(cfg.get("d_model", 128)),
        layers=int(cfg.get("layers", 2)),
        heads=int(cfg.get("heads", 4)),
        dropout=float(cfg.get("dropout", 0.1)),
        location=location,
        rff_seed=0,
        consensus=bool(opts.get("consensus", False)),
        retrieval=bool(cfg.get("retrieval_features") or opts.get("retrieval_features", False)),
        residual=bool(cfg.get("residual") or opts.get("residual", False)),
    )
    return model.attach(emb, loc_table)


__all__ = ["CompactRanker", "build", "unit_vectors"]
