"""Shown over everything while the terminal is smaller than the deck can lay out; popped on enlarge."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Static


class TooSmallScreen(Screen[None]):
    def __init__(self, min_width: int, min_height: int) -> None:
        super().__init__()
        self.min_width = min_width
        self.min_height = min_height

    def compose(self) -> ComposeResult:
        yield Static(self._text(*self.app.size), id="too-small")

    def _text(self, width: int, height: int) -> str:
        return (
            f"Terminal too small ({width}x{height}).\n"
            f"Please enlarge to at least {self.min_width}x{self.min_height}.\n"
            "(Nothing is lost: the deck comes back as it was.)"
        )

    def show_size(self, width: int, height: int) -> None:
        self.query_one("#too-small", Static).update(self._text(width, height))
