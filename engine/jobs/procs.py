"""Our processes: every process of a job carries DPDECK_JOB=<id> and DPDECK_HOME=<state dir> in its environment,
and, where the machine allows it, sits in the job's cgroup (engine/jobs/cgroup.py), which no descendant can
leave however it detaches (`env -i`, setsid). A process in a job's cgroup is that job's even without the marker.

Identity is pid + create_time + (marker or cgroup); nothing without either (for this state dir) is signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from statefiles import paths

MARKER = "DPDECK_JOB"


@dataclass(frozen=True)
class Marked:
    pid: int
    create_time: float
    job_id: int
    name: str
    pgid: int | None


def marker_env(job_id: int) -> dict[str, str]:
    # state_dir() is canonical (absolute, symlinks resolved): one spelling, whatever cwd the job runs in.
    return {MARKER: str(job_id), "DPDECK_HOME": str(paths.state_dir())}


def _marker_of(proc: psutil.Process, home: str) -> int | None:
    try:
        env = proc.environ()
    except (psutil.Error, OSError):
        return None
    value = env.get(MARKER)
    spelled = env.get("DPDECK_HOME")
    if value is None or spelled is None:
        return None
    # Compare folders, not spellings (`home` is canonical): a job started before state dirs were canonical may
    # spell ours through a symlink, and must still be found by cancel and reclaim.
    if spelled != home and not (os.path.isabs(spelled) and str(paths.canonical(spelled)) == home):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def marker_of_pid(pid: int) -> int | None:
    """The job this process belongs to (by cgroup, else by marker for this state dir), or None if not ours."""
    by_cgroup = _cgroup_job_of(pid)
    if by_cgroup is not None:
        return by_cgroup
    try:
        return _marker_of(psutil.Process(pid), str(paths.state_dir()))
    except psutil.Error:
        return None


def _cgroup_job_of(pid: int) -> int | None:
    from engine.jobs import cgroup

    try:
        return cgroup.job_of(pid)
    except (OSError, ValueError):
        return None


def _cgroup_members(job_id: int | None = None) -> dict[int, int]:
    """pid -> job id for the processes in our job cgroups (empty where cgroups are not in use)."""
    from engine.jobs import cgroup

    try:
        if job_id is not None:
            return {pid: job_id for pid in cgroup.members(job_id)}
        return cgroup.all_members()
    except (OSError, ValueError):
        return {}


def marked_processes(job_id: int | None = None) -> list[Marked]:
    """Every live process of ours for this state dir (optionally of one job): by cgroup, else by marker."""
    home = str(paths.state_dir())
    me = os.getpid()
    by_cgroup = _cgroup_members(job_id)
    found: list[Marked] = []
    for proc in psutil.process_iter(["pid", "name", "create_time"]):
        if proc.info["pid"] == me:
            continue
        # The cgroup cannot be shed; the env marker can (env -i), so the cgroup decides when there is one.
        marker = by_cgroup.get(proc.info["pid"])
        if marker is None:
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
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _still_ours(m: Marked) -> bool:
    return is_same_process(m.pid, m.create_time)


def kill_marked(victims: list[Marked], grace_s: float = 5.0) -> list[Marked]:
    """SIGTERM the victims' process groups (and each victim), wait, SIGKILL what is left; returns survivors.

    A group is signalled only when every live member of it is ours (marker or job cgroup), so a foreign
    process that happens to share a group is never hit. Victims are whole jobs' processes (as
    marked_processes lists them): in the KILL phase their jobs' cgroups are killed as a whole, which also
    takes what forked since the list was made. Torch extension build locks the victims held are cleared
    after them, so a kill during a first-launch op build never leaves the next job waiting on the lock.
    """
    if not victims:
        return []
    home = str(paths.state_dir())
    ours_by_cgroup = set(_cgroup_members())
    held = _build_locks_of({m.pid for m in victims})

    def group_is_ours(pgid: int) -> bool:
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(proc.pid) != pgid:
                    continue
            except OSError:
                continue
            if proc.pid in ours_by_cgroup:
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
        _kill_cgroups({m.job_id for m in victims})
        signal_all(signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(_still_ours(m) for m in victims):
            _reap_children()
            time.sleep(0.05)
    _reap_children()
    survivors = [m for m in victims if _still_ours(m)]
    if held:
        _clear_build_locks(held)
    return survivors


def _kill_cgroups(job_ids: set[int]) -> None:
    from engine.jobs import cgroup

    for job_id in sorted(job_ids):
        with contextlib.suppress(OSError):
            cgroup.kill(job_id, timeout=2.0)


def _build_locks_of(pids: set[int]) -> list[Path]:
    from engine.jobs import oplock

    try:
        return oplock.locks_held_by(pids)
    except OSError:
        return []


def _clear_build_locks(locks: list[Path]) -> None:
    from engine.jobs import oplock

    with contextlib.suppress(OSError):
        oplock.clear_stale(locks)


def drop_job_cgroups(live: set[int]) -> list[int]:
    """Kill what is left in the cgroups of jobs that are not live and remove those cgroups; returns their ids."""
    from engine.jobs import cgroup

    dropped: list[int] = []
    for job_id in cgroup.job_ids():
        if job_id in live:
            continue
        with contextlib.suppress(OSError):
            cgroup.kill(job_id, timeout=2.0)
            if cgroup.remove(job_id):
                dropped.append(job_id)
    return dropped


def _reap_children() -> None:
    """Collect exit statuses of our own dead children so they do not linger as zombies."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
