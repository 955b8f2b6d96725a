"""The deck's shell: every area by its key and by the palette, help, the too-small guard, resize."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.binding import Binding
from textual.widgets import ContentSwitcher

from tests.tui_helpers import screen_text, wait_note, wait_text, wait_until
from tui.app import AREAS, MIN_HEIGHT, MIN_WIDTH, DeckApp
from tui.keymap import binding_ids, deck_bindings, unknown_ids
from tui.screens.help import HelpScreen, HelpSection


async def test_every_area_by_key_at_80x24() -> None:
    app = DeckApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_text(pilot, "Templates")
        expected = {
            "queue": "exit reason",
            "run": "No jobs yet",
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


def test_every_binding_of_the_deck_has_an_id_and_a_description() -> None:
    everything = deck_bindings()
    classes = {cls.__name__ for cls, _ in everything}
    # Found by walking the packages, not from a list: screens, dialogs and the app itself.
    assert {"DeckApp", "DatasetsScreen", "CheckScreen", "ConfirmDialog", "BatchDialog"} <= classes
    bad = [(c.__name__, b) for c, b in everything if not (isinstance(b, Binding) and b.id and b.description)]
    assert not bad


def help_screen(app: DeckApp) -> HelpScreen:
    assert isinstance(app.screen, HelpScreen), app.screen
    return app.screen


def help_row(section: HelpSection, binding_id: str) -> str:
    """`keys  description  id` as the help table shows that row."""
    row = next(r for r in section.rows if r.binding_id == binding_id)
    return f"{' '.join(row.keys)}|{row.description}"


async def test_help_lists_the_current_screens_keys_first_with_remapped_keys(
    dpdeck_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two screens, two remapped keys: each screen's own section comes first and shows the key in force.
    monkeypatch.chdir(tmp_path)  # the Datasets screen opens the start folder: an empty one here
    (dpdeck_home / "keymap.toml").write_text('"queue.cancel" = "x"\n"datasets.stats" = "f6"\n')
    app = DeckApp(start_mode="queue")
    async with app.run_test(size=(100, 60)) as pilot:
        await wait_text(pilot, "exit reason")
        await pilot.press("question_mark")
        text = await wait_text(pilot, "dpdeck keys")
        sections = help_screen(app).sections
        assert sections[0].title == "Queue" and sections[1].title == "Everywhere"
        assert help_row(sections[0], "queue.cancel") == "x|Cancel"  # not the default `c`
        assert help_row(sections[1], "deck.help") == "? f1|Help"
        assert "queue.cancel" in text and "queue.stop" in text
        assert "profiles.enqueue" not in text and "datasets.stats" not in text  # other screens' keys
        await pilot.press("escape")
        await wait_until(pilot, lambda: "dpdeck keys" not in screen_text(app), what="help closed")

        await pilot.press("5")
        await wait_text(pilot, "without caption")
        await pilot.press("question_mark")
        text = await wait_text(pilot, "dpdeck keys")
        sections = help_screen(app).sections
        assert [s.title for s in sections[:2]] == ["Datasets", "Everywhere"]
        assert help_row(sections[0], "datasets.stats") == "f6|Stats"
        assert "queue.cancel" not in {r.binding_id for s in sections for r in s.rows}
        assert "datasets.stats" in text and text.index("Datasets") < text.index("Everywhere")
        await pilot.press("q")
        await wait_until(pilot, lambda: not isinstance(app.screen, HelpScreen), what="help closed")
        await pilot.press("f6")  # the remapped key does what help says
        panes = app.screen.query_one("#ds-right", ContentSwitcher)
        await wait_until(pilot, lambda: panes.current == "ds-stats", what="f6 opens the statistics")


async def test_unknown_keymap_ids_are_named_with_the_closest_real_one(
    dpdeck_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the Datasets screen opens the start folder: an empty one here
    (dpdeck_home / "keymap.toml").write_text('"deck.queeu" = "f2"\n"deck.datasets" = "f4"\n"zzzz" = "f5"\n')
    app = DeckApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_text(pilot, "Templates")
        note = await wait_note(pilot, "unknown binding id")
        assert 'keymap.toml: unknown binding id "deck.queeu"; did you mean "deck.queue"?' in note
        assert '"zzzz"' in note and "deck.datasets" not in note  # a real id is not reported
        await pilot.press("f4")  # the valid overrides still apply
        await wait_until(pilot, lambda: app.current_mode == "datasets", what="f4 -> datasets")


def test_unknown_ids_without_a_close_match() -> None:
    known = binding_ids()
    assert "deck.queue" in known and "datasets.stats" in known and "list.down" in known
    assert unknown_ids({"deck.queue": "f2"}, known) == []
    (line,) = unknown_ids({"qqqqqqqq": "f2"}, known)
    assert "did you mean" not in line and '"qqqqqqqq"' in line


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


async def test_help_from_the_palette_lists_the_screen_under_it() -> None:
    # The palette is a modal screen of its own: help must read the screen it was opened over, not the palette.
    app = DeckApp()
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_text(pilot, "Templates")
        await pilot.press("ctrl+p")
        await pilot.pause(0.3)
        await pilot.press(*"help")
        await wait_text(pilot, "Everywhere · key ? f1")
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help from the palette")
        assert [s.title for s in help_screen(app).sections[:2]] == ["Profiles", "Everywhere"]


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
