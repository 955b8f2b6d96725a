"""Queue: a live table of jobs (rows updated by key), with cancel/stop/retry/resume/reorder/pause.

The table fits the terminal (tui/screens/queue_columns.py); the highlighted job's every figure and its full
exit or wait reason are in the detail lines under it.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.message import Message
from textual.widgets import DataTable, Static

from engine.jobs.job import Job
from engine.jobs.protocol import Action, Request
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


def job_cells(job: Job, now: float | None = None) -> dict[str, Text | str]:
    now = time.time() if now is None else now
    step, total = job.step, job.total_steps
    progress = f"{step}/{total} {100 * step // total}%" if step is not None and total else "-"
    elapsed = (job.ended_at or now) - job.started_at if job.started_at else None
    epoch, epochs = job.epoch, job.total_epochs
    return {
        "id": str(job.id),
        "state": state_badge(job.state),
        "name": job.name or job.profile,
        "gpus": ",".join(str(x) for x in job.gpus or []) or "-",
        "progress": progress,
        "epoch": f"{epoch}/{epochs}" if epoch is not None and epochs else (str(epoch) if epoch is not None else "-"),
        "loss": f"{job.loss:.4f}" if job.loss is not None else "-",
        "sps": f"{job.samples_per_s:.2f}" if job.samples_per_s is not None else "-",
        "eta": duration(job.eta_s) if not job.finished else "-",
        "elapsed": duration(elapsed),
        "reason": job.exit_reason or job.wait_reason or "",
    }


class JobsLoaded(Message):
    def __init__(self, jobs: list[Job], paused: bool | None, error: str | None) -> None:
        super().__init__()
        self.jobs = jobs
        self.paused = paused
        self.error = error


def detail_text(job: Job, cells: dict[str, Text | str]) -> str:
    """Two lines on the highlighted job: every figure (some columns drop out at 80 columns), then its reason."""
    figures = [
        f"job {cells['id']} {cells['name']}",
        str(cells["state"]),
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
    ]

    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[str, Job] = {}
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
        self.shown.clear()
        for key, label, width in columns:
            table.add_column(label, key=key, width=width)
        now = time.time()
        for key, job in self.jobs.items():
            cells = self._cells(job, now)
            table.add_row(*cells.values(), key=key)
            self.shown[key] = {col: str(value) for col, value in cells.items()}
        if cursor_key is not None and cursor_key in table.rows:
            table.move_cursor(row=table.get_row_index(cursor_key))

    def _cells(self, job: Job, now: float) -> dict[str, Text | str]:
        """The shown columns' cells, cut to their widths."""
        every = job_cells(job, now)
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
            paused = engine.queue_paused()
        except Exception as exc:
            self.post_message(JobsLoaded([], None, str(exc)))
            return
        if note:  # a dead daemon was noticed and brought back: the user should know it had stopped
            self.app.call_from_thread(self.notify, note, severity="warning", timeout=10)
        self.post_message(JobsLoaded(jobs, paused, None))

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
            state = f"‖ queue PAUSED ({pause} resumes)" if message.paused else f"▶ queue running ({pause} pauses)"
            set_content(status, f"{state} · Enter opens the highlighted job's Run view ({run})")
        fresh = {str(j.id): j for j in message.jobs}
        self.jobs = fresh
        self._fit_columns()  # a first answer, or ids grown a digit
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
            set_content(
                empty,
                f"No jobs yet. Press {shown_key(self.app, 'deck.profiles')} for Profiles, highlight a profile and "
                f"press {shown_key(self.app, 'profiles.enqueue')} to enqueue it.",
            )
        elif not fresh:
            set_content(empty, "The queue cannot be read right now; it refreshes every second.")

    def _show_detail(self) -> None:
        job = self.selected_job()
        box = self.query_one("#queue-detail", Static)
        if box.display != (job is not None):
            box.display = job is not None
        if job is not None:
            set_content(box, detail_text(job, job_cells(job)))

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

    def _request(self, action: Action, arg: str | None = None, *, confirm: str = "") -> None:
        job = self.selected_job()
        if job is None:
            self.notify("No job selected.", severity="warning")
            return

        def go() -> None:
            self._send(Request(action, job.id, arg))

        if confirm:
            self.confirm(confirm.format(id=job.id, name=job.name), go)
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
        self.app.call_from_thread(self.notify, result.message or f"{request.action} sent to job {request.job_id}")
        self.load()

    def action_cancel(self) -> None:
        self._request(Action.CANCEL, confirm="Cancel job {id} ({name})? It stops now without a final save.")

    def action_stop(self) -> None:
        self._request(Action.STOP, confirm="Stop job {id} ({name}) gracefully? It saves, then exits.")

    def action_retry(self) -> None:
        self._request(Action.RETRY, confirm="Retry job {id} ({name})? A new job trains it again from the start.")

    def action_resume(self) -> None:
        self._request(Action.RESUME, confirm="Resume job {id} ({name})? A new job goes on from its last checkpoint.")

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
