"""Models: registry entries with their local status, discovered model files, and downloads with progress."""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Static

from engine.models import downloads
from engine.models.discovery import Discovered, scan
from engine.models.registry import entry_status, load_registry
from tui.screens.base import VIM_LIST_BINDINGS, DeckScreen

ACTIVE = {"queued", "running"}  # download states that can still be cancelled


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _short(d: Discovered) -> str:
    # Relative to the scanned folder: absolute paths wrap at 80 columns and bury the file name.
    path = Path(d.path)
    try:
        return str(path.relative_to(d.root)) if d.root else path.name
    except ValueError:
        return str(path)


class ModelsLoaded(Message):
    """Registry status, discovery and downloads, read together in one worker so one poll = one repaint."""

    def __init__(
        self,
        entries: list[tuple[str, str, str, float]],
        found: list[Discovered],
        dls: list[downloads.Download],
    ) -> None:
        super().__init__()
        self.entries = entries
        self.found = found
        self.dls = dls


def download_line(dl: downloads.Download) -> str:
    what = f"{dl.entry}/{dl.key}" if dl.entry else dl.repo
    pct = f"{dl.progress * 100:5.1f}%" if dl.progress is not None else "  ?  "
    eta = f" eta {dl.eta_s:.0f}s" if dl.eta_s is not None and dl.state == "running" else ""
    err = f" {dl.error}" if dl.error else ""
    return f"{dl.id[:8]} {what} {dl.state} {pct} {_size(dl.bytes_done)}{eta}{err}"


class ModelsScreen(DeckScreen):
    TITLE_TEXT = "Models"
    # Status walks the model folders and the HF cache and discovery reads headers only: cheap enough for 2 s,
    # and downloads need a live-ish progress line.
    POLL_SECONDS = 2.0
    BINDINGS = [
        *VIM_LIST_BINDINGS,
        Binding("p", "pull", "Pull entry", id="models.pull"),
        Binding("c", "cancel", "Cancel download", id="models.cancel"),
        Binding("r", "refresh", "Refresh", id="models.refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._dls: list[downloads.Download] = []

    def compose_body(self) -> ComposeResult:
        yield DataTable(id="models-table", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="models-body"):
            yield Static("[b]Downloads[/b]")
            yield Static("…", id="models-downloads", markup=False)
            yield Static("[b]Discovered[/b]")
            yield Static("scanning…", id="models-found", markup=False)

    def on_mount(self) -> None:
        table = self.query_one("#models-table", DataTable)
        for key, label in (("id", "entry"), ("type", "type"), ("status", "status"), ("gb", "GB")):
            table.add_column(label, key=key)
        # The registry is a packaged file: listing it is instant, status fills in with the first poll.
        for entry in load_registry().entries:
            table.add_row(entry.id, entry.model_type, "…", f"{entry.approx_gb:g}", key=entry.id)
        table.styles.height = "1fr"
        self.query_one("#models-body", VerticalScroll).styles.height = "1fr"
        super().on_mount()

    def poll(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, group="models-load")
    def load(self) -> None:
        entries = [(e.id, e.model_type, entry_status(e), e.approx_gb) for e in load_registry().entries]
        self.post_message(ModelsLoaded(entries, scan(), downloads.list_downloads()))

    def on_models_loaded(self, message: ModelsLoaded) -> None:
        table = self.query_one("#models-table", DataTable)
        for entry_id, _, status, _ in message.entries:
            if entry_id in table.rows:
                table.update_cell(entry_id, "status", status, update_width=True)
        self._dls = message.dls
        recent = sorted(message.dls, key=lambda d: d.created_at, reverse=True)[:6]
        self.query_one("#models-downloads", Static).update(
            "\n".join(download_line(d) for d in recent) or "no downloads"
        )
        self.query_one("#models-found", Static).update(
            "\n".join(
                f"{_short(d)}  {d.kind} {d.family or '?'} {_size(d.size)}" + (f"  ({d.error})" if d.error else "")
                for d in message.found
            )
            or "nothing found in the model folders"
        )

    def _highlighted(self) -> str | None:
        table = self.query_one("#models-table", DataTable)
        if not table.row_count:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def action_refresh(self) -> None:
        self.load()

    def action_pull(self) -> None:
        entry_id = self._highlighted()
        if entry_id is not None:
            self._pull(entry_id)

    @work(thread=True, exclusive=True, group="models-pull")
    def _pull(self, entry_id: str) -> None:
        try:
            started = downloads.pull_entry(load_registry().get(entry_id))
        except Exception as exc:  # engine errors carry a user-facing message (no network, gated, no space)
            self.app.call_from_thread(self.notify, f"pull {entry_id}: {exc}", severity="error", timeout=8)
            return
        note = f"pulling {entry_id}: {len(started)} download(s)" if started else f"{entry_id}: nothing to pull"
        self.app.call_from_thread(self.notify, note)
        self.load()

    def action_cancel(self) -> None:
        # Cancel what belongs to the highlighted entry, else the newest active download: one key, no picker.
        entry_id = self._highlighted()
        active = [d for d in self._dls if d.state in ACTIVE]
        mine = [d for d in active if d.entry == entry_id] or active
        if not mine:
            self.notify("no active download to cancel")
            return
        self._cancel([d.id for d in mine])

    @work(thread=True, exclusive=True, group="models-cancel")
    def _cancel(self, ids: list[str]) -> None:
        for download_id in ids:
            try:
                downloads.cancel(download_id)
            except Exception as exc:
                self.app.call_from_thread(self.notify, f"cancel failed: {exc}", severity="error", timeout=8)
        self.app.call_from_thread(self.notify, f"cancelled {len(ids)} download(s)")
        self.load()

    def action_cursor_down(self) -> None:
        self.query_one("#models-table", DataTable).action_cursor_down()

    def action_cursor_up(self) -> None:
        self.query_one("#models-table", DataTable).action_cursor_up()

    def action_first(self) -> None:
        self.query_one("#models-table", DataTable).move_cursor(row=0)

    def action_last(self) -> None:
        table = self.query_one("#models-table", DataTable)
        table.move_cursor(row=max(0, table.row_count - 1))
