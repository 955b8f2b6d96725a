"""Per-job shim: `python -m engine.jobs.shim JOB_DIR`.

Started by the daemon in a new session. It becomes a child subreaper (so ranks orphaned by a dying launcher
re-parent to it, not to init), runs the launcher with output to the job's log file, and when the launcher
ends it terminates whatever is left of its own process group, reaps everything, and writes `exit.json`
atomically. The daemon can die at any time; the shim's record of the exit survives it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from profiles.atomic import atomic_write_text

PR_SET_CHILD_SUBREAPER = 36


def set_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
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


def _clean_group() -> None:
    """TERM then KILL every other process left in our group (orphaned ranks), reaping as we go."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 3.0)):
        members = _group_members()
        if not members:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_members():
            _reap_all(0.1)


def main(argv: list[str]) -> int:
    job_dir = Path(argv[0])
    spec = json.loads((job_dir / "launch.json").read_text())
    attempt_dir = Path(spec["attempt_dir"])
    set_subreaper()
    # The daemon may die; a SIGHUP from a closing terminal must not take the job with it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stopping = {"sig": None}

    def forward(signum: int, _frame: object) -> None:
        stopping["sig"] = signum
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)

    log = open(spec["log"], "ab", buffering=0)  # noqa: SIM115 - held for the child's lifetime
    env = dict(os.environ)
    env.update(spec["env"])
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
    log.close()
    atomic_write_text(
        attempt_dir / "exit.json",
        json.dumps(
            {
                "returncode": returncode,
                "started_at": started,
                "ended_at": time.time(),
                "signal": stopping["sig"],
            }
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
