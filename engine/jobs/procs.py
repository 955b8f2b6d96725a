"""Our processes: every process of a job carries DPDECK_JOB=<id> and DPDECK_HOME=<state dir> in its environment.

Identity is pid + create_time + marker; nothing without our marker (for this state dir) is ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass

import psutil

from profiles import paths

MARKER = "DPDECK_JOB"


@dataclass(frozen=True)
class Marked:
    pid: int
    create_time: float
    job_id: int
    name: str
    pgid: int | None


def marker_env(job_id: int) -> dict[str, str]:
    return {MARKER: str(job_id), "DPDECK_HOME": str(paths.state_dir())}


def _marker_of(proc: psutil.Process, home: str) -> int | None:
    try:
        env = proc.environ()
    except (psutil.Error, OSError):
        return None
    value = env.get(MARKER)
    if value is None or env.get("DPDECK_HOME") != home:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def marker_of_pid(pid: int) -> int | None:
    """The job id in this process's marker (for this state dir), or None for anything not ours."""
    try:
        return _marker_of(psutil.Process(pid), str(paths.state_dir()))
    except psutil.Error:
        return None


def marked_processes(job_id: int | None = None) -> list[Marked]:
    """Every live process carrying our marker for this state dir (optionally for one job)."""
    home = str(paths.state_dir())
    me = os.getpid()
    found: list[Marked] = []
    for proc in psutil.process_iter(["pid", "name", "create_time"]):
        if proc.info["pid"] == me:
            continue
        marker = _marker_of(proc, home)
        if marker is None or (job_id is not None and marker != job_id):
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            pgid = os.getpgid(proc.pid)
        except (psutil.Error, OSError):
            pgid = None
        found.append(Marked(proc.pid, proc.info["create_time"], marker, proc.info["name"] or "", pgid))
    return found


def is_same_process(pid: int | None, create_time: float | None) -> bool:
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 0.01:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _still_ours(m: Marked) -> bool:
    return is_same_process(m.pid, m.create_time)


def kill_marked(victims: list[Marked], grace_s: float = 5.0) -> list[Marked]:
    """SIGTERM the victims' process groups (and each victim), wait, SIGKILL what is left; returns survivors.

    A group is signalled only when every live member of it carries our marker, so a foreign process that
    happens to share a group is never hit.
    """
    if not victims:
        return []
    home = str(paths.state_dir())

    def group_is_ours(pgid: int) -> bool:
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(proc.pid) != pgid:
                    continue
            except OSError:
                continue
            if proc.pid != os.getpid() and _marker_of(proc, home) is None:
                try:
                    if proc.status() == psutil.STATUS_ZOMBIE:
                        continue
                except psutil.Error:
                    continue
                return False
        return True

    def signal_all(sig: int) -> None:
        groups = {m.pgid for m in victims if m.pgid and m.pgid != os.getpgid(0)}
        for pgid in groups:
            if group_is_ours(pgid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, sig)
        for m in victims:
            if _still_ours(m):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(m.pid, sig)

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_still_ours(m) for m in victims):
        _reap_children()
        time.sleep(0.1)
    if any(_still_ours(m) for m in victims):
        signal_all(signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(_still_ours(m) for m in victims):
            _reap_children()
            time.sleep(0.05)
    _reap_children()
    return [m for m in victims if _still_ours(m)]


def _reap_children() -> None:
    """Collect exit statuses of our own dead children so they do not linger as zombies."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
