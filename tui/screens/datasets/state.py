"""What every part of the Datasets screen shares: the open dataset, its listed folders, filters, drafts, and
the few helpers all parts call (the status line, the right-hand pane, a choice dialog)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textual.widgets import ContentSwitcher, DataTable, Static

from tui import units
from tui.screens.base import DeckScreen
from tui.widgets import dataset_model as dm


class DatasetsState(DeckScreen):
    def __init__(self) -> None:
        super().__init__()
        self.source: dm.DatasetSource | None = None
        self.bucket_profile: str | None = None
        self.folder: Path | None = None  # the folder the file list shows
        self.entries: dict[Path, list[dm.Entry]] = {}
        self.dir_labels: dict[str, str] = {}  # folder -> its name in the list, before the counts
        self.shown: list[dm.Entry] = []
        self.shown_at: dict[Path, int] = {}  # path -> its index in `shown`
        self.fill_gen = 0  # bumped by every refill: a pending chunk of an older one stops
        self.filled = 0  # rows of `shown` already in the table
        self.filters = dm.Filters()
        self.drafts: dict[Path, str] = {}
        self.dupe_mark: dict[Path, str] | None = None  # None until computed
        self.buckets: dm.BucketView | None = None
        self.current: Path | None = None
        self.loaded_text = ""  # what the caption editor last loaded for `current`: anything else was typed
        self.input_mode = ""  # "open" | "tag" while the input line is in use

    # Quitting the deck asks first when this is true (DeckApp.dirty_editors).
    @property
    def dirty(self) -> bool:
        return bool(self.drafts)

    @property
    def profile_name(self) -> str:
        return f"Datasets ({len(self.drafts)} unsaved caption(s))"

    def _set_status(self, text: str | None = None) -> None:
        self.refresh_bindings()  # `ctrl+s` shows only while there is something to save
        if text is None:
            parts = []
            if self.source is not None:
                here = self.entries.get(self.folder, []) if self.folder else []
                missing = sum(1 for e in here if e.state != "ok")
                parts.append(f"{len(self.shown)}/{len(here)} shown · {missing} without caption")
            if self.drafts:
                parts.append(f"{len(self.drafts)} unsaved (ctrl+s)")
            if self.filters.active():
                parts.append(f"filter: {self.filters.describe()} (c clears)")
            if self.source is not None:
                # Last, and shortened in the middle to the room left: the folder's start and its name both show.
                room = max(16, self.query_one("#ds-status", Static).size.width - len(" · ".join(parts)) - 3)
                parts.append(self._source_label(room))
            text = " · ".join(parts) or "o: open a folder or a dataset TOML · p: a profile's dataset"
        self.query_one("#ds-status", Static).update(text)

    def _source_label(self, width: int) -> str:
        source = self.source
        assert source is not None
        if source.kind == "profile":
            head = f"profile {source.profile} ("
            return f"{head}{units.middle(source.target, max(8, width - len(head) - 1))})"
        return units.middle(source.target, width)

    def _switch(self, pane: str) -> None:
        """Preview + editor, or a report panel; a panel also takes the file list's room (tables need width)."""
        self.query_one("#ds-right", ContentSwitcher).current = pane
        self.query_one("#ds-body").set_class(pane != "ds-view", "-panel")
        if pane == "ds-view":
            self.set_focus(self.query_one("#ds-files", DataTable))
        self.refresh_bindings()

    def _choose(self, title: str, choices: list[tuple[str, str]], then: Callable[[str], None]) -> None:
        from tui.screens.dialogs import ChoiceDialog

        if not choices:
            self.notify("no stored profiles yet: make one in Profiles (key 1)", severity="warning")
            return

        def done(choice: str | None) -> None:
            if choice is not None:
                then(choice)

        self.app.push_screen(ChoiceDialog(title, choices), done)
