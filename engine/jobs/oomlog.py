"""Out-of-memory evidence from the kernel's log (/dev/kmsg): which of a job's processes the OOM killer took.

A SIGKILLed rank looks the same whether the kernel's OOM killer or a person sent the signal; only the kernel's
own record ("Out of memory: Killed process PID (name)", "oom-kill:...,pid=PID") tells them apart.
"""

from __future__ import annotations

import os
import re

import psutil

KILLED = re.compile(r"Killed process (\d+) \(([^)]*)\)")
OOM_KILL = re.compile(r"oom-kill:.*\bpid=(\d+)")
# Process names a job's ranks and launchers carry, for records of pids we never saw.
JOB_NAMES = re.compile(r"python|pt_main_thread|deepspeed|torchrun", re.I)


def _records() -> list[tuple[float, str]]:
    """(wall time, message) of every record still in the kernel's ring buffer; [] where it cannot be read."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    boot = psutil.boot_time()
    out: list[tuple[float, str]] = []
    try:
        while True:
            try:
                raw = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError:  # EPIPE: a record was overwritten while we read; the next read goes on
                continue
            if not raw:
                break
            head, _, message = raw.decode("utf-8", "replace").partition(";")
            fields = head.split(",")
            try:
                t = boot + int(fields[2]) / 1e6
            except (IndexError, ValueError):
                continue
            out.append((t, message.split("\n", 1)[0]))
    finally:
        os.close(fd)
    return out


def oom_kills(pids: set[int], since: float) -> list[str]:
    """Kernel lines recording an OOM kill of one of `pids` (or, for pids we never saw, of a python/deepspeed
    process) since `since` (wall time, with a second of slack for the kernel's clock)."""
    found: list[str] = []
    for t, message in _records():
        if t < since - 1:
            continue
        m = KILLED.search(message)
        if m:
            pid, name = int(m.group(1)), m.group(2)
            if pid in pids or (not pids and JOB_NAMES.search(name)):
                found.append(f"kernel: {message.strip()}")
            continue
        m = OOM_KILL.search(message)
        if m and int(m.group(1)) in pids:
            found.append(f"kernel: {message.strip()}")
    return found
