"""Wake the daemon now instead of at its next tick: a FIFO in the state dir.

A new download should start within milliseconds of `pull`, not up to a tick later (on a 1 GB file that tick is
a third of the transfer). A FIFO rather than a signal: a signal sent in the instant between the daemon taking
its lock and installing a handler would kill it, and a FIFO path has no AF_UNIX length limit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import stat
from pathlib import Path

from statefiles.paths import state_dir

FIFO_NAME = "daemon.wake"


def fifo_path() -> Path:
    return state_dir() / FIFO_NAME


class Wake:
    """The daemon's end: `wait(timeout)` returns early when a client pokes."""

    def __init__(self) -> None:
        path = fifo_path()
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISFIFO(path.lstat().st_mode):
                path.unlink()  # something else squats the name: a FIFO must be there
        with contextlib.suppress(FileExistsError):
            os.mkfifo(path, 0o600)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        # Our own writer keeps the FIFO open: without one, select reports EOF (readable) forever after the
        # first client closes, and the loop would spin.
        self.keep = os.open(path, os.O_WRONLY | os.O_NONBLOCK)

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` s; True when poked (the pokes are drained)."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return False
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 4096):
                pass
        return True

    def close(self) -> None:
        for fd in (self.fd, self.keep):
            with contextlib.suppress(OSError):
                os.close(fd)


def poke() -> bool:
    """Wake the daemon if one listens; never blocks, never fails (the daemon's tick catches up anyway)."""
    try:
        fd = os.open(fifo_path(), os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno not in (errno.ENXIO, errno.ENOENT, errno.EACCES):
            raise
        return False  # no daemon reading
    try:
        with contextlib.suppress(BlockingIOError):  # a full pipe already holds a poke
            os.write(fd, b"!")
    finally:
        os.close(fd)
    return True
