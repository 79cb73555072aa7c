"""Checked completion markers, `geobuild verify`, movable runs and stale temporaries, on small
stages (the real sample is in test_integrity_sample.py)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from geobuild.core.markers import HASH, file_hash, read_marker
from geobuild.core.runfolder import RunFolder, atomic_path, content_id, remove_stale_temps
from geobuild.core.runner import run_stage
from geobuild.core.shareable import shareable
from geobuild.core.stage import Accounting, Stage, UnitResult
from geobuild.pipeline.verify import verify_run

REPO = Path(__file__).resolve().parent.parent


@dataclass
class WriteStage(Stage):
    """Unit u writes out/<u>.txt (its name and ``salt``) and, for u == 00000, a folder out/dir/."""

    n: int = 3
    salt: str = "a"
    name = "write"

    def units(self, run):
        return [f"{i:05d}" for i in range(self.n)]

    def config(self):
        return {"n": self.n}

    def process(self, run, unit):
        with atomic_path(run.path("out", f"{unit}.txt")) as tmp:
            tmp.write_text(f"{unit} {self.salt}\n")
        if unit == "00000":
            shutil.rmtree(run.path("out", "dir"), ignore_errors=True)
            with atomic_path(run.path("out", "dir")) as tmp:
                tmp.mkdir()
                (tmp / "a.txt").write_text("a")
                (tmp / "b.txt").write_text("bb")
        return UnitResult(stats={"in": 2, "out": 1, "rej": 1}, ledger=[
            {"key": unit, "id": unit, "status": "ok", "error_message": None},
            {"key": f"{unit}x", "id": f"{unit}x", "status": "too_small", "error_message": "toy"}])


@dataclass
class ReadStage(Stage):
    """One unit per ``write`` unit: copies out/<u>.txt upper-cased to up/<u>.txt."""

    name = "read"
    accounting = Accounting("in", ("out",), "rej")

    def units(self, run):
        return run.done_units("write")

    def config(self):
        return {}

    def depends_on(self, run, unit):
        return [("write", unit)]

    def process(self, run, unit):
        with atomic_path(run.path("up", f"{unit}.txt")) as tmp:
            tmp.write_text(run.path("out", f"{unit}.txt").read_text().upper())
        return UnitResult(stats={"in": 1, "out": 1, "rej": 0})


def _both(run):
    a = run_stage(WriteStage(), run)
    b = run_stage(ReadStage(), run)
    return a, b


def test_marker_records_every_output_relative_with_size_and_hash(tmp_path):
    run = RunFolder(tmp_path / "run")
    _both(run)
    m = read_marker(run, "write", "00000")
    assert [o["path"] for o in m.outputs] == ["out/00000.txt", "out/dir/a.txt", "out/dir/b.txt"]
    for o in m.outputs:
        p = run.path(o["path"])
        assert o["size"] == p.stat().st_size and o[HASH] == file_hash(p)
    assert read_marker(run, "read", "00001").inputs == {"write/00001": read_marker(run, "write", "00001").digest}
    assert str(tmp_path) not in run.marker_path("write", "00000").read_text()


def test_missing_or_resized_output_is_redone_with_one_log_line(tmp_path, caplog):
    run = RunFolder(tmp_path / "run")
    _both(run)
    run.path("out", "00001.txt").unlink()
    run.path("out", "dir", "b.txt").write_text("changed size")
    with caplog.at_level(logging.WARNING, logger="geobuild"):
        s = run_stage(WriteStage(), run)
    assert s.done == ["00000", "00001"] and s.skipped == ["00002"]
    lines = [r.getMessage() for r in caplog.records if "redoing" in r.getMessage()]
    assert lines == ["write: redoing unit 00000: out/dir/b.txt has 12 bytes, 2 recorded",
                     "write: redoing unit 00001: out/00001.txt is missing"]
    assert run.path("out", "dir", "b.txt").read_text() == "bb"
    run.marker_path("write", "00002").write_text('{"unit": "000')  # damaged marker: redone
    assert run_stage(WriteStage(), run).done == ["00002"]
    # same bytes again: the downstream units are not stale
    assert run_stage(ReadStage(), run).done == []


def test_downstream_unit_is_stale_when_its_input_was_redone_with_other_bytes(tmp_path, caplog):
    run = RunFolder(tmp_path / "run")
    _both(run)
    run.path("out", "00002.txt").unlink()
    run_stage(WriteStage(salt="b"), run, overwrite=True)  # same config: only the missing unit is redone
    with caplog.at_level(logging.WARNING, logger="geobuild"):
        s = run_stage(ReadStage(), run)
    assert s.done == ["00002"]
    assert run.path("up", "00002.txt").read_text() == "00002 B\n"
    assert any("read: redoing unit 00002: its input write/00002 was redone" in r.getMessage() for r in caplog.records)


def test_old_style_markers_are_still_done(tmp_path):
    run = RunFolder(tmp_path / "run")
    _both(run)
    for stage in ("write", "read"):
        for u in run.done_units(stage):
            run.marker_path(stage, u).write_text(json.dumps({"unit": u, "finished": 1.0}) + "\n")
    run.path("out", "00001.txt").unlink()  # not recorded: cannot be noticed, as before
    a, b = _both(run)
    assert a.done == [] and b.done == []
    assert all(f.ok for f in verify_run(run))


def test_verify_reports_each_damage_and_the_repair(tmp_path):
    run = RunFolder(tmp_path / "run")
    _both(run)
    assert all(f.ok for f in verify_run(run, deep=True))
    run.path("out", "00000.txt").unlink()
    run.path("up", "00001.txt").write_text("SAME SIZE!\n"[: run.path("up", "00001.txt").stat().st_size])
    run.stats_path("read", "00002").write_text(json.dumps({"in": 3, "out": 1, "rej": 0}))
    (run.path("out") / "x.txt.tmp-999999999-abcd").write_text("left over")
    problems = [f for f in verify_run(run, classes={"read": ReadStage}) if not f.ok]
    assert {(f.stage, f.check, f.target) for f in problems} == {
        ("write", "outputs", "out/00000.txt"), ("read", "accounting", "read/00002"), ("out", "temporary", "out/x.txt.tmp-999999999-abcd")}
    assert all(f.repair for f in problems)
    deep = {(f.stage, f.target) for f in verify_run(run, deep=True) if not f.ok}
    assert ("read", "up/00001.txt") in deep  # same size, other bytes: only --deep sees it


def test_verify_command_exit_status(tmp_path):
    run = RunFolder(tmp_path / "run")
    _both(run)
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    ok = subprocess.run([sys.executable, "-m", "geobuild", "verify", str(run.root), "--deep"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "no problem found" in ok.stderr
    run.path("out", "00002.txt").unlink()
    bad = subprocess.run([sys.executable, "-m", "geobuild", "verify", str(run.root)], capture_output=True, text=True, env=env)
    assert bad.returncode == 1
    assert "out/00002.txt is missing" in bad.stdout and "1 problem(s)" in bad.stderr
    none = subprocess.run([sys.executable, "-m", "geobuild", "verify", str(tmp_path / "nope")], capture_output=True, text=True, env=env)
    assert none.returncode == 2 and none.stderr.startswith("error: ") and "Traceback" not in none.stderr


def test_stale_temporaries_files_and_folders_are_removed_unless_their_writer_runs(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    d = tmp_path / "publish"
    (d / f"dataset.tmp-{dead}-abcd1234" / "candidates").mkdir(parents=True)
    (d / f"dataset.tmp-{dead}-abcd1234" / "candidates" / "x.parquet").write_text("x")
    (d / f"README.md.tmp-{dead}-00000000").write_text("x")
    live = d / f"images.tmp-{os.getppid()}-ffffffff"
    live.mkdir()
    assert remove_stale_temps(d) == 2
    assert sorted(p.name for p in d.iterdir()) == [live.name]


def test_stage_run_removes_temporaries_of_a_killed_run(tmp_path):
    run = RunFolder(tmp_path / "run")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    left = run.path("out", f"dir.tmp-{dead}-12345678")
    left.mkdir(parents=True)
    (left / "a.txt").write_text("a")
    (run.path("done", "write")).mkdir(parents=True)
    run.path("done", "write", f"00000.tmp-{dead}-12345678").write_text("{}")
    assert run.done_units("write") == []
    run_stage(WriteStage(), run)
    assert not list(run.root.rglob("*.tmp-*"))


def test_paths_inside_the_run_are_recorded_relative_and_a_moved_run_resumes(tmp_path):
    run = RunFolder(tmp_path / "run")
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    cfg = {"to": str(run.root / "publish"), "same": str(run.root), "input": str(data)}
    run.check_config("s", cfg, inputs={"input": str(data)})
    assert run.read_config()["s"] == {"to": "publish", "same": ".", "input": str(data)}
    _both(run)
    moved = tmp_path / "elsewhere" / "run2"
    moved.parent.mkdir()
    run.root.rename(moved)
    data.rename(tmp_path / "renamed.csv")
    run2 = RunFolder(moved)
    cfg2 = {"to": str(moved / "publish"), "same": str(moved), "input": str(tmp_path / "renamed.csv")}
    assert run2.check_config("s", cfg2, inputs={"input": cfg2["input"]}) is False
    a, b = _both(run2)
    assert a.done == [] and b.done == []
    # another content under the same kind of path is a change
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,3\n")
    with pytest.raises(Exception, match="different 's' configuration"):
        run2.check_config("s", {**cfg2, "input": str(other)}, inputs={"input": str(other)})


def test_content_id_of_files_and_folders(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"x" * 1000)
    b.write_bytes(b"x" * 1000)
    assert content_id(a) == content_id(b)
    b.write_bytes(b"x" * 999 + b"y")
    assert content_id(a) != content_id(b)
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    (tmp_path / "d1" / "p.jpg").write_bytes(b"1")
    (tmp_path / "d2" / "p.jpg").write_bytes(b"2")
    assert content_id(tmp_path / "d1") == content_id(tmp_path / "d2")  # names and sizes
    assert content_id(tmp_path / "missing") is None


def test_shareable_config_has_no_local_path_secret_or_timing():
    cfg = {"shard": {"images": "/home/alice/data/im2gps3ktest.zip", "metadata": "~/x/meta.csv", "format": "im2gps3k"},
           "publish": {"to": "publish", "hf_token": "hf_abc", "build_seconds": 3.2}}
    out = shareable(cfg)
    assert out == {"shard": {"images": "im2gps3ktest.zip", "metadata": "meta.csv", "format": "im2gps3k"},
                   "publish": {"to": "publish", "hf_token": "<redacted>"}}


def test_verify_reports_another_schema_version_and_an_unreadable_tar(tmp_path):
    import pyarrow.parquet as pq

    from geobuild.artifacts.shards import ShardWriter
    from geobuild.core.schemas import META_VERSION, arrow_schema

    run = RunFolder(tmp_path / "run")
    _both(run)
    schema = arrow_schema("candidates")
    run.path("candidates").mkdir()
    pq.write_table(schema.empty_table(), run.path("candidates", "00000.parquet"))
    pq.write_table(schema.with_metadata({**schema.metadata, META_VERSION: b"99"}).empty_table(), run.path("candidates", "00001.parquet"))
    with ShardWriter(run.shard_path("00000")) as w:
        w.write("k1", {"jpg": b"\xff" * 5000, "json": b"{}"})
    bad = [(f.stage, f.check, f.target) for f in verify_run(run) if not f.ok]
    assert bad == [("mine", "schema", "candidates/00001.parquet")]
    with open(run.shard_path("00000"), "r+b") as f:
        f.truncate(3000)
    bad = [(f.stage, f.check, f.target) for f in verify_run(run) if not f.ok]
    assert bad == [("mine", "schema", "candidates/00001.parquet"), ("shard", "tar", "shards/00000.tar")]


def test_a_run_recorded_with_absolute_paths_and_then_moved_resumes(tmp_path):
    """Runs made before paths were recorded relative hold their old folder in config.yaml; moved,
    they resume: summary.json names where the run was."""
    import yaml

    root = tmp_path / "run"
    run = RunFolder(root)
    cfg = {"to": str(root / "publish"), "same": str(root)}
    run.check_config("s", cfg)
    run.path("config.yaml").write_text(yaml.safe_dump({"s": cfg}))  # as the old code recorded it
    run.write_json(run.path("summary.json"), {"run": str(root), "stages": []})
    _both(run)
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    root.rename(moved)
    run2 = RunFolder(moved)
    assert run2.previous_root() == root
    assert run2.check_config("s", {"to": str(moved / "publish"), "same": str(moved)}) is False
    assert run2.read_config()["s"] == {"to": "publish", "same": "."}
    a, b = _both(run2)
    assert a.done == [] and b.done == []
    with pytest.raises(Exception, match="different 's' configuration"):  # another folder is still a change
        run2.check_config("s", {"to": str(tmp_path / "publish"), "same": str(moved)})
