"""Issue 16 in the Datasets, Models, System areas and the editor's TOML tab: focus rules (lists keep the focus,
text fields are entered on purpose and left with Esc, Tab never lands in a text field), a focus colour that is
not the warning amber, "use this folder in profile X", and values shown in human units."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.binding import Binding
from textual.color import Color
from textual.widgets import DataTable, Input, Static, TextArea

from profiles import store
from tests.test_tui_datasets import make_dataset, open_target, screen
from tests.tui_helpers import screen_text, wait_note, wait_text, wait_until
from tui.app import DeckApp
from tui.screens.system import daemon_text


def key_of(app: DeckApp, binding_id: str) -> str:
    """The key bound to `binding_id` on the current screen, so these tests follow a renamed key (the key
    scheme is the keys engineer's; the behaviour is what is tested here)."""
    for binding in type(app.screen).BINDINGS:
        if isinstance(binding, Binding) and binding.id == binding_id:
            return binding.key.split(",")[0]
    raise AssertionError(f"no binding {binding_id} on {app.screen}")


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # open_target types paths relative to where the deck started


async def test_datasets_tab_cycles_lists_and_never_types_into_the_caption(tmp_path: Path) -> None:
    folder = make_dataset(tmp_path)
    app = DeckApp(start_mode="datasets")
    async with app.run_test(size=(100, 30)) as pilot:
        await open_target(pilot, app, folder)
        files = app.screen.query_one("#ds-files", DataTable)
        caption = app.screen.query_one("#ds-caption", TextArea)
        assert files.has_focus
        for _ in range(4):  # round the whole Tab chain: never a text field
            await pilot.press("tab")
            assert not isinstance(app.focused, (TextArea, Input)), app.focused
        await pilot.press("j", "j")
        assert "jj" not in caption.text and not screen(app).drafts  # j j moved a list; it typed nothing
        # The list keeps the focus after moving.
        await pilot.press("tab")
        while not files.has_focus:
            await pilot.press("tab")
        row = files.cursor_row
        await pilot.press("g", "j", "j", "k")
        assert files.has_focus and files.cursor_row == 1, row
        # Entered on purpose (Enter), left with Esc: the list has it back, and Tab skips the editor again.
        await pilot.press("enter")
        await wait_until(pilot, lambda: caption.has_focus, what="editor entered with Enter")
        await pilot.press("escape")
        assert files.has_focus
        await pilot.press("tab")
        assert not caption.has_focus
        # `e` enters it too; shift+tab out of it, then the list's keys move the list, not the text.
        await pilot.press("shift+tab")
        while not files.has_focus:
            await pilot.press("tab")
        await pilot.press(key_of(app, "datasets.edit"))
        await wait_until(pilot, lambda: caption.has_focus, what="editor entered with e")
        await pilot.press("escape")
        assert files.has_focus and not screen(app).drafts


async def test_empty_folder_typing_stays_out_of_the_input_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    app = DeckApp(start_mode="datasets")
    async with app.run_test(size=(80, 24)) as pilot:
        await open_target(pilot, app, tmp_path / "empty", rows=0)
        box = app.screen.query_one("#ds-input", Input)
        await pilot.press("x", "y", "tab", "w")  # not q: that is back/quit everywhere
        assert box.value == "" and not box.has_focus
        await pilot.press("o")  # on purpose: the input line takes the keys
        assert box.has_focus
        await pilot.press("escape")
        assert not box.has_focus and box.value == ""


async def test_toml_tab_gives_its_text_the_focus() -> None:
    from tests.test_tui_profiles import _new_from_template

    app = DeckApp(start_mode="profiles")
    async with app.run_test(size=(100, 30)) as pilot:
        await _new_from_template(pilot, app, "demo-tiny", "focus-toml")
        tabs = app.screen.query_one("#editor-tabs")
        # The editor may still be mounting on a loaded box (TabbedContent then resets to its first tab):
        # press ctrl+t until the TOML tab shows, as a user would; the focus is what is checked.
        for _ in range(12):
            if tabs.active == "toml":
                break
            await pilot.press("ctrl+t")
            await pilot.pause(0.3)
        assert tabs.active == "toml"
        await wait_until(pilot, lambda: isinstance(app.focused, TextArea), what="TOML text focused")
        assert app.focused is not None and "toml-text" in app.focused.classes


async def test_focus_border_is_not_the_warning_colour(tmp_path: Path) -> None:
    folder = make_dataset(tmp_path)
    app = DeckApp(start_mode="datasets")
    async with app.run_test(size=(100, 30)) as pilot:
        await open_target(pilot, app, folder)
        files = app.screen.query_one("#ds-files", DataTable)
        assert files.has_focus
        focus_type, focus_colour = files.styles.border_top
        assert focus_type != "none"
        warning = Static("careful", classes="problem warning")
        await app.screen.mount(warning)
        await pilot.pause()
        warning_colour = warning.styles.color
        error = Static("broken", classes="problem")
        await app.screen.mount(error)
        await pilot.pause()
        theme_warning = Color.parse(app.current_theme.warning or "")
        assert max(abs(a - b) for a, b in zip(warning_colour.rgb, theme_warning.rgb, strict=True)) < 8
        for other in (warning_colour, error.styles.color):
            # Far apart, not merely unequal: amber vs cyan differ by well over 100 in some channel.
            assert max(abs(a - b) for a, b in zip(focus_colour.rgb, other.rgb, strict=True)) > 100, (
                focus_colour,
                other,
            )


async def test_use_this_folder_in_a_profile(tmp_path: Path) -> None:
    store.create_from_template("demo-tiny", "target")
    folder = make_dataset(tmp_path)
    app = DeckApp(start_mode="datasets")
    async with app.run_test(size=(100, 30)) as pilot:
        await open_target(pilot, app, folder)
        await pilot.press(key_of(app, "datasets.use"))
        await wait_text(pilot, "Use ")
        await wait_text(pilot, "target")
        await pilot.press("enter")  # the only stored profile
        text = await wait_text(pilot, "dataset.toml:")
        assert "directory[0].path" in text and "(was " in text
        await pilot.press("y")
        await wait_note(pilot, "profile target: 1 line(s) changed")
    stored = store.load_stored("target")
    assert stored.dataset is not None and stored.dataset.get("directory[0].path") == str(folder)
    assert len(store.list_versions("target")) == 2  # a new history version, undoable


async def test_use_folder_declined_changes_nothing(tmp_path: Path) -> None:
    store.create_from_template("demo-tiny", "keep")
    before = store.read_files("keep")
    folder = make_dataset(tmp_path)
    app = DeckApp(start_mode="datasets")
    async with app.run_test(size=(100, 30)) as pilot:
        await open_target(pilot, app, folder)
        await pilot.press(key_of(app, "datasets.use"))
        await wait_text(pilot, "keep")
        await pilot.press("enter")
        await wait_text(pilot, "dataset.toml:")
        await pilot.press("n")
        await pilot.pause(0.3)
    assert store.read_files("keep") == before


def test_system_daemon_lines_are_sentences() -> None:
    text = daemon_text(
        {
            "running": True,
            "pid": 42,
            "state_dir": "/s",
            "paused": False,
            "jobs": {"cancelled": 2, "completed": 1},
            "problems": [],
        }
    )
    assert "jobs: 2 completed, 2 cancelled" not in text  # counts are the store's, not invented
    assert "jobs: 1 completed, 2 cancelled" in text
    assert "queue paused: no" in text and "● running (pid 42)" in text
    assert "False" not in text and "{" not in text
    idle = daemon_text({"running": False, "pid": None, "paused": True, "jobs": {}, "problems": ["disk full"]})
    assert "jobs: none yet" in idle and "queue paused: yes" in idle and "problem: disk full" in idle


async def test_system_screen_shows_no_raw_values() -> None:
    app = DeckApp(start_mode="system")
    async with app.run_test(size=(100, 40)) as pilot:
        text = await wait_text(pilot, "queue paused:")
        assert "paused: False" not in text and "jobs: {" not in screen_text(app)


# ---- Models: the detail pane and the size question before a pull --------------------------------------------


@pytest.fixture
def models_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "models"
    monkeypatch.setenv("DPDECK_MODELS_DIR", str(root))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    return root


async def test_models_detail_pane_follows_the_cursor_and_toggles(models_root: Path) -> None:
    from engine.models.registry import load_registry

    app = DeckApp(start_mode="models")
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one("#models-table", DataTable)
        await wait_until(pilot, lambda: table.row_count > 0, what="rows")
        pane = app.screen.query_one("#models-detail", Static)
        table.move_cursor(row=table.get_row_index("sd15"))
        entry = load_registry().get("sd15")
        comp = entry.components[0]
        await wait_text(pilot, f"{comp.key}: missing, ~4.3 GB to download")
        text = str(pane.render())
        assert (
            entry.title in text and f"<- {comp.repo}:{comp.file}" in text
        )  # the pane's text, before the cut
        assert "into " in text and "GB free" in text
        # A part on disk: its real size there, and where.
        target = comp.local_path()
        target.parent.mkdir(parents=True)
        target.write_bytes(b"\0" * 3_000_000)
        await pilot.press(key_of(app, "models.refresh"))
        await wait_text(pilot, f"{comp.key}: present, 3.0 MB on disk")
        await wait_text(pilot, "every part is present")
        await pilot.press(key_of(app, "models.details"))
        assert not pane.display
        await pilot.press(key_of(app, "models.details"))
        assert pane.display


async def test_large_pull_asks_with_size_and_free_space_and_no_means_nothing(models_root: Path) -> None:
    from engine.models import downloads

    app = DeckApp(start_mode="models")
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one("#models-table", DataTable)
        await wait_until(pilot, lambda: table.row_count > 0, what="rows")
        table.move_cursor(row=table.get_row_index("flux-dev"))
        await pilot.press(key_of(app, "models.pull"))
        text = await wait_text(pilot, "Pull flux-dev: ~33.7 GB into ")
        assert "Free space there:" in text and "GB" in text
        await pilot.press("n")
        await pilot.pause(0.5)
        assert downloads.list_downloads() == []  # declined: nothing started


def test_pull_question_is_none_for_a_small_pull_and_warns_when_it_will_not_fit(tmp_path: Path) -> None:
    from tui.screens.models_text import PartInfo, pull_question

    def part(gb: float) -> PartInfo:
        return PartInfo("k", "missing", "r:f", tmp_path / "r" / "f.safetensors", None, None, gb * 1e9)

    assert pull_question("tiny", [part(0.2)], free=10**12) is None
    big = pull_question("big", [part(23.8)], free=120 * 10**9)
    assert big is not None and big.startswith(f"Pull big: ~23.8 GB into {tmp_path / 'r'}?")
    assert "Free space there: 120.0 GB" in big and "does not fit" not in big
    tight = pull_question("big", [part(23.8)], free=20 * 10**9)
    assert tight is not None and "does not fit" in tight


async def test_datasets_status_shortens_a_long_path_in_the_middle(tmp_path: Path) -> None:
    deep = tmp_path / "a-rather-long-folder-name" / "another-long-level" / "and-one-more-level-here"
    deep.mkdir(parents=True)
    folder = make_dataset(deep)
    app = DeckApp(start_mode="datasets")
    async with app.run_test(size=(80, 24)) as pilot:
        await open_target(pilot, app, folder)
        await pilot.pause(0.2)
        status = app.screen.query_one("#ds-status", Static)
        line = str(status.render())
        assert len(str(folder)) > 60 and "…" in line, line
        assert line.endswith(folder.name) and line.startswith("5/5 shown"), line
        assert len(line) <= 80


def test_use_in_profile_shadows_nothing_of_the_screens_that_mix_it_in() -> None:
    """The mixin's helpers once shadowed Datasets' caption `_save` (same name, other arguments)."""
    from tui.screens.datasets.screen import DatasetsScreen
    from tui.screens.datasets.use_folder import UseFolder
    from tui.screens.models import ModelsScreen
    from tui.screens.models_check import CheckScreen
    from tui.screens.use_in_profile import UseInProfile

    mixins = (UseInProfile, UseFolder)
    for screen_class in (DatasetsScreen, ModelsScreen, CheckScreen):
        others = [c for c in screen_class.__mro__ if c not in mixins and c is not object]
        for mixin in mixins:
            if mixin not in screen_class.__mro__:
                continue
            for name in vars(mixin):
                if not name.startswith("__"):
                    clash = [c.__name__ for c in others if name in vars(c)]
                    assert not clash, f"{mixin.__name__}.{name} shadows {clash} in {screen_class.__name__}"


async def test_open_error_shortens_a_long_path_instead_of_folding_it(tmp_path: Path) -> None:
    from tests.tui_helpers import notes

    app = DeckApp(start_mode="datasets")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: screen(app).source is not None, what="first open")
        missing = tmp_path / "a-very-long-folder-name-that-goes-on" / "and-on-and-on" / "missing-dataset"
        await pilot.press("o")
        app.screen.query_one("#ds-input", Input).value = str(missing)
        await pilot.press("enter")
        await wait_until(pilot, lambda: any("not found" in n for n in notes(app)), what="error note")
        note = next(n for n in notes(app) if "not found" in n)
        assert note.startswith("/") and "…" in note and note.endswith("missing-dataset: not found"), note
        assert app.screen.query_one("#ds-input", Input).value == str(missing)  # kept whole for fixing


async def test_tab_cycles_between_the_folder_list_and_an_open_panel(tmp_path: Path) -> None:
    folder = make_dataset(tmp_path)
    app = DeckApp(start_mode="datasets")
    async with app.run_test(size=(100, 30)) as pilot:
        await open_target(pilot, app, folder)
        await pilot.press(key_of(app, "datasets.stats"))
        await wait_until(
            pilot, lambda: app.focused is not None and app.focused.id == "ds-stats", what="panel focus"
        )
        seen = set()
        for _ in range(4):
            await pilot.press("tab")
            assert app.focused is not None
            seen.add(app.focused.id)
        assert seen == {"ds-dirs", "ds-stats"}
        await pilot.press("escape")  # the panel closes; the image list has the focus again
        assert app.screen.query_one("#ds-files", DataTable).has_focus


async def test_discovered_model_paths_are_shortened_not_folded(models_root: Path) -> None:
    from engine.models.safetensors_header import write_header_only
    from tests.test_tui_models import SDXL

    deep = models_root / "a-long-folder-of-checkpoints" / "sorted-by-family-and-date" / "sdxl-finetunes-2026"
    deep.mkdir(parents=True)
    write_header_only(deep / "my_pony_v6_final.safetensors", SDXL)
    app = DeckApp(start_mode="models")
    async with app.run_test(size=(80, 24)) as pilot:
        found = app.screen.query_one("#models-found", Static)
        await wait_until(pilot, lambda: "my_pony_v6_final" in str(found.render()), what="discovered")
        await pilot.pause(0.3)
        [line] = str(found.render()).splitlines()
        assert line.startswith("checkpoint sdxl") or line.split()[1] == "sdxl", line
        assert "…" in line and line.endswith("my_pony_v6_final.safetensors") and len(line) <= 78, line


async def test_tab_out_of_the_input_line_closes_it(tmp_path: Path) -> None:
    folder = make_dataset(tmp_path)
    app = DeckApp(start_mode="datasets")
    async with app.run_test(size=(100, 30)) as pilot:
        await open_target(pilot, app, folder)
        box = app.screen.query_one("#ds-input", Input)
        label = app.screen.query_one("#ds-input-label", Static)
        await pilot.press(key_of(app, "datasets.open"), "a", "b", "tab")
        assert not box.has_focus and box.value == "" and str(label.render()) == ""
        assert not isinstance(app.focused, (Input, TextArea))
        # A tag filter typed, then Tab: the filter stays (as Enter keeps it), the line closes.
        await pilot.press(key_of(app, "datasets.tag"), *"red")
        await wait_until(pilot, lambda: screen(app).filters.tag == "red", what="tag filter")
        await pilot.press("tab")
        assert screen(app).filters.tag == "red" and not box.has_focus and str(label.render()) == ""


def test_set_folder_edits_only_the_first_directory_and_says_when_nothing_changes(tmp_path: Path) -> None:
    from profiles.document import Profile, TomlFile
    from tui.screens.datasets.use_folder import set_folder

    main = TomlFile.from_text('dataset = "dataset.toml"\n')
    data = TomlFile.from_text(
        "resolutions = [512]\n\n[[directory]]\npath = '/old'\nnum_repeats = 3\n\n"
        "[[directory]]\npath = '/other'\n"
    )
    profile = Profile(main=main, dataset=data)
    changes, what = set_folder(profile, tmp_path)
    assert [(c.key, c.old, c.new) for c in changes] == [("dataset:directory[0].path", "/old", str(tmp_path))]  # type: ignore[attr-defined]
    assert data.get("directory[0].num_repeats") == 3 and data.get("directory[1].path") == "/other"
    assert "num_repeats = 3" in data.dumps()  # one line changed, the rest as written
    assert set_folder(profile, tmp_path)[0] == []  # already there: nothing to change
    with pytest.raises(ValueError, match="dataset TOML"):
        set_folder(Profile(main=main), tmp_path)


@pytest.mark.parametrize("attempt", range(3))  # it showed in 2 runs of 4: three tries make a pass mean something
async def test_system_gpu_header_lines_up_with_its_rows_on_first_load(attempt: int) -> None:
    """The GPU table's header must sit over its columns as soon as the rows show, not only after the next poll
    (Textual kept a header drawn while the table was empty at its label-wide columns)."""
    from tests.fake_engine import FakeEngine
    from tests.test_tui_snapshots import GPUS

    engine = FakeEngine()
    engine.gpus = GPUS
    app = DeckApp(start_mode="system", engine=engine)
    async with app.run_test(size=(80, 24)) as pilot:
        text = await wait_text(pilot, "H100")
        await pilot.pause(0.2)
        text = screen_text(app)
        header = next(line for line in text.splitlines() if "util" in line and "memory" in line)
        row = next(line for line in text.splitlines() if "H100" in line)
        assert header.index("util") == row.index("97%"), f"{header}\n{row}"
        assert header.index("memory") == row.index("61.0 GiB"), f"{header}\n{row}"

