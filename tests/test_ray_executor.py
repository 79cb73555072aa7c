"""The Ray executor on a real local Ray instance (loopback): runs, crash and exception retries,
local<->Ray resume, joining an existing cluster (``ray start --head`` on 127.0.0.1); and the GPU
requests of the GPU stages (a unit test of the option logic, with a fake cluster)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from tests import toy_stages  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from geobuild.cli import app
from geobuild.core.executors import LocalExecutor
from geobuild.pipeline.run import run_pipeline
from geobuild.pipeline.spec import load_pipeline
from geobuild.core.runfolder import RunFolder
from geobuild.core.runner import run_stage

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

    from geobuild.core.executors.ray_executor import RayExecutor

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
    assert (flags / "killed-00002").exists() and toy_stages.attempts(flags, "00002") == 2
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
    attempts_dir = tmp_path / "flags"
    pipe = load_pipeline(toy)
    pipe.stages[1].params.update(fail="00001,00002:1", flag_dir=str(attempts_dir))
    run = RunFolder(tmp_path / "run")
    with pytest.raises(Exception, match="stage upper: 1 of 4 units failed .first: 00001: RuntimeError: toy failure in 00001"):
        run_pipeline(pipe, run, ray_ex, executor_name="ray")
    # the always-failing unit was tried 1 + retries times, then reported; the unit that failed
    # once was retried and finished; the others ran once
    counts = {u: toy_stages.attempts(attempts_dir, u) for u in ("00000", "00001", "00002", "00003")}
    assert counts == {"00000": 1, "00001": ray_ex.retries + 1, "00002": 2, "00003": 1}
    assert ray_ex.retries == 2
    assert run.done_units("upper") == ["00000", "00002", "00003"]


def test_local_instance_is_on_loopback(ray_ex):
    import ray

    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]] == ["127.0.0.1"]
    where = ray.remote(lambda: ray.util.get_node_ip_address())
    assert ray.get(where.remote()) == "127.0.0.1"
    session = ray._private.worker._global_node.get_session_dir_path()
    listening = _listening(_processes_of(Path(session)))
    assert listening and listening <= LOOPBACK, listening


def test_local_start_ray_finish_equals_clean_run(ray_ex, toy, tmp_path, clean):
    run = RunFolder(tmp_path / "run")
    pipe = load_pipeline(toy)
    make = pipe.stages[0].build()
    run_stage(make, run, LocalExecutor(workers=2), units=["00000", "00003"])
    assert run.done_units("make") == ["00000", "00003"]
    r = CliRunner().invoke(app, ["run", str(toy), "--out", str(run.root), "--executor", "ray", "--workers", "2"])
    assert r.exit_code == 0, r.output
    summary = json.loads(run.path("summary.json").read_text())
    assert summary["executor"] == "ray"
    assert [(s["done"], s["skipped"]) for s in summary["stages"]] == [(2, 2), (4, 0)]
    assert tree(run.root) == clean


def test_ray_start_local_finish_equals_clean_run(ray_ex, toy, tmp_path, clean):
    run = RunFolder(tmp_path / "run")
    pipe = load_pipeline(toy)
    run_stage(pipe.stages[0].build(), run, ray_ex, units=["00001", "00002"])
    assert run.done_units("make") == ["00001", "00002"]
    r = CliRunner().invoke(app, ["run", str(toy), "--out", str(run.root), "--executor", "local"])
    assert r.exit_code == 0, r.output
    summary = json.loads(run.path("summary.json").read_text())
    assert summary["executor"] == "local"
    assert [(s["done"], s["skipped"]) for s in summary["stages"]] == [(2, 2), (4, 0)]
    assert tree(run.root) == clean


# -- joining an existing cluster (--ray-address) ----------------------------------------------
REPO = Path(__file__).resolve().parents[1]


def _ray_cli() -> str | None:
    here = Path(sys.executable).with_name("ray")
    return str(here) if here.exists() else shutil.which("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_of(temp_dir: Path) -> set[int]:
    """Processes whose command line names ``temp_dir`` (every Ray daemon of that head), and their children."""
    procs: dict[int, tuple[int, str]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        procs[int(d)] = (ppid, cmd)
    found = {pid for pid, (_, cmd) in procs.items() if str(temp_dir) in cmd and pid != os.getpid()}
    grew = True
    while grew:
        kids = {pid for pid, (ppid, _) in procs.items() if ppid in found} - found
        found |= kids
        grew = bool(kids)
    return found


def _listening(pids: set[int]) -> set[str]:
    """The IPs on which ``pids`` listen for TCP connections (from /proc/net/tcp{,6})."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    ips = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] != "0A" or f[9] not in inodes:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(f[1].split(":")[0])
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # host-order words
            ips.add(socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, words))
    return ips


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _stop_head(temp_dir: Path, grace_s: float = 15.0, timeout_s: float = 180.0) -> None:
    """Stop exactly the cluster started with ``--temp-dir temp_dir`` (not ``ray stop``: that stops every
    cluster): SIGTERM its processes, SIGKILL those still there after ``grace_s``, and return once none is
    left (rescanning, so a daemon started meanwhile is stopped too)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        pids = {p for p in _processes_of(temp_dir) if _state(p) != "Z"}
        if not pids:
            return
        sig = signal.SIGTERM if time.monotonic() - t0 < grace_s else signal.SIGKILL
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


@pytest.mark.slow
def test_ray_address_joins_an_existing_cluster(toy, tmp_path, tmp_path_factory, clean):
    ray_cli = _ray_cli()
    if ray_cli is None:
        pytest.skip("the `ray` command is not installed")
    temp_dir = tmp_path_factory.mktemp("rh")  # short: Ray's unix socket paths live under it
    port = _free_port()
    env = dict(
        os.environ,
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # node IP 127.0.0.1 and every port bound to loopback
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="token",  # this cluster's own token, shared by head and driver only
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    env.pop("RAY_ADDRESS", None)
    head = [
        ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
        "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats",
        "--temp-dir", str(temp_dir), "--object-store-memory", str(128 * 1024**2),
    ]
    try:
        started = subprocess.run(head, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        out = re.sub(r"\x1b\[[0-9;]*m", "", started.stdout + started.stderr)
        assert started.returncode == 0, out
        assert re.search(r"Local node IP: 127\.0\.0\.1\b", out), out
        run = tmp_path / "run"
        cmd = [sys.executable, "-m", "geobuild", "run", str(toy), "--out", str(run), "--ray-address", f"127.0.0.1:{port}"]
        r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "joining the Ray cluster at 127.0.0.1:" in r.stdout + r.stderr
        summary = json.loads((run / "summary.json").read_text())
        assert summary["executor"] == "ray" and summary["ok"]
        assert [(s["done"], s["skipped"]) for s in summary["stages"]] == [(4, 0), (4, 0)]
        assert tree(run) == clean
        listening = _listening(_processes_of(temp_dir))
        assert listening and listening <= LOOPBACK, listening
    finally:
        _stop_head(temp_dir)
    assert not _processes_of(temp_dir), "the test cluster's processes outlived the test"


# -- GPU requests (unit test of the option logic; the cluster is a fake) -----------------------
class _FakeRay:
    def __init__(self, **resources):
        self.resources = resources

    def cluster_resources(self):
        return dict(self.resources)


def _gpu_stages(device: str) -> dict:
    from geobuild.stages.embed.config import EmbedConfig
    from geobuild.stages.embed.stage import EmbedStage
    from geobuild.stages.index.stage import IndexConfig, IndexStage
    from geobuild.stages.mine.stage import MineConfig, MineStage

    return {
        "embed": EmbedStage(EmbedConfig(device=device)),
        "index": IndexStage(IndexConfig(device=device)),
        "mine": MineStage(MineConfig(device=device)),
    }


def _num_gpus(device: str, **cluster) -> dict:
    from geobuild.core.executors.ray_executor import RayExecutor

    ex = RayExecutor(retries=1)
    return {name: ex._options(_FakeRay(**cluster), st).get("num_gpus", 0) for name, st in _gpu_stages(device).items()}


def test_gpu_stages_request_a_gpu_on_cuda():
    assert _num_gpus("cuda", GPU=1, CPU=8) == {"embed": 1, "index": 1, "mine": 1}
    assert _num_gpus("cuda:0", GPU=1, CPU=8) == {"embed": 1, "index": 1, "mine": 1}


def test_gpu_stages_request_no_gpu_on_cpu():
    assert _num_gpus("cpu", GPU=1, CPU=8) == {"embed": 0, "index": 0, "mine": 0}


def test_cuda_on_a_cluster_without_gpus_runs_on_cpu():
    assert _num_gpus("cuda", CPU=8) == {"embed": 0, "index": 0, "mine": 0}


def test_auto_requests_a_gpu_only_where_the_cluster_has_one():
    # decided by the cluster's GPUs, not by the driver's own devices
    assert _num_gpus("auto", GPU=2, CPU=8) == {"embed": 1, "index": 1, "mine": 1}
    assert _num_gpus("auto", CPU=8) == {"embed": 0, "index": 0, "mine": 0}


def test_options_pass_no_scheduling_hints_to_ray():
    from geobuild.core.executors.ray_executor import RayExecutor

    opts = RayExecutor(retries=3)._options(_FakeRay(GPU=1, CPU=8), _gpu_stages("auto")["mine"])
    assert opts == {"num_cpus": 1.0, "num_gpus": 1.0, "max_retries": 3, "retry_exceptions": False}
