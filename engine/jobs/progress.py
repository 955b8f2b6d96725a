"""Turn a training log into progress: step, epoch, loss, lr, samples/s, run dir, saves, completion.

Understands both backends: the built-in trainer's `[dpdeck] {json}` lines and diffusion-pipe's console lines
(`steps: N loss: X iter time (s): T samples/sec: S`, `Started new epoch: E`, DeepSpeed's `lr=[...]`).
"""

from __future__ import annotations

import json
import re
import time
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


def feed_line(progress: Progress, line: str, now: float | None = None) -> None:
    now = time.time() if now is None else now
    idx = line.find(DPDECK_PREFIX)
    if idx >= 0:
        try:
            obj = json.loads(line[idx + len(DPDECK_PREFIX):])
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            event = obj.get("event")
            if event == "progress":
                for key in ("step", "total_steps", "epoch", "total_epochs", "loss", "lr", "samples_per_s"):
                    if obj.get(key) is not None:
                        setattr(progress, key, obj[key])
                _record(progress, now)
            elif event == "run_dir":
                progress.run_dir = obj.get("path")
            elif event == "save":
                progress.saves.append({"kind": obj.get("kind"), "path": obj.get("path")})
            elif event == "complete":
                progress.complete = True
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
    """Reads new complete lines from a growing log file (handles `\\r` progress bars as line ends)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self._partial = b""

    def read_lines(self, max_bytes: int = 4 * 1024 * 1024) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read(max_bytes)
        except FileNotFoundError:
            return []
        if not data:
            return []
        self.offset += len(data)
        data = self._partial + data
        parts = re.split(rb"\r\n|\n|\r", data)
        self._partial = parts.pop()
        return [p.decode("utf-8", "replace") for p in parts]


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
