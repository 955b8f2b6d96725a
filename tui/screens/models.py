"""Models: registry entries with their local status, discovered model files, and downloads with progress.

Keys: p pull an entry's missing parts (a large pull asks first, with its size and the free space), P pull one
part, i the detail pane of the highlighted entry (parts, repo, target folder, size), c cancel a download, R
resume one, u use the entry in a stored profile, U use a discovered file in a profile, v check a profile
(missing files, pull them, fill it).
Downloads are run by the engine's daemon: they keep going when this deck closes or the ssh session drops.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Static

from engine.models import downloads
from engine.models.discovery import Discovered, scan
from engine.models.registry import component_status, entry_status, load_registry
from profiles.document import Profile
from tui import units
from tui.keyscheme import bind
from tui.screens.base import DeckScreen
from tui.screens.list_keys import VIM_LIST_BINDINGS
from tui.screens.models_text import (
    PartInfo,
    detail_text,
    download_line,
    free_bytes,
    part_infos,
    pull_question,
    size_text,
    to_download,
)
from tui.screens.use_in_profile import UseInProfile

ACTIVE = {"queued", "running", "verifying"}  # download states that can still be cancelled
RESUMABLE = {"failed", "cancelled", "interrupted"}


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


class DetailLoaded(Message):
    """The highlighted entry's parts (status, sizes on disk) and the free space, read in a worker."""

    def __init__(self, entry_id: str, parts: list[PartInfo], free: int) -> None:
        super().__init__()
        self.entry_id = entry_id
        self.parts = parts
        self.free = free


class ModelsScreen(UseInProfile, DeckScreen):
    TITLE_TEXT = "Models"
    # Status walks the model folders and the HF cache and discovery reads headers only: cheap enough for 2 s
    # and downloads need a live-ish progress line.
    POLL_SECONDS = 2.0
    BINDINGS = [
        *VIM_LIST_BINDINGS,
        bind("models.pull", "pull", "Pull"),
        bind("models.cancel", "cancel", "Cancel dl"),
        bind("models.check", "check", "Check profile"),
        bind("models.use", "use_entry", "Use in profile"),
        bind("models.pull_part", "pull_part", "Pull part"),
        bind("models.resume", "resume", "Resume dl"),
        bind("models.use_file", "use_file", "Use file"),
        bind("models.refresh", "refresh", "Refresh", show=False),
        bind("models.details", "toggle_details", "Details"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._dls: list[downloads.Download] = []
        self._found: list[Discovered] = []

    def compose_body(self) -> ComposeResult:
        yield DataTable(id="models-table", cursor_type="row", zebra_stripes=True)
        yield Static("…", id="models-detail", markup=False)
        with VerticalScroll(id="models-body"):
            yield Static("[b]Downloads[/b] (run by the daemon: they survive closing the deck)")
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
        self._load_detail()

    # ---- the detail pane ------------------------------------------------------------------------
    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "models-table":
            self._load_detail()

    def _load_detail(self) -> None:
        entry_id = self._highlighted()
        if entry_id is not None and self.query_one("#models-detail", Static).display:
            self._read_detail(entry_id)

    @work(thread=True, exclusive=True, group="models-detail")
    def _read_detail(self, entry_id: str) -> None:
        entry = load_registry().get(entry_id)
        self.post_message(DetailLoaded(entry_id, part_infos(entry), free_bytes()))

    def on_detail_loaded(self, message: DetailLoaded) -> None:
        if message.entry_id != self._highlighted():
            return  # the cursor moved on meanwhile: the newer read follows
        pane = self.query_one("#models-detail", Static)
        entry = load_registry().get(message.entry_id)
        pane.update(detail_text(entry, message.parts, message.free, width=max(40, pane.size.width or 78)))

    def action_toggle_details(self) -> None:
        pane = self.query_one("#models-detail", Static)
        pane.display = not pane.display
        self._load_detail()

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
        self._found = message.found
        recent = sorted(message.dls, key=lambda d: d.created_at, reverse=True)[:6]
        self.query_one("#models-downloads", Static).update(
            "\n".join(download_line(d) for d in recent) or "no downloads"
        )
        found = self.query_one("#models-found", Static)
        width = found.size.width or 78
        lines = []
        for d in message.found:
            # What it is first, then the path shortened in the middle to the room left: one line each, the
            # file name always visible, never folded mid-name.
            head = f"{d.kind} {d.family or '?'} {size_text(d.size)}  "
            tail = f"  ({d.error})" if d.error else ""
            lines.append(head + units.middle(_short(d), max(16, width - len(head) - len(tail))) + tail)
        found.update("\n".join(lines) or "nothing found in the model folders")

    def _highlighted(self) -> str | None:
        table = self.query_one("#models-table", DataTable)
        if not table.row_count:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def _choose(self, title: str, choices: list[tuple[str, str]], then: Callable[[str], None]) -> None:
        from tui.screens.dialogs import ChoiceDialog

        def done(choice: str | None) -> None:
            if choice is not None:
                then(choice)

        self.app.push_screen(ChoiceDialog(title, choices), done)

    def action_refresh(self) -> None:
        self.load()

    # ---- pulling --------------------------------------------------------------------------------
    def action_pull(self) -> None:
        entry_id = self._highlighted()
        if entry_id is not None:
            self._ask_pull(entry_id, None)

    @work(thread=True, group="models-ask")
    def _ask_pull(self, entry_id: str, key: str | None) -> None:
        """A large pull asks first, with its size, where it goes and the free space there; a small one starts."""
        entry = load_registry().get(entry_id)
        fetch = to_download(part_infos(entry), key)
        question = pull_question(f"{entry_id}/{key}" if key else entry_id, fetch, free_bytes())
        if question is None:
            self.app.call_from_thread(self._pull, entry_id, key)  # workers start on the app's thread
        else:
            self.app.call_from_thread(self.confirm, question, lambda: self._pull(entry_id, key))

    def action_pull_part(self) -> None:
        entry_id = self._highlighted()
        if entry_id is None:
            return
        entry = load_registry().get(entry_id)
        choices = []
        for comp in entry.components:
            status, _where = component_status(comp)
            source = comp.file if comp.kind == "file" else f"{len(comp.include)} pattern(s)"
            size = f" ~{comp.approx_gb:g} GB" if comp.approx_gb else ""
            choices.append((comp.key, f"{comp.key}  {status}{size}  {comp.repo or 'manual'}: {source}"))
        self._choose(f"{entry_id}: pull which part?", choices, lambda key: self._ask_pull(entry_id, key))

    @work(thread=True, group="models-pull")
    def _pull(self, entry_id: str, key: str | None) -> None:
        try:
            entry = load_registry().get(entry_id)
            if key is None:
                started = downloads.pull_entry(entry)
            else:
                comp = next(c for c in entry.components if c.key == key)
                started = [downloads.pull_component(entry, comp)]
        except Exception as exc:  # engine errors carry a user-facing message (no network, gated, no space)
            self._note(f"pull {entry_id}: {exc}", error=True)
            return
        what = f"{entry_id}/{key}" if key else entry_id
        self._note(f"pulling {what}: {len(started)} download(s)" if started else f"{what}: nothing to pull")
        self.load()

    # ---- cancel / resume ------------------------------------------------------------------------
    def _pick_download(self, states: set[str], verb: str, then: Callable[[str], None]) -> None:
        """One matching download: straight to `then`; several: the highlighted entry's, else a choice."""
        entry_id = self._highlighted()
        found = [d for d in self._dls if d.state in states]
        mine = [d for d in found if d.entry == entry_id]
        pool = mine if len(mine) == 1 else found
        if not pool:
            self.notify(f"no download to {verb}")
        elif len(pool) == 1:
            then(pool[0].id)
        else:
            self._choose(f"{verb} which download?", [(d.id, download_line(d)[:70]) for d in pool], then)

    def action_cancel(self) -> None:
        def confirm(dl_id: str) -> None:
            dl = next((d for d in self._dls if d.id == dl_id), None)
            label = download_line(dl)[:60] if dl else dl_id
            self.confirm(f"Cancel {label}?\nIts partial files are deleted.", lambda: self._cancel(dl_id))

        self._pick_download(ACTIVE | {"failed", "interrupted"}, "cancel", confirm)

    @work(thread=True, group="models-cancel")
    def _cancel(self, download_id: str) -> None:
        try:
            downloads.cancel(download_id)
            final = downloads.wait(download_id, timeout=20)
        except Exception as exc:
            self._note(f"cancel failed: {exc}", error=True)
            return
        self._note(f"download {download_id}: {final.state}")
        self.load()

    def action_resume(self) -> None:
        def confirm(dl_id: str) -> None:  # resume confirms on every screen (tui/keyscheme.py)
            dl = next((d for d in self._dls if d.id == dl_id), None)
            label = download_line(dl)[:60] if dl else dl_id
            self.confirm(f"Resume {label}?\nIt downloads the rest.", lambda: self._resume(dl_id))

        self._pick_download(RESUMABLE, "resume", confirm)

    @work(thread=True, group="models-resume")
    def _resume(self, download_id: str) -> None:
        try:
            dl = downloads.resume(download_id)
        except Exception as exc:
            self._note(f"resume failed: {exc}", error=True)
            return
        self._note(f"download {download_id}: {dl.state} (continues from its partial files)")
        self.load()

    # ---- use in profile -------------------------------------------------------------------------
    def _with_profile(self, then: Callable[[str], None]) -> None:
        from profiles import store

        names = [(p.name, f"{p.name}  ({p.model_type or '?'})") for p in store.list_profiles()]
        if not names:
            self.notify("no stored profiles yet: create one on the Profiles screen (key 1)", severity="warning")
            return
        self._choose("Which profile?", names, then)

    def action_use_entry(self) -> None:
        entry_id = self._highlighted()
        if entry_id is None:
            return

        def edit(profile: Profile) -> tuple[list[object], str]:
            from engine.models.fill import use_entry

            entry = load_registry().get(entry_id)
            return list(use_entry(profile, entry)), entry.title

        self._with_profile(lambda name: self.propose_use(name, edit, f"models use {entry_id}"))

    def action_use_file(self) -> None:
        usable = [d for d in self._found if not d.error and d.kind != "lora"]
        if not usable:
            self.notify("no usable model file was discovered (LoRAs and broken files are left out)")
            return

        def pick_profile(path: str) -> None:
            def edit(profile: Profile) -> tuple[list[object], str]:
                from engine.models.fill import use_file

                changes, what = use_file(profile, Path(path))
                return list(changes), what

            self._with_profile(lambda name: self.propose_use(name, edit, f"models use {path}"))

        choices = [(d.path, f"{_short(d)}  {d.kind} {d.family or '?'}") for d in usable]
        self._choose("Use which file?", choices, pick_profile)

    # ---- check a profile ------------------------------------------------------------------------
    def action_check(self) -> None:
        from tui.screens.models_check import CheckScreen

        self._with_profile(lambda name: self.app.push_screen(CheckScreen(name)))

    # ---- list movement --------------------------------------------------------------------------
    def action_cursor_down(self) -> None:
        self.query_one("#models-table", DataTable).action_cursor_down()

    def action_cursor_up(self) -> None:
        self.query_one("#models-table", DataTable).action_cursor_up()

    def action_first(self) -> None:
        self.query_one("#models-table", DataTable).move_cursor(row=0)

    def action_last(self) -> None:
        table = self.query_one("#models-table", DataTable)
        table.move_cursor(row=max(0, table.row_count - 1))
