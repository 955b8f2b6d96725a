"""vim-style list movement, added to list widgets' own arrow keys by every screen and dialog with a list.

Its own module, below both `base` and `dialogs`, so that neither has to import the other for it."""

from __future__ import annotations

from textual.binding import Binding

# Ids let users remap them (tui.keymap).
VIM_LIST_BINDINGS = [
    Binding("j", "cursor_down", "Down", show=False, id="list.down"),
    Binding("k", "cursor_up", "Up", show=False, id="list.up"),
    Binding("g", "first", "Top", show=False, id="list.top"),
    Binding("G", "last", "Bottom", show=False, id="list.bottom"),
]
