"""Image-candidate search over a gallery full of near-duplicates: the depth doubles up to the whole
gallery, in batches whose (query x depth) results stay under SEARCH_BUDGET, with the same picks."""

from __future__ import annotations

import faiss
import numpy as np

from geobuild.stages.mine import image_candidates
from geobuild.stages.mine.image_candidates import search_image_candidates


def _gallery(n: int = 600, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(1, d)).astype(np.float32)
    x = base + 0.001 * rng.normal(size=(n, d)).astype(np.float32)  # all near-duplicates of one photo
    x[::50] = rng.normal(size=(n // 50, d))  # a few distinct ones
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(d)
    index.add(x)
    keys = np.array([f"k{i:04d}" for i in range(n)], dtype=object)
    return index, x, keys


def _pick(index, x, keys):
    return search_image_candidates(index, x[:40], keys[:40], keys[:40], keys[:40], k=5, same_run=True,
                                   g_key=keys, g_id=keys, dedup_threshold=0.99)


def test_deep_searches_are_batched_under_the_budget_with_the_same_picks(monkeypatch):
    index, x, keys = _gallery()
    whole = _pick(index, x, keys)
    # the near-duplicates of query 1 (a copy of the base photo) leave it only the distinct photos: the
    # depth went to the whole gallery
    assert whole.rows[1][0] % 50 == 0 and whole.excluded["near_duplicate"] > 500
    calls = []
    real = index.search

    class Spy:
        ntotal = index.ntotal

        def search(self, q, depth):
            calls.append(q.shape[0] * depth)
            return real(q, depth)

    monkeypatch.setattr(image_candidates, "SEARCH_BUDGET", 1200)
    small = _pick(Spy(), x, keys)
    assert max(calls) <= 1200 and len(calls) > whole.searches
    assert np.array_equal(small.rows, whole.rows) and np.array_equal(small.scores, whole.scores)
    assert small.excluded == whole.excluded


def test_an_exhausted_ivf_list_ends_the_deeper_searches_with_the_same_picks():
    """IVF with one probed list: a query whose list holds fewer photos than it needs gets -1 rows; a
    deeper search cannot add any, so it stops after the first search (the picks are those of a search
    that went on to the whole gallery)."""
    rng = np.random.default_rng(1)
    d, n = 16, 600
    centres = rng.normal(size=(6, d)).astype(np.float32)
    x = centres[rng.integers(0, 6, n)] + 0.3 * rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, 30, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    index.nprobe = 1
    keys = np.array([f"k{i:04d}" for i in range(n)], dtype=object)
    sizes = np.bincount(index.quantizer.search(x, 1)[1].ravel(), minlength=30)
    k = int(np.median(sizes)) + 5  # more than most lists hold: most queries come up short
    pick = search_image_candidates(index, x[:40], keys[:40], keys[:40], keys[:40], k=k, same_run=True,
                                   g_key=keys, g_id=keys, dedup_threshold=0.99)
    short = (pick.rows < 0).any(axis=1)
    assert short.sum() > 10 and pick.searches <= 2
    _, deep = index.search(x[:40], n)  # the whole gallery: what the list of each query holds
    for i in np.flatnonzero(short):
        held = [r for r in deep[i] if r >= 0 and r != i]
        assert sorted(pick.rows[i][pick.rows[i] >= 0]) == sorted(held)
def test_picks_and_exclusion_counts_match_a_per_query_reference():
    """Each query's first k neighbours that are not itself, by its author or near-duplicates, in
    search order, and the exclusions counted up to its k-th kept neighbour (all seen if fewer)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    x[1::4] = x[::4] + 0.01 * rng.normal(size=(75, 8)).astype(np.float32)  # a near-duplicate of every 4th
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(8)
    index.add(x)
    keys = np.array([f"k{i:04d}" for i in range(300)], dtype=object)
    authors = np.array([f"a{i}" for i in rng.integers(0, 6, size=300)], dtype=object)
    k, q = 7, 60
    pick = search_image_candidates(index, x[:q], keys[:q], keys[:q], authors[:q], k=k, same_run=True,
                                   g_key=keys, g_id=keys, g_author=authors, dedup_threshold=0.99, overfetch=2)
    scores, rows = index.search(x[:q], index.ntotal)
    excluded = {"self": 0, "same_author": 0, "near_duplicate": 0}
    for i in range(q):
        kept, seen = [], {"self": 0, "same_author": 0, "near_duplicate": 0}
        for r, s in zip(rows[i], scores[i]):
            reason = "self" if keys[r] == keys[i] else "same_author" if authors[r] == authors[i] else (
                "near_duplicate" if s >= 0.99 else None)
            if reason:
                seen[reason] += 1
            else:
                kept.append((r, s))
                if len(kept) == k:
                    break
        for reason, c in seen.items():
            excluded[reason] += c
        assert pick.rows[i, : len(kept)].tolist() == [r for r, _ in kept], i
        assert (pick.rows[i, len(kept):] == -1).all(), i
        assert pick.scores[i, : len(kept)].tolist() == [s for _, s in kept], i
    assert pick.excluded == excluded
