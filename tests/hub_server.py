"""A local emulation of the Hugging Face Hub as huggingface_hub meets it when downloading: the Hub itself and
a CDN on another origin (another port of 127.0.0.1), so the redirect and its auth rules are real.

The Hub (`server.url`; point HF_ENDPOINT at it):
- GET /api/models/{repo}[/revision/{rev}]: model_info, with ?blobs=true sizes, LFS sha256 and xetHash.
- HEAD/GET /{repo}/resolve/{rev}/{path}:
  - a small (non-LFS) file: 200 from the Hub itself, ETag = its git blob sha1, X-Repo-Commit, Range (206/416);
  - an LFS file: 302 to the CDN with a signed URL (Expires + Signature, like CloudFront's), X-Repo-Commit,
    X-Linked-Etag (the sha256), X-Linked-Size, ETag (the pointer file's blob id), Accept-Ranges;
  - a xet-backed file (`HubFile(xet=True)`): the same 302, to the CDN's bridge path, plus X-Xet-Hash and a
    `Link: <...xet-read-token...>; rel="xet-auth"` header: what huggingface_hub's
    parse_xet_file_data_from_response looks for;
  - gated repos: 401 without a token and 403 with a token lacking access, X-Error-Code: GatedRepo and the
    Hub's X-Error-Message; RepoNotFound (401 without a token, as the Hub hides private repos; 404 with one),
    404 + EntryNotFound / RevisionNotFound.
- GET /api/models/{repo}/xet-read-token/{rev}: X-Xet-Cas-Url / X-Xet-Access-Token / X-Xet-Token-Expiration
  headers and the same as JSON (casUrl / accessToken / exp), which hf_xet's token refresh reads. The CAS is
  hf_xet's own local simulation (`local://DIR`, filled by uploading each xet file with hf_xet when it is
  added): the xet protocol over the network is not emulated.
The CDN (`server.cdn_url`): GET/HEAD /repos/{repo}/{sha256}?...&Expires=T&Signature=S and
/xet-bridge/{xet hash}?..., Range (206/416); 403 with an XML body for a bad or expired signature, as
CloudFront answers. It never needs a token, and records whether one was sent.

`cdn=False` serves LFS bytes straight from resolve/ (the old behaviour, for comparisons). Every request is
recorded in `requests`: method, host ("hub"/"cdn"), path, file (path in the repo), range, auth ("yes" when
an Authorization header came), status, and for the CDN every header as received.

Faults for tests: `cut_after[path] = n` closes the connection after n body bytes (once per path),
`throttle` limits bytes/s per response, `corrupt` serves other bytes than the advertised hash, `stall`
sends one chunk and then goes silent, `url_ttl` is the signed URLs' lifetime (s), `expire_next = n` makes the
next n signed URLs expired already, `xet_cas_broken` hands out an empty CAS. Binds 127.0.0.1 only. Used by
tests and by the benchmarks in bench/.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode, urlparse

LFS_THRESHOLD = 1024  # files at least this big are "LFS" (sha256 ETag); smaller ones get a git blob id


@dataclass
class HubFile:
    data: bytes | None = None
    path: Path | None = None  # serve from disk (big files), with sendfile
    sha256: str | None = None
    lfs: bool | None = None
    xet: bool = False  # stored in xet (the Hub's default for new uploads): X-Xet-Hash, bytes via hf_xet
    xet_hash: str | None = None  # set when the server uploads it to its local CAS

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

    def pointer_oid(self) -> str:
        """The git blob id of the LFS pointer file: the ETag the Hub sends beside X-Linked-Etag."""
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.digest()}\nsize {self.size}\n"
        return hashlib.sha1(b"blob %d\0" % len(pointer) + pointer.encode()).hexdigest()


@dataclass
class HubRepo:
    files: dict[str, HubFile]
    gated: bool = False
    tokens: set[str] = field(default_factory=set)  # tokens with access (gated repos)
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    revisions: tuple[str, ...] = ("main",)


class HubServer:
    def __init__(self, cdn: bool = True) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.cdn = cdn
        self.cut_after: dict[str, int] = {}
        self.throttle: float | None = None  # bytes per second per response
        self.corrupt: set[str] = set()
        self.stall: set[str] = set()  # send the first chunk, then nothing (until shutdown or 60 s)
        self.url_ttl = 3600.0  # the Hub's signed CDN URLs last about an hour
        self.expire_next = 0
        self.xet_cas_broken = False
        self.signing_key = secrets.token_bytes(32)
        self.stopping = threading.Event()
        self.requests: list[dict[str, str | None]] = []
        self.lock = threading.Lock()
        self._tmp: str | None = None  # the local xet CAS (and an empty one), made on the first xet file
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self, "hub"))
        self.httpd.daemon_threads = True
        self.cdn_httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self, "cdn"))
        self.cdn_httpd.daemon_threads = True
        self.threads = [threading.Thread(target=h.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
                        for h in (self.httpd, self.cdn_httpd)]

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def cdn_url(self) -> str:
        host, port = self.cdn_httpd.server_address[:2]
        return f"http://{host}:{port}"

    def cas_dir(self, broken: bool = False) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="dpdeck-hub-cas-")
        return Path(self._tmp) / ("empty" if broken else "cas")

    def _store_in_xet(self, f: HubFile) -> None:
        """Upload the file to hf_xet's local CAS: its hash is the X-Xet-Hash the Hub would send."""
        import hf_xet

        src = f.path
        if src is None:
            src = self.cas_dir().parent / f"upload-{f.digest()}"
            src.write_bytes(f.data or b"")
        with hf_xet.XetSession().new_upload_commit(endpoint=f"local://{self.cas_dir()}") as commit:
            handle = commit.start_upload_file(str(src))
        f.xet_hash = handle.result().xet_info.hash
        if f.path is None:
            src.unlink()

    def sign(self, path: str, query: dict[str, str]) -> str:
        """A CDN URL for `path` that expires (`url_ttl`, or already for `expire_next`)."""
        with self.lock:
            expired = self.expire_next > 0
            self.expire_next -= 1 if expired else 0
        expires = int(time.time() + (-10 if expired else self.url_ttl))
        query = {**query, "Expires": str(expires)}
        sig = hmac.new(self.signing_key, f"{path}?{urlencode(sorted(query.items()))}".encode(),
                       hashlib.sha256).hexdigest()
        return f"{self.cdn_url}{path}?{urlencode({**query, 'Signature': sig, 'Key-Pair-Id': 'K2EMUL4TED'})}"

    def check_signature(self, path: str, query: dict[str, str]) -> str | None:
        """None when valid, else the CDN's reason to refuse."""
        sig = query.pop("Signature", "")
        query.pop("Key-Pair-Id", None)
        want = hmac.new(self.signing_key, f"{path}?{urlencode(sorted(query.items()))}".encode(),
                        hashlib.sha256).hexdigest()
        if not hmac.compare_digest(sig, want):
            return "SignatureDoesNotMatch"
        if int(query.get("Expires", "0")) < time.time():
            return "Request has expired"
        return None

    def add(self, repo: str, files: dict[str, bytes | Path | HubFile], **kw: object) -> HubRepo:
        hub_files = {}
        for name, value in files.items():
            if isinstance(value, HubFile):
                hub_files[name] = value
            elif isinstance(value, Path):
                hub_files[name] = HubFile(path=value)
            else:
                hub_files[name] = HubFile(data=value)
        for f in hub_files.values():
            if f.xet and f.xet_hash is None:
                self._store_in_xet(f)
        self.repos[repo] = HubRepo(files=hub_files, **kw)  # type: ignore[arg-type]
        return self.repos[repo]

    def find(self, repo_id: str, key: str) -> tuple[str, HubFile] | None:
        """The file a CDN object key (sha256 or xet hash) stands for."""
        repo = self.repos.get(repo_id)
        for name, f in (repo.files.items() if repo else ()):
            if key in (f.digest(), f.xet_hash):
                return name, f
        return None

    def __enter__(self) -> HubServer:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for httpd in (self.httpd, self.cdn_httpd):
            httpd.shutdown()
            httpd.server_close()
        for t in self.threads:
            t.join(timeout=5)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def log_entry(self, entry: dict[str, str | None]) -> None:
        with self.lock:
            self.requests.append(entry)


_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+?)(?:/revision/(?P<rev>[^/]+))?$")
_XET_TOKEN = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/xet-read-token/(?P<rev>[^/]+)$")
_CDN = re.compile(r"^/(?:repos/(?P<repo>[^/]+/[^/]+)|xet-bridge/(?P<xrepo>[^/]+/[^/]+))/(?P<key>[0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _make_handler(hub: HubServer, role: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        entry: dict[str, str | None]

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep test output quiet
            pass

        def send_response(self, code: int, message: str | None = None) -> None:
            self.entry["status"] = str(code)
            super().send_response(code, message)

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
            self.entry = {"method": self.command, "host": role, "path": path, "file": None,
                          "range": self.headers.get("Range"),
                          "auth": "yes" if self.headers.get("Authorization") else None, "status": None,
                          "headers": str(self.headers) if role == "cdn" else None}
            hub.log_entry(self.entry)
            if role == "cdn":
                return self._cdn(path, parsed.query)
            m = _INFO.match(path)
            if m and self.command == "GET":
                return self._info(m.group("repo"), m.group("rev") or "main", "blobs=true" in (parsed.query or ""))
            m = _XET_TOKEN.match(path)
            if m and self.command == "GET":
                return self._xet_token(m.group("repo"), m.group("rev"))
            m = _RESOLVE.match(path)
            if m:
                return self._resolve(m.group("repo"), m.group("rev"), m.group("path"))
            self._error(404, None, "Not Found")

        def _repo(self, repo_id: str, rev: str) -> HubRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                # Without a token the Hub answers 401, so that a private repo and a missing one look the same.
                self._error(401 if self._token() is None else 404, "RepoNotFound", "Repository not found")
                return None
            if rev not in repo.revisions and rev != repo.commit:
                self._error(404, "RevisionNotFound", "Invalid rev id: " + rev)
                return None
            return repo

        def _access(self, repo_id: str, repo: HubRepo) -> bool:
            """The Hub's gate: 401 without a token, 403 with a token that was not granted access."""
            if not repo.gated:
                return True
            token = self._token()
            if token is None:
                self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it "
                            "and be authenticated to access it. Please log in.")
                return False
            if token not in repo.tokens:
                self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in the "
                            f"authorized list. Visit {hub.url}/{repo_id} to ask for access.")
                return False
            return True

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
                    if f.xet_hash:
                        entry["xetHash"] = f.xet_hash
                siblings.append(entry)
            body = json.dumps({"id": repo_id, "sha": repo.commit, "gated": "manual" if repo.gated else False,
                               "private": False, "siblings": siblings}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _xet_token(self, repo_id: str, rev: str) -> None:
            repo = self._repo(repo_id, rev)
            if repo is None or not self._access(repo_id, repo):
                return
            cas = f"local://{hub.cas_dir(broken=hub.xet_cas_broken)}"
            token, exp = secrets.token_hex(16), int(time.time()) + 3600
            body = json.dumps({"casUrl": cas, "accessToken": token, "exp": exp}).encode()
            self.send_response(200)
            self.send_header("X-Xet-Cas-Url", cas)
            self.send_header("X-Xet-Access-Token", token)
            self.send_header("X-Xet-Token-Expiration", str(exp))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _resolve(self, repo_id: str, rev: str, name: str) -> None:
            self.entry["file"] = name
            repo = self._repo(repo_id, rev)
            if repo is None or not self._access(repo_id, repo):
                return
            f = repo.files.get(name)
            if f is None:
                return self._error(404, "EntryNotFound", "Entry not found", commit=repo.commit)
            if hub.cdn and f.is_lfs():
                return self._redirect(repo_id, repo, name, f)
            self._serve(f, name, {"X-Repo-Commit": repo.commit, "ETag": f'"{f.etag()}"'}
                        | ({"X-Linked-Etag": f'"{f.etag()}"', "X-Linked-Size": str(f.size)} if f.is_lfs() else {}))

        def _redirect(self, repo_id: str, repo: HubRepo, name: str, f: HubFile) -> None:
            disposition = f"inline; filename*=UTF-8''{quote(name.rsplit('/', 1)[-1])}; filename=\"{name}\";"
            if f.xet_hash:
                location = hub.sign(f"/xet-bridge/{repo_id}/{f.xet_hash}", {"response-content-disposition": disposition})
            else:
                location = hub.sign(f"/repos/{repo_id}/{f.digest()}", {"response-content-disposition": disposition})
            body = f"Found. Redirecting to {location}".encode()
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("ETag", f'"{f.pointer_oid()}"')
            self.send_header("X-Linked-Etag", f'"{f.digest()}"')
            self.send_header("X-Linked-Size", str(f.size))
            self.send_header("Accept-Ranges", "bytes")
            if f.xet_hash:
                self.send_header("X-Xet-Hash", f.xet_hash)
                self.send_header("Link", f'<{hub.url}/api/models/{repo_id}/xet-read-token/{repo.commit}>; '
                                 f'rel="xet-auth", <{hub.url}/xet-cas/v1/reconstructions/{f.xet_hash}>; '
                                 'rel="xet-reconstruction-info"')
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _cdn(self, path: str, query: str) -> None:
            m = _CDN.match(path)
            found = hub.find(m.group("repo") or m.group("xrepo"), m.group("key")) if m else None
            if found is None:
                return self._refuse(404, "NoSuchKey", "The specified key does not exist.")
            name, f = found
            self.entry["file"] = name
            reason = hub.check_signature(path, {k: v[0] for k, v in parse_qs(query).items()})
            if reason is not None:
                return self._refuse(403, "AccessDenied", reason)
            self._serve(f, name, {"ETag": f'"{f.digest()}"', "Content-Type": "binary/octet-stream"})

        def _refuse(self, status: int, code: str, message: str) -> None:
            body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                    f"<Message>{message}</Message></Error>").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _serve(self, f: HubFile, name: str, headers: dict[str, str]) -> None:
            """The bytes, with Range: from the Hub (small files, or cdn=False) or from the CDN."""
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
            for key, value in headers.items():
                self.send_header(key, value)
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
