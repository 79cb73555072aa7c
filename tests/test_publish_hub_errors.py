"""publish --hub against the Hub double when the Hub says no: a bad token (401), no write access
(403), rate limiting (429), and a commit that lands but whose reply is lost."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_double import HubDouble  # noqa: E402
from publish_helpers import make_run  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TOKEN = "hf_TESTtoken0123456789secretXYZ"
REPO_ID = "geo/errs"


def publish(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_XET": "1", "GEOBUILD_NO_PROGRESS": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": str(REPO), **extra})
    return subprocess.run([sys.executable, "-m", "geobuild", "publish", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def staged(tmp_path) -> list[str]:
    """A run staged to a folder (dataset only); returns the publish arguments for uploading it."""
    run = make_run(tmp_path / "run", per_shard=6, drop_distance=False, missing_photo=False)
    args = ["--run", str(run.root), "--to", str(tmp_path / "out"), "--no-images", "--rows-per-file", "4",
            "--batch-files", "4", "--retries", "2", "--backoff", "0.01"]
    proc = publish(tmp_path, *args, HF_HUB_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr
    return args


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and TOKEN not in proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr
    return errors[0]


def test_rejected_token_and_missing_write_access_fail_once_with_one_line(tmp_path, staged):
    with HubDouble(TOKEN) as hub:
        # 401: the Hub does not know the token; not retried, nothing created
        line = one_error_line(publish(tmp_path, *staged, "--hub", REPO_ID, HF_TOKEN="hf_wrong_token_abcdef", HF_ENDPOINT=hub.url))
        assert f"upload to {REPO_ID} failed while creating the repository" in line and "401" in line, line
        assert "rerun the same command" in line and "hf_wrong_token_abcdef" not in line
        creates = [p for p in hub.unauthorized_paths if p.startswith("POST /api/repos/create")]
        assert len(creates) == 1 and hub.repos == {} and hub.commit_attempts == 0, hub.unauthorized_paths
        # 403: the token may read but not write; the refused commit is not retried
        hub.commit_status = {1: 403}
        line = one_error_line(publish(tmp_path, *staged, "--hub", REPO_ID, HF_TOKEN=TOKEN, HF_ENDPOINT=hub.url))
        assert "committing batch 1/" in line and "403" in line, line
        assert hub.commit_attempts == 1 and hub.received == []


def test_rate_limit_and_lost_commit_reply_are_retried_and_every_file_lands_once(tmp_path, staged):
    with HubDouble(TOKEN) as hub:
        hub.commit_status = {1: 429}  # the first commit is rate-limited: retried
        hub.lose_replies = {3}  # the second batch lands, but its reply is lost: not sent again
        proc = publish(tmp_path, *staged, "--hub", REPO_ID, HF_TOKEN=TOKEN, HF_ENDPOINT=hub.url)
        assert proc.returncode == 0, proc.stderr
        folder = tmp_path / "out" / "dataset"
        local = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        remote = hub.repos[REPO_ID].files
        assert set(remote) == set(local)
        for rel, data in local.items():
            assert hashlib.sha256(remote[rel]).hexdigest() == hashlib.sha256(data).hexdigest(), rel
        sent = [p for _, p in hub.received]
        assert sorted(sent) == sorted(local), "every file exactly once"
        # 7 files in two batches of at most 4: the 429, then batch 1, then batch 2 (reply lost, found on the Hub)
        assert len(local) == 7 and len(hub.repos[REPO_ID].commits) == 2 and hub.commit_attempts == 3
        assert hub.unauthorized == 0
