"""The daemon's lock: one daemon per state dir, held as an flock on `daemon.lock` for the daemon's life.

A deleted or replaced lock file would let a second daemon lock a new inode while the first still runs, so the
daemon re-checks its lock every tick (as PostgreSQL re-checks postmaster.pid) and leaves when it lost it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from statefiles import paths

LOCK_NAME = "daemon.lock"


def lock_path() -> Path:
    return paths.state_dir() / LOCK_NAME


def log_path() -> Path:
    return paths.state_dir() / "daemon.log"


def try_flock(path: Path) -> int | None:
    """An exclusive flock on `path` (created 0600, never through a symlink) as an fd to keep open, or None while
    another process holds it. The kernel drops the lock when its holder dies, so a held lock means a live owner."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def acquire_lock() -> int | None:
    """The daemon lock (an fd to hold for the daemon's life); None when another daemon holds it."""
    fd = try_flock(lock_path())
    if fd is None:
        return None
    if not still_holds(fd):
        # Another daemon replaced the file between our open and our flock: the inode we locked is no one's.
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def still_holds(fd: int) -> bool:
    """True while the path `daemon.lock` still names the inode this fd locked."""
    try:
        on_disk = os.stat(lock_path(), follow_symlinks=False)
        held = os.fstat(fd)
    except OSError:
        return False
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def daemon_pid() -> int | None:
    """The pid of the daemon holding this state dir's lock, or None."""
    path = lock_path()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            with contextlib.suppress(ValueError, OSError):
                return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
