"""The daemon's health: failed ticks (a locked, full or broken store), their backoff, and how clients see them.

The daemon writes `daemon-health.json` (best effort: on a full disk it cannot) and logs to daemon.log; clients
add what they can see themselves (free space where the state lives), so `dpdeck daemon status` names the
cause even when the daemon could write nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from statefiles import paths
from statefiles.atomic import atomic_write_text

HEALTH_NAME = "daemon-health.json"
BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
LOG_EVERY_S = 60.0
LOW_DISK_BYTES = 64 * 2**20  # below this much free space SQLite and the logs start failing


def health_path() -> Path:
    return paths.state_dir() / HEALTH_NAME


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.Error) and "disk is full" in str(exc)


def describe(exc: BaseException) -> str:
    """One line a person can act on."""
    home = paths.state_dir()
    if is_disk_full(exc):
        free = shutil.disk_usage(home).free // 2**20
        return (f"the disk holding {home} is full (ENOSPC, {free} MiB free): dpdeck cannot record job state;"
                " free space there")
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return f"the store {paths.store_path()} stayed locked by another process for over 30 s ({exc})"
    if isinstance(exc, sqlite3.DatabaseError):
        return f"the store {paths.store_path()} failed: {exc} (if it persists: dpdeck doctor --repair)"
    return f"daemon tick failed: {exc!r}"


@dataclass
class Health:
    failures: int = 0
    since: float | None = None
    last_error: str | None = None
    disk_full: bool = False
    logged_at: float = 0.0
    _logged_error: str | None = None

    def failed(self, exc: BaseException) -> float:
        """Record a failed tick; the wait before the next one."""
        message = describe(exc)
        self.failures += 1
        self.since = self.since or time.time()
        self.disk_full = is_disk_full(exc)
        self.last_error = message
        return BACKOFF_S[min(self.failures - 1, len(BACKOFF_S) - 1)]

    def should_log(self) -> bool:
        now = time.monotonic()
        if self.last_error != self._logged_error or now - self.logged_at > LOG_EVERY_S:
            self._logged_error, self.logged_at = self.last_error, now
            return True
        return False

    def summary(self) -> str:
        return f"{self.last_error} ({self.failures} failed tick(s) since {time.strftime('%H:%M:%S', time.localtime(self.since or 0))})"

    def recovered(self) -> None:
        self.failures, self.since, self.last_error, self.disk_full = 0, None, None, False

    def save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if not k.startswith("_") and k != "logged_at"}
        with contextlib.suppress(OSError):
            atomic_write_text(health_path(), json.dumps(data), mode=0o600)


def problems() -> list[str]:
    """What a client can tell is wrong with the daemon's footing: its own report, and the disk."""
    out: list[str] = []
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(health_path().read_text())
        if data.get("failures"):
            out.append(f"{data.get('last_error')} ({data['failures']} failed tick(s))")
    home = paths.state_dir()
    with contextlib.suppress(OSError):
        usage = shutil.disk_usage(home)
        free = usage.free
        if free < min(LOW_DISK_BYTES, usage.total // 10) and not any("ENOSPC" in p for p in out):
            out.append(f"the disk holding {home} is nearly full ({free // 2**20} MiB free, ENOSPC):"
                       " job state cannot be recorded; free space there")
    return out
