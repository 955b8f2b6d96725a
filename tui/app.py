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
from textual.screen import Screen

from engine.jobs.facade import ClientEngine
from tui.areas import AREA_CLASSES, area_screen
from tui.keyscheme import bind
from tui.notify_history import NotifyHistory
from tui.palette import DeckCommands
from tui.theme import DECK_THEME

if TYPE_CHECKING:
    from tui.engine_api import Engine

MIN_WIDTH, MIN_HEIGHT = 64, 20


# mode -> (key, title, factory), as App.MODES wants them.
AREAS: dict[str, tuple[str, str, Callable[[], Screen[None]]]] = {
    mode: (key, title, partial(area_screen, path)) for mode, (key, title, path) in AREA_CLASSES.items()
}
QUIT_NOTE = "dpdeck closed; the daemon keeps running queued and running jobs (`dpdeck ls` shows them)."


class DeckApp(NotifyHistory):
    CSS_PATH = "app.tcss"
    TITLE = "dpdeck"
    MODES = {mode: factory for mode, (_, _, factory) in AREAS.items()}
    COMMANDS = App.COMMANDS | {DeckCommands}
    BINDINGS = [
        *[
            bind(f"deck.{mode}", f"area('{mode}')", f"Go to {title}", show=False)
            for mode, (_, title, _) in AREAS.items()
        ],
        bind("deck.help", "help", "Help"),
        # Not priority: a text field types its q. Esc is not "back" here: on an area it would quit.
        bind("deck.back", "back", "Back / quit", keys="q", show=False),
        bind("deck.quit", "quit", "Quit", priority=True, show=False),
        bind("deck.notifications", "notifications", "Notifications", show=False),
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
                self._check_keymap(keymap)
        self.switch_mode(self.start_mode)
        self.call_after_refresh(self._check_size)
        if self.start_daemon:
            self._ensure_daemon()

    @work(thread=True, group="keymap")
    def _check_keymap(self, keymap: dict[str, str]) -> None:
        """Name the ids that match no binding and the keys the keymap made mean two things (either would
        otherwise do nothing, silently). In a thread: knowing every id imports every screen, which the first
        paint should not wait for."""
        from tui.keymap import bad_keys, binding_ids, clashes, unknown_ids

        problems = unknown_ids(keymap, binding_ids()) + bad_keys(keymap) + clashes(keymap, type(self))
        if problems:
            self.call_from_thread(
                self.notify, "\n".join(problems), title="keymap", severity="warning", timeout=20
            )

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

    async def action_back(self) -> None:
        """`q`: close the sub-screen on top (its own close action, so an editor still asks about unsaved
        changes); on an area, quit the deck."""
        if len(self.screen_stack) > 1 and self.screen is not self._too_small:
            for name in ("close", "back"):
                if hasattr(self.screen, f"action_{name}"):
                    await self.screen.run_action(name)
                    return
            self.pop_screen()
            return
        await self.action_quit()

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
            self.exit(message=QUIT_NOTE)
            return
        from tui.screens.dialogs import ConfirmDialog

        names = ", ".join(str(getattr(s, "profile_name", "?")) for s in dirty)

        def answer(ok: bool | None) -> None:
            if ok:
                self.exit(message=QUIT_NOTE)

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
