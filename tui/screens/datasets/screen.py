"""Datasets: folders, images with their caption state, an image preview, the caption editor, filters,
statistics, the trainer's bucket plan, batch caption operations (dry-run diff first) and undo.

This module lays the screen out and holds its keys, list movement and the input line; the other modules of
this package hold the rest (see its __init__). Everything that reads the disk runs in a worker; the preview
decodes on its own thread (tui.widgets.image_preview).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widget import Widget
from textual.widgets import ContentSwitcher, DataTable, Input, OptionList, Static, TextArea

from tui import units
from tui.keyscheme import bind
from tui.screens.datasets import messages as msg
from tui.screens.datasets.batch import BatchAndUndo
from tui.screens.datasets.captions import CaptionEditing
from tui.screens.datasets.filters import FiltersAndPanels
from tui.screens.datasets.use_folder import UseFolder
from tui.screens.list_keys import VIM_LIST_BINDINGS
from tui.widgets.image_preview import ImagePreview

# A notification is 60 cells wide, at most half the screen: 36 cells of text at 80 columns.
TOAST_PATH_CELLS = 34

# Keys that still work while the caption editor or the input line has the focus (the rest type text).
TYPING_ACTIONS = {"save", "next_image", "prev_image", "revert", "leave"}


class DatasetsScreen(UseFolder, CaptionEditing, BatchAndUndo, FiltersAndPanels):
    TITLE_TEXT = "Datasets"
    # Screen classes for app.tcss: wider folder column and taller caption editor on big terminals.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (40, "-tall")]
    BINDINGS = [
        *VIM_LIST_BINDINGS,
        # Priority: the app runs these before routing the next key, so the letters typed right after `o`, `/`,
        # `e` or Enter land in the field they open, not in the list they were typed over (and lost). Textual drops
        # a priority letter binding by itself while a text field has the focus.
        bind("datasets.open", "open", "Open", priority=True),
        bind("datasets.edit", "edit", "Edit", show=False, priority=True),
        bind("datasets.edit_enter", "edit", "Edit", show=False, priority=True),
        bind("datasets.save", "save", "Save"),
        # Priority: the editor would type alt+n as an "n".
        bind("datasets.next", "next_image", "Next", priority=True),
        bind("datasets.prev", "prev_image", "Prev", priority=True),
        bind("datasets.tag", "filter_tag", "Tag", priority=True),
        bind("datasets.missing", "filter_missing", "Missing"),
        bind("datasets.stats", "panel('ds-stats')", "Stats"),
        bind("datasets.buckets", "panel('ds-buckets')", "Buckets"),
        bind("datasets.batch", "batch", "Batch"),
        bind("datasets.undo", "undo", "Undo"),
        bind("datasets.use", "use_folder", "Use in profile"),
        bind("datasets.back", "leave", "Back", keys="escape"),
        bind("datasets.profile", "open_profile", "Profile's data", show=False),
        bind("datasets.revert", "revert", "Revert caption", show=False),
        bind("datasets.bucket_filter", "filter_bucket", "Bucket filter", show=False),
        bind("datasets.dupes", "filter_dupes", "Dupes", show=False),
        bind("datasets.clear", "clear_filters", "Clear filters", show=False),
        bind("datasets.bucket_profile", "bucket_profile", "Batch profile", show=False),
        bind("datasets.rescan", "rescan", "Rescan", show=False),
    ]

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="ds-body"):
            yield OptionList(id="ds-dirs")
            yield DataTable(id="ds-files", cursor_type="row", zebra_stripes=True)
            with ContentSwitcher(id="ds-right", initial="ds-view"):
                with Vertical(id="ds-view"):
                    yield Static("", id="ds-info", markup=False)
                    yield ImagePreview(id="ds-preview")
                    yield TextArea("", id="ds-caption", soft_wrap=True)
                with VerticalScroll(id="ds-stats", can_focus=True):
                    yield Static("s: statistics of the folder", id="ds-stats-body")
                with VerticalScroll(id="ds-buckets", can_focus=True):
                    yield Static("b: the trainer's buckets", id="ds-buckets-body")
        yield Static("opening…", id="ds-status", markup=False)
        with Horizontal(id="ds-inputbar"):
            yield Static("", id="ds-input-label", markup=False)
            # Always displayed: focusing a widget that is not yet shown would lose keys typed right after `o`.
            yield Input(
                placeholder="o: open a folder or dataset TOML   /: filter by tag", id="ds-input", compact=True
            )

    def on_mount(self) -> None:
        super().on_mount()
        table = self.query_one("#ds-files", DataTable)
        # Flags and size first: a long file name is the only thing that may run off the right edge at 80 columns.
        for key, label, width in (("flags", "c d", 3), ("size", "size", 9), ("name", "name", None)):
            table.add_column(label, key=key, width=width)
        # Text fields are entered on purpose (e/Enter, o, /) and left with Esc: out of the Tab chain until then,
        # so Tab cycles the lists and panels and `j j` after a Tab moves the list instead of typing "jj".
        for field in self.query("#ds-caption, #ds-input"):
            field.can_focus = False
        self.set_focus(table)
        self._open("last", "")

    def open_field(self, field: Widget) -> None:
        field.can_focus = True
        super().open_field(field)

    def on_profiles_listed(self, message: msg.ProfilesListed) -> None:
        self._choose(message.title, message.choices, message.then)

    def action_rescan(self) -> None:
        if self.source is not None:
            self._reload(set(self.source.directories))

    # Moving and leaving.

    def _focused_list(self) -> OptionList | DataTable[Any]:
        focused = self.focused
        if isinstance(focused, OptionList):
            return focused
        return self.query_one("#ds-files", DataTable)

    def action_cursor_down(self) -> None:
        self._focused_list().action_cursor_down()

    def action_cursor_up(self) -> None:
        self._focused_list().action_cursor_up()

    def action_first(self) -> None:
        target = self._focused_list()
        if isinstance(target, OptionList):
            target.action_first()
        else:
            target.move_cursor(row=0)

    def action_last(self) -> None:
        target = self._focused_list()
        if isinstance(target, OptionList):
            target.action_last()
        else:
            self._fill_rest()
            target.move_cursor(row=max(0, target.row_count - 1))

    def action_leave(self) -> None:
        box = self.query_one("#ds-input", Input)
        if box.has_focus:
            if self.input_mode == "tag":
                self.filters.tag = ""
                self._fill()
            self._end_input()
            return
        self._switch("ds-view")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # The footer shows the keys that act here. While text is typed, letters type: only the editing keys
        # remain. Next/previous image belong to the editor (j/k and the arrows move the list elsewhere).
        typing = isinstance(self.focused, (TextArea, Input))
        if action in ("next_image", "prev_image"):
            return isinstance(self.focused, TextArea)
        if action == "edit":
            return isinstance(self.focused, DataTable) and self.current is not None
        if action == "save":
            return typing or bool(self.drafts)
        if action == "leave":
            return typing or self.query_one("#ds-right", ContentSwitcher).current != "ds-view"
        return action in TYPING_ACTIONS or not typing

    def on_descendant_focus(self) -> None:
        self.refresh_bindings()

    def on_descendant_blur(self, event: events.DescendantBlur) -> None:
        if isinstance(event.widget, (TextArea, Input)):
            event.widget.can_focus = False  # left (Esc, Tab, a list key): back out of the Tab chain
        if event.widget.id == "ds-input" and self.input_mode:
            # Tabbed away from the input line: it closes as Enter would for a tag filter (the filter stays)
            # and as Esc does for an open; the focus goes where Tab sent it.
            self._end_input(focus_list=False)
        self.refresh_bindings()

    # The input line: open a path, filter by tag.

    def _begin_input(self, mode: str, label: str, value: str = "") -> None:
        self.input_mode = mode
        self.query_one("#ds-input-label", Static).update(label)
        box = self.query_one("#ds-input", Input)
        box.value = value
        self.open_field(box)  # focused now, so the letters right behind `o` or `/` land here

    def _end_input(self, focus_list: bool = True) -> None:
        self.input_mode = ""
        self.query_one("#ds-input-label", Static).update("")
        self.query_one("#ds-input", Input).value = ""
        if focus_list:
            self.set_focus(self.query_one("#ds-files", DataTable))

    def action_open(self) -> None:
        self._begin_input("open", "open: ")

    def action_filter_tag(self) -> None:
        self._begin_input("tag", "tag: ", self.filters.tag)

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "ds-input" and self.input_mode == "tag":
            self.filters.tag = event.value
            self._fill()
            self._set_status()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "ds-input":
            return
        if self.input_mode == "open":
            error = self._check_open(event.value)
            if error:
                self._set_status(error)
                self.notify(error, title="cannot open", severity="error", timeout=8)
                return  # the text stays for fixing
            self._open("path", event.value)
        self._end_input()

    @staticmethod
    def _check_open(text: str) -> str | None:
        path = Path(text.strip()).expanduser()
        # Shortened in the middle to fit a notification at 80 columns (about 36 cells a line): a long path
        # would otherwise fold mid-name; the typed text stays in the input line, whole.
        shown = units.middle(path, TOAST_PATH_CELLS)
        if not text.strip():
            return "type a folder or a dataset .toml path"
        if not path.exists():
            return f"{shown}: not found"
        if not path.is_dir() and path.suffix.lower() != ".toml":
            return f"{shown}: expected a folder or a dataset .toml file"
        return None

    def action_open_profile(self) -> None:
        self._profile_choice("Open the dataset of profile:", lambda name: self._open("profile", name))
