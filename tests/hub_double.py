"""A test double of the Hugging Face Hub's HTTP API on 127.0.0.1 (the real Hub is unreachable here).

It implements what ``huggingface_hub.HfApi`` calls for ``create_repo``, ``get_paths_info`` and
``create_commit`` over the plain LFS protocol (``HF_HUB_DISABLE_XET=1``): repo creation, YAML
validation, preupload, the LFS batch API, LFS PUT + verify, the NDJSON commit endpoint and
paths-info. It checks the bearer token on every API call, keeps file contents per repository,
records every commit, and can fail or drop chosen commit attempts to test resuming.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

LFS_SUFFIXES = (".parquet", ".tar", ".png")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    lfs_paths: set[str] = field(default_factory=set)
    commits: list[list[str]] = field(default_factory=list)


class HubDouble:
    """Start with ``with HubDouble(token) as hub:``; ``hub.url`` is the endpoint."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.commit_attempts = 0
        self.fail_commits: set[int] = set()  # commit attempt numbers answered with HTTP 500
        self.drop_commits: set[int] = set()  # commit attempt numbers whose connection is closed unanswered
        self.commit_status: dict[int, int] = {}  # commit attempt number -> HTTP error status answered (403, 429 ...)
        self.lose_replies: set[int] = set()  # commit attempt numbers applied, then closed unanswered (reply lost)
        self.received: list[tuple[str, str]] = []  # (repo, path) per committed file, in order
        self.unauthorized = 0
        self.unauthorized_paths: list[str] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> "HubDouble":
        double = self

        class Handler(_Handler):
            hub = double

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    hub: HubDouble
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    # -- helpers ------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                out += self.rfile.read(size)
                self.rfile.readline()
            return bytes(out)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, obj=None, headers: dict[str, str] | None = None) -> None:
        data = b"" if obj is None else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {self.hub.token}":
            return True
        self.hub.unauthorized += 1
        self.hub.unauthorized_paths.append(f"{self.command} {self.path} {self.headers.get('Authorization', '')[:12]}")
        self._send(401, {"error": "Invalid credentials in Authorization header"}, {"X-Error-Code": "Unauthorized"})
        return False

    @staticmethod
    def _repo_path(parts: list[str]) -> tuple[str, str, list[str]]:
        # ['api', 'datasets', org, name, action, *rest]
        return f"{parts[2]}/{parts[3]}", parts[4], parts[5:]

    # -- routes -------------------------------------------------------------------------------
    def do_GET(self) -> None:
        body = self._body()  # noqa: F841 - drain
        parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
        if parts[:2] == ["api", "agent-harnesses"]:  # public, unauthenticated; not part of uploading
            self._send(404, {"error": "not implemented by the double"})
            return
        if not self._authorized():
            return
        if parts[:2] == ["api", "datasets"] and len(parts) >= 5 and parts[4] == "revision":
            repo_id = f"{parts[2]}/{parts[3]}"
            repo = self.hub.repos.get(repo_id)
            if repo is None:
                self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return
            sha = hashlib.sha1(json.dumps(repo.commits).encode()).hexdigest()
            self._send(200, {"id": repo_id, "sha": sha, "private": repo.private, "siblings": [{"rfilename": p} for p in sorted(repo.files)]})
            return
        self._send(404, {"error": f"no route GET {self.path}"})

    def do_PUT(self) -> None:
        parts = urlparse(self.path).path.strip("/").split("/")
        data = self._body()
        if parts[0] == "lfs-upload":
            oid = parts[1]
            if hashlib.sha256(data).hexdigest() != oid:
                self._send(400, {"error": "sha256 mismatch"})
                return
            with self.hub.lock:
                self.hub.lfs[oid] = data
            self._send(200, {})
            return
        self._send(404, {"error": f"no route PUT {self.path}"})

    def do_POST(self) -> None:
        url = urlparse(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        data = self._body()
        hub = self.hub
        if parts[0] == "lfs-verify":
            obj = json.loads(data)
            self._send(200 if obj["oid"] in hub.lfs else 404, {})
            return
        if not self._authorized():
            return
        if parts == ["api", "repos", "create"]:
            obj = json.loads(data)
            repo_id = f"{obj['organization']}/{obj['name']}" if obj.get("organization") else obj["name"]
            assert obj.get("type") == "dataset", obj
            with hub.lock:
                if repo_id in hub.repos:
                    self._send(409, {"error": "You already created this dataset repo", "url": f"{hub.url}/datasets/{repo_id}"})
                    return
                hub.repos[repo_id] = Repo(private=obj.get("visibility") == "private" or bool(obj.get("private")))
            self._send(200, {"url": f"{hub.url}/datasets/{repo_id}", "name": repo_id})
            return
        if parts == ["api", "validate-yaml"]:
            self._send(200, {"errors": [], "warnings": []})
            return
        if len(parts) >= 5 and parts[:2] == ["api", "datasets"]:
            repo_id, action, _rest = self._repo_path(parts)
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return
            if action == "preupload":
                files = json.loads(data)["files"]
                self._send(200, {"files": [{"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular",
                                            "shouldIgnore": False} for f in files]})
                return
            if action == "paths-info":
                form = parse_qs(data.decode())
                out = []
                for p in form.get("paths", []):
                    if p in repo.files:
                        content = repo.files[p]
                        item = {"type": "file", "path": p, "size": len(content), "oid": git_blob_sha1(content)}
                        if p in repo.lfs_paths:
                            item["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134}
                        out.append(item)
                self._send(200, out)
                return
            if action == "commit":
                return self._commit(repo_id, repo, data)
        if parts[0] == "datasets" and parts[-3:] == ["lfs", "objects", "batch"]:
            obj = json.loads(data)
            objects = []
            for o in obj["objects"]:
                item = {"oid": o["oid"], "size": o["size"], "authenticated": True}
                if o["oid"] not in hub.lfs:
                    item["actions"] = {"upload": {"href": f"{hub.url}/lfs-upload/{o['oid']}"},
                                       "verify": {"href": f"{hub.url}/lfs-verify"}}
                objects.append(item)
            self._send(200, {"transfer": "basic", "objects": objects})
            return
        self._send(404, {"error": f"no route POST {self.path}"})

    def _commit(self, repo_id: str, repo: Repo, data: bytes) -> None:
        hub = self.hub
        with hub.lock:
            hub.commit_attempts += 1
            attempt = hub.commit_attempts
        if attempt in hub.drop_commits:
            self.close_connection = True
            self.connection.close()
            return
        if attempt in hub.fail_commits:
            self._send(500, {"error": "Internal Error - We're working hard to fix this as soon as possible!"})
            return
        if attempt in hub.commit_status:
            status = hub.commit_status[attempt]
            errors = {401: "Invalid credentials in Authorization header", 403: "You don't have the rights to create a commit in this repository",
                      429: "You have exceeded our hourly quotas for action: commit"}
            self._send(status, {"error": errors.get(status, "error")}, {"Retry-After": "0"} if status == 429 else None)
            return
        lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        changes: dict[str, tuple[bytes, bool]] = {}
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file":
                changes[value["path"]] = (base64.b64decode(value["content"]), False)
            elif key == "lfsFile":
                if value["oid"] not in hub.lfs:
                    self._send(400, {"error": f"LFS object {value['oid']} was not uploaded"})
                    return
                changes[value["path"]] = (hub.lfs[value["oid"]], True)
        with hub.lock:
            for path, (content, is_lfs) in changes.items():
                repo.files[path] = content
                (repo.lfs_paths.add if is_lfs else repo.lfs_paths.discard)(path)
                hub.received.append((repo_id, path))
            repo.commits.append(sorted(changes))
        if attempt in hub.lose_replies:  # the commit landed, its reply never arrives
            self.close_connection = True
            self.connection.close()
            return
        oid = hashlib.sha1(f"{repo_id}:{len(repo.commits)}".encode()).hexdigest()
        self._send(200, {"commitUrl": f"{hub.url}/datasets/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None})
