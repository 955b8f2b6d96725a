"""The command palette (ctrl+p): every action of the screen it was opened over, then the main actions of the
other areas (their footer keys), each with the key that does it. Running one from another area switches there
first. Read from the live bindings, as `?` is: a new binding is offered by being declared."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from textual.app import App
from textual.command import DiscoveryHit, Hit, Hits, Provider

SETTLE_S = 3.0
DeckApp = App[Any]  # the deck's app; not imported (it imports this module)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Callable[[], Awaitable[None]]


async def _run_here(app: DeckApp, action: str, node: object) -> None:
    await app.run_action(action, node)  # type: ignore[arg-type]


async def _run_in_area(app: DeckApp, mode: str, action: str) -> None:
    if app.current_mode != mode:
        await app.switch_mode(mode)
        await _settle(app)
    await app.run_action(action, app.screen)


async def _settle(app: DeckApp) -> None:
    """Let a screen just opened load what its actions act on (its rows come from workers, then a message),
    or give up after SETTLE_S: a poll worker that never ends must not hold the action back for good."""
    screen = app.screen
    pending = [w for w in app.workers if w.node is screen and not w.is_finished]
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(w.wait() for w in pending), return_exceptions=True), SETTLE_S)
    for _ in range(3):  # the workers' result messages, then the refresh they ask for
        await asyncio.sleep(0.02)


def _keys_text(keys: list[str]) -> str:
    return f"key {' '.join(keys)}" if keys else "no key (a keymap.toml clash took it)"


def commands(app: DeckApp, screen: object) -> Iterator[Command]:
    from textual.screen import Screen

    from tui.areas import AREA_CLASSES, area_class
    from tui.keymap import keys_in_force
    from tui.screens.help import binding_sections

    assert isinstance(screen, Screen)
    here = app.current_mode
    for section in binding_sections(screen):
        for row in section.rows:
            if row.binding_id and row.enabled:
                help_text = f"{section.title} · {_keys_text(row.keys)}"
                yield Command(row.description, help_text, partial(_run_here, app, row.action, row.node))
    for mode, (_, title, path) in AREA_CLASSES.items():
        if mode == here and not screen.is_modal:
            continue  # its actions are listed above, from the live screen
        cls = area_class(path)
        in_force = keys_in_force(cls._merge_bindings(), app._keymap)
        seen: set[str] = set()
        for _, binding in cls._merge_bindings():  # one entry per key: a binding with two keys comes twice
            if binding.show and binding.id and binding.description and binding.id not in seen:
                seen.add(binding.id)
                keys = [
                    app.get_key_display(binding.with_key(k, key_display=None))
                    for k in in_force.get(binding.id, [])
                ]
                yield Command(
                    f"{title}: {binding.description}",
                    f"{title} · {_keys_text(keys)}",
                    partial(_run_in_area, app, mode, binding.action),
                )


class DeckCommands(Provider):
    """Every action by name (see the module docstring); the area "Go to" commands are the app's bindings."""

    def _commands(self) -> list[Command]:
        app = self.app
        seen: set[str] = set()
        out = []
        for command in commands(app, self.screen):
            if command.name not in seen:  # one binding with two keys is one command
                seen.add(command.name)
                out.append(command)
        return out

    async def discover(self) -> Hits:
        for command in self._commands():
            yield DiscoveryHit(command.name, command.run, help=command.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for command in self._commands():
            score = matcher.match(command.name)
            if score > 0:
                yield Hit(score, matcher.highlight(command.name), command.run, help=command.help)
