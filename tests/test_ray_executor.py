"""The Ray executor on a real local Ray instance (loopback): runs, crash retries, local->Ray resume."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ray")

from tests import toy_stages  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from geobuild.cli import app  # noqa: E402
from geobuild.executors import LocalExecutor  # noqa: E402
from geobuild.pipeline import load_pipeline, run_pipeline  # noqa: E402
from geobuild.runfolder import RunFolder  # noqa: E402
from geobuild.stage import run_stage  # noqa: E402

pytestmark = pytest.mark.ray

TOY = """
name: toy
stages:
  make:
    uses: tests.toy_stages:MakeStage
    n: 4
    size: 6
  upper:
    uses: tests.toy_stages:UpperStage
"""


@pytest.fixture(scope="module")
def ray_ex():
    """One local Ray instance for the whole module (startup is the slow part)."""
    from ray import cloudpickle

    from geobuild.executors.ray_executor import RayExecutor

    # the toy stages live in tests/, which Ray's workers cannot import: ship them by value
    cloudpickle.register_pickle_by_value(toy_stages)
    ex = RayExecutor(workers=2, retries=2)
    ex._ray()
    yield ex
    ex.close()
    cloudpickle.unregister_pickle_by_value(toy_stages)


@pytest.fixture()
def toy(tmp_path):
    p = tmp_path / "toy.yaml"
    p.write_text(TOY)
    return p


def tree(root: Path) -> dict[str, bytes]:
    """Every output, ledger and marker name of a run (markers' content holds a timestamp)."""
    out = {}
    for sub in ("make", "upper", "ledger"):
        for p in sorted((root / sub).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(root))] = p.read_bytes()
    for p in sorted((root / "done").rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = b"marker"
    return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A clean run with the in-process local executor: the reference outputs."""
    root = tmp_path_factory.mktemp("clean") / "run"
    p = root.parent / "toy.yaml"
    p.write_text(TOY)
    res = run_pipeline(load_pipeline(p), RunFolder(root), LocalExecutor(workers=1))
    assert res.ok
    return tree(root)


def test_ray_run_equals_local_run(ray_ex, toy, tmp_path, clean):
    run = RunFolder(tmp_path / "run")
    res = run_pipeline(load_pipeline(toy), run, ray_ex, executor_name="ray")
    assert res.ok and [s.done for s in res.stages] == [4, 4]
    assert tree(run.root) == clean
    assert res.stages[0].rejects == {"too_small": 8}


def test_worker_killed_mid_unit_is_retried(ray_ex, toy, tmp_path, clean):
    flags = tmp_path / "flags"
    pipe = load_pipeline(toy)
    pipe.stages[1].params.update(kill_once="00002", flag_dir=str(flags))
    run = RunFolder(tmp_path / "run")
    res = run_pipeline(pipe, run, ray_ex, executor_name="ray")
    # the first attempt of unit 00002 killed its own worker process mid-write ...
    assert (flags / "killed-00002").exists()
    # ... Ray retried it and the run finished with the same outputs as a clean run
    assert res.ok and res.stages[1].done == 4 and res.stages[1].failed == 0
    leftovers = list(run.path("upper").glob("*.tmp-*"))
    assert leftovers, "the killed attempt should have left its temporary file behind"
    assert {k: v for k, v in tree(run.root).items() if ".tmp-" not in k} == clean
    # a rerun sweeps the killed writer's temporary file and skips every unit
    res = run_pipeline(load_pipeline(toy), run, ray_ex, executor_name="ray")
    assert [s.skipped for s in res.stages] == [4, 4] and not list(run.path("upper").glob("*.tmp-*"))
    assert tree(run.root) == clean


def test_exception_retried_then_reported(ray_ex, toy, tmp_path):
    pipe = load_pipeline(toy)
    pipe.stages[1].params.update(fail="00001")
    run = RunFolder(tmp_path / "run")
    with pytest.raises(Exception, match="stage upper: 1 of 4 units failed .first: 00001: RuntimeError: toy failure in 00001"):
        run_pipeline(pipe, run, ray_ex, executor_name="ray")
    assert run.done_units("upper") == ["00000", "00002", "00003"]


def test_local_start_ray_finish_equals_clean_run(ray_ex, toy, tmp_path, clean):
    run = RunFolder(tmp_path / "run")
    pipe = load_pipeline(toy)
    make = pipe.stages[0].build()
    run_stage(make, run, LocalExecutor(workers=2), units=["00000", "00003"])
    assert run.done_units("make") == ["00000", "00003"]
    r = CliRunner().invoke(app, ["run", str(toy), "--out", str(run.root), "--executor", "ray", "--workers", "2"])
    assert r.exit_code == 0, r.output
    import json

    summary = json.loads(run.path("summary.json").read_text())
    assert summary["executor"] == "ray"
    assert [(s["done"], s["skipped"]) for s in summary["stages"]] == [(2, 2), (4, 0)]
    assert tree(run.root) == clean
