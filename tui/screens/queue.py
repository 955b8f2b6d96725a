"""Queue: a live table of jobs (rows updated by key), with cancel/stop/retry/resume/reorder/pause/remove.

Jobs come in the engine's one order (engine/jobs/client.py LIST_ORDER, the order `dpdeck ls` prints): jobs not
yet ended in the order they start, then ended ones. The table fits the terminal
(tui/screens/queue_columns.py); the highlighted job's every figure and its full exit or wait reason are in
the detail lines under it. What a job allows is engine/jobs/verbs.py's rule, checked before any confirmation.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.message import Message
from textual.widgets import DataTable, Static

from engine.jobs.client import queue_positions
from engine.jobs.job import Job, JobState
from engine.jobs.protocol import Action, Request
from engine.jobs.verbs import refusal
from tui import data
from tui.engine_api import engine_of
from tui.keymap import shown_key
from tui.keyscheme import bind
from tui.screens.base import DeckScreen
from tui.screens.list_keys import VIM_LIST_BINDINGS
from tui.screens.queue_columns import fit, plan_columns
from tui.theme import state_badge
from tui.widgets.quiet import set_content


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def job_cells(job: Job, now: float | None = None, position: int | None = None) -> dict[str, Text | str]:
    """Every column's cell for `job`; `position`: its place in line when queued."""
    now = time.time() if now is None else now
    step, total = job.step, job.total_steps
    progress = f"{step}/{total} {100 * step // total}%" if step is not None and total else "-"
    elapsed = (job.ended_at or now) - job.started_at if job.started_at else None
    epoch, epochs = job.epoch, job.total_epochs
    return {
        "id": str(job.id),
        "pos": str(position) if position is not None else "",
        "state": state_badge(job.state),
        "name": job.name or job.profile,
        "gpus": ",".join(str(x) for x in job.gpus or []) or "-",
        "progress": progress,
        "epoch": f"{epoch}/{epochs}"
        if epoch is not None and epochs
        else (str(epoch) if epoch is not None else "-"),
        "loss": f"{job.loss:.4f}" if job.loss is not None else "-",
        "sps": f"{job.samples_per_s:.2f}" if job.samples_per_s is not None else "-",
        "eta": duration(job.eta_s) if not job.finished else "-",
        "elapsed": duration(elapsed),
        "reason": job.exit_reason or job.wait_reason or "",
    }


class JobsLoaded(Message):
    def __init__(self, jobs: list[Job], paused: bool | None, error: str | None, dismissed: int = 0) -> None:
        super().__init__()
        self.jobs = jobs
        self.paused = paused
        self.error = error
        self.dismissed = dismissed  # ended jobs removed from this list


# What a confirmation says, by action and (where it differs) the job's state. {id} {name} filled in.
# Every job verb that ends, restarts or queues training confirms; moving and pausing do not.
CONFIRMS: dict[tuple[Action, JobState | None], str] = {
    (Action.CANCEL, None): "Cancel job {id} ({name})? It stops now without a final save.",
    (Action.CANCEL, JobState.QUEUED): "Cancel queued job {id} ({name})? It leaves the queue without running.",
    (Action.STOP, None): "Stop job {id} ({name}) gracefully? It saves, then exits.",
    (Action.STOP, JobState.QUEUED): "Stop queued job {id} ({name})? It has nothing to save: it is cancelled.",
    (
        Action.RETRY,
        None,
    ): "Retry job {id} ({name}) from the start? A new job is queued with its frozen profile.",
    (
        Action.RESUME,
        None,
    ): "Resume job {id} ({name}) from its last save? A new job is queued that continues it.",
    (Action.RESUME, JobState.COMPLETED): (
        "Job {id} ({name}) completed. Train job {id} again from its last save? A new job is queued that "
        "continues its run past the end."
    ),
}


def confirm_text(action: Action, job: Job) -> str:
    text = CONFIRMS.get((action, job.state)) or CONFIRMS[(action, None)]
    return text.format(id=job.id, name=job.name or job.profile)


def detail_text(job: Job, cells: dict[str, Text | str]) -> str:
    """Two lines on the highlighted job: every figure (some columns drop out at 80 columns), then its reason."""
    figures = [
        f"job {cells['id']} {cells['name']}",
        str(cells["state"]) + (f" #{cells['pos']} in line" if cells["pos"] else ""),
        *(
            text.format(cells[key])
            for key, text in (
                ("gpus", "GPUs {}"),
                ("progress", "step {}"),
                ("epoch", "epoch {}"),
                ("loss", "loss {}"),
                ("sps", "{} smp/s"),
                ("eta", "ETA {}"),
                ("elapsed", "elapsed {}"),
            )
            if str(cells[key]) != "-"  # a figure the job does not have yet
        ),
    ]
    reason, wait = job.exit_reason, job.wait_reason
    why = f"exit: {reason}" if reason else (f"waiting: {wait}" if wait else "")
    return " · ".join(figures) + "\n" + why


class QueueScreen(DeckScreen):
    TITLE_TEXT = "Queue"
    POLL_SECONDS = 1.0
    BINDINGS = [
        *VIM_LIST_BINDINGS,
        bind("queue.open", "open", "Run view"),
        bind("queue.cancel", "cancel", "Cancel"),
        bind("queue.stop", "stop", "Stop (save)"),
        bind("queue.retry", "retry", "Retry"),
        bind("queue.resume", "resume", "Resume"),
        bind("queue.pause", "pause", "Pause queue"),
        bind("queue.move_up", "move('up')", "Move up"),
        bind("queue.move_down", "move('down')", "Move down"),
        bind("queue.delete", "delete", "Remove ended"),
        bind("queue.delete_ended", "delete_ended", "Remove all ended"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[str, Job] = {}
        self.positions: dict[int, int] = {}  # job id -> place in line, from the engine's order
        self.paused: bool | None = None
        self.shown: dict[str, dict[str, str]] = {}  # key -> the cell texts on screen
        self.columns: tuple[tuple[str, str, int], ...] = ()  # (key, label, width) shown now

    def compose_body(self) -> ComposeResult:
        yield Static("", id="queue-status", markup=False)
        yield DataTable(id="queue-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="queue-detail", markup=False)
        yield Static("", id="queue-empty", markup=False)

    def on_mount(self) -> None:
        self.query_one("#queue-table", DataTable).focus()
        super().on_mount()

    def on_resize(self) -> None:
        self._fit_columns()

    def _fit_columns(self) -> None:
        """Choose the columns for the table's width; rebuild the table only when the choice changed."""
        table = self.query_one("#queue-table", DataTable)
        # Room for the focus border and a vertical scrollbar always, so neither appearing reflows the columns.
        avail = self.size.width - 2 - table.styles.scrollbar_size_vertical
        if avail <= 0:
            return
        digits = max((len(k) for k in self.jobs), default=1)
        columns = plan_columns(avail, digits)
        if columns == self.columns:
            return
        self.columns = columns
        cursor_key = self._cursor_key()
        table.clear(columns=True)
        for key, label, width in columns:
            table.add_column(label, key=key, width=width)
        self._rebuild_rows(cursor_key)

    def _rebuild_rows(self, cursor_key: str | None = None) -> None:
        """Every row again, in self.jobs' order; the highlight stays on the same job (a moved one included)."""
        table = self.query_one("#queue-table", DataTable)
        cursor_key = cursor_key or self._cursor_key()
        table.clear()
        self.shown.clear()
        now = time.time()
        for key, job in self.jobs.items():
            cells = self._cells(job, now)
            table.add_row(*cells.values(), key=key)
            self.shown[key] = {col: str(value) for col, value in cells.items()}
        if cursor_key is not None and cursor_key in table.rows:
            table.move_cursor(row=table.get_row_index(cursor_key))

    def _cells(self, job: Job, now: float) -> dict[str, Text | str]:
        """The shown columns' cells, cut to their widths."""
        every = job_cells(job, now, self.positions.get(job.id))
        out: dict[str, Text | str] = {}
        for key, _, width in self.columns:
            value = every[key]
            if key == "progress" and isinstance(value, str) and len(value) > width:
                value = value.rsplit(" ", 1)[-1]  # "24%" when "12000/50000 24%" does not fit
            out[key] = fit(value, width)
        return out

    def _cursor_key(self) -> str | None:
        table = self.query_one("#queue-table", DataTable)
        if not table.row_count or table.cursor_row is None:
            return None
        return str(table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value)

    def poll(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, group="queue-load")
    def load(self) -> None:
        engine = engine_of(self.app)
        try:
            note = engine.check_daemon()
            jobs = engine.list_jobs(include_finished=True)
            dismissed = engine.dismissed_jobs()
            paused = engine.queue_paused()
        except Exception as exc:
            self.post_message(JobsLoaded([], None, str(exc)))
            return
        if note:  # a dead daemon was noticed and brought back: the user should know it had stopped
            self.app.call_from_thread(self.notify, note, severity="warning", timeout=10)
        shown = [j for j in jobs if j.id not in dismissed]
        self.post_message(JobsLoaded(shown, paused, None, len(jobs) - len(shown)))

    def on_jobs_loaded(self, message: JobsLoaded) -> None:
        table = self.query_one("#queue-table", DataTable)
        empty = self.query_one("#queue-empty", Static)
        status = self.query_one("#queue-status", Static)
        if message.error:
            set_content(status, f"✗ {message.error}")
        else:
            self.paused = message.paused
            # The table's own Enter hides the screen's in the footer: say here what it does.
            pause, run = shown_key(self.app, "queue.pause"), shown_key(self.app, "deck.run")
            state = (
                f"‖ queue PAUSED ({pause} resumes)" if message.paused else f"▶ queue running ({pause} pauses)"
            )
            removed = f" · {message.dismissed} ended removed (dpdeck ls --all)" if message.dismissed else ""
            pending = data.pending_enqueues()
            waiting = f" · {pending[0]}" if pending else ""
            # What changed first: the Enter hint is the part a narrow terminal may cut.
            set_content(
                status, f"{state}{waiting}{removed} · Enter opens the highlighted job's Run view ({run})"
            )
        fresh = {str(j.id): j for j in message.jobs}
        self.jobs = fresh
        self.positions = queue_positions(message.jobs)
        self._fit_columns()  # a first answer, or ids grown a digit
        kept = [k.value for k in table.rows if k.value in fresh]
        if kept != list(fresh)[: len(kept)]:  # a move, or a job placed between others: the engine's order
            self._rebuild_rows()
        now = time.time()
        for key, job in fresh.items():
            cells = self._cells(job, now)
            shown = {col: str(value) for col, value in cells.items()}
            if key in table.rows:
                old = self.shown.get(key, {})
                for col, value in cells.items():
                    if old.get(col) != shown[col]:  # touch only the cells that changed
                        table.update_cell(key, col, value)
            else:
                table.add_row(*cells.values(), key=key)
            self.shown[key] = shown
        for key in [k.value for k in table.rows if k.value not in fresh]:
            table.remove_row(key)
            self.shown.pop(str(key), None)
        self._show_detail()
        if empty.display != (not fresh):
            empty.display = not fresh
        if not fresh and not message.error:
            pending = data.pending_enqueues()
            set_content(
                empty,
                "\n".join(pending)
                if pending
                else f"No jobs yet. Press {shown_key(self.app, 'deck.profiles')} for Profiles, highlight a profile "
                f"and press {shown_key(self.app, 'profiles.enqueue')} to enqueue it.",
            )
        elif not fresh:
            set_content(empty, "The queue cannot be read right now; it refreshes every second.")

    def _show_detail(self) -> None:
        job = self.selected_job()
        box = self.query_one("#queue-detail", Static)
        if box.display != (job is not None):
            box.display = job is not None
        if job is not None:
            set_content(box, detail_text(job, job_cells(job, position=self.positions.get(job.id))))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self._show_detail()

    def selected_job(self) -> Job | None:
        key = self._cursor_key()
        return None if key is None else self.jobs.get(key)

    def action_cursor_down(self) -> None:
        self.query_one("#queue-table", DataTable).action_cursor_down()

    def action_cursor_up(self) -> None:
        self.query_one("#queue-table", DataTable).action_cursor_up()

    def action_first(self) -> None:
        self.query_one("#queue-table", DataTable).move_cursor(row=0)

    def action_last(self) -> None:
        table = self.query_one("#queue-table", DataTable)
        table.move_cursor(row=max(0, table.row_count - 1))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def action_open(self) -> None:
        job = self.selected_job()
        if job is None:
            self.notify("No job selected.", severity="warning")
            return
        self.app.show_job(job.id)  # type: ignore[attr-defined]

    def _request(self, action: Action, arg: str | None = None) -> None:
        """Refused at once with the engine's reason ("already ended") when the job does not allow the action;
        else confirmed where CONFIRMS has a text, then sent (the daemon checks the same rule again)."""
        job = self.selected_job()
        if job is None:
            self.notify("No job selected.", severity="warning")
            return
        reason = refusal(action, job)
        if reason:
            self.notify(reason, severity="warning", timeout=8)
            return

        def go() -> None:
            self._send(Request(action, job.id, arg))

        if (action, None) in CONFIRMS:
            self.confirm(confirm_text(action, job), go)
        else:
            go()

    @work(thread=True, group="queue-request")
    def _send(self, request: Request) -> None:
        """Whether the request makes sense (a cancel of an ended job, a move of a running one) is the daemon's
        to decide: its refusal comes back in the result, and is shown as it is."""
        try:
            result = engine_of(self.app).send(request)
        except Exception as exc:  # no such job any more, an unreadable store
            self.app.call_from_thread(self.notify, str(exc), severity="warning", timeout=8)
            return
        if not result.ok:
            self.app.call_from_thread(self.notify, result.message, severity="warning", timeout=8)
            return
        self.app.call_from_thread(
            self.notify, result.message or f"{request.action} sent to job {request.job_id}"
        )
        self.load()

    def action_cancel(self) -> None:
        self._request(Action.CANCEL)

    def action_stop(self) -> None:
        self._request(Action.STOP)

    def action_retry(self) -> None:
        self._request(Action.RETRY)

    def action_resume(self) -> None:
        self._request(Action.RESUME)

    def action_move(self, direction: str) -> None:
        self._request(Action.MOVE, direction)

    def action_pause(self) -> None:
        self._pause(not bool(self.paused))

    @work(thread=True, group="queue-request")
    def _pause(self, paused: bool) -> None:
        try:
            engine_of(self.app).set_queue_paused(paused)
        except Exception as exc:
            self.app.call_from_thread(self.notify, str(exc), severity="error", timeout=8)
            return
        self.load()

    def action_delete(self) -> None:
        job = self.selected_job()
        if job is None:
            self.notify("No job selected.", severity="warning")
            return
        if not job.finished:
            self.notify(
                f"job {job.id} is {job.state}: only ended jobs leave the list (cancel it first: {shown_key(self.app, 'queue.cancel')})",
                severity="warning",
                timeout=8,
            )
            return
        self.confirm(
            f"Remove ended job {job.id} ({job.name}) from this list? Its folder, logs and saves stay; "
            f"dpdeck show {job.id} and dpdeck ls --all still list it.",
            lambda: self._dismiss([job.id]),
        )

    def action_delete_ended(self) -> None:
        ended = [job.id for job in self.jobs.values() if job.finished]
        if not ended:
            self.notify("No ended jobs in the list.", severity="warning")
            return
        self.confirm(
            f"Remove all {len(ended)} ended job(s) from this list? Their folders, logs and saves stay; "
            "dpdeck ls --all still lists them.",
            lambda: self._dismiss(ended),
        )

    @work(thread=True, group="queue-request")
    def _dismiss(self, job_ids: list[int]) -> None:
        try:
            removed = engine_of(self.app).dismiss_jobs(job_ids)
        except (KeyError, ValueError) as exc:  # gone from the store, or restarted meanwhile
            self.app.call_from_thread(self.notify, str(exc).strip("'\""), severity="warning", timeout=8)
            return
        ids = ", ".join(str(i) for i in removed)
        self.app.call_from_thread(self.notify, f"removed ended job(s) {ids} from the Queue list")
        self.load()
