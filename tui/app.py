"""The deck: a keyboard-only Textual app with one mode per area (Profiles, Queue, Run, System, ...).

Screens are imported when their mode is first opened, so the first paint does not wait for plotting or
table code that the user may never look at.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.screen import Screen

from engine.jobs.facade import ClientEngine
from tui.notify_history import NotifyHistory
from tui.theme import DECK_THEME

if TYPE_CHECKING:
    from tui.engine_api import Engine

MIN_WIDTH, MIN_HEIGHT = 64, 20


def _profiles() -> Screen[None]:
    from tui.screens.profiles import ProfilesScreen

    return ProfilesScreen()


def _queue() -> Screen[None]:
    from tui.screens.queue import QueueScreen

    return QueueScreen()


def _run() -> Screen[None]:
    from tui.screens.run import RunScreen

    return RunScreen()


def _system() -> Screen[None]:
    from tui.screens.system import SystemScreen

    return SystemScreen()


def _datasets() -> Screen[None]:
    from tui.screens.datasets.screen import DatasetsScreen

    return DatasetsScreen()


def _models() -> Screen[None]:
    from tui.screens.models import ModelsScreen

    return ModelsScreen()


# mode -> (key, title, factory). The order is the order of the number keys.
AREAS: dict[str, tuple[str, str, Callable[[], Screen[None]]]] = {
    "profiles": ("1", "Profiles", _profiles),
    "queue": ("2", "Queue", _queue),
    "run": ("3", "Run", _run),
    "system": ("4", "System", _system),
    "datasets": ("5", "Datasets", _datasets),
    "models": ("6", "Models", _models),
}


class DeckCommands(Provider):
    """Command palette (ctrl+p): every area, plus help."""

    def _commands(self) -> list[tuple[str, str, Callable[[], object]]]:
        app = self.app
        assert isinstance(app, DeckApp)
        out: list[tuple[str, str, Callable[[], object]]] = [
            (f"Go to {title}", f"open the {title} screen (key {key})", partial(app.action_area, mode))
            for mode, (key, title, _) in AREAS.items()
        ]
        out.append(("Help: keys of this screen", "list the keys that act here (key ?)", app.action_help))
        return out

    async def discover(self) -> Hits:
        for name, help_text, callback in self._commands():
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, callback in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)


class DeckApp(NotifyHistory):
    CSS_PATH = "app.tcss"
    TITLE = "dpdeck"
    MODES = {mode: factory for mode, (_, _, factory) in AREAS.items()}
    COMMANDS = App.COMMANDS | {DeckCommands}
    BINDINGS = [
        *[
            Binding(key, f"area('{mode}')", title, id=f"deck.{mode}", show=False)
            for mode, (key, title, _) in AREAS.items()
        ],
        Binding("question_mark,f1", "help", "Help", id="deck.help", key_display="?"),
        Binding("ctrl+q", "quit", "Quit", id="deck.quit", priority=True),
        Binding("exclamation_mark", "notifications", "Notifications", id="deck.notifications", key_display="!"),
    ]

    def __init__(
        self, start_mode: str = "profiles", *, start_daemon: bool = False, engine: Engine | None = None
    ) -> None:
        super().__init__()
        # The one engine every screen talks to (tui/engine_api.py); tests pass a stand-in.
        self.engine: Engine = engine if engine is not None else ClientEngine()
        self.start_mode = start_mode
        self.start_daemon = start_daemon
        self.current_job: int | None = None  # the job the Run screen shows; set by the Queue screen
        self._too_small: Screen[None] | None = None
        # Set before the first mount: switching theme later restyles every widget once more.
        self.register_theme(DECK_THEME)
        self.theme = "dpdeck"

    def on_mount(self) -> None:
        from tui.keymap import KeymapError, load_keymap

        try:
            keymap = load_keymap()
        except KeymapError as exc:
            self.notify(str(exc), title="keymap ignored", severity="error", timeout=10)
        else:
            if keymap:
                self.set_keymap(keymap)
                self._check_keymap_ids(keymap)
        self.switch_mode(self.start_mode)
        self.call_after_refresh(self._check_size)
        if self.start_daemon:
            self._ensure_daemon()

    @work(thread=True, group="keymap")
    def _check_keymap_ids(self, keymap: dict[str, str]) -> None:
        """Name the ids that match no binding (a typo would otherwise do nothing, silently). In a thread:
        knowing every id imports every screen, which the first paint should not wait for."""
        from tui.keymap import binding_ids, unknown_ids

        problems = unknown_ids(keymap, binding_ids())
        if problems:
            self.notify("\n".join(problems), title="keymap", severity="warning", timeout=15)

    @work(thread=True, exclusive=True, group="daemon")
    def _ensure_daemon(self) -> None:
        """The deck is a client: it starts the engine's daemon when there is none (the daemon outlives it)."""
        try:
            self.engine.ensure_daemon()
        except Exception as exc:
            self.call_from_thread(
                self.notify, f"could not start the daemon: {exc}", severity="error", timeout=10
            )

    def get_system_commands(self, screen: Screen[object]) -> object:
        yield from super().get_system_commands(screen)
        yield SystemCommand("ANSI colours", "use the terminal's own 16 colours", self._ansi_theme)

    def _ansi_theme(self) -> None:
        self.theme = "textual-ansi"

    def action_area(self, mode: str) -> None:
        if self._too_small is not None:
            return
        if self.current_mode != mode:
            self.switch_mode(mode)

    def show_job(self, job_id: int) -> None:
        """Open the Run screen on a job (used by the Queue screen)."""
        self.current_job = job_id
        self.action_area("run")
        screen = self.screen
        refresh = getattr(screen, "set_job", None)
        if refresh is not None:
            refresh(job_id)

    def action_help(self) -> None:
        from tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen.over(self.screen))

    def dirty_editors(self) -> list[Screen[object]]:
        stacks = getattr(self, "_screen_stacks", {})
        screens = [s for stack in stacks.values() for s in stack] or list(self.screen_stack)
        return [s for s in screens if getattr(s, "dirty", False)]

    async def action_quit(self) -> None:
        dirty = self.dirty_editors()
        if not dirty:
            self.exit()
            return
        from tui.screens.dialogs import ConfirmDialog

        names = ", ".join(str(getattr(s, "profile_name", "?")) for s in dirty)

        def answer(ok: bool | None) -> None:
            if ok:
                self.exit()

        self.push_screen(ConfirmDialog(f"Unsaved changes in: {names}. Quit and discard them?"), answer)

    def on_resize(self) -> None:
        self.call_after_refresh(self._check_size)

    def _check_size(self) -> None:
        from tui.screens.too_small import TooSmallScreen

        width, height = self.size
        small = width < MIN_WIDTH or height < MIN_HEIGHT
        if small and self._too_small is None:
            self._too_small = TooSmallScreen(MIN_WIDTH, MIN_HEIGHT)
            self.push_screen(self._too_small)
        elif small and self._too_small is not None:
            self._too_small.show_size(width, height)
        elif not small and self._too_small is not None:
            screen, self._too_small = self._too_small, None
            if screen.is_attached and self.screen is screen:
                self.pop_screen()


def run_app() -> int:
    app = DeckApp(start_daemon=True)
    app.run()
    return int(app.return_code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_app())
