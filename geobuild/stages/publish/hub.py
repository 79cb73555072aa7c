"""Upload staged repositories to the Hugging Face Hub, resumably.

Files are committed in batches (data first, then the card and manifest, so a repository shows its
card only once its data is complete). Before each batch the remote state is read
(``get_paths_info``): a file whose remote sha256 (LFS) or git blob id (regular file) matches the
local one is skipped, so an interrupted upload resumes where it stopped and a finished one uploads
nothing. Transient failures (connection errors, HTTP 429/5xx) are retried a bounded number of
times with exponential backoff. The token is passed to ``HfApi`` and never printed or written.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...core.errors import GeobuildError, require
from ...core.log import get_logger
from .manifest import MANIFEST, read_manifest, sha256_file

log = get_logger("publish.hub")

TRANSIENT_STATUS = {408, 409, 423, 425, 429, 500, 502, 503, 504}
LAST_FILES = ("README.md", MANIFEST)


def hub_token() -> str:
    """The token huggingface_hub would use (HF_TOKEN, or the saved login); fails in offline mode."""
    require("huggingface_hub", "hub")
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise GeobuildError("HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it, or stage only with --to DIR")
    token = get_token()
    if not token:
        raise GeobuildError("no Hugging Face token found; set HF_TOKEN (or run `hf auth login`) to upload with --hub")
    return token


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file's content (what the Hub reports for regular files)."""
    h = hashlib.sha1()
    h.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _status(exc: BaseException) -> int | None:
    resp = getattr(exc, "response", None)
    return getattr(resp, "status_code", None)


def is_transient(exc: BaseException) -> bool:
    """Connection-level errors and HTTP 429/5xx, anywhere in the exception's cause chain."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        status = _status(e)
        if status is not None:
            return status in TRANSIENT_STATUS
        name = type(e).__name__
        if isinstance(e, (ConnectionError, TimeoutError)) or name in {
            "ConnectError", "ReadError", "WriteError", "RemoteProtocolError", "ReadTimeout", "WriteTimeout",
            "ConnectTimeout", "PoolTimeout", "NetworkError", "TransportError", "ProtocolError", "ChunkedEncodingError",
        }:
            return True
        e = e.__cause__ or e.__context__
    return False


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


@dataclass
class UploadSettings:
    repo_id: str
    private: bool = False
    endpoint: str | None = None
    batch_files: int = 64
    batch_bytes: int = 2 << 30
    retries: int = 4
    backoff_s: float = 2.0


class Uploader:
    """Upload one staged folder (with its manifest) to one dataset repository."""

    def __init__(self, settings: UploadSettings, token: str) -> None:
        require("huggingface_hub", "hub")
        from huggingface_hub import HfApi

        self.s = settings
        self._token = token
        self.api = HfApi(endpoint=settings.endpoint, token=token)

    # -- retries ------------------------------------------------------------------------------
    def _call(self, what: str, fn, *args, **kwargs):
        for attempt in range(self.s.retries + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - classified below
                if attempt < self.s.retries and is_transient(exc):
                    wait = self.s.backoff_s * (2**attempt)
                    log.warning("%s: %s (%s); retry %d/%d in %.1fs", self.s.repo_id, what, type(exc).__name__,
                                attempt + 1, self.s.retries, wait)
                    time.sleep(wait)
                    continue
                raise self._fatal(what, exc) from None
        raise AssertionError("unreachable")

    def _fatal(self, what: str, exc: BaseException) -> GeobuildError:
        text = (str(exc).strip().splitlines() or [""])[0]
        return GeobuildError(
            _scrub(f"upload to {self.s.repo_id} failed while {what}: {type(exc).__name__}: {text}"[:400], self._token)
            + "; rerun the same command to resume"
        )

    # -- remote state -------------------------------------------------------------------------
    def remote_state(self, paths: list[str]) -> dict[str, tuple[str | None, str | None]]:
        """path -> (lfs sha256, git blob id) for the given paths that exist remotely."""
        from huggingface_hub import RepoFile

        state: dict[str, tuple[str | None, str | None]] = {}
        for i in range(0, len(paths), 500):
            chunk = paths[i : i + 500]
            infos = self._call("listing remote files", self.api.get_paths_info, self.s.repo_id, chunk, repo_type="dataset")
            for info in infos:
                if isinstance(info, RepoFile):
                    state[info.path] = (info.lfs.sha256 if info.lfs else None, info.blob_id)
        return state

    @staticmethod
    def _same(remote: tuple[str | None, str | None] | None, local_sha256: str, path: Path) -> bool:
        if remote is None:
            return False
        lfs_sha, blob = remote
        if lfs_sha is not None:
            return lfs_sha == local_sha256
        return blob == git_blob_sha1(path)

    # -- upload -------------------------------------------------------------------------------
    def upload(self, folder: Path) -> dict[str, Any]:
        """Create the repository if needed and commit every file not already there, in batches."""
        from huggingface_hub import CommitOperationAdd

        folder = Path(folder)
        manifest = read_manifest(folder)
        sha = {**{p: v["sha256"] for p, v in manifest["files"].items()}, MANIFEST: None}
        order = sorted(p for p in sha if p not in LAST_FILES) + [p for p in LAST_FILES if p in sha]
        self._call("creating the repository", self.api.create_repo, self.s.repo_id, repo_type="dataset",
                   private=self.s.private, exist_ok=True)
        remote = self.remote_state(order)
        local_sha = {p: (sha[p] or _sha256(folder / p)) for p in order}
        todo = [p for p in order if not self._same(remote.get(p), local_sha[p], folder / p)]
        stats = {"files": len(order), "skipped": len(order) - len(todo), "uploaded": 0, "bytes": 0, "commits": 0}
        if not todo:
            log.info("%s: all %d files already uploaded", self.s.repo_id, len(order))
            return stats
        batches = _batches(todo, folder, self.s.batch_files, self.s.batch_bytes)
        for bi, batch in enumerate(batches, 1):
            for attempt in range(self.s.retries + 1):
                if attempt:  # a failed commit may still have landed: look again before resending
                    now = self.remote_state(batch)
                    batch = [p for p in batch if not self._same(now.get(p), local_sha[p], folder / p)]
                    if not batch:
                        break
                ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(folder / p)) for p in batch]
                try:
                    self.api.create_commit(self.s.repo_id, operations=ops, repo_type="dataset",
                                           commit_message=f"geobuild publish: {len(batch)} files (batch {bi}/{len(batches)})")
                    stats["uploaded"] += len(batch)
                    stats["bytes"] += sum((folder / p).stat().st_size for p in batch)
                    stats["commits"] += 1
                    break
                except Exception as exc:  # noqa: BLE001 - classified below
                    if attempt < self.s.retries and is_transient(exc):
                        wait = self.s.backoff_s * (2**attempt)
                        log.warning("%s: commit %d/%d failed (%s); retry %d/%d in %.1fs", self.s.repo_id, bi,
                                    len(batches), type(exc).__name__, attempt + 1, self.s.retries, wait)
                        time.sleep(wait)
                        continue
                    raise self._fatal(f"committing batch {bi}/{len(batches)}", exc) from None
            log.info("%s: batch %d/%d committed", self.s.repo_id, bi, len(batches))
        return stats


def _sha256(path: Path) -> str:

    return sha256_file(path)


def _batches(paths: list[str], folder: Path, max_files: int, max_bytes: int) -> list[list[str]]:
    """Consecutive batches of at most ``max_files`` files and about ``max_bytes`` bytes; the last
    files (card, manifest) always travel in the final batch."""
    body = [p for p in paths if p not in LAST_FILES]
    tail = [p for p in paths if p in LAST_FILES]
    out: list[list[str]] = []
    cur: list[str] = []
    size = 0
    for p in body:
        n = (folder / p).stat().st_size
        if cur and (len(cur) >= max_files or size + n > max_bytes):
            out.append(cur)
            cur, size = [], 0
        cur.append(p)
        size += n
    if cur:
        out.append(cur)
    if tail:
        if out and len(out[-1]) + len(tail) <= max_files:
            out[-1] += tail
        else:
            out.append(tail)
    return out
