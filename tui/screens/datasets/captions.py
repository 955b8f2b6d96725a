"""The caption editor. Unsaved edits are kept, never dropped: moving to another image keeps the edit as a
draft (marked `*` in the list), `ctrl+s` saves every draft as one undoable operation, `ctrl+r` reverts the
shown one, and quitting the deck with drafts asks first (DatasetsState.dirty)."""

from __future__ import annotations

from textual.widgets import DataTable, TextArea

from tui.keymap import shown_key
from tui.screens.datasets import messages as msg
from tui.screens.datasets.file_list import FileList


class CaptionEditing(FileList):
    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        self._keep_typed()

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

    def on_saved(self, message: msg.Saved) -> None:
        for image, text in message.drafts.items():
            if self.drafts.get(image) == text:  # typed on since? then that newer text stays a draft
                del self.drafts[image]
        op_id = message.op_id
        undo = shown_key(self.app, "datasets.undo")
        self.notify(f"saved {len(message.drafts)} caption(s)" + (f"; {undo} undoes ({op_id})" if op_id else ""))
        self._reload({p.parent for p in message.drafts})

    def action_revert(self) -> None:
        entry = self._entry(self.current)
        if entry is not None and entry.path in self.drafts:
            del self.drafts[entry.path]
            self.loaded_text = self._baseline(entry)
            self.query_one("#ds-caption", TextArea).load_text(self.loaded_text)
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
