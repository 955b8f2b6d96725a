"""History of one stored profile: versions, the diff of each against the one before, and rollback."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from tui import data, units
from tui.keyscheme import bind
from tui.screens.list_keys import VIM_LIST_BINDINGS, OptionListKeys

if TYPE_CHECKING:
    from profiles.history import VersionInfo


class HistoryDialog(OptionListKeys, ModalScreen[None]):
    BINDINGS = [
        *VIM_LIST_BINDINGS,
        bind("history.rollback", "rollback", "Roll back to this version"),
        bind("history.close", "close", "Close"),
    ]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.profile_name = name
        self.versions: list[int] = []

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Static(f"History of {self.profile_name}   r roll back · q close", classes="dialog-text")
            yield OptionList(id="version-list")
            with VerticalScroll(id="text-body"):
                yield Static("", id="version-diff", markup=False)

    def on_mount(self) -> None:
        self.load()
        self.query_one(OptionList).focus()

    @work(thread=True, exclusive=True, group="history-load")
    def load(self) -> None:
        try:
            versions = data.versions(self.profile_name)
        except Exception as exc:
            self.app.call_from_thread(self.query_one("#version-diff", Static).update, str(exc))
            return
        self.app.call_from_thread(self._fill, versions)

    def _fill(self, versions: list[VersionInfo]) -> None:
        olist = self.query_one(OptionList)
        olist.clear_options()
        self.versions = []
        for v in reversed(versions):
            num = v.version
            self.versions.append(num)
            olist.add_option(Option(f"v{num}  {units.when_iso(v.timestamp)}  {v.message}", id=str(num)))
        if self.versions:
            olist.highlighted = 0

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id:
            self.show_diff(int(event.option.id))

    @work(thread=True, exclusive=True, group="history-diff")
    def show_diff(self, version: int) -> None:
        try:
            text = (
                (data.diff_versions(self.profile_name, version - 1, version) or "(no change)")
                if version > 1
                else "first version"
            )
        except Exception as exc:
            text = f"cannot diff: {exc}"
        self.app.call_from_thread(self.query_one("#version-diff", Static).update, text)

    def _selected(self) -> int | None:
        olist = self.query_one(OptionList)
        if olist.highlighted is None:
            return None
        oid = olist.get_option_at_index(olist.highlighted).id
        return int(oid) if oid else None

    def action_rollback(self) -> None:
        version = self._selected()
        if version is None:
            return
        from tui.screens.dialogs import ConfirmDialog

        def answer(ok: bool | None) -> None:
            if ok:
                self._rollback(version)

        self.app.push_screen(
            ConfirmDialog(f"Roll {self.profile_name} back to v{version}? (saved as a new version; undoable)"),
            answer,
        )

    @work(thread=True, group="history-rollback")
    def _rollback(self, version: int) -> None:
        try:
            new = data.rollback(self.profile_name, version)
        except Exception as exc:
            self.app.call_from_thread(self.notify, f"rollback failed: {exc}", severity="error")
            return
        self.app.call_from_thread(self.notify, f"rolled back to v{version}: now v{new}")
        self.load()

    def action_close(self) -> None:
        self.dismiss(None)
