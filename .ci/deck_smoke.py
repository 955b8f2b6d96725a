"""The README's first run, without a person at the keyboard: open the deck as `dpdeck` does (daemon started),
visit every area on its number key, open help, quit. Any exception while composing or mounting a screen (the
3.10 `tomllib` crash was one) fails it. Run with a throwaway DPDECK_HOME."""

from __future__ import annotations

import asyncio
import os
import sys

from tui.app import DeckApp

AREA_KEYS = "123456"  # README: "dpdeck opens six areas on the number keys"


async def smoke() -> list[str]:
    app = DeckApp(start_daemon=True)
    visited: list[str] = []
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.5)
        for key in AREA_KEYS:
            await pilot.press(key)
            await pilot.pause(0.3)
            visited.append(app.current_mode)
        await pilot.press("question_mark")
        await pilot.pause(0.3)
        helped = type(app.screen).__name__
        await pilot.press("escape")
        await pilot.press("ctrl+q")
        await pilot.pause(0.2)
    if set(visited) != set(DeckApp.MODES):
        raise SystemExit(f"number keys visited {visited}, the deck has {sorted(DeckApp.MODES)}")
    print(f"deck smoke ok on Python {sys.version.split()[0]}: areas {' '.join(visited)}; help screen {helped}")
    return visited


if __name__ == "__main__":
    if not os.environ.get("DPDECK_HOME"):
        raise SystemExit("set DPDECK_HOME to a throwaway folder: the smoke starts a daemon there")
    asyncio.run(smoke())
