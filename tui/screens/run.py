"""Run: one job live: progress, loss/LR curves, samples/s, host + GPU figures, log, saves, exit evidence, the
run folder's TensorBoard metrics (epoch loss, each eval set's loss: diffusion-pipe prints neither), and the
sample images the built-in trainer renders while training (the newest of each prompt; keys flip steps)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Static

from engine.jobs.activity import STALL_AFTER_S, Activity, job_activity
from engine.jobs.job import Job
from engine.jobs.samples import SAMPLES_DIR, SampleImage, by_prompt, list_samples
from tui import data
from tui.engine_api import engine_of
from tui.keyscheme import bind
from tui.screens.base import DeckScreen
from tui.screens.run_text import (
    NO_JOBS,
    evidence_text,
    header_text,
    job_text,
    saves_text,
    tb_text,
)
from tui.screens.system import stats_text
from tui.widgets.image_preview import ImagePreview
from tui.widgets.log_pane import LogPane
from tui.widgets.loss_plot import CurvePlot
from tui.widgets.quiet import set_content

PLOT_EVERY_S = 10.0  # while points stream in (the first points and the final curve are drawn at once)
# The side panels that describe the shown job: each is rewritten for every job, and blanked on a switch, so
# none can keep the text of the job shown before (an "Ended: completed" under a running job).
JOB_PANELS = ("#run-job", "#run-saves", "#run-tb", "#run-evidence")


def pick_job(jobs: list[Job]) -> int | None:
    """The job `3` opens when none was chosen: a live one (the newest if several), else the newest of all."""
    live = [j for j in jobs if j.live]
    pool = live or jobs
    return max(pool, key=lambda j: (j.created_at, j.id)).id if pool else None


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
        activity: Activity | None = None,
        picked: bool = False,
        gone: bool = False,
    ) -> None:
        """`metrics`/`saves`/`tb`/`samples` are None when unchanged since the poll that saw `seen` (step, run
        folder) and `samples_seen` (the samples folder). `picked`: the worker chose the job (none was);
        `gone`: the job is no longer in the store."""
        super().__init__()
        self.gone = gone
        self.activity = activity
        self.picked = picked
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


@dataclass
class JobView:
    """Everything the screen holds about the job it shows. A switch replaces it whole, so no part of the
    screen can keep a figure, a search position or an overlay of the job shown before."""

    job_id: int | None = None
    rank: int | None = None  # None = the job's combined log
    compare_ids: list[int] = field(default_factory=list)
    following_path: str | None = None
    last_metrics_len: int = -1
    last_job: Job | None = None
    seen: tuple[object, object] = (None, None)  # (metrics key, saves key) of the last read
    metrics: list[dict[str, Any]] = field(default_factory=list)
    compare: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    tb: dict[str, Any] | None = None
    samples: dict[int, list[SampleImage]] = field(default_factory=dict)  # by prompt index, oldest step first
    samples_seen: object = None
    sample_prompt: int = 0  # the prompt shown (a key of samples)
    sample_step: int | None = None  # the step shown; None follows the newest
    search_at: int = -1


class RunScreen(DeckScreen):
    TITLE_TEXT = "Run"
    POLL_SECONDS = 2.0  # step, loss and log arrive continuously; 2 s keeps the deck light beside a job
    # Keys per the deck's key scheme (docs/tui.md): one letter per verb on every screen.
    BINDINGS = [
        # priority: it runs before the next key is read, so `/error` typed in one burst lands in the field
        bind("run.search", "search", "Search log", priority=True),
        bind("run.search_next", "search_next(1)", "Next match"),
        bind("run.search_prev", "search_next(-1)", "Prev match", show=False),
        bind("run.next_error", "next_error", "Next error"),
        bind("run.follow", "toggle_follow", "Follow log"),
        bind("run.wrap", "toggle_wrap", "Wrap"),
        bind("run.compare", "compare", "Compare"),
        bind("run.rank_prev", "rank(-1)", "Prev rank"),
        bind("run.rank_next", "rank(1)", "Next rank"),
        bind("run.sample_older", "sample_step(-1)", "Older sample"),
        bind("run.sample_newer", "sample_step(1)", "Newer sample"),
        bind("run.sample_prompt", "sample_prompt(1)", "Next prompt", show=False),
        bind("run.clear_compare", "clear_compare", "Clear compare", show=False),
        bind("run.events", "toggle_events", "dpdeck event lines", show=False),
        bind("run.search_close", "close_search", "Close search", keys="escape", show=False),
    ]

    FIELD_ACTIONS = frozenset({"search"})

    def __init__(self) -> None:
        super().__init__()
        self.view = JobView()
        self.search_text = ""
        self.matches: list[int] = []  # log lines holding search_text, as last counted
        self.polls = 0
        self.last_plot = 0.0

    # The job shown and where the search stands are read by tests and the app; they live in the view.
    @property
    def job_id(self) -> int | None:
        return self.view.job_id

    @property
    def search_at(self) -> int:
        return self.view.search_at

    def compose_body(self) -> ComposeResult:
        # Two fixed lines (a text progress bar, not ProgressBar: its indeterminate state animates at 15 Hz):
        # a fixed height lets a new step repaint the header alone, without laying out the screen.
        yield Static("reading the jobs…", id="run-header")
        with Horizontal(id="run-charts"):
            yield CurvePlot("loss", "loss", smoothed=True, id="loss-plot", classes="plot")
            yield CurvePlot("LR", "lr", smoothed=False, id="lr-plot", classes="plot")
            # Shown once a run has eval losses (TensorBoard events), one curve per eval set.
            yield CurvePlot("eval loss", "loss", smoothed=False, id="eval-plot", classes="plot hidden")
        with Horizontal(id="run-lower"):
            with Vertical(id="run-logcol"):
                yield LogPane(id="run-log")
                # The log's state (rank, follow, wrap, events, search matches); the search field takes its row.
                yield Static("", id="run-logbar", markup=False)
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
                # the exit evidence and saves first: at 80x24 they matter more than host figures
                yield Static("", id="run-evidence")
                yield Static("", id="run-saves")
                yield Static("", id="run-tb")
                yield Static("", id="run-job")
                yield Static("", id="run-stats", markup=False)

    def on_mount(self) -> None:
        app_job = getattr(self.app, "current_job", None)
        if app_job is not None:
            self.view = JobView(job_id=app_job)
        for plot in self.query(CurvePlot):
            plot.show([])  # titles say "no data yet" instead of an empty frame
        self.call_after_refresh(self._logbar)  # (the log column may mount after this screen's Mount)
        super().on_mount()

    def set_job(self, job_id: int) -> None:
        if job_id != self.view.job_id:
            self._switch(job_id)
        self.poll()

    def _switch(self, job_id: int | None) -> None:
        """Show another job: a fresh view, and every per-job panel blanked until its first answer arrives."""
        self.view = JobView(job_id=job_id)
        if not self.is_mounted:
            return
        set_content(
            self.query_one("#run-header", Static),
            f"job {job_id}: reading…" if job_id else "reading the jobs…",
        )
        for panel in JOB_PANELS:
            set_content(self.query_one(panel, Static), "")
        self.query_one("#run-samples").add_class("hidden")
        self.query_one("#eval-plot", CurvePlot).add_class("hidden")
        for plot in self.query(CurvePlot):
            plot.show([])
        self.query_one("#run-log", LogPane).follow(None)
        self.query_one("#run-log", LogPane).set_needle("")
        self.search_text, self.matches = "", []
        self._logbar()

    def _forget_job(self) -> None:
        """No job chosen: the next poll picks the running (else newest) one, as `3` at start does."""
        if getattr(self.app, "current_job", None) == self.view.job_id:
            self.app.current_job = None  # type: ignore[attr-defined]
        self._switch(None)
        self.poll()

    def poll(self) -> None:
        # Host and GPU figures change slowly and cost a process scan: every 3rd poll only.
        self.polls += 1
        view = self.view
        ended = view.last_job is not None and view.last_job.finished
        if ended and self.polls % 3 != 1:
            return  # nothing live to follow: refresh every 6 s only
        # The curve is read only when it may be redrawn (see _plot): reads cost as much as the rows stored.
        want_curve = view.last_metrics_len <= 0 or time.monotonic() - self.last_plot >= PLOT_EVERY_S
        self.load(
            view.job_id,
            list(view.compare_ids),
            view.rank,
            self.polls % 3 == 1,
            view.seen,
            want_curve,
            view.samples_seen,
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
        picked = job_id is None
        if picked:
            try:
                job_id = pick_job(engine.list_jobs(include_finished=True))
            except Exception as exc:
                self.post_message(RunLoaded(None, None, [], [], stats, [], str(exc)))
                return
            if job_id is None:
                self.post_message(RunLoaded(None, None, [], [], stats, [], None))
                return
        assert job_id is not None
        try:
            job = engine.get_job(job_id)
        except KeyError:  # removed from the store (the Queue's delete): show another job instead
            self.post_message(RunLoaded(job_id, None, [], [], stats, [], None, gone=True))
            return
        except Exception as exc:
            self.post_message(RunLoaded(job_id, None, [], [], stats, [], str(exc), picked=picked))
            return
        try:
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
            # A few stats and, for a live job, the newest log's tail: silence and what the log says it does.
            # Past the first step the phase matters only once the job is quiet: the tail is read then only.
            activity = (
                job_activity(job.job_dir, phase_after_s=STALL_AFTER_S if job.step else None)
                if job.live
                else None
            )
        except Exception as exc:
            self.post_message(RunLoaded(job_id, None, [], [], stats, [], str(exc), picked=picked))
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
                activity,
                picked,
            )
        )

    def on_run_loaded(self, msg: RunLoaded) -> None:
        # Every widget is touched only when its content changed: a repaint per 2 s poll is most of the
        # deck's CPU while it follows a job.
        header = self.query_one("#run-header", Static)
        if msg.picked and self.view.job_id is None and msg.job_id is not None:
            self._switch(msg.job_id)  # no job was chosen: the worker picked the running (else newest) one
        if msg.job_id != self.view.job_id:
            return  # an answer for the job shown before a switch is dropped (its GPUs too)
        if msg.gone:
            self.notify(f"job {msg.job_id} was removed; showing the running (else newest) job")
            self._forget_job()
            return
        if msg.stats:
            set_content(
                self.query_one("#run-stats", Static),
                "\n" + stats_text(msg.stats) + "\n" + self._gpu_text(msg),
            )
        if msg.job_id is None:
            set_content(header, escape(f"could not read the jobs: {msg.error}") if msg.error else NO_JOBS)
            return
        if msg.error or msg.job is None:
            set_content(header, escape(f"job {msg.job_id}: {msg.error}"))
            return
        job = msg.job
        view = self.view
        view.last_job = job
        view.seen = msg.seen
        set_content(header, header_text(job.id, job, msg.activity))
        if msg.metrics is not None:
            view.metrics, view.compare = msg.metrics, msg.compare
        self._plot(job.finished)
        if msg.tb is not None and msg.tb != view.tb:
            self._show_tb(msg.tb)
        if msg.samples is not None:
            view.samples_seen = msg.samples_seen
            self._show_samples(by_prompt(msg.samples))
        if msg.saves is not None:
            set_content(self.query_one("#run-saves", Static), saves_text(msg.saves))
        side = self.query_one("#run-side")
        width = max(12, side.scrollable_content_region.width - 1 or 24)
        set_content(self.query_one("#run-job", Static), job_text(job, time.time(), width))
        set_content(self.query_one("#run-evidence", Static), evidence_text(job))
        if msg.log_path and msg.log_path != view.following_path:
            view.following_path = msg.log_path
            self.query_one("#run-log", LogPane).follow(Path(msg.log_path))
        self._logbar()  # (rewritten only when its text changed: a wide line arrived, say)

    def _plot(self, ended: bool) -> None:
        # Plots are the costly part of a redraw: only on new points, and at most every PLOT_EVERY_S while they
        # stream (a finished job's final curve is drawn at once). A plotext build of both costs ~100 ms here.
        view = self.view
        now = time.monotonic()
        fresh = len(view.metrics) != view.last_metrics_len or view.last_metrics_len < 0
        # The first points are drawn at once: "no data yet" must not linger for PLOT_EVERY_S.
        if fresh and (now - self.last_plot >= PLOT_EVERY_S or ended or view.last_metrics_len <= 0):
            self.last_plot = now
            view.last_metrics_len = len(view.metrics)
            runs = [(f"job {view.job_id}", view.metrics), *view.compare]
            self.query_one("#loss-plot", CurvePlot).show(runs)
            self.query_one("#lr-plot", CurvePlot).show(runs[:1])

    def _show_tb(self, tb: dict[str, Any]) -> None:
        self.view.tb = tb
        set_content(self.query_one("#run-tb", Static), tb_text(tb))
        plot = self.query_one("#eval-plot", CurvePlot)
        evals = [(name, points) for name, points in (tb.get("evals") or {}).items() if points]
        plot.set_class(not evals, "hidden")
        if evals:
            plot.show(evals)

    def _show_samples(self, samples: dict[int, list[SampleImage]]) -> None:
        view = self.view
        view.samples = samples
        self.query_one("#run-samples").set_class(not samples, "hidden")
        if not samples:
            return
        if view.sample_prompt not in samples:
            view.sample_prompt = min(samples)
        self._paint_sample()

    def _paint_sample(self) -> None:
        """The chosen prompt's image at the chosen step (the newest while following) and its caption."""
        view = self.view
        shots = view.samples.get(view.sample_prompt) or []
        if not shots:
            return
        steps = [s.step for s in shots]
        at = len(shots) - 1 if view.sample_step not in steps else steps.index(view.sample_step)
        shot = shots[at]
        prompts = sorted(view.samples)
        where = "newest" if at == len(shots) - 1 else "older (. newer)"
        size = f"{shot.width}x{shot.height} · " if shot.width and shot.height else ""
        set_content(
            self.query_one("#run-sample-caption", Static),
            f"[b]Sample[/b] {prompts.index(view.sample_prompt) + 1}/{len(prompts)}  step {shot.step}"
            f" ({at + 1}/{len(shots)})\n{size}{where}  (; next prompt)\n" + escape(shot.prompt or "?"),
        )
        preview = self.query_one("#run-sample-image", ImagePreview)
        if preview.path != Path(shot.path):
            preview.show(Path(shot.path))

    def action_sample_step(self, delta: int) -> None:
        view = self.view
        shots = view.samples.get(view.sample_prompt) or []
        if not shots:
            self.notify("no samples yet (a [sample] table renders them while training)")
            return
        steps = [s.step for s in shots]
        at = len(steps) - 1 if view.sample_step not in steps else steps.index(view.sample_step)
        at = max(0, min(len(steps) - 1, at + delta))
        # Back at the newest: follow new samples as they come.
        view.sample_step = None if at == len(steps) - 1 else steps[at]
        self._paint_sample()

    def action_sample_prompt(self, delta: int) -> None:
        view = self.view
        prompts = sorted(view.samples)
        if not prompts:
            self.notify("no samples yet (a [sample] table renders them while training)")
            return
        at = prompts.index(view.sample_prompt) if view.sample_prompt in prompts else 0
        view.sample_prompt = prompts[(at + delta) % len(prompts)]
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

    def _logbar(self) -> None:
        """One line under the log: which log, follow, wrap, dpdeck events, and where the search stands."""
        log = self.query_one("#run-log", LogPane)
        rank = "all ranks" if self.view.rank is None else f"rank {self.view.rank}"
        # Short enough for the 51 columns the log gets at 80x24; the keys are in the footer and in `?`.
        parts = [
            rank,
            "following" if log.auto_scroll else "paused",
            # Lines wider than the pane: say that the arrows scroll it sideways (it has the focus).
            "wrap" if log.wrap else "no wrap ←→" if log.virtual_size.width > log.size.width else "no wrap",
            "events shown" if log.show_events else "events hidden",
        ]
        if self.search_text:
            at = self.view.search_at
            count = len(self.matches)
            where = f"{self.matches.index(at) + 1}/{count}" if at in self.matches else f"0/{count}"
            parts.insert(0, f"{where} {self.search_text!r}")
        set_content(self.query_one("#run-logbar", Static), " · ".join(parts))

    def action_toggle_follow(self) -> None:
        log = self.query_one("#run-log", LogPane)
        log.set_follow(not log.auto_scroll)
        self._logbar()

    def action_toggle_wrap(self) -> None:
        log = self.query_one("#run-log", LogPane)
        log.set_wrap(not log.wrap)
        self._forget_matches()
        self._logbar()

    def action_toggle_events(self) -> None:
        log = self.query_one("#run-log", LogPane)
        log.set_show_events(not log.show_events)
        self._forget_matches()
        self._logbar()

    def _forget_matches(self) -> None:
        # The pane was read again (other rows): line numbers of earlier matches mean nothing now.
        self.view.search_at = -1
        self.matches = []
        self.query_one("#run-log", LogPane).current = -1

    def action_search(self) -> None:
        box = self.query_one("#run-search", Input)
        box.value = ""
        if self.search_text:
            box.placeholder = f"search the log: Enter finds (empty: {self.search_text!r} again), Esc closes"
        self.query_one("#run-logbar").display = False
        self.open_field(box)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "run-search":
            return
        event.stop()
        text = event.value or self.search_text
        self._close_field()
        if text:
            if text != self.search_text:
                self.view.search_at = -1
            self.search_text = text
            self.action_search_next(1)

    def _close_field(self) -> None:
        box = self.query_one("#run-search", Input)
        if box.display:
            box.display = False
            self.query_one("#run-logbar").display = True
            self.set_focus(self.query_one("#run-log", LogPane))

    def action_close_search(self) -> None:
        """Esc: close the search field; with it closed, drop the highlight of the last search."""
        box = self.query_one("#run-search", Input)
        if box.display:
            self._close_field()
            return
        self.search_text = ""
        self.matches = []
        self.query_one("#run-log", LogPane).set_needle("")
        self._logbar()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "close_search":
            return bool(self.query_one("#run-search", Input).display or self.search_text)
        return super().check_action(action, parameters)

    def action_search_next(self, delta: int = 1) -> None:
        if not self.search_text:
            self.action_search()
            return
        log = self.query_one("#run-log", LogPane)
        # Counted at each step: lines keep arriving (and the oldest leave) while the job runs.
        self.matches = log.match_lines(self.search_text)
        if not self.matches:
            log.set_needle(self.search_text)
            self._logbar()
            self.notify(f"{self.search_text!r} not in the last {len(log.lines)} lines", severity="warning")
            return
        at = self.view.search_at
        if delta > 0:
            found = next((i for i in self.matches if i > at), self.matches[0])
        else:
            found = next((i for i in reversed(self.matches) if i < at), self.matches[-1])
        self.view.search_at = found
        log.set_needle(self.search_text, found)
        log.jump_to(found)
        self._logbar()

    def action_next_error(self) -> None:
        log = self.query_one("#run-log", LogPane)
        found = log.find_error(self.view.search_at)
        if found is None:
            self.notify("no error lines in the log", severity="information")
            return
        self.view.search_at = found
        log.jump_to(found)
        self._logbar()

    def action_rank(self, delta: int) -> None:
        view = self.view
        if view.job_id is None:
            return
        gpus = (view.last_job.gpus if view.last_job else None) or [0]
        choices: list[int | None] = [None, *range(len(gpus))]
        view.rank = choices[(choices.index(view.rank) + delta) % len(choices)]
        self._forget_matches()
        self._logbar()
        self.poll()

    def action_compare(self) -> None:
        from tui.screens.job_picker import JobPicker

        view = self.view

        def go(job_id: int | None) -> None:
            if job_id is None or view is not self.view:
                return  # cancelled, or another job is shown now
            if job_id in view.compare_ids:
                view.compare_ids.remove(job_id)
                self.notify(f"job {job_id}'s curve removed")
            else:
                view.compare_ids.append(job_id)
            self._recompare()

        self.app.push_screen(
            JobPicker("Overlay the loss curve of job:", view.job_id, set(view.compare_ids)), go
        )

    def action_clear_compare(self) -> None:
        if not self.view.compare_ids:
            self.notify("no curves overlaid (= adds one)")
            return
        self.view.compare_ids.clear()
        self._recompare()

    def _recompare(self) -> None:
        view = self.view
        view.last_metrics_len = -1
        view.seen = (None, view.seen[1])
        self.poll()


def _mtime(path: object) -> int | None:
    """A folder's mtime changes when a save or checkpoint folder appears in it."""
    try:
        return Path(str(path)).stat().st_mtime_ns if path else None
    except OSError:
        return None
