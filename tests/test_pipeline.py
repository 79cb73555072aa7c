"""`geobuild run`: pipeline files, env interpolation, resume, config guard, --from/--until, summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from geobuild.cli import app
from geobuild.core.errors import GeobuildError
from geobuild.core.executors import LocalExecutor
from geobuild.pipeline.run import run_pipeline
from geobuild.pipeline.spec import load_pipeline
from geobuild.core.runfolder import RunFolder

REPO = Path(__file__).resolve().parent.parent
TOY = """
name: toy
stages:
  make:
    uses: tests.toy_stages:MakeStage
    n: ${TOY_N:-3}
    size: 5
    salt: ${TOY_SALT:-a}
  upper:
    uses: tests.toy_stages:UpperStage
    fail: ${TOY_FAIL:-}
"""


@pytest.fixture()
def toy(tmp_path, monkeypatch):
    for var in ("TOY_N", "TOY_SALT", "TOY_FAIL"):
        monkeypatch.delenv(var, raising=False)
    p = tmp_path / "toy.yaml"
    p.write_text(TOY)
    return p


def cli(*args, env=None):
    r = CliRunner().invoke(app, [str(a) for a in args], env=env)
    return r


def test_run_then_rerun_skips_and_summary(toy, tmp_path):
    out = tmp_path / "run"
    r = cli("run", toy, "--out", out)
    assert r.exit_code == 0, r.output
    run = RunFolder(out)
    assert run.done_units("make") == ["00000", "00001", "00002"]
    assert run.done_units("upper") == ["00000", "00001", "00002"]
    assert run.path("upper", "00001.txt").read_text().split() == ["00001-1:A", "00001-2:A", "00001-3:A", "00001-4:A"]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["make"] == {"n": 3, "size": 5, "reject_every": 5, "salt": "a"}
    piped = yaml.safe_load((out / "pipeline.yaml").read_text())
    assert piped["stages"]["make"]["n"] == 3 and piped["stages"]["upper"] == {"fail": "", "kill_once": "", "flag_dir": ""}
    summary = json.loads((out / "summary.json").read_text())
    make = summary["stages"][0]
    assert summary["ok"] and make["stage"] == "make"
    assert (make["done"], make["skipped"], make["failed"]) == (3, 0, 0)
    assert (make["samples_in"], make["samples_out"]) == (15, 12)
    assert make["rejects"] == {"too_small": 3}
    assert summary["stages"][1]["samples_out"] == 12

    mtime = run.path("upper", "00000.txt").stat().st_mtime_ns
    r = cli("run", toy, "--out", out)
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert [(s["done"], s["skipped"]) for s in summary["stages"]] == [(0, 3), (0, 3)]
    # counts are totals over every finished unit, including the skipped ones
    assert summary["stages"][0]["samples_out"] == 12 and summary["stages"][0]["rejects"] == {"too_small": 3}
    assert run.path("upper", "00000.txt").stat().st_mtime_ns == mtime


def test_changed_config_refused_then_overwrite_redoes_downstream(toy, tmp_path):
    out = tmp_path / "run"
    assert cli("run", toy, "--out", out).exit_code == 0
    r = cli("run", toy, "--out", out, env={"TOY_SALT": "b"})
    assert r.exit_code != 0
    assert isinstance(r.exception, GeobuildError)
    assert "different configuration for: make (salt)" in str(r.exception) and "--overwrite" in str(r.exception)
    assert RunFolder(out).path("upper", "00000.txt").read_text().split()[0].endswith(":A")
    r = cli("run", toy, "--out", out, "--overwrite", env={"TOY_SALT": "b"})
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    # make changed, so upper (which reads make's outputs) is redone as well
    assert [s["done"] for s in summary["stages"]] == [3, 3]
    assert RunFolder(out).path("upper", "00000.txt").read_text().split()[0].endswith(":B")
    assert yaml.safe_load((out / "config.yaml").read_text())["make"]["salt"] == "b"


def test_from_and_until(toy, tmp_path):
    out = tmp_path / "run"
    r = cli("run", toy, "--out", out, "--from", "upper")
    assert r.exit_code != 0 and "stage 'make' has not run" in str(r.exception)
    assert cli("run", toy, "--out", out, "--until", "make").exit_code == 0
    run = RunFolder(out)
    assert run.done_units("make") and not run.done_units("upper")
    summary = json.loads((out / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["make"]
    assert cli("run", toy, "--out", out, "--from", "upper").exit_code == 0
    assert run.done_units("upper") == ["00000", "00001", "00002"]
    r = cli("run", toy, "--out", out, "--until", "nope")
    assert "--until nope: no such stage" in str(r.exception) and "make, upper" in str(r.exception)


def test_failed_unit_reported_then_resumed(toy, tmp_path):
    out = tmp_path / "run"
    r = cli("run", toy, "--out", out, "--retries", "0", env={"TOY_FAIL": "00001"})
    assert r.exit_code != 0 and "stage upper: 1 of 3 units failed (first: 00001" in str(r.exception)
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["ok"] and summary["stages"][1]["failed"] == 1 and summary["stages"][1]["status"] == "failed"
    assert "toy failure in 00001" in summary["stages"][1]["failures"]["00001"]
    assert cli("run", toy, "--out", out).exit_code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"][1]["done"] == 1 and summary["stages"][1]["skipped"] == 2


def test_pool_executor_gives_same_outputs(toy, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("run", toy, "--out", a).exit_code == 0
    assert cli("run", toy, "--out", b, "--workers", "2").exit_code == 0
    for stage in ("make", "upper"):
        for f in sorted((a / stage).iterdir()):
            assert (b / stage / f.name).read_bytes() == f.read_bytes()


def test_local_pool_survives_a_killed_worker(toy, tmp_path):
    pipe = load_pipeline(toy)
    run = RunFolder(tmp_path / "run")
    pipe.stages[1].params.update(kill_once="00001", flag_dir=str(tmp_path / "flags"))
    res = run_pipeline(pipe, run, LocalExecutor(workers=2, retries=2))
    assert res.ok and (tmp_path / "flags" / "killed-00001").exists()
    assert run.path("upper", "00001.txt").read_text().split()[0] == "00001-1:A"
    assert run.done_units("upper") == ["00000", "00001", "00002"]


# -- validation ---------------------------------------------------------------------------------


def write(tmp_path, text, name="p.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_unknown_stage_lists_valid_ones(tmp_path):
    p = write(tmp_path, "stages:\n  shrad: {}\n")
    with pytest.raises(GeobuildError, match=r"unknown stage 'shrad' \(valid stages: shard, embed, index, mine, distances, publish"):
        load_pipeline(p)


def test_unknown_parameter_lists_valid_ones(tmp_path):
    p = write(tmp_path, "stages:\n  make:\n    uses: tests.toy_stages:MakeStage\n    sise: 3\n")
    with pytest.raises(GeobuildError, match=r"stage 'make' has unknown parameter\(s\) sise \(valid: n, reject_every, salt, size\)"):
        load_pipeline(p)


def test_missing_variable_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("TOY_MISSING_DIR", raising=False)
    p = write(tmp_path, "stages:\n  make:\n    uses: tests.toy_stages:MakeStage\n    salt: ${TOY_MISSING_DIR}/x\n")
    with pytest.raises(GeobuildError, match=r"environment variable TOY_MISSING_DIR is not set \(used by stage 'make'\)"):
        load_pipeline(p)
    # only the selected stages need their variables
    assert load_pipeline(p, strict_stages=[]).stages[0].missing_vars == ["TOY_MISSING_DIR"]
    monkeypatch.setenv("TOY_MISSING_DIR", "/data")
    assert load_pipeline(p).stages[0].params["salt"] == "/data/x"


def test_interpolation_types_and_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("TOY_N", "7")
    p = write(tmp_path, "stages:\n  make:\n    uses: tests.toy_stages:MakeStage\n    n: ${TOY_N}\n    size: ${TOY_UNSET:-11}\n    salt: pre-${TOY_N}-${TOY_UNSET:-z}\n")
    params = load_pipeline(p).stages[0].params
    assert params == {"n": 7, "size": 11, "salt": "pre-7-z"}
    assert load_pipeline(p, variables={"TOY_N": "9"}).stages[0].params["n"] == 9


@pytest.mark.parametrize(
    "text, match",
    [
        ("stages: []\n", "non-empty 'stages:' section"),
        ("stages:\n  make: 3\n", "must map parameter names to values"),
        ("nmae: x\nstages:\n  make: {uses: 'tests.toy_stages:MakeStage'}\n", "unknown top-level key"),
        ("stages:\n  make: {uses: 'toy_stages'}\n", "must look like package.module:StageClass"),
        ("stages: [\n", "not valid YAML"),
        ("stages:\n  embed: {}\n  shard: {}\n", "out of order|not available"),
    ],
)
def test_malformed_pipelines(tmp_path, text, match):
    with pytest.raises(GeobuildError, match=match):
        load_pipeline(write(tmp_path, text))


def test_secrets_never_written(tmp_path):
    """A token from the environment reaches the stage, but no file of the run and no output line holds it."""
    import hashlib
    import os

    secret = "hf_SECRETvalue0123456789abcdef"
    p = write(tmp_path, "stages:\n  make:\n    uses: tests.toy_stages:MakeStage\n    n: 2\n"
                        "  secret:\n    uses: tests.toy_stages:SecretStage\n    token: ${TOY_TOKEN}\n    api_key: k-${TOY_TOKEN}\n")
    out = tmp_path / "run"
    env = dict(os.environ, TOY_TOKEN=secret, GEOBUILD_NO_PROGRESS="1")
    runs = [subprocess.run([sys.executable, "-m", "geobuild", "-v", "run", str(p), "--out", str(out), *extra],
                           capture_output=True, text=True, cwd=REPO, env=env) for extra in ([], [])]  # run, rerun
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    # the stage got the real values
    want = hashlib.sha256(f"{secret}|k-{secret}".encode()).hexdigest()[:16]
    assert (out / "secret" / "00001.txt").read_text().strip() == want
    # ... and nothing written or printed holds them
    for r in runs:
        assert secret not in r.stdout + r.stderr
    files = [f for f in out.rglob("*") if f.is_file()]
    assert {"config.yaml", "pipeline.yaml", "summary.json"} <= {f.name for f in files}
    assert [f for f in files if secret.encode() in f.read_bytes()] == []
    for name in ("config.yaml", "pipeline.yaml"):
        doc = yaml.safe_load((out / name).read_text())
        section = doc["stages"]["secret"] if name == "pipeline.yaml" else doc["secret"]
        assert section == {"token": "<redacted>", "api_key": "<redacted>"}, (name, section)


def test_cli_error_is_one_line(tmp_path):
    p = write(tmp_path, "stages:\n  shrad: {}\n")
    r = subprocess.run(
        [sys.executable, "-m", "geobuild", "run", str(p), "--out", str(tmp_path / "r")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: unknown stage 'shrad'")


def test_shipped_pipelines_parse(monkeypatch, tmp_path):
    """Every pipelines/*.yaml names known stages and parameters (for the stages installed)."""
    from geobuild.stages import STAGES
    import importlib.util

    for name in ("MP16_DIR", "HF_REPO", "GALLERY", "YFCC4K_IMAGES"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    files = sorted((REPO / "pipelines").glob("*.yaml"))
    assert {"sample.yaml", "mp16pro.yaml"} <= {f.name for f in files}
    if not all(importlib.util.find_spec(m.split(":")[0]) for m in STAGES.values()):
        pytest.skip("not every stage module is installed")
    for f in files:
        pipe = load_pipeline(f, variables={"RUN": str(tmp_path / "run")})
        assert pipe.names()[0] in ("shard", "embed", "mine")
        for spec in pipe.stages:
            spec.build()


def test_set_overrides_parameters(toy, tmp_path):
    out = tmp_path / "run"
    r = cli("run", toy, "--out", out, "--until", "make", "--set", "make.salt=z", "--set", "make.n=2")
    assert r.exit_code == 0, r.output
    assert yaml.safe_load((out / "config.yaml").read_text())["make"] == {"n": 2, "size": 5, "reject_every": 5, "salt": "z"}
    r = cli("run", toy, "--out", out, "--set", "make.salt")
    assert "expected STAGE.PARAM=VALUE" in str(r.exception)
    r = cli("run", toy, "--out", out, "--set", "nope.x=1")
    assert "no stage 'nope'" in str(r.exception)


def test_nested_default_and_run_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("TOY_OUT", raising=False)
    p = write(tmp_path, "stages:\n  make:\n    uses: tests.toy_stages:MakeStage\n    salt: ${TOY_OUT:-${RUN}/publish}\n")
    assert load_pipeline(p, variables={"RUN": "/r"}).stages[0].params["salt"] == "/r/publish"
    monkeypatch.setenv("TOY_OUT", "/elsewhere")
    assert load_pipeline(p, variables={"RUN": "/r"}).stages[0].params["salt"] == "/elsewhere"


def test_repair_command_repeats_the_set_options_and_runs(toy, tmp_path):
    """verify's repair command holds the run's --set options: run as printed, it redoes the damaged
    unit (without them the rerun would be refused as a changed configuration)."""
    import shlex

    from geobuild.pipeline.spec import rerun_options
    from geobuild.pipeline.verify import verify_run

    out = tmp_path / "run"
    assert cli("run", toy, "--out", out, "--set", "make.salt=z", "--set", "make.n=2").exit_code == 0
    assert yaml.safe_load((out / "pipeline.yaml").read_text())["rerun_options"] == ["--set", "make.salt=z", "--set", "make.n=2"]
    damaged = sorted((out / "make").glob("*.txt"))[0]
    damaged.unlink()
    problems = [f for f in verify_run(RunFolder(out)) if not f.ok]
    assert problems and problems[0].target.endswith(damaged.name)
    args = shlex.split(problems[0].repair)
    assert args[:2] == ["geobuild", "run"] and args[-4:] == ["--set", "make.salt=z", "--set", "make.n=2"]
    r = cli(*args[1:])
    assert r.exit_code == 0, r.output
    assert damaged.exists() and all(f.ok for f in verify_run(RunFolder(out)))
    assert cli(*args[1:-4]).exit_code != 0  # the same command without the options: another configuration
    assert rerun_options(["publish_upload.token=hf_x", "make.n=2"], "/g") == [
        "--set", "publish_upload.token=<redacted>", "--set", "make.n=2", "--gallery", "/g"]
