"""Exact inner-product top-k search without faiss: numpy on CPU, torch on CUDA.

Both paths process the gallery in chunks and merge per-chunk top-k lists, so memory is bounded by
``queries x chunk`` scores. Results are sorted by descending score, ties broken by the lower row.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


def _merge(best_s: np.ndarray | None, best_r: np.ndarray | None, s: np.ndarray, r: np.ndarray, k: int):
    """Keep the k best (score desc, row asc) of two candidate lists per query."""
    if best_s is not None:
        s = np.concatenate([best_s, s], axis=1)
        r = np.concatenate([best_r, r], axis=1)
    if s.shape[1] > k:
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(s, part, axis=1)
        r = np.take_along_axis(r, part, axis=1)
    order = np.lexsort((r, -s), axis=1)
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(r, order, axis=1)


def topk_numpy(
    chunks: Iterable[np.ndarray], queries: np.ndarray, k: int, q_batch: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over gallery ``chunks`` (consecutive row blocks, float) for float32 ``queries``.

    Returns (scores float32 [n, k'], rows int64 [n, k']) with k' = min(k, gallery size).
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best_s = best_r = None
    offset = 0
    for block in chunks:
        block = np.asarray(block, dtype=np.float32)
        if block.shape[0] == 0:
            continue
        kk = min(k, block.shape[0])
        s_parts, r_parts = [], []
        for i in range(0, q.shape[0], q_batch):
            sims = q[i : i + q_batch] @ block.T
            if kk < block.shape[0]:
                idx = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
            else:
                idx = np.broadcast_to(np.arange(block.shape[0]), sims.shape).copy()
            s_parts.append(np.take_along_axis(sims, idx, axis=1))
            r_parts.append(idx.astype(np.int64) + offset)
        best_s, best_r = _merge(best_s, best_r, np.concatenate(s_parts), np.concatenate(r_parts), k)
        offset += block.shape[0]
    if best_s is None:
        return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
    return best_s.astype(np.float32), best_r


class TorchGallery:
    """Gallery vectors resident on a torch device, searched exactly with chunked matmul + topk."""

    def __init__(self, gallery: np.ndarray, device: str = "cuda", half: bool = False, chunk: int = 262144):
        import torch

        self.device = torch.device(device)
        dtype = torch.float16 if half else torch.float32
        self.chunk = chunk
        self.blocks = [
            torch.from_numpy(np.ascontiguousarray(gallery[i : i + chunk], dtype=np.float32)).to(self.device, dtype)
            for i in range(0, gallery.shape[0], chunk)
        ]
        self.ntotal = int(gallery.shape[0])
        self.dtype = dtype

    def search(self, queries: np.ndarray, k: int, q_batch: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        import torch

        q_all = np.ascontiguousarray(queries, dtype=np.float32)
        out_s, out_r = [], []
        with torch.no_grad():
            for i in range(0, q_all.shape[0], q_batch):
                q = torch.from_numpy(q_all[i : i + q_batch]).to(self.device, self.dtype)
                best_s = best_r = None
                offset = 0
                for block in self.blocks:
                    kk = min(k, block.shape[0])
                    sims = (q @ block.T).float()
                    s, r = torch.topk(sims, kk, dim=1)
                    best_s, best_r = _merge(best_s, best_r, s.cpu().numpy(), r.cpu().numpy().astype(np.int64) + offset, k)
                    offset += block.shape[0]
                out_s.append(best_s)
                out_r.append(best_r)
        if not out_s:
            kk = min(k, self.ntotal)
            return np.zeros((0, kk), np.float32), np.zeros((0, kk), np.int64)
        return np.concatenate(out_s).astype(np.float32), np.concatenate(out_r)


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray, k: int = 10) -> float:
    """Mean share of the exact top-k rows that the approximate top-k also returns."""
    a = np.asarray(approx_rows)[:, :k]
    e = np.asarray(exact_rows)[:, :k]
    if e.size == 0:
        return float("nan")
    hits = [len(set(ai.tolist()) & set(ei.tolist())) for ai, ei in zip(a, e)]
    return float(np.sum(hits) / e.size)
