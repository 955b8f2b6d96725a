"""vim-style list movement, added to list widgets' own arrow keys by every screen and dialog with a list.

Its own module, below both `base` and `dialogs`, so that neither has to import the other for it."""

from __future__ import annotations

from textual.binding import Binding

from tui.keyscheme import bind

# Ids let users remap them (tui.keymap).
VIM_LIST_BINDINGS: list[Binding] = [
    bind("list.down", "cursor_down", "Down", show=False),
    bind("list.up", "cursor_up", "Up", show=False),
    bind("list.top", "first", "Top", show=False),
    bind("list.bottom", "last", "Bottom", show=False),
]
