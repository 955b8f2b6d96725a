"""What a live job is doing right now, read from its logs: how long it has printed nothing, and the phase its
last recognised line names (loading the model, caching latents, building a C++ op, saving, ...).

A job that is silent for minutes looks exactly like a slow one in a step counter; the deck's Run screen says
"no output for 4 min: caching latents" instead. The phases are known lines of both backends (the built-in
trainer's own progress lines and diffusion-pipe's console, with the torch extension builder's lines that
DeepSpeed triggers), kept as a table: the newest line that matches any row decides. Cheap by design: a few
`stat` calls and at most 64 KiB of the newest log per call.
"""

from __future__ import annotations

import contextlib
import json
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from engine.jobs.progress import DPDECK_PREFIX, STEP_LINE
from statefiles.logtail import last_lines

STALL_AFTER_S = 120.0  # a live job quiet for longer than this is called out as stalled
TAIL_LINES = 200

# (line pattern, what the job is doing). First match per line wins; the newest matching line decides.
# A step line means "training": a stall after it is a stall between steps, named by the step.
PHASES: tuple[tuple[re.Pattern[str], str], ...] = (
    (STEP_LINE, "training"),
    (re.compile(r"Started new epoch"), "training"),
    (re.compile(r"Building extension module (\S+?)\.*$"), "building the C++ op {0} (once; then cached)"),
    (re.compile(r"Emitting ninja build file|as PyTorch extensions root"), "building or loading a C++ op"),
    (re.compile(r"Loading extension module (\S+?)\.*$"), "loading the C++ op {0}"),
    (re.compile(r"caching latents", re.IGNORECASE), "caching latents"),
    (re.compile(r"caching text embeddings", re.IGNORECASE), "caching text embeddings"),
    (re.compile(r"\bloading (\S+) model\b"), "loading the {0} model"),
    (
        re.compile(r"Loading checkpoint shards|Loading pipeline components|Loading weights"),
        "loading the model",
    ),
    # The built-in trainer's cache summary and bucket lines come right before LoRA + DeepSpeed set-up.
    (
        re.compile(r"^cache: \d+ latents encoded|^bucket \d+x\d+ \(ar"),
        "setting up LoRA, optimizer and DeepSpeed",
    ),
    (re.compile(r"op built successfully|Time to load \S+ op"), "starting the ranks (distributed setup)"),
    (re.compile(r"process \d+ spawned with command"), "starting the trainer (importing torch and DeepSpeed)"),
    (re.compile(r"Running eval"), "evaluating"),
    (re.compile(r"sampling \d+ prompt\(s\)"), "rendering samples"),
    (re.compile(r"Saving model (?:to directory|checkpoint)"), "saving"),
    (re.compile(r"init_distributed|Initializing TorchBackend"), "starting the ranks (distributed setup)"),
)
# `[dpdeck] {"event": ...}` lines of the built-in trainer: the event names the phase it starts.
EVENT_PHASES: dict[str, str] = {
    "progress": "training",
    "eval": "evaluating",
    "sample": "rendering samples",
    "save": "saving",
}


@dataclass(frozen=True)
class Activity:
    last_output_at: float | None  # newest mtime among the job's logs; None before any log exists
    phase: str | None  # from the newest recognised line; None when no line is recognised

    def quiet_s(self, now: float) -> float | None:
        return None if self.last_output_at is None else max(0.0, now - self.last_output_at)


def job_logs(job_dir: Path) -> list[Path]:
    """The launcher's combined log and every rank's log (regular files only)."""
    found = [job_dir / "output.log"]
    with contextlib.suppress(OSError):
        found += sorted((job_dir / "ranks").glob("*.log"))
    return found


def _mtime(path: Path) -> float | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return st.st_mtime if stat.S_ISREG(st.st_mode) else None


def line_phase(line: str) -> str | None:
    idx = line.find(DPDECK_PREFIX)
    if idx >= 0:
        try:
            obj = json.loads(line[idx + len(DPDECK_PREFIX) :])
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            event = obj.get("event")
            what = obj.get("what")
            if event == "phase" and isinstance(what, str) and what:
                return what
            return EVENT_PHASES.get(event) if isinstance(event, str) else None
    for pattern, text in PHASES:
        m = pattern.search(line)
        if m:
            return text.format(*m.groups())
    return None


def last_phase(lines: list[str]) -> str | None:
    return next((p for p in map(line_phase, reversed(lines)) if p is not None), None)


def job_activity(
    job_dir: str | Path, *, phase_after_s: float | None = None, now: float | None = None
) -> Activity:
    """How long the job's logs have been quiet and the phase the newest of them names. With `phase_after_s`,
    the log is read for the phase only once it has been quiet that long (a poller following a busy job then
    pays a few stat calls, not a tail read)."""
    stamped = [(t, p) for p in job_logs(Path(job_dir)) if (t := _mtime(p)) is not None]
    if not stamped:
        return Activity(None, None)
    newest_at, newest = max(stamped)
    now = time.time() if now is None else now
    if phase_after_s is not None and now - newest_at < phase_after_s:
        return Activity(newest_at, None)
    return Activity(newest_at, last_phase(last_lines(newest, TAIL_LINES)))
