"""Profiles screen and editor, against the real profile store in the test's own DPDECK_HOME."""

from __future__ import annotations

import pytest
from textual import events
from textual.widgets import Input, TextArea

from profiles import store
from tests.tui_helpers import screen_text, wait_note, wait_text, wait_until
from tui.app import DeckApp
from tui.screens.editor import EditorScreen
from tui.screens.profiles import ProfilesScreen, parse_gpus
from tui.widgets.field import FieldRow, parse_value


def _field(app: DeckApp, field_id: str, form: str = "easy") -> FieldRow:
    return next(r for r in app.screen.query_one(f"#{form}-form").query(FieldRow) if r.field_id == field_id)


async def _new_from_template(pilot, app: DeckApp, template: str, name: str) -> EditorScreen:  # type: ignore[no-untyped-def]
    await wait_text(pilot, template)
    await pilot.press("slash", *template)
    await pilot.press("enter")  # keep the filter, back to the list
    await wait_until(
        pilot,
        lambda: (r := app.screen.selected()) is not None and r.name == template,
        what="template highlighted",
    )
    await pilot.press("enter")
    await wait_text(pilot, "Name:")
    box = app.screen.query_one("#prompt-input", Input)
    box.value = name
    await pilot.press("enter")
    await wait_until(pilot, lambda: isinstance(app.screen, EditorScreen), what="editor open")
    return app.screen  # type: ignore[return-value]


async def test_new_profile_from_template_in_easy_mode_saves() -> None:
    app = DeckApp()
    async with app.run_test(size=(80, 24)) as pilot:
        editor = await _new_from_template(pilot, app, "demo-tiny", "tiny1")
        text = await wait_text(pilot, "epochs")
        assert "new, not saved yet" in text
        epochs = _field(app, "main.toml:epochs")
        epochs.query_one(Input).value = "3"
        await wait_until(pilot, lambda: "epochs = 3" in editor.files["main.toml"], what="form -> TOML")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: store.exists("tiny1"), what="profile stored")
        await wait_until(pilot, lambda: not editor.dirty, what="saved flag")
        assert "epochs = 3" in store.read_files("tiny1")["main.toml"]
        await pilot.press("ctrl+w")  # saved: closes without asking
        await wait_until(
            pilot,
            lambda: any(r.name == "tiny1" for r in getattr(app.screen, "rows", [])),
            what="list reloaded with tiny1",
        )


async def test_bad_value_is_refused_at_the_field_and_not_written() -> None:
    app = DeckApp()
    async with app.run_test(size=(80, 24)) as pilot:
        editor = await _new_from_template(pilot, app, "demo-tiny", "tiny2")
        await wait_text(pilot, "epochs")
        row = _field(app, "main.toml:epochs")
        row.query_one(Input).value = "many"
        await wait_text(pilot, "expected a whole number")
        assert "epochs = 16" in editor.files["main.toml"]


async def test_toml_that_does_not_parse_keeps_text_and_names_the_line() -> None:
    app = DeckApp()
    async with app.run_test(size=(80, 24)) as pilot:
        editor = await _new_from_template(pilot, app, "demo-tiny", "tiny3")
        await pilot.press("ctrl+t", "ctrl+t")
        await wait_until(
            pilot, lambda: app.screen.query_one("#editor-tabs").active == "toml", what="TOML tab"
        )
        index = list(editor.files).index("main.toml")
        area = app.screen.query_one(f"#text-{index}", TextArea)
        broken = area.text.replace("epochs = 16", "epochs = = 16")
        area.load_text(broken)
        text = await wait_text(pilot, "does not parse")
        assert "main.toml line" in text
        assert editor.files["main.toml"] == broken  # the user's text is kept as typed
        await pilot.press("ctrl+s")
        await wait_note(pilot, "Cannot save")
        assert not store.exists("tiny3")


async def test_validation_problem_shows_next_to_its_field() -> None:
    app = DeckApp()
    async with app.run_test(size=(80, 40)) as pilot:
        await _new_from_template(pilot, app, "demo-tiny", "tiny4")
        row = _field(app, "main.toml:optimizer.lr")
        row.query_one(Input).value = "-1.0"
        await wait_until(pilot, lambda: row.has_class("has-error"), what="lr problem shown", timeout=30)
        assert str(row.query_one(".field-problem").render()).startswith("✗")


async def test_unsaved_changes_ask_before_closing() -> None:
    app = DeckApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await _new_from_template(pilot, app, "demo-tiny", "tiny5")
        await pilot.press("ctrl+w")
        await wait_text(pilot, "Discard them?")
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, EditorScreen), what="still editing")
        await pilot.press("ctrl+q")
        await wait_text(pilot, "Quit and discard")
        await pilot.press("n")
        await wait_until(
            pilot, lambda: isinstance(app.screen, EditorScreen), what="still editing after quit=no"
        )
        await pilot.press("ctrl+w")
        await wait_text(pilot, "Discard them?")
        await pilot.press("y")
        await wait_until(pilot, lambda: not isinstance(app.screen, EditorScreen), what="editor closed")
        assert not store.exists("tiny5")


async def test_history_diff_and_rollback() -> None:
    store.create_from_template("demo-tiny", "hist")
    files = store.read_files("hist")
    files["main.toml"] = files["main.toml"].replace("epochs = 16", "epochs = 7")
    store.save("hist", files, "fewer epochs")
    app = DeckApp()
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_text(pilot, "hist")
        await pilot.press("h")
        text = await wait_text(pilot, "fewer epochs")
        await wait_text(pilot, "epochs = 7")
        await pilot.press("j")  # v1, the oldest
        await wait_text(pilot, "first version")
        await pilot.press("z")
        await wait_text(pilot, "Roll hist back to v1")
        await pilot.press("y")
        await wait_until(pilot, lambda: len(store.list_versions("hist")) == 3, what="rollback version")
        assert "epochs = 16" in store.read_files("hist")["main.toml"]
        assert "History of hist" in text


async def test_diff_against_another_profile() -> None:
    store.create_from_template("demo-tiny", "left")
    store.create_from_template("sd15", "right")
    app = DeckApp()
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_text(pilot, "left")
        await pilot.press("slash", *"left", "enter")
        await wait_until(
            pilot, lambda: (r := app.screen.selected()) is not None and r.name == "left", what="left selected"
        )
        await pilot.press("equals_sign")  # diff (`d` deletes, issue 16 key scheme)
        await wait_text(pilot, "Diff left against")
        await pilot.press("slash")  # not a list key: ignored by the choice list
        choice = app.screen.query_one("#choice-list")
        index = next(
            i for i in range(choice.option_count) if choice.get_option_at_index(i).id == "profile:right"
        )
        choice.highlighted = index
        await pilot.press("enter")
        text = await wait_text(pilot, "left -> right")
        assert "changed" in text or "added" in text or "removed" in text


async def test_enqueue_checks_gpu_input_and_says_why_a_profile_is_refused() -> None:
    store.create_from_template("demo-tiny", "enq")
    app = DeckApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_text(pilot, "enq")
        await pilot.press("E")
        await wait_text(pilot, "GPUs (e.g. 0,1")
        app.screen.query_one("#prompt-input", Input).value = "0,x"
        await pilot.press("enter")
        await wait_text(pilot, "'x' is not a GPU index")
        app.screen.query_one("#prompt-input", Input).value = ""
        await pilot.press("enter")
        note = await wait_note(pilot, "cannot enqueue enq")
        # the template's placeholders make it invalid (engine present), or the engine is missing: both say why
        assert "invalid" in note or "engine" in note, note
        assert screen_text(app)


def test_parse_helpers() -> None:
    assert parse_gpus(" 0, 2 ") == [0, 2]
    assert parse_gpus("") is None
    with pytest.raises(ValueError, match="twice"):
        parse_gpus("1,1")
    assert parse_value("true", False) is True
    assert parse_value("[512, 768]", [512]) == [512, 768]
    with pytest.raises(ValueError, match="number"):
        parse_value("fast", 1e-4)


async def test_close_right_after_save_waits_for_the_save_instead_of_asking() -> None:
    """ctrl+s then ctrl+w in one breath: the save runs in a thread, so the close used to find the editor still
    dirty and ask "unsaved changes. Discard them?" about changes that were being saved that moment."""
    app = DeckApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await _new_from_template(pilot, app, "demo-tiny", "tiny-quick")
        await wait_text(pilot, "epochs")
        for key in ("ctrl+s", "ctrl+w"):  # one terminal read, as tmux delivers two quick keys
            event = events.Key(key, None)
            event.set_sender(app)
            assert app._driver is not None
            app._driver.send_message(event)
        await wait_until(pilot, lambda: isinstance(app.screen, ProfilesScreen), what="back on Profiles")
        await pilot.pause(0.5)
        assert isinstance(app.screen, ProfilesScreen), "a dialog came up after the close"
        assert store.exists("tiny-quick")


async def test_opening_every_tab_after_a_save_is_no_edit() -> None:
    """Fields mount lazily (a loaded box mounts them after the user saved): a field showing its first value
    must not count as an edit, or a saved profile asks 'unsaved changes' on close and grows empty keys."""
    app = DeckApp()
    async with app.run_test(size=(80, 24)) as pilot:
        editor = await _new_from_template(pilot, app, "demo-tiny", "tiny-tabs")
        await pilot.press("ctrl+s")  # before the forms have necessarily shown a single field
        await wait_until(pilot, lambda: store.exists("tiny-tabs") and not editor.dirty, what="saved")
        saved = store.read_files("tiny-tabs")
        for _ in range(3):  # Easy -> Advanced -> TOML -> Easy: every field and text area mounted
            await pilot.press("ctrl+t")
            await pilot.pause(0.3)
        await wait_text(pilot, "saved")
        await pilot.pause(1.0)  # the debounced validation too
        assert not editor.dirty, [f for f in editor.files if editor.files[f] != saved.get(f)]
        assert editor.files == saved
        await pilot.press("ctrl+w")
        await wait_until(pilot, lambda: isinstance(app.screen, ProfilesScreen), what="closed without asking")


async def test_editor_says_validating_until_it_has_a_verdict_that_names_the_backend() -> None:
    app = DeckApp()
    async with app.run_test(size=(160, 48)) as pilot:
        editor = await _new_from_template(pilot, app, "chroma-e6ai-512", "chroma1")

        def status() -> str:
            return str(editor.query_one("#editor-status").render())

        await wait_until(pilot, lambda: "runs on:" in status(), what="a verdict")
        # No diffusion-pipe checkout in the test's home: the queue would run Chroma on the built-in trainer.
        assert "runs on: built-in trainer (no diffusion-pipe checkout configured)" in status()
        assert "error(s)" in status() and "validating" not in status()
        # An edit makes the shown counts stale: the header says so until the new text is judged.
        editor.validate_soon(5.0)
        assert "validating…" in status() and "error(s)" not in status()
