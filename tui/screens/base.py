"""What every deck screen shares: a title line, the footer, and a re-armed poll timer that idles when hidden."""

from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Input, Static, TextArea

from tui.widgets.deck_footer import DeckFooter

SHORT_TITLES = {"Datasets": "Data"}  # the title bar fits 80 columns


class DeckScreen(Screen[None]):
    """A top-level screen (one per mode). Subclasses implement `compose_body` and optionally `poll`."""

    # A long title (a sub-screen's, or keys remapped to f-keys) ends in "…" rather than in half a word.
    DEFAULT_CSS = "#title-bar { text-wrap: nowrap; text-overflow: ellipsis; }"
    TITLE_TEXT = "dpdeck"
    POLL_SECONDS: float = 0.0  # 0 = no polling
    # Actions that open a text field, bound with priority=True and opened with `open_field` (see there).
    FIELD_ACTIONS: frozenset[str] = frozenset()

    def compose(self) -> ComposeResult:
        yield Static(self._title_line(), id="title-bar", markup=False)  # a key may be "["
        yield from self.compose_body()
        yield DeckFooter()

    def _title_line(self) -> str:
        """The areas with the keys in force (a keymap.toml override shows here too; an area whose key a clash
        took is listed without one)."""
        from tui.areas import AREA_CLASSES
        from tui.keymap import keys_in_force

        app = self.app
        in_force = keys_in_force(app._bindings, app._keymap)
        parts = []
        for mode, (_, title, _) in AREA_CLASSES.items():
            keys = in_force.get(f"deck.{mode}", [])
            name = SHORT_TITLES.get(title, title)
            parts.append(f"{app.get_key_display(Binding(keys[0], '', ''))} {name}" if keys else name)
        help_keys = in_force.get("deck.help", [])
        help_key = app.get_key_display(Binding(help_keys[0], "", "")) if help_keys else "ctrl+p"
        return f" dpdeck · {self.TITLE_TEXT}  │ {' '.join(parts)} {help_key} help"

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

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # A priority key that opens a field types into a field that already has the focus.
        return not (action in self.FIELD_ACTIONS and isinstance(self.focused, Input | TextArea))

    def open_field(self, field: Widget) -> None:
        """Show and focus `field` at once. `Widget.focus()` waits for the next turn of the message loop, and
        the app routes each key to whatever has the focus when it reads the key: the rest of a burst such as
        `/error` (tmux send-keys, a paste, a fast typist) would go to the list. The key that calls this must
        be bound with priority=True: priority bindings run before the app reads the next key."""
        field.display = True
        self.set_focus(field)

    def key_hint(self, binding_id: str) -> str:
        """A binding's key in force, bold, for a hint line ("E enqueue"): the user's keymap shows here too."""
        from rich.markup import escape

        from tui.keymap import shown_key

        return f"[b]{escape(shown_key(self.app, binding_id))}[/b]"

    def key_hints(self, hints: list[tuple[str, str]]) -> str:
        """(binding id, what it does) pairs as one hint line."""
        return "   ".join(f"{self.key_hint(ident)} {does}" for ident, does in hints)

    def confirm(self, message: str, then: Callable[[], None]) -> None:
        from tui.screens.dialogs import ConfirmDialog

        def done(ok: bool | None) -> None:
            if ok:
                then()

        self.app.push_screen(ConfirmDialog(message), done)
