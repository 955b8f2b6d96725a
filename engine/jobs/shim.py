"""Per-job shim: `python -m engine.jobs.shim JOB_DIR`.

Started by the daemon in a new session. It becomes a child subreaper (so ranks orphaned by a dying launcher
re-parent to it, not to init), joins the job's cgroup where the machine allows it (engine/jobs/cgroup.py), runs
the launcher with output to the job's log file, and when the launcher ends it terminates whatever is left of
the job (cgroup, process group, descendants), reaps everything, and writes `exit.json` atomically. The daemon
can die at any time; the shim's record of the exit survives it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engine import proctitle
from engine.jobs import cgroup
from engine.jobs.record import take_secrets
from statefiles.atomic import atomic_write_text

PR_SET_CHILD_SUBREAPER = 36


def set_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _reap_all(timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)


def _group_members() -> list[int]:
    pgid = os.getpgid(0)
    me = os.getpid()
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rfind(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return members


def _descendants() -> list[int]:
    """Every live process below us by parent pid: orphans re-parent to us (the subreaper) even after setsid."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rfind(")") + 2:].split()
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    found: list[int] = []
    todo = [os.getpid()]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _leftovers() -> list[int]:
    me = os.getpid()
    pids = set(_group_members()) | set(_descendants())
    if _TRACK.get("joined"):
        pids |= set(cgroup.members(_TRACK["job"]))
    pids.discard(me)
    return sorted(pids)


def _clean_group() -> None:
    """TERM then KILL everything left of the job (orphaned ranks, detached grandchildren), reaping as we go.

    Left means: in the job's cgroup, in our process group, or below us by parent pid. Then the cgroup goes.
    """
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 3.0)):
        members = _leftovers()
        if not members:
            break
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _leftovers():
            _reap_all(0.1)
    _drop_cgroup()


_TRACK: dict[str, Any] = {}  # the job's cgroup: {"job": id, "origin": our cgroup before, "joined": bool, "dir": job dir}


def _join_cgroup(job_dir: Path) -> None:
    """Enter the job's cgroup before anything is started, so every descendant inherits it."""
    raw = os.environ.get("DPDECK_JOB", "")
    if not raw.isdigit():
        return
    origin = cgroup.cgroup_of()
    joined = cgroup.join(int(raw))
    _TRACK.update(job=int(raw), origin=origin, joined=joined, dir=job_dir)
    with contextlib.suppress(OSError):
        (job_dir / "cgroup.json").unlink(missing_ok=True)


def _drop_cgroup() -> None:
    """Step back out of the job's cgroup, kill whatever is still in it, remove it, and record its OOM kills."""
    if not _TRACK.get("joined"):
        return
    job = _TRACK["job"]
    path = cgroup.job_cgroup(job, create=False)
    oom = cgroup.oom_kills(job)
    if _TRACK["origin"]:
        cgroup.leave(_TRACK["origin"])
    left = cgroup.kill(job, timeout=3.0)
    _reap_all(0.2)
    removed = cgroup.remove(job)
    with contextlib.suppress(OSError):
        atomic_write_text(_TRACK["dir"] / "cgroup.json", json.dumps(
            {"cgroup": str(path), "oom_kills": oom, "removed": removed, "survivors": left}))


def main(argv: list[str]) -> int:
    job_dir = Path(argv[0])
    _join_cgroup(job_dir)  # first of all: nothing we start may be outside the job's cgroup
    proctitle.set_title("shim", job=job_dir.name)
    spec = json.loads((job_dir / "launch.json").read_text())
    attempt_dir = Path(spec["attempt_dir"])
    set_subreaper()
    # The daemon may die; a SIGHUP from a closing terminal must not take the job with it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stopping: dict[str, int | None] = {"sig": None}

    def forward(signum: int, _frame: object) -> None:
        stopping["sig"] = signum
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)

    log = open(spec["log"], "ab", buffering=0)  # noqa: SIM115 - held for the child's lifetime
    env = dict(os.environ)
    env.update(spec["env"])
    # The job's secrets reach the launcher's environment only: their file is deleted before anything starts.
    env.update(take_secrets(job_dir))
    started = time.time()
    try:
        child = subprocess.Popen(
            spec["argv"], cwd=spec["cwd"], env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    except OSError as exc:
        log.write(f"dpdeck: cannot start {spec['argv'][0]}: {exc}\n".encode())
        atomic_write_text(
            attempt_dir / "exit.json",
            json.dumps({"returncode": 127, "started_at": started, "ended_at": time.time(), "error": str(exc)}),
        )
        return 127
    atomic_write_text(attempt_dir / "child.json", json.dumps({"pid": child.pid, "started_at": started}))
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        try:
            returncode = child.wait()
            break
        except InterruptedError:
            continue
    _clean_group()
    _reap_all(0.5)
    with contextlib.suppress(OSError):  # a full disk fails the flush of the last lines; the exit still counts
        log.close()
    record = {"returncode": returncode, "started_at": started, "ended_at": time.time(), "signal": stopping["sig"]}
    write_exit(attempt_dir / "exit.json", record)
    return 0


def write_exit(path: Path, record: dict[str, Any]) -> None:
    """exit.json, retried while the disk is full: the job's end must be recorded once space is back, or the
    daemon would only know that the shim vanished. The shim stays alive (so the job reads as live) meanwhile."""
    delay = 0.5
    while True:
        try:
            atomic_write_text(path, json.dumps(record))
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            with contextlib.suppress(OSError):
                print(f"dpdeck shim: cannot write {path} ({exc.strerror}); retrying", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
