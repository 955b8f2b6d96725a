"""Turn a training log into progress: step, epoch, loss, lr, samples/s, run dir, saves, samples, completion.

Understands both backends: the built-in trainer's `[dpdeck] {json}` lines and the console of diffusion-pipe's
train.py (upstream tdrussell/diffusion-pipe at commit 8f83dbf, with the DeepSpeed lines it triggers):

- `steps: N loss: X [name: Y ...] iter time (s): T samples/sec: S`: DeepSpeed's PipelineEngine.train_batch,
  every `steps_per_print` steps (extra losses sit between loss and iter time);
- `[Rank 0] step=N, skipped=K, lr=[a, b], mom=[...]`: DeepSpeed's _report_progress; with
  `gradient_release` train.py prints `lr=a` without brackets (its own _report_progress);
- `Started new epoch: E` (utils/saver.py process_epoch): only from epoch 2 on. A fresh run is in epoch 1 from
  its first step; a resumed one in the epoch of `Resuming training from checkpoint. Resuming at epoch: E,
  step: S` (train.py). Steps per epoch follow from where two epochs started, and with `epochs` the total;
- `Saving model to directory NAME` (NAME relative to the run folder: epoch3, step500) and DeepSpeed's
  `Saving model checkpoint: RUN/global_stepN/...`;
- `Manually quitting` (utils/saver.py: the `save_quit` file; a checkpoint was saved just before) and
  `TRAINING COMPLETE!`.
Eval and epoch losses never reach the console: engine/jobs/tb_events.py reads them from TensorBoard events.
"""

from __future__ import annotations

import contextlib
import json
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statefiles.logtail import last_lines

_NUM = r"[-+0-9.eEnaif]+"
STEP_LINE = re.compile(
    rf"steps:\s*(\d+)\s+loss:\s*({_NUM})\s+(?:\S+:\s*{_NUM}\s+)*?iter time \(s\):\s*([0-9.eE+-]+)"
    r"\s+samples/sec:\s*([0-9.eE+-]+)"
)
EPOCH_LINE = re.compile(r"Started new epoch:\s*(\d+)")
RESUME_LINE = re.compile(r"Resuming training from checkpoint\. Resuming at epoch:\s*(\d+),\s*step:\s*(\d+)")
# `lr=[0.0001, 0.0001]` (one per param group) or, with gradient_release, `lr=0.0001`.
LR_LINE = re.compile(r"\blr=\[?\s*([0-9.eE+\-]+)")
SAVE_LINE = re.compile(r"Saving model to directory (\S+)")
CHECKPOINT_LINE = re.compile(r"Saving model checkpoint:\s*(\S+)")
DPDECK_PREFIX = "[dpdeck] "
COMPLETE = "TRAINING COMPLETE!"
MANUAL_QUIT = "Manually quitting"
# The lines that say a run saved its checkpoint on save_quit and exited: diffusion-pipe's, and the built-in
# trainer's (engine/trainer/main.py), which without this ended a `dpdeck stop` as `cancelled`, not `save_quit`.
MANUAL_QUIT_LINES = (MANUAL_QUIT, "save_quit: checkpoint written, exiting")


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
    # `Manually quitting`: the run saved a checkpoint on save_quit and exited; it ends resumable.
    manual_quit: bool = False
    saves: list[dict[str, Any]] = field(default_factory=list)
    # Where epochs began (epoch -> its first step), for steps per epoch; `max_steps` caps the total.
    epoch_starts: dict[int, int] = field(default_factory=dict)
    steps_per_epoch: int | None = None
    max_steps: int | None = None
    new_metrics: list[dict[str, Any]] = field(default_factory=list)
    # The newest sample image of each [sample] prompt (index -> {path, step, epoch, prompt}), built-in trainer.
    samples: dict[int, dict[str, Any]] = field(default_factory=dict)

    def take_metrics(self) -> list[dict[str, Any]]:
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


def _feed_event(progress: Progress, obj: dict[str, Any], now: float) -> None:
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
    elif event == "sample":
        _on_sample(progress, obj)
    elif event == "complete":
        progress.complete = True


def _on_sample(progress: Progress, obj: dict[str, Any]) -> None:
    index, step, path = obj.get("index"), obj.get("step"), obj.get("path")
    if not (isinstance(index, int) and isinstance(step, int) and _is_int(index) and _is_int(step)):
        return  # (isinstance for the type checker; _is_int also refuses booleans)
    if not isinstance(path, str):
        return
    known = progress.samples.get(index)
    if known is not None and known["step"] > step:
        return  # an older line read late never replaces a newer image
    epoch, prompt = obj.get("epoch"), obj.get("prompt")
    progress.samples[index] = {
        "path": path,
        "step": step,
        "epoch": epoch if _is_int(epoch) else None,
        "prompt": prompt if isinstance(prompt, str) else "",
    }


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
    for pattern, handle in CONSOLE:
        m = pattern.search(line)
        if m:
            handle(progress, m, now)
            return
    if COMPLETE in line:
        progress.complete = True
    elif any(quit_line in line for quit_line in MANUAL_QUIT_LINES):
        progress.manual_quit = True


def _on_step(progress: Progress, m: re.Match[str], now: float) -> None:
    step = int(m.group(1))
    if progress.step is not None and step < progress.step:
        return
    if progress.epoch is None:
        # No resume line came first: a fresh run, which upstream starts in epoch 1 without saying so.
        progress.epoch = 1
        progress.epoch_starts.setdefault(1, step)
    progress.step = step
    progress.loss = _float(m.group(2))
    progress.samples_per_s = _float(m.group(4))
    _record(progress, now)


def _on_epoch(progress: Progress, m: re.Match[str], now: float) -> None:
    epoch = int(m.group(1))
    progress.epoch = epoch
    if progress.step is None:
        return
    # Printed after the last step of the epoch before: this epoch starts at the next step.
    progress.epoch_starts[epoch] = progress.step + 1
    before = progress.epoch_starts.get(epoch - 1)
    if before is not None and progress.step + 1 > before:
        progress.steps_per_epoch = progress.step + 1 - before
        _update_total(progress)


def _on_resume(progress: Progress, m: re.Match[str], now: float) -> None:
    # The step named is the next one to run; the epoch the one it runs in (its start is unknown).
    progress.epoch = int(m.group(1))


def _on_lr(progress: Progress, m: re.Match[str], now: float) -> None:
    progress.lr = _float(m.group(1))


def _on_save(progress: Progress, m: re.Match[str], now: float) -> None:
    name = m.group(1)
    path = name if Path(name).is_absolute() or not progress.run_dir else str(Path(progress.run_dir) / name)
    progress.saves.append({"kind": "save", "path": path, "name": Path(name).name})


def _on_checkpoint(progress: Progress, m: re.Match[str], now: float) -> None:
    # DeepSpeed names a file in RUN/global_stepN/: the checkpoint is its folder.
    path = Path(m.group(1))
    folder = next((p for p in (path, *path.parents) if p.name.startswith("global_step")), path.parent)
    if not any(s.get("path") == str(folder) for s in progress.saves):
        progress.saves.append({"kind": "checkpoint", "path": str(folder), "name": folder.name})


CONSOLE: list[tuple[re.Pattern[str], Callable[[Progress, re.Match[str], float], None]]] = [
    (STEP_LINE, _on_step),
    (EPOCH_LINE, _on_epoch),
    (RESUME_LINE, _on_resume),
    (CHECKPOINT_LINE, _on_checkpoint),
    (SAVE_LINE, _on_save),
    (LR_LINE, _on_lr),
]


def _update_total(progress: Progress) -> None:
    total = estimate_total_steps(progress.steps_per_epoch, progress.total_epochs)
    if progress.max_steps:
        total = min(total, progress.max_steps) if total else progress.max_steps
    if total:
        progress.total_steps = total


def seeded(config: dict[str, Any] | None) -> Progress:
    """A diffusion-pipe run's progress before its first line: totals known from its main TOML (`epochs`,
    `max_steps`) that its console never prints."""
    progress = Progress()
    if not config:
        return progress
    epochs, max_steps = config.get("epochs"), config.get("max_steps")
    if isinstance(epochs, int) and _is_int(epochs) and epochs > 0:
        progress.total_epochs = epochs
    if isinstance(max_steps, int) and _is_int(max_steps) and max_steps > 0:
        progress.max_steps = progress.total_steps = max_steps
    return progress


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
        out += last_lines(f, lines)  # never a FIFO: an open() on one would block the daemon
    return out[-lines:]


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
