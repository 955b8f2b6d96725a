"""Why did a job end? From the runner's exit code and the last lines of its log."""

from __future__ import annotations

import re

# Order matters: the most specific evidence wins.
PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("port_in_use", re.compile(r"EADDRINUSE|address already in use|DistNetworkError", re.I)),
    ("cuda_oom", re.compile(r"CUDA out of memory|torch\.OutOfMemoryError|OutOfMemoryError: CUDA", re.I)),
    ("nccl_timeout", re.compile(r"NCCL.*(timeout|Watchdog caught collective operation timeout)|ProcessGroupNCCL.*timed out", re.I)),
    ("missing_file", re.compile(r"FileNotFoundError|No such file or directory", re.I)),
    ("config_error", re.compile(r"KeyError|tomllib\.TOMLDecodeError|TOMLDecodeError|ValueError: .*config|ConfigError|ValidationError", re.I)),
    ("host_oom", re.compile(r"Killed|MemoryError|oom-kill", re.I)),
]

EVIDENCE_LINES = 20


def classify(returncode: int | None, tail: list[str], *, complete_seen: bool = False) -> str:
    """One of: completed, cuda_oom, host_oom, nccl_timeout, port_in_use, config_error, missing_file, crashed."""
    text = "\n".join(tail)
    if returncode == 0 and complete_seen:
        return "completed"
    for reason, pattern in PATTERNS:
        if pattern.search(text):
            if reason == "host_oom" and returncode not in (247, -9, 137) and "MemoryError" not in text:
                continue
            return reason
    if returncode in (247, -9, 137):
        return "host_oom"  # a rank was SIGKILLed: usually the kernel OOM killer
    if returncode == 250:
        return "nccl_timeout"
    if returncode == 0:
        # 0 without the completion line: launch.py itself was killed, or train.py quit early (>3 resolutions).
        return "crashed"
    return "crashed"


def state_for(reason: str) -> str:
    if reason == "completed":
        return "completed"
    if reason in ("cuda_oom", "host_oom"):
        return "oom"
    if reason == "cancelled":
        return "cancelled"
    if reason == "hung":
        return "hung"
    return "failed"


def evidence(tail: list[str]) -> list[str]:
    """The most telling lines: matches of the patterns first, then the last lines."""
    hits = [line for line in tail if any(p.search(line) for _, p in PATTERNS) or "Error" in line]
    picked = hits[-8:] + [line for line in tail[-EVIDENCE_LINES:] if line not in hits[-8:]]
    return picked[-EVIDENCE_LINES:]
