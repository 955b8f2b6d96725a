"""The key scheme (tui/keyscheme.py) held against the live bindings, docs/tui.md and the running deck: one verb
per key, confirms as the scheme says, keymap overrides shown everywhere, clashes and unknown ids reported,
help searchable and scrollable, the palette offering every action with its key, the footer fitting 80
columns, and `q` as back / quit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Input
from textual.widgets._footer import FooterKey

from profiles import store
from tests.fake_engine import FakeEngine, make_job
from tests.tui_helpers import notes, screen_text, wait_note, wait_text, wait_until
from tui.app import AREAS, QUIT_NOTE, DeckApp
from tui.keymap import bad_keys, clashes, deck_bindings, shown_key
from tui.keyscheme import (
    BY_NAME,
    GLOBAL,
    SCHEME,
    WHERE,
    Confirm,
    bind,
    key_label,
    place_of,
    scheme_table,
    verb_of,
)
from tui.screens.dialogs import ConfirmDialog
from tui.screens.editor import EditorScreen
from tui.screens.help import HelpScreen
from tui.widgets.deck_footer import DeckFooter

DOC = Path(__file__).resolve().parents[1] / "docs" / "tui.md"


def _id_bindings() -> list[tuple[type, Binding]]:
    return [(cls, b) for cls, b in deck_bindings() if isinstance(b, Binding) and b.id]


def _keys(binding: Binding) -> list[str]:
    return [k.strip() for k in binding.key.split(",")]


# ---- the scheme as data ------------------------------------------------------------------------------------


def test_a_key_means_one_verb() -> None:
    for dialog in (False, True):
        owner: dict[str, str] = {}
        for verb in (v for v in SCHEME if v.dialog == dialog):
            for key in verb.keys:
                assert key not in owner, f"{key!r} is both {owner[key]!r} and {verb.name!r}"
                owner[key] = verb.name
    assert len(BY_NAME) == len(SCHEME)  # no verb named twice
    # The examples: cancel is one letter on Queue and Models, and no other verb has it.
    assert (
        BY_NAME["cancel"].keys == ("c",)
        and "c" not in BY_NAME["compare"].keys + BY_NAME["clear_filters"].keys
    )
    assert BY_NAME["enqueue"].keys == ("E",) and BY_NAME["back"].keys[0] == "q"


def test_every_binding_has_its_verbs_key() -> None:
    bad = []
    for cls, binding in _id_bindings():
        verb = verb_of(binding.id or "")
        if verb is None:
            bad.append(f"{cls.__name__} {binding.id}: no verb")
        elif not set(_keys(binding)) <= set(verb.keys):
            bad.append(f"{cls.__name__} {binding.id}: {binding.key} is not {verb.name}'s {verb.keys}")
    assert not bad, "\n".join(bad)


def test_the_scheme_names_every_place_a_verb_is_bound() -> None:
    assert set(WHERE) == set(BY_NAME)
    unlisted = []
    for cls, binding in _id_bindings():
        verb = verb_of(binding.id or "")
        assert verb is not None
        if place_of(binding.id or "") not in WHERE[verb.name].split(", "):
            unlisted.append(
                f"{binding.id} ({cls.__name__}): add {place_of(binding.id or '')!r} to WHERE[{verb.name!r}]"
            )
    assert not unlisted, "\n".join(unlisted)


def test_a_global_key_is_bound_by_the_app_alone() -> None:
    global_keys = {k for name in GLOBAL for k in BY_NAME[name].keys}
    for cls, binding in _id_bindings():
        if cls is not DeckApp:
            assert not set(_keys(binding)) & global_keys, f"{cls.__name__} {binding.id} rebinds a global key"


def test_bind_refuses_a_key_that_is_not_its_verbs() -> None:
    assert bind("queue.cancel", "cancel", "Cancel").key == "c"
    with pytest.raises(ValueError, match="not the keys of verb 'cancel'"):
        bind("queue.cancel", "cancel", "Cancel", keys="x")
    with pytest.raises(KeyError, match="no verb"):
        bind("queue.frobnicate", "frob", "Frob")


def test_destructive_and_costly_verbs_confirm_and_the_rest_do_not() -> None:
    must = {
        "cancel",
        "stop",
        "retry",
        "resume",
        "delete",
        "delete_ended",
        "reclaim",
        "undo",
        "backend",
        "batch",
    }
    assert {v.name for v in SCHEME if v.confirms is Confirm.YES} == must
    assert BY_NAME["pull"].confirms is BY_NAME["pull_part"].confirms is Confirm.LARGE
    for name in ("pause", "move_up", "move_down", "follow", "refresh", "search", "compare", "open"):
        assert BY_NAME[name].confirms is Confirm.NO


async def test_queue_keys_confirm_exactly_as_the_scheme_says() -> None:
    """Every Queue binding whose verb confirms opens a yes/no dialog (and `n` leaves the job alone); every one
    that does not sends its request at once."""
    engine = FakeEngine()
    engine.jobs[1] = make_job(1, "alpha", state="running", step=10)
    engine.jobs[2] = make_job(2, "beta", state="queued")
    engine.jobs[3] = make_job(3, "gamma", state="completed", run_dir="/runs/3")
    app = DeckApp(start_mode="queue", engine=engine)
    from engine.jobs.protocol import Action
    from engine.jobs.verbs import refusal
    from tui.screens.queue import QueueScreen

    async with app.run_test(size=(100, 30)) as pilot:
        await wait_text(pilot, "gamma")
        screen = app.screen
        assert isinstance(screen, QueueScreen)
        table = screen.query_one("#queue-table", DataTable)
        checked = []
        for _, binding in QueueScreen._merge_bindings():
            verb = verb_of(binding.id or "")
            if verb is None or binding.id in ("queue.open",) or binding.id.startswith("list."):
                continue
            # Highlight a job the verb allows: a refusal (engine/jobs/verbs.py) comes before any question.
            action = {"move_up": Action.MOVE, "move_down": Action.MOVE, "delete_ended": None}.get(
                verb.name, next((a for a in Action if a.value == verb.name), None)
            )
            want = "completed" if verb.name in ("delete", "delete_ended") else None
            row = next(
                i
                for i, key in enumerate(table.rows)
                if (job := screen.jobs[str(key.value)])
                and (want is None or job.state == want)
                and (action is None or refusal(action, job) is None)
            )
            table.move_cursor(row=row)
            await pilot.pause()
            before = list(engine.requests), engine.paused
            await pilot.press(binding.key)
            if verb.confirms is Confirm.YES:
                await wait_until(
                    pilot, lambda: isinstance(app.screen, ConfirmDialog), what=f"{binding.id} asks"
                )
                await pilot.press("n")
                await wait_until(pilot, lambda: not isinstance(app.screen, ConfirmDialog))
                assert (list(engine.requests), engine.paused) == before, f"{binding.id} acted after no"
            else:
                await wait_until(
                    pilot,
                    lambda b=before: (list(engine.requests), engine.paused) != b,
                    what=f"{binding.id} acts",
                )
                assert not isinstance(app.screen, ConfirmDialog)
            checked.append(verb.name)
        assert {"cancel", "stop", "retry", "resume", "pause", "move_up", "move_down"} <= set(checked)


# ---- docs/tui.md, key for key ------------------------------------------------------------------------------


def _doc_rows() -> dict[str, list[str]]:
    """binding id -> the keys its docs/tui.md row names (tables with an `id` column, one id per row)."""
    rows: dict[str, list[str]] = {}
    columns: list[str] = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            columns = []
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not columns:
            columns = cells
            continue
        if "id" not in columns or set(line) <= set("|- "):
            continue
        ident = cells[columns.index("id")].strip("`")
        if ident:
            assert ident not in rows, f"docs/tui.md lists {ident} twice"
            rows[ident] = re.findall(r"`([^`]+)`", cells[columns.index("key")])
    return rows


def test_docs_key_tables_match_the_bindings_key_for_key() -> None:
    documented = _doc_rows()
    live: dict[str, list[str]] = {}
    for _, binding in _id_bindings():
        live.setdefault(binding.id or "", [key_label(k) for k in _keys(binding)])
    missing = sorted(set(live) - set(documented))
    stale = sorted(set(documented) - set(live))
    wrong = {i: (documented[i], live[i]) for i in set(live) & set(documented) if documented[i] != live[i]}
    assert not missing, f"bindings without a row in docs/tui.md: {missing}"
    assert not stale, f"docs/tui.md rows for ids no binding has: {stale}"
    assert not wrong, f"docs/tui.md keys differ from the app's (doc, app): {wrong}"


def test_docs_scheme_table_is_the_scheme() -> None:
    text = DOC.read_text(encoding="utf-8")
    table = text.split("<!-- keyscheme:start -->\n", 1)[1].split("<!-- keyscheme:end -->", 1)[0]
    assert table.strip() == scheme_table(), "run `python -m tui.keyscheme` and paste it between the markers"


# ---- keymap.toml: overrides everywhere, clashes and unknown ids reported -----------------------------------


async def test_remapped_area_key_shows_everywhere_and_the_clash_is_reported(dpdeck_home: Path) -> None:
    """The issue's example: `deck.queue = "3"` takes Run's key. The deck says so at start, and the title bar,
    help and the palette show the keys in force."""
    (dpdeck_home / "keymap.toml").write_text(
        '"deck.queue" = "3"\n"deck.helpp" = "f9"\n"deck.system" = "F4"\n'
    )
    app = DeckApp()
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_text(pilot, "Templates")
        note = await wait_note(pilot, 'key "3"')
        assert "deck.queue and deck.run" in note and "(everywhere)" in note
        unknown = await wait_note(pilot, "unknown binding id")
        assert '"deck.helpp"; did you mean "deck.help"?' in unknown
        assert '"deck.system" = "F4": \'F4\' is not a key' in unknown and 'did you mean "f4"?' in unknown
        title = screen_text(app).splitlines()[0]
        assert "1 Profiles 3 Queue Run F4 System" in title, title  # Run has no key left, and says so by none
        await pilot.press("3")
        await wait_until(pilot, lambda: app.current_mode == "queue", what="3 -> queue")
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen))
        rows = {r.binding_id: r.keys for s in app.screen.sections for r in s.rows}
        assert rows["deck.queue"] == ["3"] and rows["deck.run"] == []  # `?` agrees with the title bar
        assert "deck.run" not in {r.binding_id for s in app.screen.sections for r in s.rows if r.keys}


async def test_remapped_screen_key_shows_in_footer_help_palette_and_messages(dpdeck_home: Path) -> None:
    (dpdeck_home / "keymap.toml").write_text('"profiles.enqueue" = "f9"\n')
    app = DeckApp(start_mode="queue", engine=FakeEngine())
    async with app.run_test(size=(100, 30)) as pilot:
        empty = await wait_text(pilot, "No jobs yet")
        assert "press f9 to enqueue it" in empty  # the Queue's hint names the Profiles key in force
        assert shown_key(app, "profiles.enqueue") == "f9" and shown_key(app, "queue.cancel") == "c"
        await pilot.press("1")
        await wait_text(pilot, "Templates")
        footer = (await wait_text(pilot, "f9 Enqueue")).splitlines()[-1]
        assert "f9 Enqueue" in footer and " E " not in footer
        await pilot.press("ctrl+p")
        await pilot.pause(0.3)
        await pilot.press(*"enqueue")
        await wait_text(pilot, "Profiles · key f9")
        assert not [n for n in notes(app) if "keymap" in n]  # f9 was free: nothing to report


def test_keys_textual_cannot_deliver_are_named() -> None:
    good = {
        "a": "f2",
        "b": "ctrl+shift+up",
        "c": "question_mark",
        "d": "?",
        "e": "ä",
        "f": "x,less_than_sign",
    }
    assert bad_keys(good) == []
    lines = bad_keys({"deck.run": "ctlr+t", "deck.queue": "banana", "deck.help": "ctrl+"})
    assert len(lines) == 3 and all("is not a key" in line for line in lines)
    assert "'ctlr+t'" in lines[0] and "did you mean" not in lines[0]


def test_clashes_name_the_screen_and_skip_keys_the_keymap_did_not_move() -> None:
    (line,) = clashes({"queue.cancel": "K"}, DeckApp)
    assert 'key "K" is bound to both queue.cancel and queue.move_up (Queue)' in line
    assert clashes({"queue.cancel": "f9"}, DeckApp) == []
    assert clashes({}, DeckApp) == []
    # Modal screens stand alone (Textual stops at them): a dialog key equal to an area key is no clash.
    assert clashes({"confirm.yes": "1"}, DeckApp) == []


# ---- help ----------------------------------------------------------------------------------------------------


async def test_help_search_filters_rows_and_vim_keys_scroll() -> None:
    engine = FakeEngine()
    engine.jobs[1] = make_job(1, "alpha")
    app = DeckApp(start_mode="queue", engine=engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_text(pilot, "alpha")
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen))
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)
        assert [s.title for s in help_screen.sections[:2]] == ["Queue", "Everywhere"]
        body = help_screen.query_one("#help-scroll", VerticalScroll)
        await wait_until(pilot, lambda: body.max_scroll_y > 0, what="help taller than 24 rows")
        await pilot.press("G")
        await wait_until(pilot, lambda: body.scroll_y == body.max_scroll_y, what="G: bottom")
        await pilot.press("g")
        await wait_until(pilot, lambda: body.scroll_y == 0, what="g: top")
        await pilot.press("j", "j")
        await wait_until(pilot, lambda: body.scroll_y == 2, what="j j: two lines down")
        await pilot.press("k")
        await wait_until(pilot, lambda: body.scroll_y == 1, what="k: one up")

        await pilot.press("slash", *"resume")
        shown = help_screen.shown
        assert [r.binding_id for s in shown for r in s.rows] == ["queue.resume"]
        text = await wait_text(pilot, "queue.resume")
        assert "queue.cancel" not in text and "deck.help" not in text
        await pilot.press("enter")  # keeps the filter, back to scrolling
        assert app.focused is body and help_screen.shown == shown
        await pilot.press("escape")  # clears the search first
        text = await wait_text(pilot, "queue.cancel")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("slash", *"queue")  # a section's name keeps the whole section
        queue, everywhere = help_screen.shown
        assert queue.rows == help_screen.sections[0].rows
        assert [r.binding_id for r in everywhere.rows] == ["deck.queue"]
        await pilot.press("escape", "q")
        await wait_until(pilot, lambda: not isinstance(app.screen, HelpScreen), what="q closes help")


# ---- the palette -------------------------------------------------------------------------------------------


async def _palette_pick(pilot: object, app: DeckApp, query: str, expect: str) -> None:
    await pilot.press("ctrl+p")  # type: ignore[attr-defined]
    await pilot.pause(0.3)  # type: ignore[attr-defined]
    await pilot.press(*query)  # type: ignore[attr-defined]
    await wait_text(pilot, expect)  # type: ignore[arg-type]
    await pilot.press("enter")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("query", "expect"),
    [
        ("enqueue", "Profiles · key E"),
        ("undo", "Datasets · key z"),
        ("reclaim", "System · key X"),
        ("cancel dl", "Models · key c"),
        ("pull", "Models · key p"),
    ],
)
async def test_palette_finds_every_areas_main_actions_with_their_keys(query: str, expect: str) -> None:
    app = DeckApp(start_mode="queue", engine=FakeEngine())
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_text(pilot, "No jobs yet")
        await pilot.press("ctrl+p")
        await pilot.pause(0.3)
        await pilot.press(*query)
        await wait_text(pilot, expect)


async def test_palette_offers_every_binding_of_the_screen_and_each_areas_footer_keys() -> None:
    from tui.palette import commands
    from tui.screens.queue import QueueScreen
    from tui.screens.system import SystemScreen

    engine = FakeEngine()
    engine.jobs[1] = make_job(1, "alpha")
    app = DeckApp(start_mode="queue", engine=engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_text(pilot, "alpha")
        offered = {c.name: c.help for c in commands(app, app.screen)}
        # Every Queue action, shown in the footer or not (Textual's own focus cycling has no id: not an action).
        for _, binding in QueueScreen._merge_bindings():
            if binding.id:
                assert binding.description in offered, binding.id
        assert offered["Cancel"] == "Queue · key c" and offered["Go to Run"] == "Everywhere · key 3"
        for _, binding in SystemScreen._merge_bindings():
            if binding.id:
                assert offered[f"System: {binding.description}"].startswith("System · key ")
        assert "Queue: Cancel" not in offered  # this area's actions come once, from the live screen


async def test_palette_runs_this_screens_action_and_another_areas_after_switching() -> None:
    store.create_from_template("demo-tiny", "palette-job")
    engine = FakeEngine()
    engine.jobs[1] = make_job(1, "alpha")
    app = DeckApp(start_mode="queue", engine=engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_text(pilot, "alpha")
        await _palette_pick(pilot, app, "pause queue", "Queue · key space")
        await wait_until(pilot, lambda: engine.paused, what="paused from the palette")
        await _palette_pick(pilot, app, "enqueue", "Profiles · key E")
        await wait_until(pilot, lambda: app.current_mode == "profiles", what="switched to Profiles")
        await wait_text(pilot, "GPUs (e.g. 0,1")  # the action ran there, on the highlighted profile
        await pilot.press("enter")
        await wait_until(pilot, lambda: engine.enqueued == ["palette-job"], what="enqueued")


# ---- the footer ---------------------------------------------------------------------------------------------


async def _footer_fits(pilot: object, app: DeckApp, width: int) -> list[str]:
    footer = app.screen.query_one(DeckFooter)
    await wait_until(pilot, lambda: bool(footer.query(FooterKey)), what="footer keys")  # type: ignore[arg-type]
    await pilot.pause(0.2)  # type: ignore[attr-defined]
    keys = list(footer.query(FooterKey))
    for key in keys:
        assert key.region.right <= width, f"{key.key_display} {key.description} cut at {width} columns"
    assert any(k.action == "help" for k in keys), "? Help always stays"
    return [k.key_display for k in keys if not k.has_class("-command-palette")]


async def test_footer_shows_whole_keys_at_80_columns_on_every_area_and_in_the_editor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # Datasets opens the start folder: an empty one here
    app = DeckApp(engine=FakeEngine())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_text(pilot, "Templates")
        shown = {}
        for mode, (key, _, _) in AREAS.items():
            await pilot.press(key)
            await wait_until(pilot, lambda m=mode: app.current_mode == m)
            shown[mode] = await _footer_fits(pilot, app, 80)
        assert "v" in shown["models"] and "E" in shown["profiles"]  # the issue: Models lost `v` at 80
        await pilot.press("1", "G", "enter")  # the demo-tiny template: a new profile in the editor
        await wait_text(pilot, "Name:")
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, EditorScreen), what="editor")
        editor_keys = await _footer_fits(pilot, app, 80)
        # The issue: it ended in `? He`. In a text field `?` types, so help is on F1 there.
        assert editor_keys == ["^s", "^t", "^n", "^w", "f1"]
        await pilot.press("escape", "y", "4")  # System: its long "Install/update diffusion-pipe" is cut at 64
        await wait_until(pilot, lambda: app.current_mode == "system")
        await pilot.resize_terminal(64, 24)
        narrow = await _footer_fits(pilot, app, 64)
        await pilot.resize_terminal(160, 48)
        wide = await _footer_fits(pilot, app, 160)
        assert narrow == ["X", "r", "?"] and wide == ["X", "r", "I", "?"]  # back when there is room


# ---- q: back / quit ------------------------------------------------------------------------------------------


async def test_q_closes_sub_screens_types_in_fields_and_quits_on_an_area(
    capfd: pytest.CaptureFixture[str],
) -> None:
    app = DeckApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_text(pilot, "Templates")
        await pilot.press("slash", "q")  # in a text field q is a letter
        box = app.screen.query_one("#profile-search", Input)
        await wait_until(pilot, lambda: box.value == "q", what="q typed into the filter")
        await pilot.press("escape")
        await pilot.press("G", "enter")
        await wait_text(pilot, "Name:")
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, EditorScreen), what="editor")
        app.screen.set_focus(None)  # off its fields: q is the editor's back key now
        await pilot.press("q")
        await wait_text(pilot, "Discard them?")  # back still asks before dropping an unsaved profile
        await pilot.press("y")
        await wait_until(pilot, lambda: not isinstance(app.screen, EditorScreen), what="editor closed by q")
        assert app.is_running
        await pilot.press("q")
        await wait_until(pilot, lambda: not app.is_running, what="q on an area quits")
    assert app.return_code == 0
    out, err = capfd.readouterr()
    assert QUIT_NOTE.split(";")[0] in out + err and "keeps running" in QUIT_NOTE  # the exit line says so


def test_every_screen_a_user_can_stand_on_has_a_way_back() -> None:
    """Each modal screen and pushed screen binds the back verb (q / Esc) or a yes/no answer."""
    back = set(BY_NAME["back"].keys)
    for cls, _ in deck_bindings():
        if issubclass(cls, ModalScreen) or (issubclass(cls, Screen) and cls.__name__ in {"EditorScreen"}):
            keys = {k for _, b in cls._merge_bindings() for k in _keys(b)}
            assert keys & (back | {"n"}), f"{cls.__name__} has no way back"


async def test_title_bar_shows_remapped_area_keys_and_ends_in_an_ellipsis_when_long(
    dpdeck_home: Path,
) -> None:
    (dpdeck_home / "keymap.toml").write_text(
        '"deck.profiles" = "f11"\n"deck.queue" = "f12"\n"deck.run" = "ctrl+f3"\n'
    )
    app = DeckApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_text(pilot, "Templates")
        title = screen_text(app).splitlines()[0].rstrip()
        assert title.startswith(" dpdeck · Profiles  │ f11 Profiles f12 Queue ^f3 Run 4 System"), title
        assert len(title) <= 80 and title.endswith("…")  # cut whole, with a mark, not mid-word silently
        await pilot.press("f12")
        await wait_until(pilot, lambda: app.current_mode == "queue", what="f12 -> queue")
