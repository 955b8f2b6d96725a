"""vim-style list movement, added to list widgets' own arrow keys by every screen and dialog with a list.

Its own module, below both `base` and `dialogs`, so that neither has to import the other for it."""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import OptionList

from tui.keyscheme import bind

# Ids let users remap them (tui.keymap).
VIM_LIST_BINDINGS: list[Binding] = [
    bind("list.down", "cursor_down", "Down", show=False),
    bind("list.up", "cursor_up", "Up", show=False),
    bind("list.top", "first", "Top", show=False),
    bind("list.bottom", "last", "Bottom", show=False),
]


class OptionListKeys:
    """VIM_LIST_BINDINGS' actions for a screen whose one list is an OptionList (choice, history, notifications)."""

    def _option_list(self) -> OptionList:
        return self.query_one(OptionList)  # type: ignore[attr-defined,no-any-return]

    def action_cursor_down(self) -> None:
        self._option_list().action_cursor_down()

    def action_cursor_up(self) -> None:
        self._option_list().action_cursor_up()

    def action_first(self) -> None:
        self._option_list().action_first()

    def action_last(self) -> None:
        self._option_list().action_last()
