"""Ctrl-C (a real SIGINT) during a stage and during ``geobuild run``: one line, exit 130, the
finished units kept, no temporary file left, the run folder says "interrupted", and a rerun resumes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pyarrow.parquet as pq

from _fixtures_index import candidate_columns, write_candidates
from killpoint import REPO, run_killed
from geobuild.core.runfolder import RunFolder

INTERRUPTED = "interrupted; rerun the same command to resume"


def geobuild(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geobuild", *map(str, args)], capture_output=True, text=True, cwd=REPO)


def test_sigint_during_a_stage(tmp_path):
    units = [f"{i:05d}" for i in range(4)]
    clean, hit = RunFolder(tmp_path / "clean"), RunFolder(tmp_path / "hit")
    for run in (clean, hit):
        for i, u in enumerate(units):
            write_candidates(run, u, candidate_columns(20, 5, seed=i, unit=u))
    assert geobuild("distances", "--run", clean.root).returncode == 0
    # Ctrl-C while unit 00002's output is being written
    r = run_killed(signal.SIGINT, "distances/00002.parquet", 1, ["distances", "--run", hit.root])
    assert r.stderr.strip().splitlines()[-1] == INTERRUPTED and "Traceback" not in r.stderr
    assert hit.done_units("distances") == units[:2]
    assert not hit.path("distances", "00002.parquet").exists()
    assert not list(hit.root.rglob("*.tmp-*"))  # the interrupted write cleaned up after itself
    again = geobuild("distances", "--run", hit.root)
    assert again.returncode == 0 and "2 units done, 2 skipped" in again.stderr, again.stderr
    for u in units:
        assert pq.read_table(hit.path("distances", f"{u}.parquet")).equals(pq.read_table(clean.path("distances", f"{u}.parquet")))


TOY = """
name: toy
stages:
  make:
    uses: tests.toy_stages:MakeStage
    n: 3
  upper:
    uses: tests.toy_stages:UpperStage
"""


def test_sigint_during_geobuild_run_is_recorded_as_interrupted(tmp_path):
    pipe = tmp_path / "toy.yaml"
    pipe.write_text(TOY)
    out = tmp_path / "run"
    # Ctrl-C while stage upper writes unit 00001
    r = run_killed(signal.SIGINT, "upper/00001.txt", 1, ["run", pipe, "--out", out])
    assert r.stderr.strip().splitlines()[-1] == INTERRUPTED and "Traceback" not in r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["ok"]
    make, upper = summary["stages"]
    assert (make["stage"], make["status"], make["done"]) == ("make", "ok", 3)
    assert upper["stage"] == "upper" and upper["status"] == "interrupted"
    run = RunFolder(out)
    assert run.done_units("upper") == ["00000"] and not list(out.rglob("*.tmp-*"))
    # the rerun resumes: make skipped, upper finishes the two units left
    again = geobuild("run", pipe, "--out", out)
    assert again.returncode == 0, again.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and [(s["status"], s["done"], s["skipped"]) for s in summary["stages"]] == [("ok", 0, 3), ("ok", 2, 1)]
    assert run.path("upper", "00001.txt").read_text().split() == ["00001-1:A", "00001-2:A", "00001-3:A", "00001-4:A"]
