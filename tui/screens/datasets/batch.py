"""Batch caption operations (choose an op and its scope, see the dry-run diff, apply) and undo of any
operation in the journal, newest first."""

from __future__ import annotations

from pathlib import Path

from tui.keymap import shown_key
from tui.screens.datasets import messages as msg
from tui.screens.datasets.file_list import FileList
from tui.widgets import dataset_model as dm


class BatchAndUndo(FileList):
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

    def on_dry_run_ready(self, message: msg.DryRunReady) -> None:
        from tui.widgets.dataset_dialogs import ApplyDialog

        spec, changes = message.spec, message.changes

        def answer(ok: bool | None) -> None:
            if ok and changes:
                self._apply(changes, f"{spec.describe()} in {self.folder}")

        dialog = ApplyDialog(f"Dry run: {spec.describe()}", message.summary, message.diff)
        self.app.push_screen(dialog, answer)

    def on_applied(self, message: msg.Applied) -> None:
        undo = shown_key(self.app, "datasets.undo")
        self.notify(f"changed {message.count} caption(s): op {message.op_id} ({undo} to undo)", timeout=8)
        self._reload(message.folders)

    def action_undo(self) -> None:
        self._list_ops()

    def on_ops_listed(self, message: msg.OpsListed) -> None:
        from tui.screens.dialogs import ChoiceDialog

        choices = message.choices
        if not choices:
            self.notify("nothing to undo")
            return

        def chosen(op_id: str | None) -> None:
            if op_id:
                label = dict(choices)[op_id]

                def undo() -> None:
                    self._undo(op_id)

                self.confirm(f"Undo {label}? Its files get their old bytes back.", undo)

        self.app.push_screen(ChoiceDialog("Undo which operation (newest first)?", choices), chosen)

    def on_undone(self, message: msg.Undone) -> None:
        result = message.result
        self.notify(
            f"undone {result['id']} ({result['description']}): {len(result['restored'])} file(s) restored"
        )
        self._reload(message.folders)
