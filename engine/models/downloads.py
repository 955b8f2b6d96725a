"""Background downloads owned by the daemon: one worker process per download, state in one JSON file each.

Layout under `$DPDECK_HOME/downloads/`: `<id>.json` (state), `<id>.log` (the worker's stderr), `<id>.lock`
(held by the download's worker for its whole life), and `<id>.cancel`, the daemon's word to a running worker.

Clients ask for a cancel or a resume through the daemon's protocol (engine/jobs/protocol.py,
Action.CANCEL_DOWNLOAD / RESUME_DOWNLOAD) and wait for its answer; only the daemon writes the marker.

Who writes `<id>.json`: the client creates it (state `queued`); after that only the holder of `<id>.lock`
writes it: the worker while it runs, the daemon (engine/models/supervisor.py) between workers. The daemon
starts queued downloads up to `[models] max_downloads`, passes the lock to the worker it starts, resumes a
worker that died (lock released, state still `running`) a bounded number of times, answers cancel / resume, and
after its own restart adopts workers that still hold their locks. A lock dies with its process, so "is a
worker alive" never depends on a pid that may have been reused. Workers run in their own session (setsid),
so closing the terminal or losing ssh stops neither them nor the daemon.

Partial data lives beside its destination as `.<name>.dpdeck-part` (hidden, same filesystem), and is renamed
into place only after its size and hash check out, so a half file is never where a profile points.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import psutil
from pydantic import BaseModel, Field

from engine.jobs.protocol import Action, Request
from engine.models.errors import DownloadError
from engine.models.hub import check_repo_id, check_repo_path, file_metadata, list_repo_files, token_path
from engine.models.registry import Component, Entry
from engine.models.settings import hub_endpoint, min_free_bytes, models_dir, repo_dirname
from statefiles.atomic import atomic_write_text
from statefiles.paths import subdir

State = Literal["queued", "running", "verifying", "completed", "failed", "cancelled", "interrupted"]
FileStateName = Literal["pending", "downloading", "waiting", "verifying", "done", "failed", "skipped"]
LIVE: tuple[str, ...] = ("queued", "running", "verifying")


class FileState(BaseModel):
    path: str  # path inside the repo
    dest: str  # absolute destination
    size: int | None = None
    sha256: str | None = None  # expected (registry, or the Hub's LFS oid)
    git_oid: str | None = None  # expected git blob sha1 for small non-LFS files
    etag: str | None = None
    done: int = 0
    state: FileStateName = "pending"
    # The planning HEAD's answer, reused by the worker's first GET when still fresh (saves a round trip).
    url: str | None = None
    same_host: bool = True
    planned_t: float | None = None
    xet_hash: str | None = None  # a xet-backed file: moved with hf_xet when installed (engine/models/xet.py)
    xet_refresh: str | None = None
    via: str | None = None  # how the bytes came: "xet", "http", or "xet+http" after a fallback


class Download(BaseModel):
    id: str
    repo: str
    revision: str = "main"
    commit: str | None = None
    dest: str  # the file (one-file pull) or folder (component folder) a profile key points at
    entry: str | None = None
    key: str | None = None
    files: list[FileState] = Field(default_factory=list)
    state: State = "queued"
    code: str | None = None
    error: str | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    speed: float = 0.0  # bytes/s over the last few seconds
    eta_s: float | None = None
    pid: int | None = None
    pid_ctime: float | None = None
    created_at: str = ""
    started_at: str | None = None
    ended_at: str | None = None
    updated_at: str | None = None
    quarantined: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)  # worker start-up and transfer seconds
    retries: int = 0  # automatic restarts after the worker died without finishing
    last_death: str | None = None  # how the last worker died (killed by SIGKILL, exit code 1, ...)
    wait_reason: str | None = None  # why a queued download has not started
    queued_t: float = 0.0  # when it was (re)queued: the daemon starts downloads in this order
    endpoint: str | None = None  # the Hub endpoint of the client that asked (the daemon's env may differ)
    quarantine_dir: str | None = None

    @property
    def progress(self) -> float | None:
        return self.bytes_done / self.bytes_total if self.bytes_total else None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def downloads_dir() -> Path:
    return subdir("downloads")


def state_path(download_id: str) -> Path:
    if not download_id or not all(c.isalnum() or c == "-" for c in download_id):
        raise DownloadError(f"{download_id!r} is not a download id", "bad_id")
    return downloads_dir() / f"{download_id}.json"


def save(dl: Download, durable: bool = True) -> None:
    """Replace the state file atomically. Progress updates skip fsync: an fsync while gigabytes of dirty
    download pages are pending stalls on their writeback (measured: it halved throughput), and a lost
    progress update is harmless. State changes (started, finished, failed) are durable."""
    dl.updated_at = now_iso()
    path = state_path(dl.id)
    text = dl.model_dump_json(indent=1)
    if durable:
        atomic_write_text(path, text)
        if dl.state not in LIVE:
            token_path(dl.id).unlink(missing_ok=True)  # done with the Hub: the client's token goes
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _read(path: Path) -> Download | None:
    try:
        return Download.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def worker_alive(dl: Download) -> bool:
    if not dl.pid:
        return False
    try:
        proc = psutil.Process(dl.pid)
        return proc.status() != psutil.STATUS_ZOMBIE and (
            dl.pid_ctime is None or abs(proc.create_time() - dl.pid_ctime) < 1.0)
    except psutil.Error:
        return False


def lock_path(download_id: str) -> Path:
    return state_path(download_id).with_suffix(".lock")


def try_lock(download_id: str) -> int | None:
    """The download's lock as an fd, or None while a worker holds it (so: while a worker is alive)."""
    from engine.jobs.lock import try_flock

    return try_flock(lock_path(download_id))


def _with_liveness(dl: Download) -> Download:
    # A worker that died shows as interrupted until the daemon (within a tick) restarts or fails it; with no
    # daemon running that is what the user sees, and `resume` (which starts the daemon) continues it.
    if dl.state in ("running", "verifying") and dl.pid is not None and not worker_alive(dl):
        dl.state = "interrupted"
        dl.speed = 0.0
        dl.eta_s = None
        dl.error = dl.error or "the download worker stopped; the daemon resumes it (`dpdeck models resume ID`)"
    return dl


def get(download_id: str) -> Download:
    dl = _read(state_path(download_id))
    if dl is None:
        raise DownloadError(f"no download with id {download_id!r} (`dpdeck models downloads` lists them)", "not_found")
    return _with_liveness(dl)


def list_downloads(include_finished: bool = True) -> list[Download]:
    out = []
    for path in downloads_dir().glob("*.json"):
        dl = _read(path)
        if dl is None:
            continue
        dl = _with_liveness(dl)
        if include_finished or dl.state in (*LIVE, "interrupted", "failed"):
            out.append(dl)
    return sorted(out, key=lambda d: d.created_at)


# ---- planning a download ---------------------------------------------------------------------------

def _free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def part_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.dpdeck-part"


def check_space(files: list[FileState], where: Path) -> None:
    """Refuse to start when the files would not fit while keeping the configured reserve free."""
    need = 0
    for f in files:
        if f.size is None or Path(f.dest).is_file():
            continue
        part = part_path(Path(f.dest))
        have = part.stat().st_size if part.is_file() else 0
        need += max(f.size - have, 0)
    free = _free_bytes(where)
    reserve = min_free_bytes()
    if need + reserve > free:
        gib = 1024**3
        raise DownloadError(
            f"not enough disk space in {where}: need {need / gib:.2f} GiB plus a {reserve / gib:.2f} GiB reserve, "
            f"{free / gib:.2f} GiB free (free some space, or set [models] dir / min_free_gb in config.toml)",
            "disk_space")


def _check_dest(dest: Path, want_file: bool) -> None:
    if want_file and dest.is_dir():
        raise DownloadError(f"{dest}: is a directory, but a file must go there (move it away first)", "dest_is_dir")
    if not want_file and dest.exists() and not dest.is_dir():
        raise DownloadError(f"{dest}: is a file, but a folder must go there (move it away first)", "dest_is_file")
    for parent in ([dest.parent] if want_file else [dest]):
        p = parent
        while not p.exists():
            p = p.parent
        if not p.is_dir():
            raise DownloadError(f"{p}: is a file where a folder is needed for {dest}", "dest_is_file")


def plan_file(repo: str, path: str, revision: str = "main", dest: Path | None = None,
              sha256: str | None = None) -> tuple[Path, list[FileState], str | None]:
    check_repo_id(repo)
    check_repo_path(path)
    meta = file_metadata(repo, path, revision, retry=False)
    dest = dest or models_dir() / repo_dirname(repo) / path
    _check_dest(dest, want_file=True)
    fs = FileState(path=path, dest=str(dest), size=meta.size, sha256=sha256 or meta.sha256,
                   git_oid=None if (sha256 or meta.sha256) else meta.git_oid, etag=meta.etag,
                   url=meta.url, same_host=meta.same_host, planned_t=time.time(), xet_hash=meta.xet_hash,
                   xet_refresh=meta.xet_refresh)
    return dest, [fs], meta.commit


def plan_folder(comp: Component, dest: Path | None = None) -> tuple[Path, list[FileState], str | None]:
    assert comp.repo is not None
    commit, remote = list_repo_files(comp.repo, comp.revision)
    chosen = [f for f in remote if comp.wants(f.path)]
    if not chosen:
        raise DownloadError(f"{comp.repo}: no file matches {comp.include} (has the repo layout changed?)",
                            "file_not_found")
    dest = dest or comp.local_path()
    _check_dest(dest, want_file=False)
    # Access (gated / private) is only enforced on file downloads, not on the listing: ask for one file now
    # so the user hears about a missing licence acceptance before anything starts.
    file_metadata(comp.repo, chosen[0].path, comp.revision, retry=False)
    files = [
        FileState(path=f.path, dest=str(dest / f.path), size=f.size,
                  sha256=comp.sha256.get(f.path) or f.sha256, git_oid=None if f.sha256 else f.git_oid)
        for f in chosen
    ]
    return dest, files, commit


# ---- control --------------------------------------------------------------------------------------

def _daemon() -> None:
    """Make sure a daemon runs and looks at the downloads now."""
    from engine.jobs.client import ensure_daemon
    from engine.jobs.wake import poke

    ensure_daemon()
    poke()


def _active_dest(dest: str) -> Download | None:
    for other in list_downloads(include_finished=False):
        if other.dest == dest and other.state in LIVE:
            return other
    return None


def start(repo: str, files: list[FileState], dest: Path, *, revision: str = "main", commit: str | None = None,
          entry: str | None = None, key: str | None = None) -> Download:
    """Check space and record the download as queued; the daemon starts it (at once, unless
    `[models] max_downloads` are already running)."""
    busy = _active_dest(str(dest))
    if busy is not None:
        return busy  # the same thing is already downloading: report that one instead of racing it
    check_space(files, dest if dest.is_dir() else dest.parent)
    total = sum(f.size for f in files if f.size is not None) if all(f.size is not None for f in files) else None
    dl = Download(id=f"{datetime.now(timezone.utc):%m%d%H%M%S}-{secrets.token_hex(2)}", repo=repo,
                  revision=revision, commit=commit, dest=str(dest), entry=entry, key=key, files=files,
                  bytes_total=total, created_at=now_iso(), queued_t=time.time(), endpoint=hub_endpoint(),
                  quarantine_dir=str(models_dir() / ".quarantine"))
    client_token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if client_token:
        atomic_write_text(token_path(dl.id), client_token, mode=0o600)
    save(dl)
    _daemon()
    return dl


def pull_file(repo: str, path: str, *, revision: str = "main", dest: Path | None = None,
              sha256: str | None = None, entry: str | None = None, key: str | None = None) -> Download:
    dest, files, commit = plan_file(repo, path, revision, dest, sha256)
    return start(repo, files, dest, revision=revision, commit=commit, entry=entry, key=key)


def _plan_component(entry: Entry, comp: Component) -> tuple[Path, list[FileState], str | None]:
    if comp.repo is None:
        raise DownloadError(f"{entry.id}: {comp.key} has no Hub source; {entry.notes}", "manual")
    if comp.kind == "file":
        assert comp.file is not None
        return plan_file(comp.repo, comp.file, comp.revision, comp.local_path(), comp.sha256.get(comp.file))
    return plan_folder(comp)


def pull_component(entry: Entry, comp: Component) -> Download:
    dest, files, commit = _plan_component(entry, comp)
    assert comp.repo is not None
    return start(comp.repo, files, dest, revision=comp.revision, commit=commit, entry=entry.id, key=comp.key)


def pull_entry(entry: Entry, only_missing: bool = True) -> list[Download]:
    """Start one download per missing component (they run at once). Every component is checked first
    (access, files, space for all of them), so a failure starts nothing."""
    from engine.models.registry import component_status

    comps = [c for c in entry.components if not (only_missing and component_status(c)[0] == "present")]
    plans = [(c, *_plan_component(entry, c)) for c in comps]
    all_files = [f for _c, _d, files, _m in plans for f in files]
    if plans:
        first_dest = plans[0][1]
        check_space(all_files, first_dest if first_dest.is_dir() else first_dest.parent)
    out = []
    for comp, dest, files, commit in plans:
        assert comp.repo is not None
        out.append(start(comp.repo, files, dest, revision=comp.revision, commit=commit, entry=entry.id,
                         key=comp.key))
    return out


def remove_parts(dl: Download) -> None:
    for f in dl.files:
        with contextlib.suppress(FileNotFoundError):
            part_path(Path(f.dest)).unlink()


def cancel_marker_path(download_id: str) -> Path:
    """Written by the daemon only, for a running worker, which polls it (engine/models/supervisor.py)."""
    return state_path(download_id).with_suffix(".cancel")


def _ask(action: Action, download_id: str, wait_s: float = 30.0) -> None:
    """The daemon's answer to a download request; its refusal raised as DownloadError with the daemon's code."""
    from engine.jobs.client import send

    result = send(Request(action, arg=download_id), wait_s=wait_s)
    if not result.ok:
        raise DownloadError(result.message, result.code or "refused")


def cancel(download_id: str) -> Download:
    """Stop a download and delete its partials: at once when no worker runs, else the worker stops within a
    quarter second (the daemon signals it)."""
    get(download_id)  # "no download with id ..." before anything is asked
    _ask(Action.CANCEL_DOWNLOAD, download_id)
    return get(download_id)


def resume(download_id: str, timeout: float = 15.0) -> Download:
    """Continue a failed / cancelled / interrupted download from its partial files (the daemon requeues it)."""
    get(download_id)
    _ask(Action.RESUME_DOWNLOAD, download_id, timeout)
    return get(download_id)


def settled(dl: Download, daemon_running: bool) -> bool:
    """Will this download change no more by itself? A dead worker reads as interrupted until the daemon's
    next tick restarts or fails it, so with a daemon running, interrupted is not the end."""
    return dl.state not in LIVE and not (dl.state == "interrupted" and daemon_running)


def wait(download_id: str, timeout: float | None = None, poll: float = 0.2) -> Download:
    from engine.jobs.lock import daemon_pid

    end = None if timeout is None else time.monotonic() + timeout
    while True:
        dl = get(download_id)
        if settled(dl, daemon_pid() is not None):
            return dl
        if end is not None and time.monotonic() > end:
            raise TimeoutError(f"download {download_id} still {dl.state} after {timeout} s")
        time.sleep(poll)
