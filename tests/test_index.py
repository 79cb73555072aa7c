"""The index stage: exact and approximate faiss indexes, the id map, search paths and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from _fixtures_index import clustered, write_embeddings, write_meta
from geobuild.cli import app
from geobuild.core.errors import GeobuildError
from geobuild.artifacts.gallery import load_gallery
from geobuild.retrieval.knn import TorchGallery, recall_at_k, topk_numpy
from geobuild.core.runfolder import RunFolder
from geobuild.core.runner import run_stage
from geobuild.stages.index.stage import IndexConfig, IndexStage

faiss = pytest.importorskip("faiss")
runner = CliRunner()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "geobuild", *args], capture_output=True, text=True)


def _exact(x, q, k=10):
    idx = faiss.IndexFlatIP(x.shape[1])
    idx.add(x)
    return idx.search(q, k)


def test_numpy_topk_matches_faiss_flat():
    x = clustered(3000, 48, seed=3)
    q = clustered(200, 48, seed=4)
    s_np, r_np = topk_numpy((x[i : i + 700] for i in range(0, 3000, 700)), q, 10)
    s_f, r_f = _exact(x, q)
    np.testing.assert_array_equal(r_np, r_f)
    np.testing.assert_allclose(s_np, s_f, rtol=1e-5, atol=1e-5)


def test_torch_cpu_topk_matches_faiss_flat():
    x = clustered(2500, 40, seed=5)
    q = clustered(100, 40, seed=6)
    s_t, r_t = TorchGallery(x, device="cpu", chunk=600).search(q, 10, q_batch=33)
    s_f, r_f = _exact(x, q)
    np.testing.assert_array_equal(r_t, r_f)
    np.testing.assert_allclose(s_t, s_f, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_index_agrees_with_exact(tmp_path, kind):
    run = RunFolder(tmp_path / "run")
    x = write_embeddings(run, [1200, 1200], dim=16)
    cfg = IndexConfig(kind=kind, gps_gallery="none", pq_m=4, refine="flat", recall_sample=300)
    run_stage(IndexStage(cfg), run)
    info = json.loads(run.path("index", "info.json").read_text())
    assert info["kind"] == kind and info["ntotal"] == 2400
    assert info["recall@10"] >= 0.9, info
    # independent check through the public API
    g = load_gallery(run, device="cpu")
    q = x[::10]
    _, rows = g.search(q, 10)
    _, exact = _exact(x, q)
    assert recall_at_k(rows, exact) >= 0.9


def test_cli_build_and_search_flat(tmp_path):
    run = RunFolder(tmp_path / "run")
    x = write_embeddings(run, [300, 250, 0, 200], dim=24)
    res = runner.invoke(app, ["index", "--run", str(run.root), "--gps-gallery", "none"])
    assert res.exit_code == 0, res.output
    assert "flat over 750 vectors" in res.output
    g = load_gallery(run)
    assert (g.dim, g.model, g.kind, len(g)) == (24, "test-model", "flat", 750)
    ids = pq.read_table(run.path("index", "ids.parquet"))
    assert ids.schema.metadata[b"geobuild.schema"] == b"gallery_ids"
    assert list(g.meta["shard"].unique()) == ["00000", "00001", "00003"]
    assert g.meta["row"].tolist() == list(range(300)) + list(range(250)) + list(range(200))
    scores, rows = g.search(x[[0, 310, 700]], 5)
    assert scores.dtype == np.float32 and rows.dtype == np.int64 and rows.shape == (3, 5)
    assert rows[:, 0].tolist() == [0, 310, 700]  # each vector finds itself first
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=2e-3)
    s_f, r_f = _exact(x, x[:50])
    np.testing.assert_array_equal(g.search(x[:50], 10)[1], r_f)
    # metadata of a hit
    hit = g.meta.iloc[rows[1, 0]]
    assert (hit["shard"], hit["row"], hit["city"], hit["country"]) == ("00001", 10, "city0", "Testland")
    # a rerun skips the finished unit
    again = runner.invoke(app, ["index", "--run", str(run.root), "--gps-gallery", "none"])
    assert again.exit_code == 0 and "0 units done, 1 skipped" in again.output
    with pytest.raises(GeobuildError, match="expects \\[n, 24\\]"):
        g.search(np.zeros((2, 16), np.float32), 3)


def test_new_embeddings_trigger_rebuild(tmp_path):
    run = RunFolder(tmp_path / "run")
    write_embeddings(run, [100, 100], dim=16)
    run_stage(IndexStage(IndexConfig(gps_gallery="none")), run)
    write_embeddings(run, [100, 100, 50], dim=16)
    res = runner.invoke(app, ["index", "--run", str(run.root), "--gps-gallery", "none"])
    assert res.exit_code == 0, res.output
    assert len(load_gallery(run)) == 250


def test_bad_rows_go_to_the_ledger(tmp_path):
    run = RunFolder(tmp_path / "run")
    write_embeddings(run, [50], dim=16, dtype="float32")
    v = np.load(run.path("embeddings", "00000.npy"))
    v[3] = np.nan
    np.save(run.path("embeddings", "00000.npy"), v)
    meta = pq.read_table(run.path("embeddings", "00000.parquet")).to_pydict()
    meta["lat"][7], meta["lon"][7] = 0.0, 0.0
    meta["lat"][9] = 123.0
    meta["lat"][11] = None
    write_meta(run, "00000", meta)
    run_stage(IndexStage(IndexConfig(gps_gallery="none")), run)
    led = pq.read_table(run.ledger_path("index", "gallery")).to_pandas()
    assert sorted(led["status"]) == ["bad_embedding", "bad_gps", "bad_gps", "bad_gps"]
    g = load_gallery(run)
    assert len(g) + len(led) == 50 and 3 not in g.meta["row"].tolist()


def test_dimension_mismatch_is_one_clear_error(tmp_path):
    run = RunFolder(tmp_path / "run")
    write_embeddings(run, [20, 20], dim=16, model_dim=32)
    r = _cli("index", "--run", str(run.root), "--gps-gallery", "none")
    assert r.returncode == 2
    assert "dimension mismatch" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_shards_with_different_dims_refused(tmp_path):
    run = RunFolder(tmp_path / "run")
    write_embeddings(run, [20, 20], dim=16)
    np.save(run.path("embeddings", "00001.npy"), np.zeros((20, 8), np.float16))
    with pytest.raises(GeobuildError, match="00001.npy is 8-d"):
        run_stage(IndexStage(IndexConfig(gps_gallery="none")), run)


@pytest.mark.parametrize(
    "setup, message",
    [
        ("none", "no finished embeddings"),
        ("empty", "the gallery is empty"),
        ("missing_file", "missing embeddings file"),
        ("unembedded_shard", "have no embeddings yet"),
    ],
)
def test_missing_or_empty_embeddings(tmp_path, setup, message):
    run = RunFolder(tmp_path / "run")
    run.root.mkdir(parents=True)
    if setup == "empty":
        write_embeddings(run, [0, 0], dim=8)
    elif setup == "missing_file":
        write_embeddings(run, [5, 5], dim=8)
        run.path("embeddings", "00001.parquet").unlink()
    elif setup == "unembedded_shard":
        write_embeddings(run, [5], dim=8)
        for u in ("00000", "00001"):
            run.marker_path("shard", u).parent.mkdir(parents=True, exist_ok=True)
            run.marker_path("shard", u).write_text("{}")
    res = runner.invoke(app, ["index", "--run", str(run.root), "--gps-gallery", "none"])
    assert isinstance(res.exception, GeobuildError), res.output
    assert message in str(res.exception)


def test_search_on_cuda_matches_cpu(tmp_path):
    torch = pytest.importorskip("torch")
    from geobuild.retrieval.faiss_index import num_gpus

    if not torch.cuda.is_available() and num_gpus() == 0:
        pytest.skip("no GPU available")
    run = RunFolder(tmp_path / "run")
    x = write_embeddings(run, [4000, 3000], dim=64, dtype="float32")
    run_stage(IndexStage(IndexConfig(gps_gallery="none")), run)
    q = x[::7] + 0.01
    s_cpu, r_cpu = load_gallery(run, device="cpu").search(q, 10)
    g = load_gallery(run, device="cuda")
    assert g.backend in ("faiss-gpu", "torch-cuda")
    s_gpu, r_gpu = g.search(q, 10)
    np.testing.assert_array_equal(r_gpu, r_cpu)
    np.testing.assert_allclose(s_gpu, s_cpu, atol=1e-4)
    s_t, r_t = TorchGallery(x, device="cuda").search(q, 10)
    np.testing.assert_array_equal(r_t, r_cpu)
