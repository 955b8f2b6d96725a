"""Run: one job live: progress, loss/LR curves, samples/s, host + GPU figures, log, saves, exit evidence."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import ProgressBar, Static

from tui import data
from tui.screens.base import DeckScreen
from tui.screens.queue import duration
from tui.screens.system import stats_text
from tui.theme import FINISHED_STATES, state_badge
from tui.widgets.log_pane import LogPane
from tui.widgets.loss_plot import CurvePlot

PLOT_EVERY_S = 10.0  # while points stream in; a chart build is ~50 ms, so this keeps the deck under 3% CPU


class RunLoaded(Message):
    def __init__(
        self,
        job_id: int | None,
        job: Any,
        metrics: list[dict[str, Any]],
        saves: list[dict[str, Any]],
        stats: dict[str, Any],
        compare: list[tuple[str, list[dict[str, Any]]]],
        error: str | None,
        log_path: str | None = None,
    ) -> None:
        super().__init__()
        self.log_path = log_path
        self.job_id = job_id
        self.job = job
        self.metrics = metrics
        self.saves = saves
        self.stats = stats
        self.compare = compare
        self.error = error


class RunScreen(DeckScreen):
    TITLE_TEXT = "Run"
    POLL_SECONDS = 2.0  # step, loss and log arrive continuously; 2 s keeps the deck light beside a job
    BINDINGS = [
        Binding("f", "toggle_follow", "Follow log", id="run.follow"),
        Binding("slash", "search", "Search log", id="run.search", key_display="/"),
        Binding("n", "search_next", "Next match", id="run.search_next"),
        Binding("e", "next_error", "Next error", id="run.next_error"),
        Binding("left_square_bracket", "rank(-1)", "Prev rank", id="run.rank_prev", key_display="["),
        Binding("right_square_bracket", "rank(1)", "Next rank", id="run.rank_next", key_display="]"),
        Binding("c", "compare", "Compare", id="run.compare"),
        Binding("C", "clear_compare", "Clear compare", id="run.clear_compare", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.job_id: int | None = None
        self.rank: int | None = None  # None = the job's combined log
        self.compare_ids: list[int] = []
        self.search_text = ""
        self.search_at = -1
        self.following_path: str | None = None
        self.last_metrics_len = -1
        self._last_job: Any = None
        self.polls = 0
        self.last_plot = 0.0

    def compose_body(self) -> ComposeResult:
        yield Static("No job selected: open one from the Queue (key 2, then Enter).", id="run-header")
        # Hidden until the total is known: an indeterminate bar animates at full frame rate (CPU when idle).
        yield ProgressBar(id="run-progress", show_eta=False, classes="hidden")
        with Horizontal(id="run-charts"):
            yield CurvePlot("loss", "loss", smoothed=True, id="loss-plot", classes="plot")
            yield CurvePlot("LR", "lr", smoothed=False, id="lr-plot", classes="plot")
        with Horizontal(id="run-lower"):
            yield LogPane(id="run-log")
            with VerticalScroll(id="run-side"):
                # saves and the exit evidence first: at 80x24 they matter more than host figures
                yield Static("", id="run-saves")
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
        self.poll()

    def poll(self) -> None:
        # Host and GPU figures change slowly and cost a process scan: every 3rd poll only.
        self.polls += 1
        ended = str(getattr(self._last_job, "state", "")) in FINISHED_STATES
        if (self.job_id is None or ended) and self.polls % 3 != 1:
            return  # nothing live to follow: refresh every 6 s only
        self.load(self.job_id, list(self.compare_ids), self.rank, self.polls % 3 == 1)

    @work(thread=True, exclusive=True, group="run-load")
    def load(
        self, job_id: int | None, compare_ids: list[int], rank: int | None = None, with_stats: bool = True
    ) -> None:
        stats: dict[str, Any] = {}
        if with_stats:
            stats = data.system_stats()
            stats["gpus"] = data.gpu_report()
        if job_id is None:
            self.post_message(RunLoaded(None, None, [], [], stats, [], None))
            return
        try:
            job = data.get_job(job_id)
            metrics = data.job_metrics(job_id)
            saves = data.job_saves(job_id)
            compare = [(f"job {c}", data.job_metrics(c)) for c in compare_ids]
        except Exception as exc:
            self.post_message(RunLoaded(job_id, None, [], [], stats, [], str(exc)))
            return
        try:
            log_path: str | None = str(data.job_log_path(job_id, rank=rank))
        except Exception:  # no log yet (or no such rank): the pane stays as it is
            log_path = None
        self.post_message(RunLoaded(job_id, job, metrics, saves, stats, compare, None, log_path))

    def on_run_loaded(self, msg: RunLoaded) -> None:
        header = self.query_one("#run-header", Static)
        if msg.stats:
            self.query_one("#run-stats", Static).update(
                "\n" + stats_text(msg.stats) + "\n" + self._gpu_text(msg)
            )
        if msg.job_id is None:
            header.update("No job selected: open one from the Queue (key 2, then Enter).")
            return
        if msg.error or msg.job is None:
            header.update(escape(f"job {msg.job_id}: {msg.error}"))
            return
        job = msg.job
        self._last_job = job
        g = lambda name: getattr(job, name, None)  # noqa: E731
        state = str(g("state") or "?")
        step, total = g("step") or 0, g("total_steps")
        bar = self.query_one("#run-progress", ProgressBar)
        bar.set_class(not total, "hidden")
        if total:
            bar.update(total=total, progress=step)
        sps = g("samples_per_s")
        eta = duration(g("eta_s")) if state not in FINISHED_STATES else "-"
        badge = state_badge(state)
        header.update(
            f"job {msg.job_id} [b]{escape(str(g('name') or g('profile')))}[/b]  {badge.markup}  step {step}/{total or '?'}"
            f"  epoch {g('epoch') or '-'}/{g('total_epochs') or '?'}  ETA {eta}"
            f"  {f'{sps:.2f} samples/s' if isinstance(sps, int | float) else ''}"
        )
        # Plots are the costly part of a redraw: only on new points, and at most every PLOT_EVERY_S while they stream
        # (a finished job's final curve is drawn at once). A plotext draw of both plots costs ~100 ms
        # on this box.
        now = time.monotonic()
        fresh = len(msg.metrics) != self.last_metrics_len or self.last_metrics_len < 0
        if fresh and (
            now - self.last_plot >= PLOT_EVERY_S or state in FINISHED_STATES or self.last_metrics_len < 0
        ):
            self.last_plot = now
            self.last_metrics_len = len(msg.metrics)
            runs = [(f"job {msg.job_id}", msg.metrics), *msg.compare]
            self.query_one("#loss-plot", CurvePlot).show(runs)
            self.query_one("#lr-plot", CurvePlot).show(runs[:1])
        saves = msg.saves
        run_dir = g("run_dir")
        lines = [
            escape(
                f"{'✓' if sv.get('complete', True) else '…'} {sv.get('kind')} {Path(str(sv.get('path'))).name}"
            )
            for sv in saves
        ]
        self.query_one("#run-saves", Static).update(
            "[b]Saves[/b]"
            + (escape(f" in {run_dir}") if run_dir else "")
            + "\n"
            + ("\n".join(lines) or "none yet")
        )
        if state in FINISHED_STATES:
            evidence = "\n".join(str(e) for e in (g("evidence") or []))
            self.query_one("#run-evidence", Static).update(
                f"[b]Ended:[/b] {state}  {escape(str(g('exit_reason') or ''))}\n{escape(evidence)}"
            )
        if msg.log_path and msg.log_path != self.following_path:
            self.following_path = msg.log_path
            self.query_one("#run-log", LogPane).follow(Path(msg.log_path))

    def _gpu_text(self, msg: RunLoaded) -> str:
        gpus = msg.stats.get("gpus") or []
        mine = set(getattr(msg.job, "gpus", None) or [])
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
        from tui.screens.dialogs import PromptDialog

        def go(text: str | None) -> None:
            if text:
                self.search_text = text
                self.search_at = -1
                self.action_search_next()

        self.app.push_screen(PromptDialog("Search the log for:", self.search_text), go)

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
        gpus = getattr(getattr(self, "_last_job", None), "gpus", None) or [0]
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
                self.poll()

        self.app.push_screen(PromptDialog("Overlay the loss curve of job number:", "", check), go)

    def action_clear_compare(self) -> None:
        self.compare_ids.clear()
        self.last_metrics_len = -1
        self.poll()
