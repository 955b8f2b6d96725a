"""The Run screen's words: header, progress bar, stall line, saves, times, TensorBoard summary. Pure functions of
a job and the clock, so each reads the same for every job and every test can call them directly."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.markup import escape

from engine.jobs.activity import STALL_AFTER_S, Activity
from engine.jobs.job import Job, JobState
from tui import units
from tui.screens.queue import duration
from tui.theme import state_badge

BAR_WIDTH = 30
NO_JOBS = (
    "No jobs yet. Make one: a profile from a template on Profiles (key 1, Enter on demo-tiny), then enqueue it;"
    " or run `dpdeck demo` in a shell. It shows here as soon as it is queued."
)
# How each kind of save reads, from its number (engine/jobs/client.py job_saves: epochN, stepN, global_stepN).
SAVE_LABELS: dict[str, str] = {
    "epoch": "epoch {n}",
    "step": "step {n}",
    "checkpoint": "checkpoint at step {n}",
}


def when(ts: float | None, now: float) -> str:
    """Local wall-clock time and age: `21:03 · 12 min ago`, with the date when it is not today."""
    if ts is None:
        return "-"
    local, today = time.localtime(ts), time.localtime(now)
    fmt = "%H:%M" if local[:3] == today[:3] else "%Y-%m-%d %H:%M"
    # Minutes at least: a panel that showed seconds would be rewritten at every poll.
    ago = "just now" if now - ts < 60 else f"{units.span(now - ts)} ago"
    return f"{time.strftime(fmt, local)} · {ago}"


def progress_line(step: int, total: int | None, sps: object) -> str:
    """A text bar (no timer, unlike an indeterminate ProgressBar) plus percent and throughput."""
    rate = f"  {sps:.2f} samples/s" if isinstance(sps, int | float) else ""
    if not total:
        return "waiting for the first step…" + rate
    done = min(BAR_WIDTH, BAR_WIDTH * step // total)
    return f"[$accent]{'━' * done}[/][$panel-lighten-2]{'━' * (BAR_WIDTH - done)}[/] {100 * step // total:3d}%{rate}"


def stall_line(job: Job, activity: Activity | None, now: float) -> str | None:
    """The header's second line for a live job that printed nothing for STALL_AFTER_S, or before its first
    step (then what it is doing, if its log says)."""
    if activity is None or not job.live:
        return None
    quiet = activity.quiet_s(now)
    if quiet is None and job.started_at:
        quiet = max(0.0, now - job.started_at)  # started, and not one line written anywhere since
    phase = activity.phase if activity.phase != "training" else None
    if quiet is not None and quiet >= STALL_AFTER_S:
        doing = f": {phase}" if phase else (f" after step {job.step}" if job.step else "")
        return f"[$warning]⚠ no output for {units.span(quiet)}{escape(doing)}[/]"
    if not job.step:
        return "waiting for the first step" + (escape(f": {phase}…") if phase else "…")
    return None


def header_text(job_id: int, job: Job, activity: Activity | None = None, now: float | None = None) -> str:
    now = time.time() if now is None else now
    step, total = job.step or 0, job.total_steps
    eta = duration(job.eta_s) if not job.finished else "-"
    loss = f"  loss {job.loss:.4f}" if job.loss is not None else ""
    # Most telling first: at 80 columns a long name or big numbers cut the line's end (an ellipsis).
    line1 = (
        f"job {job_id} [b]{escape(job.name or job.profile)}[/b]  {state_badge(job.state).markup}"
        f"  step {step}/{total or '?'}  ETA {eta}  epoch {job.epoch or '-'}/{job.total_epochs or '?'}{loss}"
    )
    if job.state == JobState.QUEUED:
        return line1 + "\n" + escape(f"queued: {job.wait_reason or 'waiting for a free GPU'}")
    if job.finished and not total:
        return line1 + "\nended before its first step (the log and the evidence say why)"
    stalled = stall_line(job, activity, now)
    if stalled is not None:
        return line1 + "\n" + stalled
    return line1 + "\n" + progress_line(step, total, job.samples_per_s)


def save_label(save: dict[str, Any]) -> str:
    kind, number = str(save.get("kind")), save.get("number")
    name = Path(str(save.get("path"))).name
    label = SAVE_LABELS[kind].format(n=number) if kind in SAVE_LABELS and isinstance(number, int) else name
    return f"{'✓' if save.get('complete', True) else '… saving'} {label}"


def saves_text(saves: list[dict[str, Any]]) -> str:
    return "[b]Saves[/b]\n" + ("\n".join(escape(save_label(s)) for s in saves) or "none yet")


def job_text(job: Job, now: float, width: int) -> str:
    """When the job started (or was queued) and ended, as local time and age, and its run folder cut in the
    middle to the panel's width (a side panel is ~26 columns at 80x24: a fact that does not fit on one line
    puts its age on the next, never wrapping inside a phrase)."""
    stamps = [("started", job.started_at) if job.started_at else ("queued", job.created_at)]
    if job.ended_at:
        stamps.append(("ended", job.ended_at))
    lines = []
    for label, ts in stamps:
        clock, _, ago = when(ts, now).partition(" · ")
        one = f"{label} {clock} · {ago}"
        lines += [one] if len(one) <= width else [f"{label} {clock}", f"  {ago}"]
    if job.ended_at and job.started_at:
        lines.append(f"ran {units.duration(job.ended_at - job.started_at)}")
    if job.run_dir:
        lines += ["run folder", units.middle(job.run_dir, width)]
    return escape("\n".join(lines))


def evidence_text(job: Job) -> str:
    """The exit reason and evidence of an ended job; nothing for one that has not ended."""
    if not job.finished:
        return ""
    reason = job.exit_reason or ""
    return (
        f"[b]Ended:[/b] {job.state}"
        + (escape(f"  {reason}") if reason and reason != job.state else "")
        + ("\n" + escape("\n".join(job.evidence)) if job.evidence else "")
    )


def tb_text(tb: dict[str, Any]) -> str:
    """The side panel's TensorBoard part: the last epoch losses and each eval set's latest loss."""
    epochs = tb.get("epoch_loss") or []
    evals = tb.get("evals") or {}
    if not epochs and not evals and not tb.get("note"):
        return ""
    lines = ["[b]TensorBoard[/b]"]
    if epochs:
        lines.append("epoch loss " + "  ".join(f"{e['epoch']}: {e['loss']:.4f}" for e in epochs[-3:]))
    for name, points in evals.items():
        if points:
            last = points[-1]
            lines.append(
                escape(f"eval {name}: {last['loss']:.4f} @ step {last['step']} ({len(points)} evals)")
            )
    if tb.get("note"):
        lines.append(escape(str(tb["note"])))
    return "\n".join(lines)
