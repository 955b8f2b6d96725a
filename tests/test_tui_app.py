"""The deck's shell: every area by its key and by the palette, help, the too-small guard, resize."""

from __future__ import annotations

from textual.binding import Binding

from tests.tui_helpers import screen_text, wait_text, wait_until
from tui.app import AREAS, MIN_HEIGHT, MIN_WIDTH, DeckApp
from tui.screens.help import binding_sections


async def test_every_area_by_key_at_80x24() -> None:
    app = DeckApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_text(pilot, "Templates")
        expected = {
            "queue": "exit reason",
            "run": "No job selected",
            "system": "GPUs",
            "datasets": "without caption",
            "models": "Downloads",
            "profiles": "Templates",
        }
        for mode, (key, title, _) in [*list(AREAS.items())[1:], ("profiles", AREAS["profiles"])]:
            await pilot.press(key)
            await wait_until(pilot, lambda m=mode: app.current_mode == m, what=f"mode {mode}")
            text = await wait_text(pilot, expected[mode])
            assert f"dpdeck · {title}" in text
            assert len(text.splitlines()) == 24 and all(len(line) <= 80 for line in text.splitlines())


async def test_system_screen_says_there_are_no_gpus_and_shows_host() -> None:
    app = DeckApp(start_mode="system")
    async with app.run_test(size=(80, 24)) as pilot:
        text = await wait_text(pilot, "No NVIDIA GPUs found")
        text = await wait_text(pilot, "RAM")
        assert "CPU" in text and "Disk" in text


async def test_help_lists_every_binding_with_an_id() -> None:
    sections = binding_sections()
    everything = [b for _, bindings in sections for b in bindings]
    assert everything and all(isinstance(b, Binding) and b.id and b.description for b in everything)
    app = DeckApp()
    async with app.run_test(size=(100, 60)) as pilot:
        await wait_text(pilot, "Templates")
        await pilot.press("question_mark")
        text = await wait_text(pilot, "dpdeck keys")
        for needle in ("profiles.enqueue", "queue.cancel", "run.follow", "system.reclaim", "editor.save"):
            assert needle in text, needle
        await pilot.press("escape")
        await wait_until(pilot, lambda: "dpdeck keys" not in screen_text(app), what="help closed")


async def test_command_palette_opens_an_area() -> None:
    app = DeckApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_text(pilot, "Templates")
        await pilot.press("ctrl+p")
        await pilot.pause(0.3)
        await pilot.press(*"go to system")
        await wait_text(pilot, "Go to System")
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.current_mode == "system", what="system via palette")


async def test_too_small_terminal_says_enlarge_and_resize_keeps_state() -> None:
    app = DeckApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_text(pilot, "Templates")
        await pilot.press("j", "j")  # move off the first row: state that must survive
        before = app.screen.query_one("#profile-list").highlighted
        await pilot.resize_terminal(50, 15)
        text = await wait_text(pilot, f"enlarge to at least {MIN_WIDTH}x{MIN_HEIGHT}")
        assert "(50x15)" in text
        await pilot.press("2")  # area keys do nothing while too small
        assert app.current_mode == "profiles"
        await pilot.resize_terminal(120, 40)
        await wait_text(pilot, "Templates")
        assert app.screen.query_one("#profile-list").highlighted == before
