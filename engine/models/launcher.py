"""Start one download worker process for the daemon, handing it the download's lock.

Fast path: fork the daemon. The daemon has imported the worker's modules (huggingface_hub, httpx) once, so a
forked worker is transferring within milliseconds instead of the ~0.4 s a fresh interpreter spends importing
them (a third of the time of a 1 GB transfer on a fast link). The child starts a new session, closes every
inherited descriptor except stdio and the lock (the daemon's own lock, store and FIFO must not outlive the
daemon in a worker), and leaves with os._exit so none of the daemon's cleanup runs in it.
Fork is only safe in a single-threaded parent; with other threads alive it falls back to posix_spawn of
`python -m engine.models.worker ID --lock-fd N`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from engine.models.downloads import downloads_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
MARKER = "DPDECK_DOWNLOAD"  # in every worker's environment: which download it serves
SPAWN_T = "DPDECK_SPAWN_T"  # when the daemon started the worker (time.time())


def preload() -> None:
    """Import what a worker needs, in the daemon, once (so forks start warm)."""
    from engine.models import worker

    worker.preload()


def launch(download_id: str, lock_fd: int) -> int:
    """Start the worker for `download_id`; it inherits `lock_fd` (the caller closes its copy). Returns its pid."""
    log = downloads_dir() / f"{download_id}.log"
    if threading.active_count() == 1:
        return _fork(download_id, lock_fd, log)
    return _spawn(download_id, lock_fd, log)


def _fork(download_id: str, lock_fd: int, log: Path) -> int:
    preload()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # else the child would write the parent's buffered text a second time
    os.environ[SPAWN_T] = repr(time.time())  # copied into the child: its start-up time is measured from here
    pid = os.fork()
    if pid:
        del os.environ[SPAWN_T]
        return pid
    code = 70
    try:
        os.setsid()  # a session of its own: no terminal, no SIGHUP from a closing ssh session
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # state files are private
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.closerange(3, lock_fd)
        os.closerange(lock_fd + 1, 1 << 16)
        os.environ[MARKER] = download_id
        from engine.models import worker

        code = worker.main([download_id, "--lock-fd", str(lock_fd)])
    except BaseException:  # noqa: BLE001 - whatever happens, never return into the daemon's code
        import traceback

        traceback.print_exc()
    finally:
        with_flush = (sys.stdout, sys.stderr)
        for stream in with_flush:
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
        os._exit(code)


def _spawn(download_id: str, lock_fd: int, log: Path) -> int:
    os.set_inheritable(lock_fd, True)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        env = dict(os.environ)
        env[MARKER] = download_id
        env[SPAWN_T] = repr(time.time())
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        return os.posix_spawn(
            sys.executable,
            [sys.executable, "-m", "engine.models.worker", download_id, "--lock-fd", str(lock_fd)],
            env,
            file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                          (os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_DUP2, out, 2)],
            setsid=True,
            setsigdef=(signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1),
        )
    finally:
        os.close(out)
        os.set_inheritable(lock_fd, False)
