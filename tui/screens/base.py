"""What every deck screen shares: a title line, the footer, and a re-armed poll timer that idles when hidden."""

from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static

# vim-style list movement, added to list widgets' own arrow keys. Ids let users remap them.
VIM_LIST_BINDINGS = [
    Binding("j", "cursor_down", "Down", show=False, id="list.down"),
    Binding("k", "cursor_up", "Up", show=False, id="list.up"),
    Binding("g", "first", "Top", show=False, id="list.top"),
    Binding("G", "last", "Bottom", show=False, id="list.bottom"),
]


class DeckScreen(Screen[None]):
    """A top-level screen (one per mode). Subclasses implement `compose_body` and optionally `poll`."""

    TITLE_TEXT = "dpdeck"
    POLL_SECONDS: float = 0.0  # 0 = no polling

    def compose(self) -> ComposeResult:
        yield Static(self._title_line(), id="title-bar")
        yield from self.compose_body()
        yield Footer()

    def _title_line(self) -> str:
        return f" dpdeck · {self.TITLE_TEXT}  │ 1 Profiles 2 Queue 3 Run 4 System 5 Data 6 Models ? help"

    def compose_body(self) -> ComposeResult:
        yield from ()

    def on_mount(self) -> None:
        if self.POLL_SECONDS > 0:
            self.poll()
            self._arm()

    def _arm(self) -> None:
        # A re-armed one-shot timer: a slow poll never piles up ticks behind it (set_interval would).
        self.set_timer(self.POLL_SECONDS, self._tick)

    def _tick(self) -> None:
        if self.is_current:  # hidden screens keep their timers; skip the work
            self.poll()
        self._arm()

    def on_screen_resume(self) -> None:
        if self.POLL_SECONDS > 0:
            self.poll()

    def poll(self) -> None:
        """Start (in a worker) whatever refresh this screen needs."""

    def confirm(self, message: str, then: Callable[[], None]) -> None:
        from tui.screens.dialogs import ConfirmDialog

        def done(ok: bool | None) -> None:
            if ok:
                then()

        self.app.push_screen(ConfirmDialog(message), done)
