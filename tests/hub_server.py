"""A minimal Hugging Face Hub-compatible HTTP server for tests (standard library only, loopback only).

The PyPI package ``hf-local-hub`` (3.0.0) is only a Python CLI around a Go server binary that its wheel does not
ship, and ``olah`` is a read-only mirror; neither takes uploads here. This server implements the endpoints
``huggingface_hub`` 2.x and transformers use to create a repo, upload a commit, read repo metadata and download
files, with the Hub's status codes and headers:

* ``GET  /api/whoami-v2``                                          the token's user
* ``POST /api/repos/create``                                       (409 when it exists)
* ``POST /api/validate-yaml``                                      README metadata checks (see :func:`validate_card`)
* ``POST /api/models/{repo}/preupload/{rev}``                      every file is a "regular" (inline) upload
* ``POST /api/models/{repo}/commit/{rev}``                         NDJSON: header, base64 files, deletions
* ``GET  /api/models/{repo}[/revision/{rev}]``                     repo info with ``siblings``
* ``GET  /api/models/{repo}/tree/{rev}[/{path}]``, ``POST .../paths-info/{rev}``
* ``GET|HEAD /{repo}/resolve/{rev}/{path}``                        with ``X-Repo-Commit``, ``ETag``, and
  ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) on 404

Writes need ``Authorization: Bearer <token>`` with a known token (401 otherwise); private repos need it to be
read. Commits are atomic: a commit that fails leaves the repo at its previous revision. :meth:`LocalHub.fail`
makes an endpoint answer with an error, to test failures half-way through an upload.

```python
>>> hub = LocalHub().start()            # http://127.0.0.1:<free port>
>>> hub.url, hub.token
>>> hub.stop()
```

Run ``python tests/hub_server.py`` to serve one by hand (it prints the endpoint and a token).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

__all__ = ["LocalHub", "validate_card"]

DEFAULT_TOKEN = "hf_local_test_token"
DEFAULT_USER = "tester"
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")

# A subset of the Hub's licence identifiers and pipeline tags (https://huggingface.co/docs/hub/repositories-licenses).
KNOWN_LICENSES = {
    "apache-2.0", "mit", "openrail", "openrail++", "bigscience-openrail-m", "creativeml-openrail-m", "bigcode-openrail-m",
    "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "c-uda", "cc",
    "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0",
    "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0",
    "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl",
    "ecl-2.0", "epl-1.0", "epl-2.0", "eupl-1.1", "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl",
    "lgpl-2.1", "lgpl-3.0", "isc", "mpl-2.0", "odc-by", "odbl", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense",
    "zlib", "pddl", "llama2", "llama3", "llama3.1", "llama3.2", "gemma", "unknown", "other",
}
KNOWN_PIPELINE_TAGS = {
    "image-classification", "image-feature-extraction", "object-detection", "image-segmentation", "depth-estimation",
    "zero-shot-image-classification", "image-to-text", "text-classification", "feature-extraction", "fill-mask",
    "text-generation", "token-classification", "question-answering", "translation", "summarization",
}


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _split_front_matter(content: str) -> tuple[str | None, str]:
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, flags=re.S)
    if not match:
        return None, content
    return match.group(1), content[match.end():]


def validate_card(content: str) -> list[str]:
    """Errors in a README's YAML metadata, checked like the Hub checks the fields hf_sparsify writes.

    Checked: the block parses as a YAML mapping; ``license`` is a Hub licence id; ``tags``/``datasets`` are lists
    of strings; ``base_model`` is one or more repo ids; ``pipeline_tag`` is a known task; ``library_name`` is a
    string; ``model-index`` has a name and results with ``task.type``, ``dataset.type``/``name`` and numeric
    metric values with a ``type``.
    """
    errors: list[str] = []
    block, _ = _split_front_matter(content)
    if block is None:
        return errors
    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError as err:
        return [f"YAML metadata does not parse: {err}"]
    if data is None:
        return errors
    if not isinstance(data, dict):
        return ["YAML metadata must be a mapping"]
    license_ = data.get("license")
    if license_ is not None and (not isinstance(license_, str) or license_ not in KNOWN_LICENSES):
        errors.append(f'"license" must be one of the Hub licence identifiers, got {license_!r}')
    for key in ("tags", "datasets", "metrics", "language"):
        value = data.get(key)
        if value is not None and not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            errors.append(f'"{key}" must be a string or a list of strings')
    base = data.get("base_model")
    if base is not None:
        for item in base if isinstance(base, list) else [base]:
            if not isinstance(item, str) or not _REPO_ID.match(item):
                errors.append(f'"base_model" must be model repo ids, got {item!r}')
    if data.get("pipeline_tag") is not None and data["pipeline_tag"] not in KNOWN_PIPELINE_TAGS:
        errors.append(f'"pipeline_tag" {data["pipeline_tag"]!r} is not a known task')
    if data.get("library_name") is not None and not isinstance(data["library_name"], str):
        errors.append('"library_name" must be a string')
    index = data.get("model-index")
    if index is not None:
        errors.extend(_model_index_errors(index))
    return errors


def _model_index_errors(index: Any) -> list[str]:
    if not isinstance(index, list) or not index:
        return ['"model-index" must be a non-empty list']
    errors = []
    for entry in index:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            errors.append('"model-index" entries need a "name"')
            continue
        for result in entry.get("results") or []:
            task, dataset = result.get("task") or {}, result.get("dataset") or {}
            if not isinstance(task.get("type"), str):
                errors.append('"model-index" results need "task.type"')
            if not isinstance(dataset.get("type"), str) or not isinstance(dataset.get("name"), str):
                errors.append('"model-index" results need "dataset.type" and "dataset.name"')
            metrics = result.get("metrics")
            if not isinstance(metrics, list) or not metrics:
                errors.append('"model-index" results need a list of "metrics"')
                continue
            for metric in metrics:
                if not isinstance(metric.get("type"), str):
                    errors.append('every metric needs a "type"')
                value = metric.get("value")
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    errors.append(f'metric {metric.get("type")!r} needs a numeric "value", got {value!r}')
    return errors


@dataclass
class Commit:
    oid: str
    files: dict[str, bytes]
    summary: str
    parent: str | None
    date: float = field(default_factory=time.time)


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: list[Commit] = field(default_factory=list)

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def at(self, revision: str | None) -> Commit:
        revision = revision or "main"
        if revision == "main":
            return self.head
        for commit in self.commits:
            if commit.oid == revision or (len(revision) >= 7 and commit.oid.startswith(revision)):
                return commit
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


class LocalHub:
    """The server. ``start()`` binds 127.0.0.1 on a free port (or ``port``) and serves from a daemon thread."""

    def __init__(self, *, port: int = 0, tokens: dict[str, str] | None = None):
        self.port = port
        self.tokens = dict(tokens or {DEFAULT_TOKEN: DEFAULT_USER})
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._faults: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- control
    @property
    def token(self) -> str:
        return next(iter(self.tokens))

    @property
    def url(self) -> str:
        assert self._server is not None, "call start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "LocalHub":
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def fail(self, endpoint: str, status: int = 500, message: str = "Internal Server Error (injected)", times: int = 1) -> None:
        """Answer the next ``times`` requests to ``endpoint`` ("commit", "preupload", "create", "resolve",
        "info", "validate") with ``status``."""
        with self._lock:
            self._faults.append({"endpoint": endpoint, "status": status, "message": message, "times": times})

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def files(self, repo_id: str, revision: str | None = None) -> dict[str, bytes]:
        """The files of a repo at a revision (for assertions)."""
        return dict(self.repos[repo_id].at(revision).files)

    def _take_fault(self, endpoint: str) -> dict[str, Any] | None:
        with self._lock:
            for fault in self._faults:
                if fault["endpoint"] == endpoint and fault["times"] > 0:
                    fault["times"] -= 1
                    return fault
        return None

    # ---------------------------------------------------------------- logic
    def user_for(self, headers) -> str | None:
        auth = headers.get("Authorization") or ""
        if not auth.startswith("Bearer "):
            return None
        return self.tokens.get(auth[len("Bearer "):].strip())

    def require_user(self, headers) -> str:
        auth = headers.get("Authorization")
        user = self.user_for(headers)
        if user is None:
            message = "Invalid username or password." if auth else "You must be authenticated to access this endpoint."
            raise HubError(401, message)
        return user

    def repo(self, repo_id: str, headers) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and self.user_for(headers) is None):
            raise HubError(404, f"Repository Not Found for url: {repo_id}", "RepoNotFound")
        return repo

    def create_repo(self, payload: dict, headers) -> dict:
        user = self.require_user(headers)
        if payload.get("type", "model") not in (None, "model"):
            raise HubError(400, "this local hub serves model repos only")
        name = payload.get("name") or ""
        namespace = payload.get("organization") or user
        repo_id = f"{namespace}/{name}"
        if not _REPO_ID.match(repo_id):
            raise HubError(400, f"Invalid repo name: {repo_id}")
        with self._lock:
            if repo_id in self.repos:
                raise HubError(409, "You already created this model repo", "RepoExists", {"url": f"{self.url}/{repo_id}"})
            repo = Repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
            attributes = b'*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n'
            files = {".gitattributes": attributes}
            repo.commits.append(Commit(self._commit_oid(None, files, "initial commit"), files, "initial commit", None))
            self.repos[repo_id] = repo
        return {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id}

    @staticmethod
    def _commit_oid(parent: str | None, files: dict[str, bytes], summary: str) -> str:
        digest = hashlib.sha1((parent or "").encode() + summary.encode() + str(time.time_ns()).encode())
        for path in sorted(files):
            digest.update(path.encode() + _git_blob_oid(files[path]).encode())
        return digest.hexdigest()

    def commit(self, repo_id: str, revision: str, body: bytes, headers, query: dict) -> dict:
        self.require_user(headers)
        repo = self.repo(repo_id, headers)
        if query.get("create_pr"):
            raise HubError(400, "this local hub does not support pull requests")
        if revision != "main":
            raise HubError(400, "this local hub commits to the main branch only", "RevisionNotFound")
        lines = [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the commit payload must start with a header line")
        header = lines[0]["value"]
        with self._lock:
            head = repo.head
            parent = header.get("parentCommit")
            if parent and not head.oid.startswith(parent):
                raise HubError(412, f"A commit has happened since {parent}. Please refresh and try again.")
            files = dict(head.files)
            for item in lines[1:]:
                key, value = item.get("key"), item.get("value") or {}
                path = value.get("path", "")
                if not path or path.startswith("/") or ".." in path.split("/"):
                    raise HubError(400, f"invalid path {path!r}")
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HubError(400, "files must be base64-encoded")
                    files[path] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    if path not in files:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del files[path]
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    for name in [n for n in files if n.startswith(prefix)]:
                        del files[name]
                else:
                    raise HubError(400, f"unsupported commit operation {key!r} (this local hub takes regular uploads only)")
            summary = header.get("summary") or "Upload"
            oid = self._commit_oid(head.oid, files, summary)
            repo.commits.append(Commit(oid, files, summary, head.oid))
        return {"success": True, "commitOid": oid, "commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "hookOutput": "", "pullRequestUrl": None}

    def info(self, repo: Repo, revision: str | None) -> dict:
        commit = repo.at(revision)
        card_data = None
        readme = commit.files.get("README.md")
        if readme is not None:
            block, _ = _split_front_matter(readme.decode("utf-8", errors="replace"))
            try:
                card_data = yaml.safe_load(block) if block else None
            except yaml.YAMLError:
                card_data = None
        card_data = card_data if isinstance(card_data, dict) else {}
        return {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": list(card_data.get("tags") or []),
            "pipeline_tag": card_data.get("pipeline_tag"),
            "library_name": card_data.get("library_name"),
            "cardData": card_data or None,
            "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date)),
            "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(repo.commits[0].date)),
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }

    @staticmethod
    def tree_entry(path: str, data: bytes) -> dict:
        return {"type": "file", "oid": _git_blob_oid(data), "size": len(data), "path": path}


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"
    server_version = "hf_sparsify-local-hub/1.0"

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    # ---------------------------------------------------------------- plumbing
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: Any = None, *, headers: dict[str, str] | None = None, raw: bytes | None = None, head: bool = False):
        data = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        self.send_response(status)
        if raw is None:
            self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _error(self, err: HubError, head: bool = False):
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send(err.status, {"error": err.message, **err.extra}, headers=headers, head=head)

    def _dispatch(self, method: str):
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.hub.requests.append((method, path))
        body = self._body() if method == "POST" else b""
        head = method == "HEAD"
        try:
            status, payload, headers, raw = self._route(method, path, query, body)
        except HubError as err:
            return self._error(err, head=head)
        except (ValueError, KeyError, json.JSONDecodeError) as err:
            return self._error(HubError(400, f"bad request: {err}"), head=head)
        self._send(status, payload, headers=headers, raw=raw, head=head)

    def do_GET(self):  # noqa: N802
        self._dispatch("GET")

    def do_HEAD(self):  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self):  # noqa: N802
        self._dispatch("POST")

    # ---------------------------------------------------------------- routes
    def _fault(self, endpoint: str):
        fault = self.hub._take_fault(endpoint)
        if fault:
            raise HubError(fault["status"], fault["message"])

    def _route(self, method: str, path: str, query: dict, body: bytes):
        hub = self.hub
        if method == "GET" and path == "/api/whoami-v2":
            user = hub.require_user(self.headers)
            return 200, {"type": "user", "name": user, "fullname": user, "auth": {"type": "access_token", "accessToken": {"role": "write"}}, "orgs": []}, None, None
        if method == "POST" and path == "/api/repos/create":
            self._fault("create")
            return 200, hub.create_repo(json.loads(body or b"{}"), self.headers), None, None
        if method == "POST" and path == "/api/validate-yaml":
            self._fault("validate")
            errors = validate_card(json.loads(body or b"{}").get("content", ""))
            if errors:
                return 400, {"errors": [{"message": e} for e in errors], "warnings": []}, None, None
            return 200, {"errors": [], "warnings": []}, None, None
        match = re.match(r"^/api/models/(.+?)/(preupload|commit|tree|paths-info|revision)/([^/]+)(?:/(.*))?$", path)
        if match:
            repo_id, action, revision, rest = match.groups()
            if action == "preupload" and method == "POST":
                self._fault("preupload")
                hub.require_user(self.headers)
                repo = hub.repo(repo_id, self.headers)
                files = json.loads(body)["files"]
                current = repo.at(revision).files
                out = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": _git_blob_oid(current[f["path"]]) if f["path"] in current else None} for f in files]
                return 200, {"files": out, "commitOid": repo.at(revision).oid}, None, None
            if action == "commit" and method == "POST":
                self._fault("commit")
                return 200, hub.commit(repo_id, revision, body, self.headers, query), None, None
            repo = hub.repo(repo_id, self.headers)
            commit = repo.at(revision)
            if action == "revision" and method == "GET":
                self._fault("info")
                return 200, hub.info(repo, revision), None, None
            if action == "tree" and method == "GET":
                prefix = (rest or "").strip("/")
                entries, dirs = [], set()
                for name, data in sorted(commit.files.items()):
                    if prefix and not name.startswith(prefix + "/"):
                        continue
                    relative = name[len(prefix) + 1:] if prefix else name
                    if "/" in relative and not query.get("recursive"):
                        dirs.add((prefix + "/" if prefix else "") + relative.split("/")[0])
                        continue
                    entries.append(hub.tree_entry(name, data))
                entries.extend({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d} for d in sorted(dirs))
                return 200, entries, None, None
            if action == "paths-info" and method == "POST":
                try:
                    wanted = json.loads(body).get("paths", [])
                except json.JSONDecodeError:
                    wanted = parse_qs(body.decode()).get("paths", [])
                return 200, [hub.tree_entry(p, commit.files[p]) for p in wanted if p in commit.files], None, None
        match = re.match(r"^/api/models/(.+)$", path)
        if match and method == "GET":
            self._fault("info")
            return 200, hub.info(hub.repo(match.group(1), self.headers), None), None, None
        match = re.match(r"^/(.+?)/resolve/([^/]+)/(.+)$", path)
        if match and method in ("GET", "HEAD"):
            self._fault("resolve")
            repo_id, revision, filename = match.groups()
            commit = hub.repo(repo_id, self.headers).at(revision)
            data = commit.files.get(filename)
            if data is None:
                raise HubError(404, f"Entry not found: {filename}", "EntryNotFound")
            etag = f'"{_git_blob_oid(data)}"'
            return 200, None, {"X-Repo-Commit": commit.oid, "ETag": etag, "Content-Type": "application/octet-stream"}, data
        raise HubError(404, f"no route for {method} {path}")


if __name__ == "__main__":  # pragma: no cover - manual use
    import argparse

    parser = argparse.ArgumentParser(description="Serve a local Hub-compatible server on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = LocalHub(port=args.port).start()
    print(f"HF_ENDPOINT={server.url} HF_TOKEN={server.token}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
