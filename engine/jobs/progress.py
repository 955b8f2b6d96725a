"""Turn a training log into progress: step, epoch, loss, lr, samples/s, run dir, saves, completion.

Understands both backends: the built-in trainer's `[dpdeck] {json}` lines and diffusion-pipe's console lines
(`steps: N loss: X iter time (s): T samples/sec: S`, `Started new epoch: E`, DeepSpeed's `lr=[...]`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

STEP_LINE = re.compile(
    r"steps:\s*(\d+)\s+loss:\s*([-+0-9.eEnaif]+)\s+iter time \(s\):\s*([0-9.eE+-]+)\s+samples/sec:\s*([0-9.eE+-]+)"
)
EPOCH_LINE = re.compile(r"Started new epoch:\s*(\d+)")
LR_LINE = re.compile(r"lr=\[([0-9.eE+\-, ]+)\]")
SAVE_LINE = re.compile(r"Saving model to directory (\S+)")
DPDECK_PREFIX = "[dpdeck] "
COMPLETE = "TRAINING COMPLETE!"


@dataclass
class Progress:
    step: int | None = None
    total_steps: int | None = None
    epoch: int | None = None
    total_epochs: int | None = None
    loss: float | None = None
    lr: float | None = None
    samples_per_s: float | None = None
    run_dir: str | None = None
    complete: bool = False
    saves: list[dict] = field(default_factory=list)
    new_metrics: list[dict] = field(default_factory=list)

    def take_metrics(self) -> list[dict]:
        out, self.new_metrics = self.new_metrics, []
        return out


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# What each progress key must hold: a trainer bug printing a string or a list there must change nothing
# (one bad value used to make every daemon tick fail).
PROGRESS_KEYS: dict[str, Callable[[object], bool]] = {
    "step": _is_int,
    "total_steps": _is_int,
    "epoch": _is_int,
    "total_epochs": _is_int,
    "loss": _is_number,
    "lr": _is_number,
    "samples_per_s": _is_number,
}


def _feed_event(progress: Progress, obj: dict, now: float) -> None:
    event = obj.get("event")
    if event == "progress":
        for key, valid in PROGRESS_KEYS.items():
            value = obj.get(key)
            if value is not None and valid(value):
                setattr(progress, key, value)
        _record(progress, now)
    elif event == "run_dir":
        if isinstance(obj.get("path"), str):
            progress.run_dir = obj["path"]
    elif event == "save":
        if isinstance(obj.get("path"), str):
            kind = obj.get("kind")
            progress.saves.append({"kind": kind if isinstance(kind, str) else "save", "path": obj["path"]})
    elif event == "complete":
        progress.complete = True


def feed_line(progress: Progress, line: str, now: float | None = None) -> None:
    now = time.time() if now is None else now
    idx = line.find(DPDECK_PREFIX)
    if idx >= 0:
        try:
            obj = json.loads(line[idx + len(DPDECK_PREFIX):])
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            _feed_event(progress, obj, now)
            return
    m = STEP_LINE.search(line)
    if m:
        step = int(m.group(1))
        if progress.step is None or step >= progress.step:
            progress.step = step
            progress.loss = _float(m.group(2))
            progress.samples_per_s = _float(m.group(4))
            _record(progress, now)
        return
    m = EPOCH_LINE.search(line)
    if m:
        progress.epoch = int(m.group(1))
        return
    m = LR_LINE.search(line)
    if m:
        first = m.group(1).split(",")[0]
        progress.lr = _float(first)
        return
    m = SAVE_LINE.search(line)
    if m:
        progress.saves.append({"kind": "save", "path": m.group(1)})
        return
    if COMPLETE in line:
        progress.complete = True


def _record(progress: Progress, now: float) -> None:
    if progress.step is None:
        return
    if progress.new_metrics and progress.new_metrics[-1]["step"] == progress.step:
        progress.new_metrics.pop()
    progress.new_metrics.append(
        {
            "step": progress.step,
            "epoch": progress.epoch,
            "loss": progress.loss,
            "lr": progress.lr,
            "samples_per_s": progress.samples_per_s,
            "t": now,
        }
    )


class LogFollower:
    """Reads new complete lines from a growing log file (handles `\\r` progress bars as line ends).

    Never blocks and never grows without bound: a FIFO or device in place of the log is not read (an open()
    on a FIFO would stall the whole daemon), and a line longer than MAX_LINE is cut there.
    """

    MAX_LINE = 64 * 1024
    CHUNK = 4 * 1024 * 1024
    # At a job's end at most this much unread log is parsed: the end of a run (last step, completion line)
    # is what classifies it, and a job that printed gigabytes at the end must not stall the daemon.
    END_TAIL = 8 * 1024 * 1024

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self._partial = b""
        self._skip_to_newline = False  # after a jump into the tail: its first, cut line is dropped

    def _read(self, max_bytes: int, *, tail_only: bool = False) -> bytes:
        fd = open_regular(self.path)
        if fd is None:
            return b""
        try:
            if tail_only:
                size = os.fstat(fd).st_size
                if size - self.offset > self.END_TAIL:
                    self.offset = size - self.END_TAIL
                    self._partial = b""
                    self._skip_to_newline = True
            data = os.pread(fd, max_bytes, self.offset)
        finally:
            os.close(fd)
        self.offset += len(data)
        return data

    def _split(self, data: bytes) -> list[str]:
        data = self._partial + data
        parts = re.split(rb"\r\n|\n|\r", data)
        self._partial = parts.pop()
        if self._skip_to_newline and parts:
            parts.pop(0)  # the cut line before the tail we jumped to
            self._skip_to_newline = False
        if len(self._partial) > self.MAX_LINE:
            parts.append(self._partial[: self.MAX_LINE])
            self._partial = b""
        return [p[: self.MAX_LINE].decode("utf-8", "replace") for p in parts]

    def read_lines(self, max_bytes: int = CHUNK) -> list[str]:
        data = self._read(max_bytes)
        return self._split(data) if data else []

    def read_to_end(self) -> Iterator[str]:
        """Every line up to the end of the file (at most END_TAIL of it): for the final read at a job's end."""
        first = True
        while True:
            data = self._read(self.CHUNK, tail_only=first)
            first = False
            if not data:
                break
            yield from self._split(data)
        if self._partial:
            yield self._partial[: self.MAX_LINE].decode("utf-8", "replace")
            self._partial = b""


def open_regular(path: Path) -> int | None:
    """A read-only fd on `path` when it is a regular file (not a FIFO, device or symlink), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def rank_log(job_dir: Path, rank: int) -> Path | None:
    """Rank N's log in the job folder: the newest regular `*_rankN.log` (never a FIFO or link planted there)."""
    found: list[tuple[float, Path]] = []
    with contextlib.suppress(OSError):
        for path in (job_dir / "ranks").glob(f"*_rank{rank}.log"):
            with contextlib.suppress(OSError):
                st = path.lstat()
                if stat.S_ISREG(st.st_mode):
                    found.append((st.st_mtime, path))
    return max(found)[1] if found else None


def log_tail(job_dir: Path, lines: int = 200) -> list[str]:
    """The last lines of a job's logs (launcher, then each rank's), from at most 64 KiB of each."""
    out: list[str] = []
    files = [job_dir / "output.log"]
    if (job_dir / "ranks").is_dir():
        files += sorted((job_dir / "ranks").glob("*.log"))
    for f in files:
        fd = open_regular(f)  # never a FIFO: an open() on one would block the daemon
        if fd is None:
            continue
        try:
            size = os.fstat(fd).st_size
            data = os.pread(fd, 64 * 1024, max(0, size - 64 * 1024))
        finally:
            os.close(fd)
        out += data.decode("utf-8", "replace").replace("\r", "\n").splitlines()[-lines:]
    return out[-lines:]


def read_regular(path: Path, limit: int = 1 << 20) -> bytes | None:
    """The first `limit` bytes of a small regular file (exit.json, child.json), or None."""
    fd = open_regular(path)
    if fd is None:
        return None
    try:
        return os.pread(fd, limit, 0)
    finally:
        os.close(fd)


def estimate_total_steps(steps_per_epoch: int | None, epochs: int | None) -> int | None:
    if steps_per_epoch and epochs:
        return steps_per_epoch * epochs
    return None


def eta_seconds(step: int | None, total_steps: int | None, started_at: float | None, first_step_at: float | None,
                samples_per_s: float | None = None, global_batch: int | None = None,
                now: float | None = None) -> float | None:
    """Remaining time from observed speed: wall time per step since the first step, else samples/s."""
    if step is None or not total_steps or step >= total_steps:
        return 0.0 if step is not None and total_steps and step >= total_steps else None
    now = time.time() if now is None else now
    remaining = total_steps - step
    if first_step_at is not None and step > 1:
        per_step = (now - first_step_at) / max(step - 1, 1)
        return remaining * per_step
    if samples_per_s and global_batch:
        return remaining * global_batch / samples_per_s
    return None
