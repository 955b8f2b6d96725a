"""Helpers for the deck's Pilot tests: the rendered screen as plain text, and polling with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual import events
from textual.app import App
from textual.keys import _character_to_key
from textual.pilot import Pilot


def screen_text(app: App[object]) -> str:
    """What the terminal shows right now, one line per row (the compositor's own strips)."""
    strips = app.screen._compositor.render_strips()
    return "\n".join(strip.text for strip in strips)


async def wait_until(
    pilot: Pilot[object], check: Callable[[], bool], timeout: float = 20.0, what: str = ""
) -> None:
    """Poll (letting the app run) until `check()` holds; generous deadline for a loaded 2-core box."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")


async def wait_text(pilot: Pilot[object], needle: str, timeout: float = 20.0) -> str:
    text = ""

    def found() -> bool:
        nonlocal text
        text = screen_text(pilot.app)
        return needle in text

    try:
        await wait_until(pilot, found, timeout, f"{needle!r} on screen")
    except AssertionError:
        raise AssertionError(f"{needle!r} not on screen; screen was:\n{text}") from None
    return text


def notes(app: App[object]) -> list[str]:
    return [str(n.message) for n in app._notifications]


async def wait_note(pilot: Pilot[object], needle: str, timeout: float = 20.0) -> str:
    """Wait for a notification containing `needle` (toasts may have timed out of the screen already)."""
    await wait_until(pilot, lambda: any(needle in n for n in notes(pilot.app)), timeout, f"note {needle!r}")
    return next(n for n in notes(pilot.app) if needle in n)


def send_burst(app: App[object], text: str) -> None:
    """Queue every key of `text` at once, as a terminal read does for tmux send-keys or a paste.

    `pilot.press` waits for the app to go idle after each key, which hides races between a key and the ones
    right behind it.
    """
    driver = app._driver
    assert driver is not None
    for char in text:
        key = char if char.isalnum() else _character_to_key(char)
        event = events.Key(key, char)
        event.set_sender(app)
        driver.send_message(event)
