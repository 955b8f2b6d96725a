"""The detached process behind one download: `python -m engine.models.worker ID`.

It owns `<id>.json` while it runs. Each file is fetched into its hidden `.dpdeck-part` with HTTP Range resume
(transient network errors are retried from where the bytes stopped), hashed while it streams, checked
against the expected size and sha256 (or git blob id for small files), and only then renamed into place.
A hash mismatch moves the bytes to `<models dir>/.quarantine/`, never to the destination.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path

from engine import proctitle
from engine.models import downloads as store
from engine.models.downloads import Download, FileState, part_path
from engine.models.errors import DownloadError
from engine.models.fetch import TRANSPORT_ERRORS, RawBody, SignatureRefused, open_body
from engine.models.hub import FileMeta, file_metadata, hf_token, translate
from engine.models.settings import models_dir
from engine.models.xet import XetStream, XetUnavailable, unavailable_reason
from statefiles.atomic import fsync_dir

SAVE_EVERY_S = 0.5
SPEED_WINDOW_S = 5.0
MAX_RETRIES = 6  # consecutive attempts that bring no new byte
READ_BYTES = 1 << 20
FLUSH_S = 0.25
POOL_BUFFERS = 16
WRITEBACK_BYTES = 32 << 20
PLAN_FRESH_S = 300.0  # the planning HEAD's URL is reused for the first GET this long


class Cancelled(Exception):
    pass


class NetworkCut(Exception):
    """The raw body path lost its connection (the cause says how); retried like an httpx transport error."""


class _Hasher:
    """Hashes on a second thread so hashing overlaps the socket reads and the writes (hashlib releases the
    GIL for chunks over 2 KB). The bounded queue makes a slow hash slow the download instead of the memory.

    The same thread starts the kernel's writeback of each hashed stretch (sync_file_range, asynchronous):
    the fsync before the rename then waits for the last few MB instead of the whole file's dirty pages
    (measured: 0.3-0.4 s per GB otherwise), and the dirty-page throttle never kicks in mid-transfer.
    """

    def __init__(self, h: hashlib._Hash, fd: int, offset: int):
        self.h = h
        self.fd = fd
        self.pos = self.flushed = offset
        self.q: queue.Queue[tuple[bytes | memoryview, bytearray | None] | None] = queue.Queue(maxsize=64)
        self.pool: queue.Queue[bytearray] = queue.Queue()
        self.made = 0
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        while (item := self.q.get()) is not None:
            chunk, buf = item
            self.h.update(chunk)
            self.pos += len(chunk)
            if buf is not None:
                self.pool.put(buf)
            if self.pos - self.flushed >= WRITEBACK_BYTES:
                start_writeback(self.fd, self.flushed, self.pos - self.flushed)
                self.flushed = self.pos

    def take(self) -> bytearray:
        """A free receive buffer: made on demand up to POOL_BUFFERS (<= 16 MB in flight), then recycled."""
        if self.pool.empty() and self.made < POOL_BUFFERS:
            self.made += 1
            return bytearray(READ_BYTES)
        return self.pool.get()

    def give_back(self, buf: bytearray) -> None:
        self.pool.put(buf)

    def update(self, chunk: bytes | memoryview, buf: bytearray | None = None) -> None:
        """Hash `chunk` (a view into `buf`, which goes back to the pool once hashed)."""
        self.q.put((chunk, buf))

    def hexdigest(self) -> str:
        self.q.put(None)
        self.t.join()
        return self.h.hexdigest()


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        import ctypes

        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return func  # type: ignore[no-any-return]


_SFR = _sync_file_range()
SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing this range to disk now; returns at once, errors are harmless."""
    if _SFR is not None:
        _SFR(fd, offset, length, SYNC_FILE_RANGE_WRITE)


class Worker:
    def __init__(self, dl: Download):
        self.dl = dl
        self.stop = False
        self.interruptible = False
        self.cancel_file = store.cancel_marker_path(dl.id)  # the daemon writes it (supervisor.cancel)
        self.samples: deque[tuple[float, int]] = deque()
        self.last_save = 0.0
        self.read_timeout = float(os.environ.get("DPDECK_HUB_READ_TIMEOUT", "60"))
        self.spent: dict[str, float] = {"write_s": 0.0, "hash_wait_s": 0.0, "fsync_s": 0.0}
        self.got = 0  # bytes received by the current attempt
        self.no_xet: set[str] = set()  # files whose xet transfer failed: HTTP from then on
        self._xet_off: tuple[str | None] | None = None
        self.last_flush = time.monotonic()

    def xet_off(self) -> str | None:
        """Why hf_xet cannot be used in this worker (None: it can); asked once."""
        if self._xet_off is None:
            self._xet_off = (unavailable_reason(),)
        return self._xet_off[0]

    # ---- bookkeeping ----------------------------------------------------------------------------
    def cancelled(self) -> bool:
        return self.stop or self.cancel_file.exists()

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        done = sum(f.done for f in self.dl.files)
        self.dl.bytes_done = done
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[0][0] > SPEED_WINDOW_S:
            self.samples.popleft()
        if not force and now - self.last_save < SAVE_EVERY_S:
            return
        t0, b0 = self.samples[0]
        self.dl.speed = (done - b0) / (now - t0) if now - t0 > 0.2 else 0.0
        total = self.dl.bytes_total
        self.dl.eta_s = (total - done) / self.dl.speed if total and self.dl.speed > 0 else None
        self.last_save = now
        store.save(self.dl, durable=force)

    # ---- one file -------------------------------------------------------------------------------
    def fetch(self, f: FileState) -> None:
        dest = Path(f.dest)
        if dest.is_dir():
            raise DownloadError(f"{dest}: is a directory, but the file {f.path} must go there", "dest_is_dir")
        if dest.is_file() and (f.size is None or dest.stat().st_size == f.size):
            f.done, f.state = dest.stat().st_size, "done"  # placed earlier, so already verified
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = part_path(dest)
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not self._lock(fd, f):
                return  # another download finished this very file meanwhile
            if dest.is_file() and (f.size is None or dest.stat().st_size == f.size):
                f.done, f.state = dest.stat().st_size, "done"
                os.close(fd)
                fd = -1
                part.unlink(missing_ok=True)
                return
            self._transfer(fd, f)
            t = time.perf_counter()
            os.fsync(fd)
            self.spent["fsync_s"] += time.perf_counter() - t
        finally:
            if fd >= 0:
                os.close(fd)
        f.state = "verifying"
        self.tick(force=True)
        self._place(part, dest, f)

    def _lock(self, fd: int, f: FileState) -> bool:
        """One writer per partial file: a second download of the same file waits for the first."""
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                f.state = "waiting"
                self.tick()
                if self.cancelled():
                    raise Cancelled() from None
                time.sleep(0.5)
                if Path(f.dest).is_file():
                    f.done, f.state = Path(f.dest).stat().st_size, "done"
                    return False

    def _transfer(self, fd: int, f: FileState) -> None:
        import httpx2
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        failures = 0
        refusals, refused_at = 0, -1
        while True:
            if self.cancelled():
                raise Cancelled()
            offset = os.fstat(fd).st_size
            planned = offset == 0 and f.url is not None and self._plan_is_fresh(f)
            try:
                meta = (FileMeta(url=f.url, size=f.size, commit=self.dl.commit, etag=f.etag, same_host=f.same_host,
                                 xet_hash=f.xet_hash, xet_refresh=f.xet_refresh)
                        if planned and f.url else file_metadata(self.dl.repo, f.path, self.dl.revision))
            except DownloadError as exc:
                if exc.code in ("offline", "timeout") and failures < MAX_RETRIES:
                    failures += 1
                    time.sleep(min(2 ** failures * 0.25, 8))
                    continue
                raise
            if f.etag and meta.etag and meta.etag != f.etag:
                offset = 0  # the file changed on the Hub since the partial was written: start over
                os.ftruncate(fd, 0)
                # Expected hashes that came from the Hub follow the new version; a registry pin stays.
                if f.sha256 == f.etag:
                    f.sha256 = meta.sha256
                if f.git_oid == f.etag:
                    f.git_oid = meta.git_oid
            f.etag = meta.etag or f.etag
            size = meta.size if meta.size is not None else f.size
            f.size = size
            if not f.sha256 and meta.sha256:
                f.sha256 = meta.sha256
            if not f.sha256 and not f.git_oid and meta.git_oid:
                f.git_oid = meta.git_oid
            if size is not None and offset > size:
                os.ftruncate(fd, 0)
                offset = 0
            if size is not None and offset == size:
                f.done = offset  # every byte arrived before the last worker stopped: hash what is there
                self.digest = self._hasher(f, fd, offset).hexdigest()
                return
            headers = build_hf_headers(token=hf_token()) if meta.same_host else {}
            headers["Accept-Encoding"] = "identity"
            if offset:
                headers["Range"] = f"bytes={offset}-"
            hasher = self._hasher(f, fd, offset)
            f.url = None  # one use: a retry asks the Hub again (a signed redirect URL expires)
            f.state = "downloading"
            self.got = 0
            xet = bool(meta.xet_hash and meta.xet_refresh) and f.path not in self.no_xet
            if xet and (why := self.xet_off()) is not None:
                xet = False
                print(f"[dpdeck] {f.path} is stored in xet; {why}: reading it over HTTP", file=sys.stderr)
            f.via = ("xet" if xet else "xet+http" if f.via == "xet" else f.via or "http")
            try:
                if xet:
                    self._read_xet(fd, f, meta, offset, size, hasher)
                    if size is not None and f.done < size:
                        raise XetUnavailable(f"the xet stream ended at byte {f.done} of {size}")
                    t = time.perf_counter()
                    self.digest = hasher.hexdigest()
                    self.spent["hash_wait_s"] += time.perf_counter() - t
                    return
                try:
                    body = open_body(meta.url, headers, self.read_timeout, signed=not meta.same_host)
                except TRANSPORT_ERRORS as exc:
                    raise NetworkCut(exc) from exc
                if body is not None:
                    try:
                        offset, hasher = self._begin(fd, f, offset, hasher, body.status, body.header("Content-Range"))
                        self._read_raw(body, fd, f, size, hasher)
                    finally:
                        body.close()
                else:
                    timeout = httpx2.Timeout(15.0, read=self.read_timeout)
                    with get_session().stream("GET", meta.url, headers=headers, timeout=timeout) as resp:
                        if resp.status_code == 403 and not meta.same_host:
                            raise SignatureRefused(resp.status_code)
                        if planned and resp.status_code >= 400:
                            hasher.hexdigest()
                            continue  # the planned URL went stale: HEAD again and take what the Hub says now
                        try:
                            hf_raise_for_status(resp)
                        except Exception as exc:
                            raise translate(exc, self.dl.repo, f.path, self.dl.revision) from exc
                        offset, hasher = self._begin(fd, f, offset, hasher, resp.status_code,
                                                     resp.headers.get("Content-Range", ""))
                        self._read_httpx(resp, fd, f, size, hasher)
            except XetUnavailable as exc:
                hasher.hexdigest()
                self.no_xet.add(f.path)
                print(f"[dpdeck] {f.path}: xet transfer unavailable ({exc}); continuing over HTTP from byte "
                      f"{f.done}", file=sys.stderr)
                continue
            except SignatureRefused as exc:
                # The CDN refuses a signed URL whose time is up (the Hub's last about an hour; a resume after a
                # long stall, or a planned URL used late): the HEAD of the next attempt signs a fresh one.
                # Only refusals with no byte in between count towards giving up.
                hasher.hexdigest()
                refusals = refusals + 1 if f.done == refused_at else 1
                refused_at = f.done
                if refusals >= MAX_RETRIES:
                    raise DownloadError(
                        f"{f.path}: the download host kept refusing the Hub's signed URL (HTTP {exc.status}); "
                        f"{f.done} bytes kept, `dpdeck models resume {self.dl.id}` continues", "forbidden") from exc
                print(f"[dpdeck] {f.path}: the signed URL was refused (HTTP {exc.status}, expired?) after {f.done} "
                      "bytes; asking the Hub for a new one", file=sys.stderr)
                continue
            except (httpx2.TransportError, httpx2.StreamError, NetworkCut) as exc:
                hasher.hexdigest()
                failures = 0 if self.got else failures + 1
                cause = exc.__cause__ if isinstance(exc, NetworkCut) and exc.__cause__ else exc
                if failures >= MAX_RETRIES:
                    raise DownloadError(
                        f"{f.path}: connection kept failing ({type(cause).__name__}: {cause}); {f.done} bytes kept, "
                        "`dpdeck models resume ID` continues", "network") from exc
                print(f"[dpdeck] {f.path}: {type(cause).__name__} after {f.done} bytes; resuming", file=sys.stderr)
                time.sleep(min(0.5 * 2 ** failures, 8))
                continue
            except BaseException:
                hasher.hexdigest()
                raise
            if size is not None and f.done < size:
                hasher.hexdigest()
                failures = 0 if self.got else failures + 1
                if failures >= MAX_RETRIES:
                    raise DownloadError(f"{f.path}: truncated download, got {f.done} of {size} bytes", "truncated")
                continue
            t = time.perf_counter()
            self.digest = hasher.hexdigest()
            self.spent["hash_wait_s"] += time.perf_counter() - t
            return

    def _begin(self, fd: int, f: FileState, offset: int, hasher: _Hasher, status: int,
               content_range: str) -> tuple[int, _Hasher]:
        """Check the answer against the Range asked for; position the file for the body."""
        if offset and status == 200:
            os.ftruncate(fd, 0)  # the server ignored Range: take the whole body
            offset = 0
            hasher.hexdigest()  # ends the old hasher's thread
            hasher = self._hasher(f, fd, 0)
        elif status == 206:
            start = content_range.removeprefix("bytes ").split("-")[0]
            if start.isdigit() and int(start) != offset:
                raise DownloadError(f"{f.path}: server resumed at byte {start}, asked for {offset}", "bad_range")
        os.lseek(fd, offset, os.SEEK_SET)
        f.done = offset
        return offset, hasher

    @staticmethod
    def _guard(f: FileState, size: int | None, k: int) -> None:
        if size is not None and f.done + k > size:
            raise DownloadError(f"{f.path}: the server sent more than the {size} bytes announced", "corrupt")

    def _took(self, f: FileState, k: int) -> None:
        """Account for k bytes just written; every FLUSH_S: progress, and the cancel check."""
        f.done += k
        self.got += k
        now = time.monotonic()
        if now - self.last_flush >= FLUSH_S:
            self.last_flush = now
            self.tick()
            if self.cancelled():
                raise Cancelled()

    def _read_raw(self, body: RawBody, fd: int, f: FileState, size: int | None, hasher: _Hasher) -> None:
        # Socket -> a pooled buffer (one copy) -> page cache; the hasher thread hashes the same buffer and
        # gives it back to the pool, so no byte is copied in Python.
        while True:
            buf = hasher.take()
            view = memoryview(buf)
            try:
                k = body.readinto(view)
            except TRANSPORT_ERRORS as exc:
                hasher.give_back(buf)
                raise NetworkCut(exc) from exc
            if not k:
                hasher.give_back(buf)
                return
            try:
                self._guard(f, size, k)
                self._write(fd, view[:k], f)
            except BaseException:
                hasher.give_back(buf)
                raise
            hasher.update(view[:k], buf)
            self._took(f, k)

    def _read_xet(self, fd: int, f: FileState, meta: FileMeta, offset: int, size: int | None,
                  hasher: _Hasher) -> None:
        """The bytes from hf_xet's ordered stream, from `offset`: written, hashed and counted like any other."""
        assert meta.xet_hash and meta.xet_refresh
        os.lseek(fd, offset, os.SEEK_SET)
        f.done = offset
        with XetStream(meta.xet_hash, meta.xet_refresh, size, offset, hf_token(), self.cancelled) as stream:
            for chunk in stream:
                # hf_xet hands over whole reconstructed ranges (up to ~64 MB): written, hashed and counted a
                # MB at a time, so progress and cancel stay live and each write stays cache-sized.
                whole = memoryview(chunk)
                for at in range(0, len(whole), READ_BYTES):
                    piece = whole[at:at + READ_BYTES]
                    self._guard(f, size, len(piece))
                    self._write(fd, piece, f)
                    hasher.update(piece)
                    self._took(f, len(piece))
        if self.cancelled():  # the watcher cancelled the stream, which then just ends
            raise Cancelled()

    def _read_httpx(self, resp: object, fd: int, f: FileState, size: int | None, hasher: _Hasher) -> None:
        # Each chunk is written as it arrives, while it is still in the CPU cache: measured here, 1 GB as
        # 8 MB writes took 3-4 s against 0.3-0.8 s as 16-64 KB writes (dd shows the same). Chunks are
        # immutable bytes, so the hasher thread needs no copy.
        for chunk in resp.iter_raw():  # type: ignore[attr-defined]
            self._guard(f, size, len(chunk))
            self._write(fd, chunk, f)
            hasher.update(chunk)
            self._took(f, len(chunk))

    @staticmethod
    def _plan_is_fresh(f: FileState) -> bool:
        return f.planned_t is not None and 0 <= time.time() - f.planned_t < PLAN_FRESH_S

    def _hasher(self, f: FileState, fd: int, offset: int) -> _Hasher:
        """A hasher primed with the bytes already in the partial file (re-read once on resume)."""
        prefix = b"" if f.sha256 or not f.git_oid else b"blob %d\0" % (f.size or 0)
        primed = hashlib.new("sha256" if f.sha256 or not f.git_oid else "sha1", prefix)
        pos = 0
        while pos < offset:
            chunk = os.pread(fd, min(8 << 20, offset - pos), pos)
            if not chunk:
                break
            primed.update(chunk)
            pos += len(chunk)
        return _Hasher(primed, fd, pos)

    def _write(self, fd: int, chunk: bytes | memoryview, f: FileState) -> None:
        t = time.perf_counter()
        view = memoryview(chunk)
        while view:
            try:
                n = os.write(fd, view)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DownloadError(
                        f"disk full while writing {f.path} ({f.done} bytes done): free space and run "
                        f"`dpdeck models resume {self.dl.id}` (the partial is kept), or cancel to delete it",
                        "disk_full") from exc
                if exc.errno == errno.EFBIG:
                    raise DownloadError(f"{f.path}: file size limit reached at {f.done} bytes (ulimit -f?)",
                                        "file_too_large") from exc
                raise
            view = view[n:]
        self.spent["write_s"] += time.perf_counter() - t

    def _place(self, part: Path, dest: Path, f: FileState) -> None:
        digest = getattr(self, "digest", None)
        expected = f.sha256 or f.git_oid
        if expected and digest != expected:
            qdir = Path(self.dl.quarantine_dir) if self.dl.quarantine_dir else models_dir() / ".quarantine"
            qdir.mkdir(parents=True, exist_ok=True)
            target = qdir / f"{self.dl.id}--{dest.name}"
            os.replace(part, target)
            self.dl.quarantined.append(str(target))
            kind = "sha256" if f.sha256 else "git blob sha1"
            raise DownloadError(
                f"{f.path}: {kind} mismatch (expected {expected}, got {digest}); the file was quarantined at "
                f"{target} and not used", "hash_mismatch")
        os.replace(part, dest)
        fsync_dir(dest.parent)
        f.state = "done"
        self.digest = None

    # ---- the whole download -----------------------------------------------------------------------
    def run(self) -> int:
        dl = self.dl
        try:
            try:
                self.interruptible = True
                if self.cancelled():
                    raise Cancelled()
                t0 = time.monotonic()
                for f in dl.files:
                    if f.state == "done" and Path(f.dest).is_file():
                        continue
                    self.fetch(f)
                    self.tick(force=True)
            finally:
                self.interruptible = False  # a SIGTERM from here on only sets the flag
            dl.timings["transfer_s"] = round(time.monotonic() - t0, 4)
            dl.timings.update({k: round(v, 4) for k, v in self.spent.items()})
            dl.state, dl.code, dl.error = "completed", None, None
        except Cancelled:
            store.remove_parts(dl)
            dl.state, dl.code, dl.error = "cancelled", "cancelled", None
        except DownloadError as exc:
            dl.state, dl.code, dl.error = "failed", exc.code, str(exc)
        except OSError as exc:
            code = "disk_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "os_error"
            dl.state, dl.code, dl.error = "failed", code, f"{exc.filename or ''}: {exc.strerror or exc}"
        except Exception as exc:  # report, keep the traceback in the log for a bug report
            traceback.print_exc()
            dl.state, dl.code, dl.error = "failed", "error", f"{type(exc).__name__}: {exc}"
        for f in dl.files:
            if f.state in ("downloading", "verifying", "waiting") and dl.state != "completed":
                f.state = "failed" if dl.state == "failed" else "pending"
        dl.ended_at = store.now_iso()
        dl.speed, dl.eta_s = 0.0, None
        dl.bytes_done = sum(f.done for f in dl.files)
        store.save(dl)
        return 0 if dl.state == "completed" else 1


def _bigger_socket_reads() -> None:
    """httpcore reads the socket 64 KB at a time and parses each piece in Python; 1 MB reads cut that
    per-chunk overhead ~16x for big files. Only in this worker process, and skipped if the internals moved."""
    try:
        from httpcore2._sync.http11 import HTTP11Connection

        if getattr(HTTP11Connection, "READ_NUM_BYTES", 0) < READ_BYTES:
            HTTP11Connection.READ_NUM_BYTES = READ_BYTES
    except (ImportError, AttributeError):
        pass


def preload() -> None:
    """Import the transfer path's modules now (the daemon calls this once so forked workers start warm)."""
    import httpx2  # noqa: F401
    import psutil  # noqa: F401
    from huggingface_hub import get_hf_file_metadata  # noqa: F401
    from huggingface_hub.utils import build_hf_headers, get_session  # noqa: F401

    _bigger_socket_reads()


def _take_lock(download_id: str, argv: list[str]) -> int | None:
    """The download's lock: handed over by the daemon (`--lock-fd N`), or taken here when run by hand."""
    if len(argv) == 3 and argv[1] == "--lock-fd" and argv[2].isdigit():
        return int(argv[2])
    return store.try_lock(download_id)


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 3):
        print("usage: python -m engine.models.worker DOWNLOAD_ID [--lock-fd N]", file=sys.stderr)
        return 2
    proctitle.set_title("download", id=argv[0])
    if _take_lock(argv[0], argv) is None:
        print(f"download {argv[0]}: another worker holds it", file=sys.stderr)
        return 3
    # Read under the lock: this is the state nobody else may write while we run.
    dl = store._read(store.state_path(argv[0]))
    if dl is None:
        print(f"no download {argv[0]}", file=sys.stderr)
        return 2
    if dl.state in ("completed", "failed", "cancelled"):
        return 0  # settled while we were being started
    if dl.endpoint:
        os.environ["HF_ENDPOINT"] = dl.endpoint  # the asking client's endpoint, not the daemon's
    worker = Worker(dl)
    _bigger_socket_reads()

    def _stop(_sig: int, _frame: object) -> None:
        worker.stop = True
        # Raise right here too: a stalled socket read would otherwise keep the cancel waiting for the read
        # timeout (PEP 475 retries the read after the handler). Not during cleanup, which must finish.
        if worker.interruptible:
            worker.interruptible = False
            raise Cancelled()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a dropped ssh session must not end the download
    with contextlib.suppress(AttributeError):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG (a clear message) instead of dying
    import psutil

    dl.pid = os.getpid()
    dl.pid_ctime = psutil.Process().create_time()
    try:  # from the daemon's fork/spawn; psutil's create time is only good to ~1 s (boot time in seconds)
        spawned = float(os.environ.get("DPDECK_SPAWN_T") or dl.pid_ctime)
    except ValueError:
        spawned = dl.pid_ctime
    dl.timings["startup_s"] = round(max(0.0, time.time() - spawned), 4)
    dl.state = "running"
    dl.wait_reason = None
    dl.started_at = store.now_iso()
    store.save(dl)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
