"""Pick a job from a list (the Run screen's compare): number, name, state, when it ended, its last loss.

The jobs are read in a worker (a store read may block); Enter answers the highlighted job's id, Esc or `q`
answers None. Jobs already chosen (the overlays shown now) are marked, so choosing one again reads as "remove".
"""

from __future__ import annotations

import time

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from engine.jobs.job import Job
from tui.engine_api import engine_of
from tui.screens.list_keys import VIM_LIST_BINDINGS
from tui.screens.run_text import when
from tui.theme import state_badge


class JobsListed(Message):
    def __init__(self, jobs: list[Job] | None, error: str | None = None) -> None:
        super().__init__()
        self.jobs = jobs
        self.error = error


class JobPicker(ModalScreen[int | None]):
    DEFAULT_CSS = """
    JobPicker #picker-table { height: auto; max-height: 16; }
    """
    BINDINGS = [
        *VIM_LIST_BINDINGS,
        Binding("enter", "pick", "Choose", id="picker.open"),
        Binding("escape,q", "cancel", "Cancel", id="picker.back"),
    ]

    def __init__(self, title: str, exclude: int | None, marked: set[int]) -> None:
        super().__init__()
        self.title_text = title
        self.exclude = exclude
        self.marked = marked
        self.ids: list[int] = []

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Static(self.title_text, classes="dialog-text", markup=False)
            yield Static("reading the jobs…", id="picker-status")
            yield DataTable(id="picker-table", cursor_type="row", zebra_stripes=True)
            yield Static(
                "[b]Enter[/b] choose (again: remove)    [b]j[/b]/[b]k[/b] move    [b]Esc[/b]/[b]q[/b] cancel",
                classes="dialog-keys",
            )

    def on_mount(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, group="job-picker")
    def load(self) -> None:
        try:
            jobs = engine_of(self.app).list_jobs(include_finished=True)
        except Exception as exc:
            self.post_message(JobsListed(None, str(exc)))
            return
        self.post_message(JobsListed(jobs))

    def on_jobs_listed(self, msg: JobsListed) -> None:
        status = self.query_one("#picker-status", Static)
        if msg.jobs is None:
            status.update(f"could not read the jobs: {msg.error}")
            return
        jobs = sorted((j for j in msg.jobs if j.id != self.exclude), key=lambda j: j.id, reverse=True)
        if not jobs:
            status.update("No other jobs to compare with yet.")
            return
        status.update(f"{len(jobs)} other job(s), newest first; ✓ = overlaid now")
        table = self.query_one("#picker-table", DataTable)
        table.add_columns("", "#", "name", "state", "ended", "last loss")
        now = time.time()
        for job in jobs:
            table.add_row(
                "✓" if job.id in self.marked else "",
                str(job.id),
                job.name or job.profile,
                state_badge(job.state),
                when(job.ended_at, now) if job.ended_at else "-",
                f"{job.loss:.4f}" if job.loss is not None else "-",
                key=str(job.id),
            )
        self.ids = [j.id for j in jobs]
        table.focus()

    def action_cursor_down(self) -> None:
        self.query_one(DataTable).action_cursor_down()

    def action_cursor_up(self) -> None:
        self.query_one(DataTable).action_cursor_up()

    def action_first(self) -> None:
        self.query_one(DataTable).move_cursor(row=0)

    def action_last(self) -> None:
        self.query_one(DataTable).move_cursor(row=max(0, len(self.ids) - 1))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_pick()

    def action_pick(self) -> None:
        row = self.query_one(DataTable).cursor_row
        if self.ids and 0 <= row < len(self.ids):
            self.dismiss(self.ids[row])

    def action_cancel(self) -> None:
        self.dismiss(None)
