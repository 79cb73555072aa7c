"""Damaged inputs end the real CLI with one ``error: ...`` line (exit 2), never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _mine_fixtures import base_run_copy
from geobuild.cli import app
from geobuild.artifacts.embeddings import model_info_path
from geobuild.artifacts.gallery import INFO_FILE, index_path

REPO = Path(__file__).resolve().parent.parent


def error_line(*args: str) -> str:
    """Run ``python -m geobuild ARGS``; it must fail with exit 2 and one error line; return that line."""
    env = {**os.environ, "GEOBUILD_NO_PROGRESS": "1"}
    res = subprocess.run([sys.executable, "-m", "geobuild", *args], capture_output=True, text=True, cwd=REPO,
                         env=env, timeout=120)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    """A tiny synthetic run with two mined shards (mined once, in-process)."""
    root = tmp_path_factory.mktemp("errlines") / "run"
    run = base_run_copy(root)
    res = CliRunner().invoke(app, ["mine", "--run", str(root)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return run


def test_corrupt_candidates_during_export(mined, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(mined.root, run_dir)
    bad = run_dir / "candidates" / "00000.parquet"
    bad.write_bytes(b"PAR1 this is not parquet PAR1")
    line = error_line("export", "georanker", "--run", str(run_dir), "--out", str(tmp_path / "out.parquet"))
    assert str(bad) in line and "geobuild mine --run" in line and "--shards 00000" in line


def test_export_out_is_an_existing_file(mined, tmp_path):
    out = tmp_path / "taken.txt"
    out.write_text("not a folder")
    line = error_line("export", "georanker", "--run", str(mined.root), "--out", str(out))
    assert str(out) in line and "pass a folder" in line
    assert out.read_text() == "not a folder"


def test_corrupt_embedding_model_info(tmp_path):
    run = base_run_copy(tmp_path / "run")
    p = model_info_path(run)
    p.write_text('{"model": "synthetic-16", "dim": ')
    line = error_line("mine", "--run", str(run.root))
    assert str(p) in line and "geobuild embed --run" in line


def test_corrupt_index_info(tmp_path):
    run = base_run_copy(tmp_path / "run")
    p = index_path(run, INFO_FILE)
    p.write_text("{not json")
    line = error_line("mine", "--run", str(run.root))
    assert str(p) in line and "geobuild index --run" in line


@pytest.mark.parametrize(
    "text, expect",
    [
        ("epochs: [1, 2\nlr: 0.1\n", "cannot read the training config"),
        ("epochs: abc\n", "'epochs'"),
        ("lr: fast\n", "'lr'"),
        ("skip_first: maybe\n", "'skip_first'"),
        ("sources: 3\n", "'sources'"),
        ("epoch: 3\n", "unknown training setting"),
    ],
    ids=["malformed", "int", "float", "bool", "list", "unknown"],
)
def test_bad_train_config(tmp_path, text, expect):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(text)
    line = error_line("train-ranker", "--config", str(cfg), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"))
    assert str(cfg) in line and expect in line


def test_train_config_values_are_converted():
    from geobuild.ranker.train import TrainConfig

    cfg = TrainConfig().merged({"epochs": "3", "lr": "1e-3", "skip_first": "yes", "sources": "image,gps", "threads": None},
                               keep_none=True)
    assert (cfg.epochs, cfg.lr, cfg.skip_first, cfg.sources, cfg.threads) == (3, 0.001, True, ["image", "gps"], None)


def test_eval_checkpoint_that_is_not_one(tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"\x00not a torch checkpoint\x00" * 4)
    line = error_line("eval", "--checkpoint", str(ckpt), "--data", str(tmp_path / "data"))
    assert f"{ckpt} is not a geobuild ranker checkpoint" in line


def test_corrupt_index_info_when_loading_the_gallery(tmp_path):
    from geobuild.core.errors import GeobuildError
    from geobuild.artifacts.gallery import load_gallery

    run = base_run_copy(tmp_path / "run")
    p = index_path(run, INFO_FILE)
    p.write_text("[1, 2]")
    with pytest.raises(GeobuildError, match="does not hold a JSON object.*geobuild index --run"):
        load_gallery(run, device="cpu")
