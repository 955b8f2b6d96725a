"""Datasets: folders, images with their caption state, an image preview, the caption editor, filters,
statistics, the trainer's bucket plan, batch caption operations (dry-run diff first) and undo.

Unsaved caption edits are kept, never dropped: moving to another image keeps the edit as a draft (marked `*` in
the list), `ctrl+s` saves every draft as one undoable operation, `ctrl+r` reverts the shown one, and quitting
the deck with drafts asks first. Everything that reads the disk runs in a worker; the preview decodes on its own
thread (tui.widgets.image_preview).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import ContentSwitcher, DataTable, Input, OptionList, Static, TextArea
from textual.widgets.option_list import Option

from tui.screens.base import VIM_LIST_BINDINGS, DeckScreen
from tui.widgets import dataset_model as dm
from tui.widgets.image_preview import ImagePreview

CAPTION_MARK = {"ok": "✓", "missing": "✗", "empty": "∅"}
PREFETCH_AHEAD, PREFETCH_BEHIND = 2, 1
# Rows the file list gets at once, then per chunk between other events (see DatasetsScreen._fill).
FILL_FIRST, FILL_CHUNK = 400, 800
# Keys that still work while the caption editor or the input line has the focus (the rest type text).
TYPING_ACTIONS = {"save", "next_image", "prev_image", "revert", "leave"}


class Opened(Message):
    def __init__(self, source: dm.DatasetSource, bucket_profile: str | None) -> None:
        super().__init__()
        self.source = source
        self.bucket_profile = bucket_profile


class DirListed(Message):
    def __init__(self, folder: Path, entries: list[dm.Entry]) -> None:
        super().__init__()
        self.folder = folder
        self.entries = entries


class Status(Message):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class DatasetsScreen(DeckScreen):
    TITLE_TEXT = "Datasets"
    # Screen classes for app.tcss: wider folder column and taller caption editor on big terminals.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (40, "-tall")]
    BINDINGS = [
        *VIM_LIST_BINDINGS,
        # Priority: the app runs these before routing the next key, so the letters typed right after `o`, `/`,
        # `e` or Enter land in the field they open, not in the list they were typed over (and lost). Textual drops
        # a priority letter binding by itself while a text field has the focus.
        Binding("o", "open", "Open", id="datasets.open", priority=True),
        Binding("p", "open_profile", "Profile's data", id="datasets.profile", show=False),
        Binding("e,enter", "edit", "Edit", id="datasets.edit", show=False, priority=True),
        Binding("ctrl+s", "save", "Save", id="datasets.save"),
        # Priority: the editor would type alt+n as an "n".
        Binding("ctrl+down,alt+n", "next_image", "Next", id="datasets.next", key_display="^↓", priority=True),
        Binding("ctrl+up,alt+p", "prev_image", "Prev", id="datasets.prev", key_display="^↑", priority=True),
        Binding("ctrl+r", "revert", "Revert caption", id="datasets.revert", show=False),
        Binding("m", "filter_missing", "Missing", id="datasets.missing"),
        Binding("slash", "filter_tag", "Tag", id="datasets.tag", key_display="/", priority=True),
        Binding("f", "filter_bucket", "Bucket filter", id="datasets.bucket_filter", show=False),
        Binding("d", "filter_dupes", "Dupes", id="datasets.dupes", show=False),
        Binding("c", "clear_filters", "Clear filters", id="datasets.clear", show=False),
        Binding("s", "panel('ds-stats')", "Stats", id="datasets.stats"),
        Binding("b", "panel('ds-buckets')", "Buckets", id="datasets.buckets"),
        Binding("P", "bucket_profile", "Batch profile", id="datasets.bucket_profile", show=False),
        Binding("a", "batch", "Batch", id="datasets.batch"),
        Binding("u", "undo", "Undo", id="datasets.undo"),
        Binding("r", "rescan", "Rescan", id="datasets.rescan", show=False),
        Binding("escape", "leave", "Back", id="datasets.back"),
    ]

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
        self.input_mode = ""  # "open" | "tag" while the input line is in use

    # Quitting the deck asks first when this is true (DeckApp.dirty_editors).
    @property
    def dirty(self) -> bool:
        return bool(self.drafts)

    @property
    def profile_name(self) -> str:
        return f"Datasets ({len(self.drafts)} unsaved caption(s))"

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
        self.set_focus(table)
        self._open("last", "")

    # Opening.

    @work(thread=True, exclusive=True, group="ds-open")
    def _open(self, how: str, value: str) -> None:
        try:
            if how == "last":
                source, bucket_profile = dm.reopen_last()
            elif how == "profile":
                source, bucket_profile = dm.open_profile(value), self.bucket_profile
            else:
                source, bucket_profile = dm.open_target(value), self.bucket_profile
        except dm.OpenError as exc:
            self.app.call_from_thread(self._open_failed, str(exc))
            return
        self.post_message(Opened(source, bucket_profile))
        for i, folder in enumerate(source.directories):

            def progress(done: int, total: int, i: int = i) -> None:
                self.post_message(
                    Status(f"reading folder {i + 1}/{len(source.directories)}: {done}/{total} images…")
                )

            try:
                entries = dm.list_entries(folder, progress)
            except dm.OpenError as exc:
                self.app.call_from_thread(self.notify, str(exc), severity="error", timeout=8)
                entries = []
            self.post_message(DirListed(folder, entries))
        try:
            dm.save_last(source, bucket_profile)
        except OSError as exc:
            self.app.call_from_thread(self.notify, f"cannot remember the dataset: {exc}", severity="warning")

    def _open_failed(self, message: str) -> None:
        self.notify(message, title="cannot open", severity="error", timeout=8)
        self._set_status(f"cannot open: {message}")

    def on_opened(self, message: Opened) -> None:
        self.source = message.source
        self.bucket_profile = message.bucket_profile
        self.entries = {}
        self.dupe_mark = None
        self.buckets = None
        self.filters = dm.Filters()
        self.folder = message.source.directories[0]
        dirs = self.query_one("#ds-dirs", OptionList)
        dirs.clear_options()
        self.dir_labels.clear()
        base = message.source.target if message.source.kind == "folder" else None
        for d in message.source.directories:
            label = d.name or str(d)
            if base is not None and d != base:
                try:
                    label = str(d.relative_to(base))
                except ValueError:
                    pass
            self.dir_labels[str(d)] = label
            dirs.add_option(Option(Text(f"{label} …"), id=str(d)))
        dirs.highlighted = 0
        self._fill()
        self._set_status()
        self._invalidate_panels()

    def on_dir_listed(self, message: DirListed) -> None:
        self.entries[message.folder] = message.entries
        dirs = self.query_one("#ds-dirs", OptionList)
        for i in range(dirs.option_count):
            if dirs.get_option_at_index(i).id == str(message.folder):
                # from the stored name: a folder is listed again after every batch op and undo
                label = self.dir_labels.get(str(message.folder), message.folder.name)
                missing = sum(1 for e in message.entries if e.state != "ok")
                dirs.replace_option_prompt_at_index(
                    i, Text(f"{label} {len(message.entries)}" + (f" ✗{missing}" if missing else ""))
                )
        if message.folder == self.folder:
            self._fill()
        self._set_status()

    def on_status(self, message: Status) -> None:
        self._set_status(message.text)

    # The file list.

    def _fill(self) -> None:
        """Refill the table from the current folder and filters, keeping the cursor on the same image.

        DataTable.add_row costs ~70 us a row (it measures every cell), so 100,000 rows would freeze the deck for
        7 s. The rows up to the cursor (at least FILL_FIRST) go in at once; the rest follow in chunks between
        other events, so keys keep working while a big folder fills, and a newer refill (a filter being typed)
        stops an older one.
        """
        table = self.query_one("#ds-files", DataTable)
        keep = self.current
        entries = self.entries.get(self.folder, []) if self.folder else []
        ar_of = self.buckets.ar_of if self.buckets else {}
        self.shown = dm.filter_entries(entries, self.filters, ar_of, self.dupe_mark or {})
        self.shown_at = {e.path: i for i, e in enumerate(self.shown)}
        self.fill_gen += 1
        table.clear()
        self.filled = 0
        index = self.shown_at.get(keep, 0) if keep is not None else 0
        self._add_rows(table, max(FILL_FIRST, index + 1))
        if self.shown:
            table.move_cursor(row=index)
            self._show(self.shown[index])
        else:
            self._show(None)
        if self.filled < len(self.shown):
            self.call_later(self._fill_more, self.fill_gen)

    def _add_rows(self, table: DataTable[Any], upto: int) -> None:
        end = min(upto, len(self.shown))
        for e in self.shown[self.filled : end]:
            table.add_row(*self._cells(e), key=str(e.path))
        self.filled = end

    def _fill_more(self, gen: int) -> None:
        if gen != self.fill_gen:
            return
        self._add_rows(self.query_one("#ds-files", DataTable), self.filled + FILL_CHUNK)
        if self.filled < len(self.shown):
            self.call_later(self._fill_more, gen)
        else:
            self._set_status()

    def _fill_rest(self) -> None:
        """Add every row still pending now (for a jump to the end)."""
        self._add_rows(self.query_one("#ds-files", DataTable), len(self.shown))

    def _cells(self, e: dm.Entry) -> tuple[str, str, str]:
        """flags (caption state, duplicate mark, `*` unsaved edit), size, name."""
        dup = (self.dupe_mark or {}).get(e.path, " ")
        mark = "*" if e.path in self.drafts else " "
        return CAPTION_MARK[e.state] + dup + mark, e.size_text, e.path.name

    def _entry(self, path: Path | None) -> dm.Entry | None:
        index = self.shown_at.get(path) if path is not None else None
        return None if index is None else self.shown[index]

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id != "ds-files" or event.row_key.value is None:
            return
        entry = self._entry(Path(event.row_key.value))
        if entry is not None and entry.path != self.current:
            self._show(entry)

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option_list.id == "ds-dirs" and event.option.id and Path(event.option.id) != self.folder:
            self.folder = Path(event.option.id)
            self._fill()
            self._invalidate_panels()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option_list.id == "ds-dirs":
            self.set_focus(self.query_one("#ds-files", DataTable))

    def _show(self, entry: dm.Entry | None) -> None:
        self.current = entry.path if entry else None
        preview = self.query_one("#ds-preview", ImagePreview)
        preview.show(entry.path if entry else None)
        editor = self.query_one("#ds-caption", TextArea)
        if entry is None:
            editor.load_text("")
            self.query_one("#ds-info", Static).update(
                "no image here"
                if not self.filters.active()
                else f"no image matches the filter ({self.filters.describe()})"
            )
            return
        text = self.drafts.get(entry.path, self._baseline(entry))
        if editor.text != text:
            editor.load_text(text)
            if editor.has_focus:  # moved with ctrl+down while editing: keep appending at the end
                editor.move_cursor(editor.document.end)
        self.query_one("#ds-info", Static).update(self._info(entry))
        index = self.shown_at.get(entry.path, 0)
        near = (
            self.shown[index + 1 : index + 1 + PREFETCH_AHEAD]
            + self.shown[max(0, index - PREFETCH_BEHIND) : index]
        )
        preview.prefetch([e.path for e in near])

    @staticmethod
    def _baseline(entry: dm.Entry) -> str:
        # The editor never shows the file's trailing newline; plan_set keeps it on save.
        return (entry.caption or "").rstrip("\r\n")

    def _info(self, e: dm.Entry) -> str:
        where = {"txt": "caption file", "json": "from captions.json", "none": "no caption"}[e.source]
        parts = [e.path.name, e.size_text, where]
        if self.buckets and e.path in self.buckets.ar_of:
            ar = self.buckets.ar_of[e.path]
            sizes = [f"{b.width}×{b.height}" for b in self.buckets.plan.buckets if b.ar == ar]
            parts.append(f"bucket {'/'.join(sizes) or f'ar {ar:g}'}")
        if e.error:
            parts.append(e.error)
        return " · ".join(parts)

    # Caption editing.

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        entry = self._entry(self.current)
        if entry is None:
            return
        text = event.text_area.text
        had = entry.path in self.drafts
        if text == self._baseline(entry):
            self.drafts.pop(entry.path, None)
        else:
            self.drafts[entry.path] = text
        if had != (entry.path in self.drafts):
            self._update_row(entry)
            self._set_status()

    def _update_row(self, entry: dm.Entry) -> None:
        table = self.query_one("#ds-files", DataTable)
        key = str(entry.path)
        if key in table.rows:
            for col, value in zip(("flags", "size", "name"), self._cells(entry), strict=True):
                table.update_cell(key, col, value)

    def action_edit(self) -> None:
        if self.current is not None:
            self._switch("ds-view")
            editor = self.query_one("#ds-caption", TextArea)
            editor.move_cursor(editor.document.end)  # captions grow at the end: new tags are appended
            self.open_field(editor)

    def action_save(self) -> None:
        if not self.drafts:
            self.notify("no unsaved caption")
            return
        self._save(dict(self.drafts))

    @work(thread=True, exclusive=True, group="ds-write")
    def _save(self, drafts: dict[Path, str]) -> None:
        from engine.datasets import captions as c

        try:
            changes = [ch for image, text in drafts.items() for ch in c.plan_set(image, text)]
            names = ", ".join(p.name for p in list(drafts)[:3]) + ("…" if len(drafts) > 3 else "")
            op_id = c.apply(changes, f"edit caption of {names}")
        except (c.CaptionError, OSError) as exc:
            self.app.call_from_thread(self.notify, f"not saved: {exc}", severity="error", timeout=10)
            return
        self.app.call_from_thread(self._saved, drafts, op_id)
        if op_id:
            _prune_journal()

    def _saved(self, drafts: dict[Path, str], op_id: str | None) -> None:
        for image, text in drafts.items():
            if self.drafts.get(image) == text:  # typed on since? then that newer text stays a draft
                del self.drafts[image]
        self.notify(f"saved {len(drafts)} caption(s)" + (f"; u undoes ({op_id})" if op_id else ""))
        self._reload({p.parent for p in drafts})

    def action_revert(self) -> None:
        entry = self._entry(self.current)
        if entry is not None and entry.path in self.drafts:
            del self.drafts[entry.path]
            self.query_one("#ds-caption", TextArea).load_text(self._baseline(entry))
            self._update_row(entry)
            self._set_status()

    def action_next_image(self) -> None:
        self._step(1)

    def action_prev_image(self) -> None:
        self._step(-1)

    def _step(self, delta: int) -> None:
        table = self.query_one("#ds-files", DataTable)
        if table.row_count:
            table.move_cursor(row=max(0, min(table.row_count - 1, table.cursor_row + delta)))

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

    def _switch(self, pane: str) -> None:
        """Preview + editor, or a report panel; a panel also takes the file list's room (tables need width)."""
        self.query_one("#ds-right", ContentSwitcher).current = pane
        self.query_one("#ds-body").set_class(pane != "ds-view", "-panel")
        if pane == "ds-view":
            self.set_focus(self.query_one("#ds-files", DataTable))
        self.refresh_bindings()

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

    def on_descendant_blur(self) -> None:
        self.refresh_bindings()

    # The input line: open a path, filter by tag.

    def _begin_input(self, mode: str, label: str, value: str = "") -> None:
        self.input_mode = mode
        self.query_one("#ds-input-label", Static).update(label)
        box = self.query_one("#ds-input", Input)
        box.value = value
        self.open_field(box)  # focused now, so the letters right behind `o` or `/` land here

    def _end_input(self) -> None:
        self.input_mode = ""
        self.query_one("#ds-input-label", Static).update("")
        self.query_one("#ds-input", Input).value = ""
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
        if not text.strip():
            return "type a folder or a dataset .toml path"
        if not path.exists():
            return f"{path}: not found"
        if not path.is_dir() and path.suffix.lower() != ".toml":
            return f"{path}: expected a folder or a dataset .toml file"
        return None

    def action_open_profile(self) -> None:
        self._profile_choice("Open the dataset of profile:", lambda name: self._open("profile", name))

    @work(thread=True, group="ds-profiles")
    def _profile_choice(self, title: str, then: Any, extra: list[tuple[str, str]] | None = None) -> None:
        from profiles import store

        choices = (extra or []) + [
            (p.name, f"{p.name}  [{p.model_type or '?'}]") for p in store.list_profiles()
        ]
        self.app.call_from_thread(self._choose, title, choices, then)

    def _choose(self, title: str, choices: list[tuple[str, str]], then: Any) -> None:
        from tui.screens.dialogs import ChoiceDialog

        if not choices:
            self.notify("no stored profiles yet: make one in Profiles (key 1)", severity="warning")
            return

        def done(choice: str | None) -> None:
            if choice is not None:
                then(choice)

        self.app.push_screen(ChoiceDialog(title, choices), done)

    # Filters.

    def action_filter_missing(self) -> None:
        self.filters.missing = not self.filters.missing
        self._fill()
        self._set_status()

    def action_clear_filters(self) -> None:
        self.filters = dm.Filters()
        self._fill()
        self._set_status()

    def action_filter_dupes(self) -> None:
        if self.filters.dupes:
            self.filters.dupes = False
            self._fill()
            self._set_status()
            return
        if self.dupe_mark is None:
            self._set_status("looking for duplicates…")
            self._find_dupes()
            return
        self.filters.dupes = True
        self._fill()
        self._set_status()

    @work(thread=True, exclusive=True, group="ds-dupes")
    def _find_dupes(self) -> None:
        from engine.datasets.dupes import find_duplicates

        paths = [e.path for entries in list(self.entries.values()) for e in entries]
        try:
            groups = find_duplicates(paths)
        except (OSError, ValueError) as exc:
            self.app.call_from_thread(self.notify, f"duplicate search failed: {exc}", severity="error")
            return
        self.app.call_from_thread(self._dupes_found, dm.dupe_marks(groups), len(groups))

    def _dupes_found(self, marks: dict[Path, str], groups: int) -> None:
        self.dupe_mark = marks
        self.filters.dupes = True
        self.notify(f"{groups} duplicate group(s), {len(marks)} image(s) (= exact, ≈ near)")
        self._fill()
        self._set_status()

    def action_filter_bucket(self) -> None:
        if self.filters.bucket is not None:
            self.filters.bucket = None
            self._fill()
            self._set_status()
            return
        if self.buckets is None:
            self.notify("working out the buckets first…")
            self._plan_buckets(then_filter=True)
            return
        self._choose_bucket()

    def _choose_bucket(self) -> None:
        assert self.buckets is not None
        here = {e.path for e in self.entries.get(self.folder, [])} if self.folder else set()
        counts: dict[float, int] = {}
        for path, ar in self.buckets.ar_of.items():
            if path in here:
                counts[ar] = counts.get(ar, 0) + 1
        choices = []
        for ar in sorted(counts):
            sizes = "/".join(f"{b.width}×{b.height}" for b in self.buckets.plan.buckets if b.ar == ar)
            choices.append((repr(ar), f"ar {ar:g}  {sizes}  {counts[ar]} image(s) here"))

        def chosen(value: str) -> None:
            self.filters.bucket = float(value)
            self._fill()
            self._set_status()

        if not choices:
            self.notify("no image of this folder falls in a bucket", severity="warning")
            return
        self._choose("Show only the images of bucket:", choices, chosen)

    # Panels.

    def action_panel(self, panel: str) -> None:
        if self.query_one("#ds-right", ContentSwitcher).current == panel:
            self._switch("ds-view")
            return
        self._switch(panel)
        self.set_focus(self.query_one(f"#{panel}"))
        if panel == "ds-stats":
            self._stats()
        else:
            self._plan_buckets()

    def _invalidate_panels(self) -> None:
        current = self.query_one("#ds-right", ContentSwitcher).current
        if current == "ds-stats":
            self._stats()
        elif current == "ds-buckets":
            self._plan_buckets()

    @work(thread=True, exclusive=True, group="ds-stats")
    def _stats(self) -> None:
        from engine.datasets.scan import scan
        from tui.widgets.dataset_panels import stats_renderable

        folder = self.folder
        if folder is None:
            return
        self.app.call_from_thread(self.query_one("#ds-stats-body", Static).update, f"scanning {folder}…")
        try:
            body: Any = stats_renderable(scan(folder), folder)
        except (OSError, ValueError) as exc:
            body = Text(f"cannot scan {folder}: {exc}")
        self.app.call_from_thread(self.query_one("#ds-stats-body", Static).update, body)

    @work(thread=True, exclusive=True, group="ds-buckets")
    def _plan_buckets(self, then_filter: bool = False) -> None:
        from engine.datasets.buckets import DatasetConfigError
        from tui.widgets.dataset_panels import buckets_renderable

        source = self.source
        if source is None:
            return
        body = self.query_one("#ds-buckets-body", Static)
        self.app.call_from_thread(body.update, "planning buckets…")
        try:
            settings = dm.bucket_settings(source, self.bucket_profile)
            view = dm.bucket_view(settings, dict(self.entries))
        except (dm.OpenError, DatasetConfigError, OSError, ValueError, TypeError) as exc:
            self.app.call_from_thread(body.update, Text(f"cannot plan buckets: {exc}"))
            return
        self.app.call_from_thread(self._buckets_ready, view, buckets_renderable(view), then_filter)

    def _buckets_ready(self, view: dm.BucketView, body: Any, then_filter: bool) -> None:
        self.buckets = view
        self.query_one("#ds-buckets-body", Static).update(body)
        entry = self._entry(self.current)
        if entry is not None:
            self.query_one("#ds-info", Static).update(self._info(entry))
        if then_filter:
            self._choose_bucket()

    def action_bucket_profile(self) -> None:
        def chosen(name: str) -> None:
            self.bucket_profile = name or None
            self.buckets = None
            if self.query_one("#ds-right", ContentSwitcher).current == "ds-buckets":
                self._plan_buckets()
            else:
                self.action_panel("ds-buckets")
            if self.source is not None:
                try:
                    dm.save_last(self.source, self.bucket_profile)
                except OSError:
                    pass

        self._profile_choice(
            "Batch settings (micro batch, accumulation) from:", chosen, [("", "the default template")]
        )

    # Batch operations and undo.

    def _scopes(self) -> list[tuple[str, str]]:
        here = len(self.entries.get(self.folder, [])) if self.folder else 0
        scopes = []
        if self.filters.active():
            scopes.append(
                ("listed", f"the {len(self.shown)} listed image(s) (filter: {self.filters.describe()})")
            )
        scopes.append(("folder", f"this folder ({here} images)"))
        if self.source is not None and len(self.source.directories) > 1:
            total = sum(len(v) for v in self.entries.values())
            scopes.append(
                ("all", f"every folder of the dataset ({len(self.source.directories)}, {total} images)")
            )
        return scopes

    def action_batch(self) -> None:
        if self.folder is None:
            return
        if self.drafts:
            self.notify(
                f"save (ctrl+s) or revert (ctrl+r) the {len(self.drafts)} unsaved caption(s) first",
                severity="warning",
                timeout=8,
            )
            return
        from tui.screens.dialogs import ChoiceDialog
        from tui.widgets.dataset_dialogs import BatchDialog

        def picked(op: str | None) -> None:
            if op:
                self.app.push_screen(BatchDialog(op, self._scopes()), ready)

        def ready(result: tuple[dm.BatchSpec, str] | None) -> None:
            if result is not None:
                self._dry_run(result[0], self._scope_target(result[1]))

        self.app.push_screen(ChoiceDialog("Batch caption operation:", dm.OPS), picked)

    def _scope_target(self, scope: str) -> list[Path]:
        if scope == "listed":
            return [e.path for e in self.shown]
        if scope == "all" and self.source is not None:
            return [e.path for d in self.source.directories for e in self.entries.get(d, [])]
        return [e.path for e in self.entries.get(self.folder, [])] if self.folder else []

    @work(thread=True, exclusive=True, group="ds-write")
    def _dry_run(self, spec: dm.BatchSpec, scope: list[Path]) -> None:
        from engine.datasets import captions as c

        try:
            changes, skipped = dm.plan_batch(spec, scope)
        except (c.CaptionError, OSError) as exc:
            self.app.call_from_thread(self.notify, str(exc), severity="error", timeout=8)
            return
        from engine.datasets.names import printable

        # A name may hold a newline or an escape sequence: printed raw it could forge lines of this summary.
        warnings = [printable(f"{ch.path.name}: {ch.warning}") for ch in changes if ch.warning] + [
            printable(s) for s in skipped
        ]
        summary = f"{len(changes)} of {len(scope)} caption(s) would change (dry run; nothing written yet)."
        if warnings:
            summary += (
                "\n"
                + "\n".join(warnings[:5])
                + (f"\n… {len(warnings) - 5} more" if len(warnings) > 5 else "")
            )
        self.app.call_from_thread(self._confirm_apply, spec, changes, summary, c.diff(changes))

    def _confirm_apply(self, spec: dm.BatchSpec, changes: list[Any], summary: str, diff: str) -> None:
        from tui.widgets.dataset_dialogs import ApplyDialog

        def answer(ok: bool | None) -> None:
            if ok and changes:
                self._apply(changes, f"{spec.describe()} in {self.folder}")

        self.app.push_screen(ApplyDialog(f"Dry run: {spec.describe()}", summary, diff), answer)

    @work(thread=True, exclusive=True, group="ds-write")
    def _apply(self, changes: list[Any], description: str) -> None:
        from engine.datasets import captions as c

        try:
            op_id = c.apply(changes, description)
        except (c.CaptionError, OSError) as exc:
            self.app.call_from_thread(self.notify, f"not applied: {exc}", severity="error", timeout=10)
            return
        self.app.call_from_thread(self._applied, op_id, len(changes), {ch.path.parent for ch in changes})
        _prune_journal()

    def _applied(self, op_id: str | None, count: int, folders: set[Path]) -> None:
        self.notify(f"changed {count} caption(s): op {op_id} (u to undo)", timeout=8)
        self._reload(folders)

    def action_undo(self) -> None:
        self._list_ops()

    @work(thread=True, group="ds-undo")
    def _list_ops(self) -> None:
        from engine.datasets.undo import list_ops

        ops = list_ops()[:30]
        choices = [(o["id"], f"{o['id']}  {o['description']}  ({o['files']} file(s))") for o in ops]
        self.app.call_from_thread(self._pick_undo, choices)

    def _pick_undo(self, choices: list[tuple[str, str]]) -> None:
        from tui.screens.dialogs import ChoiceDialog

        if not choices:
            self.notify("nothing to undo")
            return

        def chosen(op_id: str | None) -> None:
            if op_id:
                label = dict(choices)[op_id]
                self.confirm(f"Undo {label}? Its files get their old bytes back.", lambda: self._undo(op_id))

        self.app.push_screen(ChoiceDialog("Undo which operation (newest first)?", choices), chosen)

    @work(thread=True, exclusive=True, group="ds-write")
    def _undo(self, op_id: str) -> None:
        from engine.datasets.undo import UndoError, undo

        try:
            result = undo(op_id)
        except (UndoError, OSError) as exc:
            self.app.call_from_thread(self.notify, f"undo failed: {exc}", severity="error", timeout=10)
            return
        restored = [Path(p) for p in result["restored"]]
        self.app.call_from_thread(self._undone, result, {p.parent for p in restored})

    def _undone(self, result: dict[str, Any], folders: set[Path]) -> None:
        self.notify(
            f"undone {result['id']} ({result['description']}): {len(result['restored'])} file(s) restored"
        )
        self._reload(folders)

    # Re-reading after writes.

    def action_rescan(self) -> None:
        if self.source is not None:
            self._reload(set(self.source.directories))

    def _reload(self, folders: set[Path]) -> None:
        shown = [d for d in (self.source.directories if self.source else []) if d in folders]
        if shown:
            self._relist(shown)

    @work(thread=True, group="ds-relist")
    def _relist(self, folders: list[Path]) -> None:
        for folder in folders:
            try:
                entries = dm.list_entries(folder)
            except dm.OpenError as exc:
                self.app.call_from_thread(self.notify, str(exc), severity="error")
                continue
            self.post_message(DirListed(folder, entries))
        self.app.call_from_thread(self._after_relist)

    def _after_relist(self) -> None:
        # Sizes did not change (the bucket filter stays valid); the plan's counts may have: redo a shown panel.
        self._invalidate_panels()

    # Status line.

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
                parts.append(self.source.label)  # last: a long path may be cut at the right edge
            text = " · ".join(parts) or "o: open a folder or a dataset TOML · p: a profile's dataset"
        self.query_one("#ds-status", Static).update(text)


def _prune_journal() -> None:
    """Drop undo records beyond `datasets.undo_keep` (on the worker thread, after the result is shown)."""
    from engine.datasets.undo import prune

    with contextlib.suppress(OSError):
        prune()
