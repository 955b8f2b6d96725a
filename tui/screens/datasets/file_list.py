"""The folder list, the file table and the shown image: opening fills them, every filter or re-read refills
the table (in chunks: a big folder must not freeze the deck), and the highlighted row drives the preview."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual.widgets import ContentSwitcher, DataTable, OptionList, Static, TextArea
from textual.widgets.option_list import Option

from tui.screens.datasets import messages as msg
from tui.screens.datasets.workers import DatasetsWorkers
from tui.widgets import dataset_model as dm
from tui.widgets.image_preview import ImagePreview

CAPTION_MARK = {"ok": "✓", "missing": "✗", "empty": "∅"}
PREFETCH_AHEAD, PREFETCH_BEHIND = 2, 1
# Rows the file list gets at once, then per chunk between other events (see FileList._fill).
FILL_FIRST, FILL_CHUNK = 400, 800


class FileList(DatasetsWorkers):
    # Opening and re-reading.

    def on_open_failed(self, message: msg.OpenFailed) -> None:
        self.notify(message.reason, title="cannot open", severity="error", timeout=8)
        self._set_status(f"cannot open: {message.reason}")

    def on_opened(self, message: msg.Opened) -> None:
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

    def on_dir_listed(self, message: msg.DirListed) -> None:
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

    def on_status(self, message: msg.Status) -> None:
        self._set_status(message.text)

    def _reload(self, folders: set[Path]) -> None:
        shown = [d for d in (self.source.directories if self.source else []) if d in folders]
        if shown:
            self._relist(shown)

    def on_relisted(self, message: msg.Relisted) -> None:
        # Sizes did not change (the bucket filter stays valid); the plan's counts may have: redo a shown panel.
        self._invalidate_panels()

    def _invalidate_panels(self) -> None:
        current = self.query_one("#ds-right", ContentSwitcher).current
        if current == "ds-stats":
            self._stats()
        elif current == "ds-buckets":
            self._plan_buckets()

    # The table.

    def _fill(self) -> None:
        """Refill the table from the current folder and filters, keeping the cursor on the same image.

        DataTable.add_row costs ~70 us a row (it measures every cell), so 100,000 rows would freeze the deck for
        7 s. The rows up to the cursor (at least FILL_FIRST) go in at once; the rest follow in chunks between
        other events, so keys keep working while a big folder fills, and a newer refill (a filter being typed)
        stops an older one.
        """
        table = self.query_one("#ds-files", DataTable)
        keep = self._at_cursor(table)
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

    def _at_cursor(self, table: DataTable[Any]) -> Path | None:
        # The table's cursor, not self.current: RowHighlighted is a message, so right after a move the preview
        # (and self.current) still name the old row, and a refill landing then would pull the cursor back.
        if table.row_count and table.is_valid_row_index(table.cursor_row):
            return Path(str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value))
        return self.current

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

    def _update_row(self, entry: dm.Entry) -> None:
        table = self.query_one("#ds-files", DataTable)
        key = str(entry.path)
        if key in table.rows:
            for col, value in zip(("flags", "size", "name"), self._cells(entry), strict=True):
                table.update_cell(key, col, value)

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

    # The shown image.

    def _keep_typed(self) -> None:
        """What was typed in the editor becomes the shown image's draft (none once back to the file's caption).

        Also called before another image is shown: Changed is a message, and one for the last key typed can be
        handled after the move, when the editor already holds the next image's caption. Text the editor merely
        loaded is no edit: after an undo or a batch op it is older than the file.
        """
        entry = self._entry(self.current)
        text = self.query_one("#ds-caption", TextArea).text
        if entry is None or (text == self.loaded_text and entry.path not in self.drafts):
            return
        had = entry.path in self.drafts
        if text == self._baseline(entry):
            self.drafts.pop(entry.path, None)
        else:
            self.drafts[entry.path] = text
        if had != (entry.path in self.drafts):
            self._update_row(entry)
            self._set_status()

    def _show(self, entry: dm.Entry | None) -> None:
        self._keep_typed()
        self.current = entry.path if entry else None
        preview = self.query_one("#ds-preview", ImagePreview)
        preview.show(entry.path if entry else None)
        editor = self.query_one("#ds-caption", TextArea)
        if entry is None:
            self.loaded_text = ""
            editor.load_text("")
            self.query_one("#ds-info", Static).update(
                "no image here"
                if not self.filters.active()
                else f"no image matches the filter ({self.filters.describe()})"
            )
            return
        text = self.drafts.get(entry.path, self._baseline(entry))
        self.loaded_text = text
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
