"""Run: one job live: progress, loss/LR curves, samples/s, host + GPU figures, log, saves, exit evidence, the
run folder's TensorBoard metrics (epoch loss, each eval set's loss: diffusion-pipe prints neither), and the
sample images the built-in trainer renders while training (the newest of each prompt; keys flip steps)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Static

from engine.jobs.job import Job, JobState
from engine.jobs.samples import SAMPLES_DIR, SampleImage, by_prompt, list_samples
from tui import data
from tui.engine_api import engine_of
from tui.keyscheme import bind
from tui.screens.base import DeckScreen
from tui.screens.queue import duration
from tui.screens.system import stats_text
from tui.theme import state_badge
from tui.widgets.image_preview import ImagePreview
from tui.widgets.log_pane import LogPane
from tui.widgets.loss_plot import CurvePlot
from tui.widgets.quiet import set_content

PLOT_EVERY_S = 10.0  # while points stream in (the first points and the final curve are drawn at once)
BAR_WIDTH = 30
NO_JOB = "No job selected: open one from the Queue (key 2, then Enter)."


class RunLoaded(Message):
    def __init__(
        self,
        job_id: int | None,
        job: Job | None,
        metrics: list[dict[str, Any]] | None,
        saves: list[dict[str, Any]] | None,
        stats: dict[str, Any],
        compare: list[tuple[str, list[dict[str, Any]]]],
        error: str | None,
        log_path: str | None = None,
        seen: tuple[object, object] = (None, None),
        tb: dict[str, Any] | None = None,
        samples: list[SampleImage] | None = None,
        samples_seen: object = None,
    ) -> None:
        """`metrics`/`saves`/`tb`/`samples` are None when unchanged since the poll that saw `seen` (step, run
        folder) and `samples_seen` (the samples folder)."""
        super().__init__()
        self.samples = samples
        self.samples_seen = samples_seen
        self.tb = tb
        self.log_path = log_path
        self.job_id = job_id
        self.job = job
        self.metrics = metrics
        self.saves = saves
        self.stats = stats
        self.compare = compare
        self.error = error
        self.seen = seen


def progress_line(step: int, total: int | None, sps: object) -> str:
    """A text bar (no timer, unlike an indeterminate ProgressBar) plus percent and throughput."""
    rate = f"  {sps:.2f} samples/s" if isinstance(sps, int | float) else ""
    if not total:
        return "waiting for the first step…" + rate
    done = min(BAR_WIDTH, BAR_WIDTH * step // total)
    return f"[$accent]{'━' * done}[/][$panel-lighten-2]{'━' * (BAR_WIDTH - done)}[/] {100 * step // total:3d}%{rate}"


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
            lines.append(escape(f"eval {name}: {last['loss']:.4f} @ step {last['step']} ({len(points)} evals)"))
    if tb.get("note"):
        lines.append(escape(str(tb["note"])))
    return "\n".join(lines)


def header_text(job_id: int, job: Job) -> str:
    step, total = job.step or 0, job.total_steps
    eta = duration(job.eta_s) if not job.finished else "-"
    line1 = (
        f"job {job_id} [b]{escape(job.name or job.profile)}[/b]  {state_badge(job.state).markup}"
        f"  step {step}/{total or '?'}  epoch {job.epoch or '-'}/{job.total_epochs or '?'}  ETA {eta}"
    )
    if job.state == JobState.QUEUED:
        return line1 + "\n" + escape(f"queued: {job.wait_reason or 'waiting for a free GPU'}")
    if job.finished and not total:
        return line1 + "\nended before its first step (the log and the evidence say why)"
    return line1 + "\n" + progress_line(step, total, job.samples_per_s)


class RunScreen(DeckScreen):
    TITLE_TEXT = "Run"
    POLL_SECONDS = 2.0  # step, loss and log arrive continuously; 2 s keeps the deck light beside a job
    BINDINGS = [
        # priority: it runs before the next key is read, so `/error` typed in one burst lands in the field
        bind("run.search", "search", "Search log", priority=True),
        bind("run.search_next", "search_next", "Next match"),
        bind("run.next_error", "next_error", "Next error"),
        bind("run.follow", "toggle_follow", "Follow log"),
        bind("run.compare", "compare", "Compare"),
        bind("run.rank_prev", "rank(-1)", "Prev rank"),
        bind("run.rank_next", "rank(1)", "Next rank"),
        bind("run.sample_older", "sample_step(-1)", "Older sample"),
        bind("run.sample_newer", "sample_step(1)", "Newer sample"),
        bind("run.sample_prompt", "sample_prompt(1)", "Next prompt", show=False),
        bind("run.clear_compare", "clear_compare", "Clear compare", show=False),
        bind("run.search_close", "close_search", "Close search", keys="escape", show=False),
    ]

    FIELD_ACTIONS = frozenset({"search"})

    def __init__(self) -> None:
        super().__init__()
        self.job_id: int | None = None
        self.rank: int | None = None  # None = the job's combined log
        self.compare_ids: list[int] = []
        self.search_text = ""
        self.search_at = -1
        self.following_path: str | None = None
        self.last_metrics_len = -1
        self._last_job: Job | None = None
        self.polls = 0
        self.last_plot = 0.0
        self.seen: tuple[object, object] = (None, None)  # (metrics key, saves key) of the last read
        self.metrics: list[dict[str, Any]] = []
        self.compare: list[tuple[str, list[dict[str, Any]]]] = []
        self.tb: dict[str, Any] = {}
        self.samples: dict[int, list[SampleImage]] = {}  # by prompt index, oldest step first
        self.samples_seen: object = None
        self.sample_prompt = 0  # the prompt shown (a key of self.samples)
        self.sample_step: int | None = None  # the step shown; None follows the newest

    def compose_body(self) -> ComposeResult:
        # Two fixed lines (a text progress bar, not ProgressBar: its indeterminate state animates at 15 Hz):
        # a fixed height lets a new step repaint the header alone, without laying out the screen.
        yield Static(NO_JOB, id="run-header")
        with Horizontal(id="run-charts"):
            yield CurvePlot("loss", "loss", smoothed=True, id="loss-plot", classes="plot")
            yield CurvePlot("LR", "lr", smoothed=False, id="lr-plot", classes="plot")
            # Shown once a run has eval losses (TensorBoard events), one curve per eval set.
            yield CurvePlot("eval loss", "loss", smoothed=False, id="eval-plot", classes="plot hidden")
        with Horizontal(id="run-lower"):
            with Vertical(id="run-logcol"):
                yield LogPane(id="run-log")
                yield Input(
                    placeholder="search the log: Enter finds (empty repeats), Esc closes",
                    id="run-search",
                    compact=True,
                    classes="hidden",
                )
            # Shown once the run has sample images (a [sample] table, built-in trainer).
            with Vertical(id="run-samples", classes="hidden"):
                yield Static("", id="run-sample-caption")
                yield ImagePreview(id="run-sample-image")
            with VerticalScroll(id="run-side"):
                # saves and the exit evidence first: at 80x24 they matter more than host figures
                yield Static("", id="run-saves")
                yield Static("", id="run-tb")
                yield Static("", id="run-evidence")
                yield Static("", id="run-stats", markup=False)

    def on_mount(self) -> None:
        app_job = getattr(self.app, "current_job", None)
        if app_job is not None:
            self.job_id = app_job
        for plot in self.query(CurvePlot):
            plot.show([])  # titles say "no data yet" instead of an empty frame
        super().on_mount()

    def set_job(self, job_id: int) -> None:
        if job_id != self.job_id:
            self.job_id = job_id
            self.rank = None
            self.following_path = None
            self.last_metrics_len = -1
            self.seen = (None, None)
            self.metrics = []
            self.tb = {}
            self.samples, self.samples_seen, self.sample_prompt, self.sample_step = {}, None, 0, None
            for panel in self.query("#run-samples"):  # (none yet when called before the screen mounts)
                panel.add_class("hidden")
        self.poll()

    def poll(self) -> None:
        # Host and GPU figures change slowly and cost a process scan: every 3rd poll only.
        self.polls += 1
        ended = self._last_job is not None and self._last_job.finished
        if (self.job_id is None or ended) and self.polls % 3 != 1:
            return  # nothing live to follow: refresh every 6 s only
        # The curve is read only when it may be redrawn (see _plot): reads cost as much as the rows stored.
        want_curve = self.last_metrics_len <= 0 or time.monotonic() - self.last_plot >= PLOT_EVERY_S
        self.load(
            self.job_id,
            list(self.compare_ids),
            self.rank,
            self.polls % 3 == 1,
            self.seen,
            want_curve,
            self.samples_seen,
        )

    @work(thread=True, exclusive=True, group="run-load")
    def load(
        self,
        job_id: int | None,
        compare_ids: list[int],
        rank: int | None = None,
        with_stats: bool = True,
        seen: tuple[object, object] = (None, None),
        want_curve: bool = True,
        samples_seen: object = None,
    ) -> None:
        engine = engine_of(self.app)
        stats: dict[str, Any] = {}
        if with_stats:
            stats = data.system_stats(engine)
            stats["gpus"] = engine.gpu_report()
        if job_id is None:
            self.post_message(RunLoaded(None, None, [], [], stats, [], None))
            return
        try:
            job = engine.get_job(job_id)
            # Read the curve again only when the job moved on (its row carries the last step) and the chart may
            # be redrawn (or the job ended), the saves only when the run folder or the step changed. The key
            # holds the last step read from the curve, so a curve that lagged the job row is read again.
            metrics_key: object = (job_id, job.step, job.state, tuple(compare_ids))
            metrics, compare, tb = None, [], None
            if metrics_key != seen[0] and (want_curve or job.finished):
                metrics = engine.job_metrics(job_id)
                tb = engine.job_tb_metrics(job_id)
                compare = [(f"job {c}", engine.job_metrics(c)) for c in compare_ids]
                metrics_key = (
                    job_id,
                    metrics[-1].get("step") if metrics else None,
                    job.state,
                    tuple(compare_ids),
                )
            else:
                metrics_key = seen[0]
            saves_key = (job_id, job.state, job.step, _mtime(job.run_dir))
            saves = engine.job_saves(job_id) if saves_key != seen[1] else None
            # The samples folder's mtime changes when an image is renamed into it.
            folder = Path(job.run_dir) / SAMPLES_DIR if job.run_dir else None
            samples_key = (job_id, job.run_dir, _mtime(folder))
            samples = list_samples(job.run_dir) if samples_key != samples_seen else None
        except Exception as exc:
            self.post_message(RunLoaded(job_id, None, [], [], stats, [], str(exc)))
            return
        try:
            log_path: str | None = str(engine.job_log_path(job_id, rank=rank))
        except Exception:  # no log yet (or no such rank): the pane stays as it is
            log_path = None
        self.post_message(
            RunLoaded(
                job_id,
                job,
                metrics,
                saves,
                stats,
                compare,
                None,
                log_path,
                (metrics_key, saves_key),
                tb,
                samples,
                samples_key,
            )
        )

    def on_run_loaded(self, msg: RunLoaded) -> None:
        # Every widget is touched only when its content changed: a repaint per 2 s poll is most of the
        # deck's CPU while it follows a job.
        header = self.query_one("#run-header", Static)
        if msg.stats:
            set_content(
                self.query_one("#run-stats", Static),
                "\n" + stats_text(msg.stats) + "\n" + self._gpu_text(msg),
            )
        if msg.job_id is None or msg.job_id != self.job_id:
            if self.job_id is None:
                set_content(header, NO_JOB)
            return  # (an answer for the job shown before a switch is dropped)
        if msg.error or msg.job is None:
            set_content(header, escape(f"job {msg.job_id}: {msg.error}"))
            return
        job = msg.job
        self._last_job = job
        self.seen = msg.seen
        set_content(header, header_text(msg.job_id, job))
        if msg.metrics is not None:
            self.metrics, self.compare = msg.metrics, msg.compare
        self._plot(job.finished)
        if msg.tb is not None and msg.tb != self.tb:
            self._show_tb(msg.tb)
        if msg.samples is not None:
            self.samples_seen = msg.samples_seen
            self._show_samples(by_prompt(msg.samples))
        if msg.saves is not None:
            run_dir = job.run_dir
            lines = [
                escape(
                    f"{'✓' if sv.get('complete', True) else '…'} {sv.get('kind')} {Path(str(sv.get('path'))).name}"
                )
                for sv in msg.saves
            ]
            set_content(
                self.query_one("#run-saves", Static),
                "[b]Saves[/b]"
                + (escape(f" in {run_dir}") if run_dir else "")
                + "\n"
                + ("\n".join(lines) or "none yet"),
            )
        if job.finished:
            evidence = "\n".join(job.evidence)
            reason = job.exit_reason or ""
            set_content(
                self.query_one("#run-evidence", Static),
                f"[b]Ended:[/b] {job.state}"
                + (escape(f"  {reason}") if reason and reason != job.state else "")
                + f"\n{escape(evidence)}",
            )
        if msg.log_path and msg.log_path != self.following_path:
            self.following_path = msg.log_path
            self.query_one("#run-log", LogPane).follow(Path(msg.log_path))

    def _plot(self, ended: bool) -> None:
        # Plots are the costly part of a redraw: only on new points, and at most every PLOT_EVERY_S while they
        # stream (a finished job's final curve is drawn at once). A plotext build of both costs ~100 ms here.
        now = time.monotonic()
        fresh = len(self.metrics) != self.last_metrics_len or self.last_metrics_len < 0
        # The first points are drawn at once: "no data yet" must not linger for PLOT_EVERY_S.
        if fresh and (
            now - self.last_plot >= PLOT_EVERY_S or ended or self.last_metrics_len <= 0
        ):
            self.last_plot = now
            self.last_metrics_len = len(self.metrics)
            runs = [(f"job {self.job_id}", self.metrics), *self.compare]
            self.query_one("#loss-plot", CurvePlot).show(runs)
            self.query_one("#lr-plot", CurvePlot).show(runs[:1])

    def _show_tb(self, tb: dict[str, Any]) -> None:
        self.tb = tb
        set_content(self.query_one("#run-tb", Static), tb_text(tb))
        plot = self.query_one("#eval-plot", CurvePlot)
        evals = [(name, points) for name, points in (tb.get("evals") or {}).items() if points]
        plot.set_class(not evals, "hidden")
        if evals:
            plot.show(evals)

    def _show_samples(self, samples: dict[int, list[SampleImage]]) -> None:
        self.samples = samples
        self.query_one("#run-samples").set_class(not samples, "hidden")
        if not samples:
            return
        if self.sample_prompt not in samples:
            self.sample_prompt = min(samples)
        self._paint_sample()

    def _paint_sample(self) -> None:
        """The chosen prompt's image at the chosen step (the newest while following) and its caption."""
        shots = self.samples.get(self.sample_prompt) or []
        if not shots:
            return
        steps = [s.step for s in shots]
        at = len(shots) - 1 if self.sample_step not in steps else steps.index(self.sample_step)
        shot = shots[at]
        prompts = sorted(self.samples)
        where = "newest" if at == len(shots) - 1 else "older (. newer)"
        size = f"{shot.width}x{shot.height} · " if shot.width and shot.height else ""
        set_content(
            self.query_one("#run-sample-caption", Static),
            f"[b]Sample[/b] {prompts.index(self.sample_prompt) + 1}/{len(prompts)}  step {shot.step}"
            f" ({at + 1}/{len(shots)})\n{size}{where}  (p: next prompt)\n" + escape(shot.prompt or "?"),
        )
        preview = self.query_one("#run-sample-image", ImagePreview)
        if preview.path != Path(shot.path):
            preview.show(Path(shot.path))

    def action_sample_step(self, delta: int) -> None:
        shots = self.samples.get(self.sample_prompt) or []
        if not shots:
            self.notify("no samples yet (a [sample] table renders them while training)")
            return
        steps = [s.step for s in shots]
        at = len(steps) - 1 if self.sample_step not in steps else steps.index(self.sample_step)
        at = max(0, min(len(steps) - 1, at + delta))
        # Back at the newest: follow new samples as they come.
        self.sample_step = None if at == len(steps) - 1 else steps[at]
        self._paint_sample()

    def action_sample_prompt(self, delta: int) -> None:
        prompts = sorted(self.samples)
        if not prompts:
            self.notify("no samples yet (a [sample] table renders them while training)")
            return
        at = prompts.index(self.sample_prompt) if self.sample_prompt in prompts else 0
        self.sample_prompt = prompts[(at + delta) % len(prompts)]
        self._paint_sample()

    def _gpu_text(self, msg: RunLoaded) -> str:
        gpus = msg.stats.get("gpus") or []
        mine = set((msg.job.gpus if msg.job else None) or [])
        shown = [g for g in gpus if not mine or g.get("index") in mine]
        if not shown:
            return "GPU: none on this machine" if not gpus else "GPU: -"
        return "\n".join(
            f"GPU{g.get('index')} {g.get('util', '?')}% {g.get('mem_used', 0) / 2**30:.1f}/"
            f"{g.get('mem_total', 0) / 2**30:.0f}G {g.get('temp', '?')}°C {g.get('power', '?')}W"
            for g in shown
        )

    # log actions

    def action_toggle_follow(self) -> None:
        log = self.query_one("#run-log", LogPane)
        log.set_follow(not log.auto_scroll)
        self.notify("following the log" if log.auto_scroll else "log paused (f follows again)")

    def action_search(self) -> None:
        box = self.query_one("#run-search", Input)
        box.value = ""
        if self.search_text:
            box.placeholder = f"search the log: Enter finds (empty: {self.search_text!r} again), Esc closes"
        self.open_field(box)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "run-search":
            return
        event.stop()
        text = event.value or self.search_text
        self.action_close_search()
        if text:
            if text != self.search_text:
                self.search_at = -1
            self.search_text = text
            self.action_search_next()

    def action_close_search(self) -> None:
        box = self.query_one("#run-search", Input)
        if box.display:
            box.display = False
            self.set_focus(self.query_one("#run-log", LogPane))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "close_search":
            return bool(self.query_one("#run-search", Input).display)
        return super().check_action(action, parameters)

    def action_search_next(self) -> None:
        if not self.search_text:
            self.action_search()
            return
        log = self.query_one("#run-log", LogPane)
        found = log.find(self.search_text, self.search_at)
        if found is None:
            self.notify(f"{self.search_text!r} not in the last {len(log.lines)} lines", severity="warning")
            return
        self.search_at = found
        log.jump_to(found)

    def action_next_error(self) -> None:
        log = self.query_one("#run-log", LogPane)
        found = log.find_error(self.search_at)
        if found is None:
            self.notify("no error lines in the log", severity="information")
            return
        self.search_at = found
        log.jump_to(found)

    def action_rank(self, delta: int) -> None:
        if self.job_id is None:
            return
        gpus = (self._last_job.gpus if self._last_job else None) or [0]
        choices: list[int | None] = [None, *range(len(gpus))]
        self.rank = choices[(choices.index(self.rank) + delta) % len(choices)]
        self.notify(f"log: {'all ranks' if self.rank is None else f'rank {self.rank}'}")
        self.poll()

    def action_compare(self) -> None:
        from tui.screens.dialogs import PromptDialog

        def check(text: str) -> str | None:
            return None if text.strip().isdigit() else "expected a job number"

        def go(text: str | None) -> None:
            if text:
                self.compare_ids.append(int(text))
                self.last_metrics_len = -1
                self.seen = (None, self.seen[1])
                self.poll()

        self.app.push_screen(PromptDialog("Overlay the loss curve of job number:", "", check), go)

    def action_clear_compare(self) -> None:
        self.compare_ids.clear()
        self.last_metrics_len = -1
        self.seen = (None, self.seen[1])
        self.poll()


def _mtime(path: object) -> int | None:
    """A folder's mtime changes when a save or checkpoint folder appears in it."""
    try:
        return Path(str(path)).stat().st_mtime_ns if path else None
    except OSError:
        return None
