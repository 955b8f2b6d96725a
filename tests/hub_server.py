"""A local HTTP server that speaks the Hub endpoints huggingface_hub uses for downloads.

Implements: GET /api/models/{repo}[/revision/{rev}] (model_info, with ?blobs=true sizes and LFS sha256),
HEAD/GET /{repo}/resolve/{rev}/{path} with Range (206 + Content-Range, 416), X-Repo-Commit, ETag,
X-Linked-Etag, X-Linked-Size, 401/403 + X-Error-Code: GatedRepo for gated repos, 404 + RepoNotFound /
EntryNotFound / RevisionNotFound. Point HF_ENDPOINT at `server.url`.

Faults for tests: `cut_after[path] = n` closes the connection after n body bytes (once per path),
`throttle` limits bytes/s per response, `corrupt` serves other bytes than the advertised hash, `stall`
sends one chunk and then goes silent. Binds
127.0.0.1 only. Used by tests and by bench/bench_models.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_THRESHOLD = 1024  # files at least this big are "LFS" (sha256 ETag); smaller ones get a git blob id


@dataclass
class HubFile:
    data: bytes | None = None
    path: Path | None = None  # serve from disk (big files), with sendfile
    sha256: str | None = None
    lfs: bool | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else os.path.getsize(self.path)  # type: ignore[arg-type]

    def is_lfs(self) -> bool:
        return self.lfs if self.lfs is not None else self.size >= LFS_THRESHOLD

    def digest(self) -> str:
        if self.sha256 is None:
            h = hashlib.sha256()
            if self.data is not None:
                h.update(self.data)
            else:
                with open(self.path, "rb") as fh:  # type: ignore[arg-type]
                    while chunk := fh.read(8 << 20):
                        h.update(chunk)
            self.sha256 = h.hexdigest()
        return self.sha256

    def git_oid(self) -> str:
        data = self.data if self.data is not None else Path(self.path).read_bytes()  # type: ignore[arg-type]
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def etag(self) -> str:
        return self.digest() if self.is_lfs() else self.git_oid()


@dataclass
class HubRepo:
    files: dict[str, HubFile]
    gated: bool = False
    tokens: set[str] = field(default_factory=set)  # tokens with access (gated repos)
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    revisions: tuple[str, ...] = ("main",)


class HubServer:
    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.cut_after: dict[str, int] = {}
        self.throttle: float | None = None  # bytes per second per response
        self.corrupt: set[str] = set()
        self.stall: set[str] = set()  # send the first chunk, then nothing (until shutdown or 60 s)
        self.stopping = threading.Event()
        self.requests: list[dict[str, str | None]] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, repo: str, files: dict[str, bytes | Path | HubFile], **kw: object) -> HubRepo:
        hub_files = {}
        for name, value in files.items():
            if isinstance(value, HubFile):
                hub_files[name] = value
            elif isinstance(value, Path):
                hub_files[name] = HubFile(path=value)
            else:
                hub_files[name] = HubFile(data=value)
        self.repos[repo] = HubRepo(files=hub_files, **kw)  # type: ignore[arg-type]
        return self.repos[repo]

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def log(self, **entry: str | None) -> None:
        with self.lock:
            self.requests.append(entry)


_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+?)(?:/revision/(?P<rev>[^/]+))?$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _make_handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep test output quiet
            pass

        def _error(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _token(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            return auth[7:] if auth.startswith("Bearer ") else None

        def do_GET(self) -> None:  # noqa: N802
            self._route()

        def do_HEAD(self) -> None:  # noqa: N802
            self._route()

        def _route(self) -> None:
            parsed = urlparse(self.path)
            path = unquote(parsed.path)
            hub.log(method=self.command, path=path, range=self.headers.get("Range"),
                    auth="yes" if self._token() else None)
            m = _INFO.match(path)
            if m and self.command == "GET":
                return self._info(m.group("repo"), m.group("rev") or "main", "blobs=true" in (parsed.query or ""))
            m = _RESOLVE.match(path)
            if m:
                return self._resolve(m.group("repo"), m.group("rev"), m.group("path"))
            self._error(404, None, "Not Found")

        def _repo(self, repo_id: str, rev: str) -> HubRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
                return None
            if rev not in repo.revisions and rev != repo.commit:
                self._error(404, "RevisionNotFound", "Invalid rev id: " + rev)
                return None
            return repo

        def _info(self, repo_id: str, rev: str, blobs: bool) -> None:
            repo = self._repo(repo_id, rev)
            if repo is None:
                return
            siblings = []
            for name, f in sorted(repo.files.items()):
                entry: dict[str, object] = {"rfilename": name}
                if blobs:
                    entry["size"] = f.size
                    entry["blobId"] = hashlib.sha1(name.encode()).hexdigest()
                    if f.is_lfs():
                        entry["lfs"] = {"size": f.size, "sha256": f.digest(), "pointerSize": 134}
                    else:
                        entry["blobId"] = f.git_oid()
                siblings.append(entry)
            body = json.dumps({"id": repo_id, "sha": repo.commit, "gated": "manual" if repo.gated else False,
                               "private": False, "siblings": siblings}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _resolve(self, repo_id: str, rev: str, name: str) -> None:
            repo = self._repo(repo_id, rev)
            if repo is None:
                return
            if repo.gated:
                token = self._token()
                if token is None:
                    return self._error(401, "GatedRepo", "Access to model is restricted. You must be authenticated.")
                if token not in repo.tokens:
                    return self._error(403, "GatedRepo", "Access to model is restricted and you are not in the "
                                       "authorized list.")
            f = repo.files.get(name)
            if f is None:
                return self._error(404, "EntryNotFound", "Entry not found", commit=repo.commit)
            size = f.size
            start, end = 0, size - 1
            status = 200
            rng = self.headers.get("Range")
            if rng:
                m = _RANGE.match(rng.strip())
                if not m or int(m.group(1)) >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                status = 206
            self.send_response(status)
            etag = f.etag()
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("ETag", f'"{etag}"')
            if f.is_lfs():
                self.send_header("X-Linked-Etag", f'"{etag}"')
                self.send_header("X-Linked-Size", str(size))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if self.command == "HEAD":
                return
            self._body(f, name, start, end + 1)

        def _body(self, f: HubFile, name: str, start: int, stop: int) -> None:
            limit = stop
            cut = False
            with hub.lock:
                if name in hub.cut_after:
                    limit = min(stop, max(start, hub.cut_after.pop(name)))
                    cut = True
            try:
                if f.path is not None and hub.throttle is None and name not in hub.corrupt | hub.stall:
                    with open(f.path, "rb") as fh:
                        self.wfile.flush()
                        self.connection.sendfile(fh, offset=start, count=limit - start)
                else:
                    self._stream(f, name, start, limit)
            except (BrokenPipeError, ConnectionResetError):
                return
            if cut:
                self.close_connection = True
                self.connection.shutdown(2)

        def _stream(self, f: HubFile, name: str, start: int, limit: int) -> None:
            pos = start
            step = 64 * 1024
            if hub.throttle:
                step = max(1024, int(hub.throttle / 20))
            fh = open(f.path, "rb") if f.path is not None else None  # noqa: SIM115
            try:
                while pos < limit:
                    n = min(step, limit - pos)
                    if fh is not None:
                        fh.seek(pos)
                        chunk = fh.read(n)
                    else:
                        chunk = f.data[pos:pos + n]  # type: ignore[index]
                    if name in hub.corrupt:
                        chunk = bytes(b ^ 0xFF for b in chunk)
                    self.wfile.write(chunk)
                    pos += n
                    if name in hub.stall:
                        self.wfile.flush()
                        hub.stopping.wait(60)
                        return
                    if hub.throttle:
                        time.sleep(n / hub.throttle)
            finally:
                if fh is not None:
                    fh.close()

    return Handler


def stop_downloads() -> None:
    """Test teardown: stop this DPDECK_HOME's daemon first (it would restart a killed worker), then kill every
    download worker still alive, so no test leaves a process behind."""
    import signal as _signal

    from engine.jobs import client
    from engine.models import downloads

    client.stop_daemon()
    for dl in downloads.list_downloads():
        if dl.pid and downloads.worker_alive(dl):
            os.kill(dl.pid, _signal.SIGKILL)
