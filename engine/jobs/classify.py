"""Why did a job end? From the runner's exit code, the last lines of its log and the kernel's OOM records."""

from __future__ import annotations

import re

from engine.jobs.job import JobState

# Order matters: the most specific evidence wins.
PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("port_in_use", re.compile(r"EADDRINUSE|address already in use|DistNetworkError", re.I)),
    ("cuda_oom", re.compile(r"CUDA out of memory|torch\.OutOfMemoryError|OutOfMemoryError: CUDA", re.I)),
    ("nccl_timeout", re.compile(r"NCCL.*(timeout|Watchdog caught collective operation timeout)|ProcessGroupNCCL.*timed out", re.I)),
    ("disk_full", re.compile(r"No space left on device|ENOSPC|database or disk is full", re.I)),
    ("missing_file", re.compile(r"FileNotFoundError|No such file or directory", re.I)),
    ("config_error", re.compile(r"KeyError|tomllib\.TOMLDecodeError|TOMLDecodeError|ValueError: .*config|ConfigError|ValidationError", re.I)),
    ("host_oom", re.compile(r"\bMemoryError\b|oom-kill|Out of memory: Killed process", re.I)),
]

# Exit codes that mean "a process of the job died of SIGKILL": the runner's own -9/137, or 247 from launch.py
# when a rank was SIGKILLed. The kernel OOM killer is one cause, a person or another tool the other: only an
# OOM record (kernel log, the job's cgroup) makes it an OOM.
SIGKILL_CODES = (247, -9, 137)

# Reason -> final state; anything not listed is `failed`.
STATES: dict[str, JobState] = {
    "completed": JobState.COMPLETED,
    # Stopped on purpose with its checkpoint saved (diffusion-pipe's `Manually quitting`): resumable, no crash.
    "save_quit": JobState.CANCELLED,
    "cuda_oom": JobState.OOM,
    "host_oom": JobState.OOM,
    "cancelled": JobState.CANCELLED,
    "hung": JobState.HUNG,
    "interrupted": JobState.INTERRUPTED,
}

EVIDENCE_LINES = 20


# Reasons whose run saved what it had to: no evidence of a failure is kept for them.
CLEAN_ENDS = frozenset({"completed", "save_quit"})


def classify(returncode: int | None, tail: list[str], *, complete_seen: bool = False,
             oom_evidence: list[str] | None = None, manual_quit: bool = False) -> str:
    """One of: completed, save_quit, cuda_oom, host_oom, nccl_timeout, port_in_use, disk_full, config_error,
    missing_file, killed, crashed."""
    if complete_seen:
        # Training finished and its last save is on disk: a launcher killed or failing in the cleanup after
        # `TRAINING COMPLETE!` does not undo that (the daemon records how the exit went as an event).
        return "completed"
    if manual_quit:
        # `Manually quitting` is printed after the save_quit checkpoint, right before sys.exit(): exit 0
        # without the completion line, which is otherwise a crash.
        return "save_quit"
    text = "\n".join(tail)
    for reason, pattern in PATTERNS:
        if pattern.search(text):
            return reason
    if returncode in SIGKILL_CODES:
        return "host_oom" if oom_evidence else "killed"
    if returncode == 250:
        return "nccl_timeout"
    # 0 without the completion line: launch.py itself was killed, or train.py quit early (>3 resolutions).
    return "crashed"


def state_for(reason: str) -> JobState:
    return STATES.get(reason, JobState.FAILED)


def kill_note(returncode: int | None, oom_evidence: list[str]) -> list[str]:
    """The line that says how a SIGKILLed job died, for its evidence."""
    if returncode not in SIGKILL_CODES:
        return []
    if oom_evidence:
        return oom_evidence[-3:]
    who = "the launcher" if returncode in (-9, 137) else "a rank"
    return [f"{who} was killed by signal 9 (SIGKILL); no out-of-memory record in the kernel log or the job's cgroup"]


def evidence(tail: list[str]) -> list[str]:
    """The most telling lines: matches of the patterns first, then the last lines."""
    hits = [line for line in tail if any(p.search(line) for _, p in PATTERNS) or "Error" in line]
    picked = hits[-8:] + [line for line in tail[-EVIDENCE_LINES:] if line not in hits[-8:]]
    return picked[-EVIDENCE_LINES:]
