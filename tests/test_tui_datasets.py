"""The Datasets screen driven by keys on real files: open, move, preview, edit + save, filters, batch op with
its dry-run diff, undo (byte for byte), buckets from the trainer's own plan, and the 80x24 layout."""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image
from textual.pilot import Pilot
from textual.widgets import DataTable, OptionList, TextArea

from engine.datasets.buckets import plan_buckets
from profiles.document import TomlFile
from profiles.templates import default_template, load_template
from tests.tui_helpers import screen_text, send_burst, wait_note, wait_text, wait_until
from tui.app import DeckApp
from tui.screens.datasets.screen import DatasetsScreen
from tui.widgets.image_preview import ImagePreview

# name -> (size, colour, caption bytes or None for no caption file)
IMAGES: dict[str, tuple[tuple[int, int], tuple[int, int, int], bytes | None]] = {
    "a_red.png": ((512, 512), (250, 10, 10), b"red, square\n"),
    "b_green.jpg": ((768, 512), (10, 250, 10), b"green, wide, green\n"),
    "c_blue.png": ((512, 768), (10, 10, 250), None),
    "d_white.png": ((640, 480), (250, 250, 250), b""),
    "e_grey.png": ((480, 640), (120, 120, 120), b"grey,  tall"),
}


def picture(size: tuple[int, int], colour: tuple[int, int, int], seed: int) -> Image.Image:
    """The colour with a coarse random pattern of darker blocks, so no two pictures are near duplicates."""
    rng = random.Random(seed)
    blocks = Image.new("RGB", (8, 8))
    blocks.putdata([tuple(c * rng.choice((1, 2)) // 2 for c in colour) for _ in range(64)])
    return blocks.resize(size, Image.Resampling.NEAREST)


def make_dataset(root: Path) -> Path:
    folder = root / "e6ai" / "1_e6ai"
    folder.mkdir(parents=True)
    for seed, (name, (size, colour, caption)) in enumerate(IMAGES.items()):
        # a_red stays one flat colour: the preview test checks the cells carry exactly that colour.
        image = Image.new("RGB", size, colour) if seed == 0 else picture(size, colour, seed)
        image.save(folder / name)
        if caption is not None:
            (folder / name).with_suffix(".txt").write_bytes(caption)
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.txt"))}


def screen(app: DeckApp) -> DatasetsScreen:
    assert isinstance(app.screen, DatasetsScreen), app.screen
    return app.screen


def table(app: DeckApp) -> DataTable[object]:
    return app.screen.query_one("#ds-files", DataTable)


def highlighted(app: DeckApp) -> str:
    t = table(app)
    return Path(str(t.coordinate_to_cell_key(t.cursor_coordinate).row_key.value)).name


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Paths are typed relative to the folder the deck starts in: short to type, and `o` resolves them.
    monkeypatch.chdir(tmp_path)


async def open_target(pilot: Pilot[None], app: DeckApp, target: Path, rows: int = len(IMAGES)) -> None:
    await wait_until(pilot, lambda: isinstance(app.screen, DatasetsScreen), what="datasets screen")
    await wait_until(pilot, lambda: screen(app).source is not None, what="first dataset open")
    # Letters typed straight after `o` must all land in the input line.
    send_burst(app, "o" + str(target.relative_to(Path.cwd())))
    await pilot.press("enter")

    def opened() -> bool:
        source = screen(app).source
        return source is not None and source.target == target and table(app).row_count == rows

    await wait_until(pilot, opened, what=f"{target} open with {rows} rows")


async def test_open_move_preview_edit_save_and_undo(tmp_path: Path) -> None:
    folder = make_dataset(tmp_path)
    before = snapshot(folder)
    app = DeckApp(start_mode="datasets")
    async with app.run_test(size=(100, 30)) as pilot:
        await open_target(pilot, app, folder.parent)  # the parent: its image sub-folder is found and listed
        text = await wait_text(pilot, "1_e6ai")
        assert "✗" in text and "∅" in text  # missing and empty captions are marked
        preview = app.screen.query_one("#ds-preview", ImagePreview)
        assert highlighted(app) == "a_red.png"
        await wait_until(pilot, lambda: preview.painted_path == folder / "a_red.png", what="red preview")
        strip_text = "".join(s.text for s in preview._strips)
        assert "▀" in strip_text
        # The cells carry the image's own colour (quantised to 64 levels per channel).
        colours = {seg.style.color.triplet for s in preview._strips for seg in s if seg.text.startswith("▀")}
        assert colours == {(250 & 0xFC | 2, 10 & 0xFC | 2, 10 & 0xFC | 2)}
        await pilot.press("j")
        assert highlighted(app) == "b_green.jpg"
        await wait_until(pilot, lambda: preview.painted_path == folder / "b_green.jpg", what="green preview")
        await pilot.press("k", "G")
        assert highlighted(app) == "e_grey.png"
        await pilot.press("g")
        # Edit: Enter opens the editor; the edit survives moving away and back (kept as a draft, marked *).
        await pilot.press("enter")
        editor = app.screen.query_one("#ds-caption", TextArea)
        await wait_until(pilot, lambda: editor.has_focus, what="editor focus")
        assert editor.text == "red, square"
        await pilot.press("end", *", solo")
        await pilot.press("ctrl+down")
        await wait_until(pilot, lambda: editor.text == "green, wide, green", what="next caption")
        assert editor.has_focus and screen(app).dirty
        assert (folder / "a_red.txt").read_bytes() == before["a_red.txt"]  # nothing written yet
        await wait_text(pilot, "1 unsaved")
        await pilot.press("ctrl+q")  # quitting with an unsaved caption asks first
        await wait_text(pilot, "Unsaved changes in: Datasets (1 unsaved caption(s))")
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, DatasetsScreen), what="quit declined")
        await pilot.press("ctrl+up")
        await wait_until(pilot, lambda: editor.text == "red, square, solo", what="draft kept")
        await pilot.press("ctrl+s")
        await wait_note(pilot, "saved 1 caption")
        assert (folder / "a_red.txt").read_bytes() == b"red, square, solo\n"  # the trailing newline kept
        assert not screen(app).dirty
        # Undo lists the op; Enter picks it, y confirms; the file gets its exact old bytes back.
        await pilot.press("escape", "z")
        await wait_text(pilot, "edit caption of a_red.png")
        await pilot.press("enter")
        await wait_text(pilot, "old bytes back")
        await pilot.press("y")
        await wait_note(pilot, "undone")
        assert snapshot(folder) == before
        await wait_until(
            pilot, lambda: editor.text == "red, square", what="editor shows the restored caption"
        )
        # A key typed just before a move: its Changed message can be handled after the next image is shown. The
        # typed text still becomes the draft of the image it was typed on, and the next image gets none.
        editor.insert("!")
        typed = editor.text
        screen(app)._show(screen(app).shown[1])
        await pilot.pause()
        assert screen(app).drafts == {folder / "a_red.png": typed}


async def test_missing_filter_fix_and_add_trigger_with_diff(tmp_path: Path) -> None:
    folder = make_dataset(tmp_path)
    before = snapshot(folder)
    app = DeckApp(start_mode="datasets")
    async with app.run_test(size=(100, 30)) as pilot:
        await open_target(pilot, app, folder)
        await pilot.press("m")
        await wait_until(pilot, lambda: table(app).row_count == 2, what="missing filter")
        assert {e.path.name for e in screen(app).shown} == {"c_blue.png", "d_white.png"}
        # Fix the missing one right here: the caption file is created.
        assert highlighted(app) == "c_blue.png"
        send_burst(app, "eblue, tall")
        await pilot.press("ctrl+s")
        await wait_note(pilot, "saved 1 caption")
        assert (folder / "c_blue.txt").read_text() == "blue, tall"
        await wait_until(pilot, lambda: table(app).row_count == 1, what="fixed image leaves the filter")
        await pilot.press("escape", "backspace")
        await wait_until(pilot, lambda: table(app).row_count == len(IMAGES), what="filters cleared")
        after_fix = snapshot(folder)
        # Batch: add a trigger word to the folder; the dry run shows the diff before anything is written.
        await pilot.press("A")
        await wait_text(pilot, "Batch caption operation")
        await pilot.press("enter")  # the first op: add trigger
        await wait_text(pilot, "Batch: add trigger")
        await pilot.press(*"e6ai", "enter")
        text = await wait_text(pilot, "Dry run: add trigger 'e6ai'")
        assert "+e6ai, red, square" in text
        assert "5 of 5 caption(s) would change" in text  # the empty caption gets the trigger too
        assert snapshot(folder) == after_fix
        await pilot.press("y")
        note = await wait_note(pilot, "changed 5 caption(s)")
        assert (folder / "a_red.txt").read_bytes() == b"e6ai, red, square\n"
        assert (folder / "d_white.txt").read_bytes() == b"e6ai"
        op_id = note.split("op ")[1].split(" ")[0]
        await pilot.press("z")
        await wait_text(pilot, op_id)
        await pilot.press("enter", "y")  # the newest op is first
        await wait_note(pilot, f"undone {op_id}")
        assert snapshot(folder) == after_fix
        assert snapshot(folder) != before  # the caption saved earlier is its own op, still there
        # The folder was listed again after each op: its label shows its counts once, not once per listing.
        dirs = app.screen.query_one("#ds-dirs", OptionList)
        label = str(dirs.get_option_at_index(0).prompt)
        assert re.fullmatch(rf"{re.escape(folder.name)} {len(IMAGES)}( ✗\d+)?", label), label


async def test_bad_regex_and_bad_path_refused_tag_filter_and_stats(tmp_path: Path) -> None:
    folder = make_dataset(tmp_path)
    before = snapshot(folder)
    app = DeckApp(start_mode="datasets")
    async with app.run_test(size=(100, 30)) as pilot:
        await open_target(pilot, app, folder)
        await pilot.press("A")
        await wait_text(pilot, "Batch caption operation")
        await pilot.press("j", "j", "enter")  # remove a tag
        await wait_text(pilot, "Batch: remove a tag")
        await pilot.press(*"(green", "tab", "space", "shift+tab", "enter")
        text = await wait_text(pilot, "bad regex")
        assert "'(green'" in text and "Batch: remove a tag" in text  # the dialog stays for fixing
        await pilot.press("home", "delete", "enter")
        text = await wait_text(pilot, "Dry run: remove tag 'green' (regex)")
        assert "1 of 5 caption(s) would change" in text
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, DatasetsScreen), what="dialog closed")
        assert snapshot(folder) == before
        # A path that does not exist is refused in place, naming it.
        await pilot.press("o", *"nope", "enter")
        await wait_text(pilot, "nope: not found")
        await pilot.press("escape")
        # Tag filter as you type (letters straight after `/` land in the line); Enter keeps it.
        send_burst(app, "/gre")
        await pilot.press("enter")
        await wait_until(pilot, lambda: table(app).row_count == 2, what="tag filter")
        assert {e.path.name for e in screen(app).shown} == {"b_green.jpg", "e_grey.png"}
        await wait_until(
            pilot, lambda: table(app).has_focus, what="Enter keeps the filter and goes back to the list"
        )
        assert screen(app).filters.tag == "gre"
        # Statistics of the folder: caption problems by name, top tags.
        await pilot.press("i")
        text = await wait_text(pilot, "top tags")
        assert "missing: c_blue.png" in text and "empty: d_white.png" in text and "green" in text


async def test_bucket_panel_and_filter_match_the_trainer_plan(tmp_path: Path) -> None:
    folder = make_dataset(tmp_path)
    toml = tmp_path / "dataset.toml"
    toml.write_text(
        "resolutions = [256]\nenable_ar_bucket = true\nmin_ar = 0.5\nmax_ar = 2.0\nnum_ar_buckets = 5\n"
        f"[[directory]]\npath = '{folder.relative_to(tmp_path)}'\nnum_repeats = 8\n"
    )
    template = load_template(default_template().name).main
    batch = int(template.get("micro_batch_size_per_gpu")) * int(template.get("gradient_accumulation_steps"))
    plan = plan_buckets(TomlFile.load(toml).data(), tmp_path, batch)
    assert plan.steps_per_epoch > 0
    app = DeckApp(start_mode="datasets")
    async with app.run_test(size=(120, 40)) as pilot:
        await open_target(pilot, app, toml)
        await pilot.press("b")
        text = await wait_text(pilot, "steps per epoch")
        assert f"{plan.steps_per_epoch} steps per epoch" in text
        assert f"global batch {batch}" in text
        for b in plan.buckets:
            assert f"{b.width}×{b.height}" in text
        # c_blue has no caption: the trainer skips it, and the panel says so; d_white's empty caption trains,
        # as diffusion-pipe (8f83dbf) trains an empty .txt
        assert plan.skipped_no_caption == 1 and "1 image(s) without a caption" in text
        # Bucket filter: only the images of the chosen aspect bucket.
        await pilot.press("escape", "f")
        await wait_text(pilot, "Show only the images of bucket")
        await pilot.press("enter")  # the narrowest ar: the two portrait images
        await wait_until(pilot, lambda: screen(app).filters.bucket is not None, what="bucket filter")
        assert {e.path.name for e in screen(app).shown} == {"c_blue.png", "e_grey.png"}


async def test_duplicates_filter_80x24_and_reopen_last(tmp_path: Path) -> None:
    folder = make_dataset(tmp_path)
    shutil.copy(folder / "a_red.png", folder / "f_copy.png")
    app = DeckApp(start_mode="datasets")
    async with app.run_test(size=(80, 24)) as pilot:
        await open_target(pilot, app, folder, rows=len(IMAGES) + 1)
        await pilot.press("asterisk")
        await wait_until(pilot, lambda: table(app).row_count == 2, what="duplicates")
        assert {e.path.name for e in screen(app).shown} == {"a_red.png", "f_copy.png"}
        await wait_until(
            pilot, lambda: app.screen.query_one("#ds-preview", ImagePreview).painted_path is not None
        )
        text = screen_text(app)
        lines = text.splitlines()
        assert len(lines) == 24 and all(len(line) <= 80 for line in lines)
        assert "=" in text and "a_red.png" in text and "dpdeck · Datasets" in text
        # Resizing keeps the state (filter, cursor) and the preview redraws for the new size.
        await pilot.press("j")
        await pilot.resize_terminal(140, 45)
        await wait_until(pilot, lambda: highlighted(app) == "f_copy.png" and screen(app).filters.dupes)
    # A new deck comes back to the same dataset.
    app = DeckApp(start_mode="datasets")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(
            pilot, lambda: isinstance(app.screen, DatasetsScreen) and screen(app).folder == folder
        )
        await wait_until(pilot, lambda: table(app).row_count == len(IMAGES) + 1, what="reopened rows")


async def test_open_a_stored_profiles_dataset_and_its_batch(tmp_path: Path) -> None:
    from profiles import store

    folder = make_dataset(tmp_path)
    files = store.files_from_profile(load_template(default_template().name))
    main = TomlFile.from_text(files["main.toml"])
    main.set("micro_batch_size_per_gpu", 1)
    main.set("gradient_accumulation_steps", 2)
    files["main.toml"] = main.dumps()
    files["dataset.toml"] = f"resolutions = [256]\n[[directory]]\npath = '{folder}'\nnum_repeats = 3\n"
    store.save("mine", files, create=True)
    plan = plan_buckets(TomlFile.from_text(files["dataset.toml"]).data(), tmp_path, 2)
    app = DeckApp(start_mode="datasets")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, DatasetsScreen), what="datasets screen")
        await pilot.press("O")
        await wait_text(pilot, "mine")
        await pilot.press("enter")
        await wait_until(
            pilot, lambda: screen(app).source is not None and screen(app).source.profile == "mine"
        )
        await wait_until(pilot, lambda: table(app).row_count == len(IMAGES), what="profile rows")
        await pilot.press("b")
        text = await wait_text(pilot, "steps per epoch")
        assert f"{plan.steps_per_epoch} steps per epoch" in text and "from profile mine" in text, text
        assert "global batch 2 = micro 1 × accumulation 2" in text


async def test_bucket_panel_reads_a_per_size_micro_batch_as_train_py_does(tmp_path: Path) -> None:
    """micro_batch_size_per_gpu = [[size, batch], ...] (diffusion-pipe): the panel used to refuse it."""
    from engine.datasets.buckets import global_batches
    from profiles import store

    folder = make_dataset(tmp_path)
    files = store.files_from_profile(load_template(default_template().name))
    main = TomlFile.from_text(files["main.toml"])
    main.set("micro_batch_size_per_gpu", [[256, 1], [512, 4]])
    files["main.toml"] = main.dumps()
    files["dataset.toml"] = f"resolutions = [256]\n[[directory]]\npath = '{folder}'\nnum_repeats = 3\n"
    store.save("sized", files, create=True)
    batches = global_batches(TomlFile.from_text(files["main.toml"]).data())
    plan = plan_buckets(TomlFile.from_text(files["dataset.toml"]).data(), tmp_path, batches.by_size)
    app = DeckApp(start_mode="datasets")
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, DatasetsScreen), what="datasets screen")
        await pilot.press("O")
        await wait_text(pilot, "sized")
        await pilot.press("enter")
        await wait_until(
            pilot, lambda: screen(app).source is not None and screen(app).source.profile == "sized"
        )
        await wait_until(pilot, lambda: table(app).row_count == len(IMAGES), what="profile rows")
        await pilot.press("b")
        text = await wait_text(pilot, "steps per epoch")
        assert f"{plan.steps_per_epoch} steps per epoch" in text, text
        assert "global batch by size {256: 1, 512: 4}" in text, text


def test_half_block_cells_fit_centre_rotate_and_flatten(tmp_path: Path) -> None:
    from tui.widgets.image_preview import BACKGROUND, render_cells

    def cell_colours(strips: list) -> list[list[tuple[object, object] | None]]:
        rows = []
        for strip in strips:
            row: list[tuple[object, object] | None] = []
            for seg in strip:
                pair = (seg.style.color.triplet, seg.style.bgcolor.triplet) if seg.text[0] == "▀" else None
                row.extend([pair] * len(seg.text))
            rows.append(row)
        return rows

    # A 2:1 landscape picture (top half red, bottom half blue) in 20x10 cells: 20x10 pixels = 5 cell rows,
    # centred vertically; every cell row is exactly 20 wide.
    wide = Image.new("RGB", (200, 100), (250, 2, 2))
    wide.paste((2, 2, 250), (0, 50, 200, 100))
    wide.save(tmp_path / "wide.png")
    strips = render_cells(tmp_path / "wide.png", 20, 10)
    assert len(strips) == 10 and all(s.cell_length == 20 for s in strips)
    cells = cell_colours(strips)
    drawn = [i for i, row in enumerate(cells) if any(row)]
    assert drawn == [2, 3, 4, 5, 6]  # (10 - 5) // 2 blank rows above
    red, blue = (250 & 0xFC | 2, 2, 2), (2, 2, 250 & 0xFC | 2)
    assert cells[2][0] == (red, red) and cells[6][19] == (blue, blue)
    # EXIF orientation 6 (stored landscape, shown portrait) fits as portrait: taller than wide.
    exif = Image.Exif()
    exif[0x0112] = 6
    wide.save(tmp_path / "rotated.jpg", exif=exif)
    cells = cell_colours(render_cells(tmp_path / "rotated.jpg", 40, 10))
    widths = {sum(1 for c in row if c) for row in cells if any(row)}
    assert widths == {10} and sum(1 for row in cells if any(row)) == 10
    # Transparent pixels show the background colour, not black.
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    cells = cell_colours(render_cells(tmp_path / "clear.png", 10, 5))
    back = tuple(v & 0xFC | 2 for v in BACKGROUND)
    assert {c for row in cells for c in row if c} == {(back, back)}
    # A broken file says why instead of raising.
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    from tui.widgets.image_preview import PreviewError

    with pytest.raises(PreviewError, match="broken.jpg"):
        render_cells(tmp_path / "broken.jpg", 10, 5)


async def test_big_folder_fills_in_chunks_while_keys_work_and_tag_filter(tmp_path: Path) -> None:
    # 2,500 images: more rows than the first fill, so the rest arrive in chunks between events. Keys work before
    # the table is full, G reaches the real last image at once, and a tag filter refill replaces a pending one.
    from tui.screens.datasets import file_list as ds

    folder = tmp_path / "big"
    folder.mkdir()
    png = tmp_path / "tiny.png"
    Image.new("RGB", (4, 4), (90, 90, 90)).save(png)
    data = png.read_bytes()
    n = 2500
    assert n > ds.FILL_FIRST + 2 * ds.FILL_CHUNK
    for i in range(n):
        (folder / f"{i:05d}.png").write_bytes(data)
        (folder / f"{i:05d}.txt").write_text(f"cat, tag{i % 50}" + (", rare" if i % 500 == 7 else ""))
    app = DeckApp(start_mode="datasets")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: screen(app).source is not None, what="first dataset open")
        send_burst(app, "o" + str(folder.relative_to(Path.cwd())))
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(screen(app).shown) == n, what="big folder listed")
        screen(app)._fill()  # a refill, as any filter change does: the first rows go in at once, no more
        assert table(app).row_count == ds.FILL_FIRST
        # A refill that lands after a cursor move but before its RowHighlighted message is handled (a late
        # DirListed under load) keeps the row the table shows, not the one the preview last heard of.
        table(app).action_cursor_down()
        screen(app)._fill()
        assert highlighted(app) == "00001.png"
        await pilot.press("j", "j")
        assert highlighted(app) == "00003.png"
        await pilot.press("G")
        assert highlighted(app) == f"{n - 1:05d}.png" and table(app).row_count == n
        await wait_until(pilot, lambda: screen(app).filled == n, what="fill finished")
        # tag filter: "rare" is in 5 captions; a filter without a comma matches inside one tag only
        send_burst(app, "/rare")
        await pilot.press("enter")
        await wait_until(pilot, lambda: table(app).row_count == 5, what="5 rare images")
        assert [e.path.name for e in screen(app).shown] == [f"{i:05d}.png" for i in range(7, n, 500)]
        await pilot.press("backspace")
        await wait_until(pilot, lambda: table(app).row_count == n, what="filter cleared, every row back")


async def test_workers_talk_to_the_screen_in_typed_messages(tmp_path: Path) -> None:
    # Every message the app processes passes the hook: opening a folder must arrive as Opened then DirListed
    # for that folder, and the statistics scan (`s`) as StatsPanel messages carrying the report.
    from tui.screens.datasets import messages as msg

    folder = make_dataset(tmp_path)
    seen: list[msg.DatasetsMessage] = []

    def hook(message: object) -> None:
        if isinstance(message, msg.DatasetsMessage):
            seen.append(message)

    app = DeckApp(start_mode="datasets")
    async with app.run_test(size=(100, 30), message_hook=hook) as pilot:
        await open_target(pilot, app, folder)
        at = next(i for i, m in enumerate(seen) if isinstance(m, msg.Opened) and m.source.target == folder)
        listed = [m for m in seen[at:] if isinstance(m, msg.DirListed) and m.folder == folder]
        assert listed and sorted(e.path.name for e in listed[-1].entries) == sorted(IMAGES)
        assert len({id(m) for m in seen}) == len(seen)  # each handled once, by the screen: none bubbles on
        await pilot.press("i")

        def stats_posted() -> bool:
            bodies = [m.body for m in seen if isinstance(m, msg.StatsPanel)]
            return len(bodies) >= 2 and not isinstance(bodies[-1], str)

        await wait_until(pilot, stats_posted, what="the scan's report as a StatsPanel message")
        first = next(m for m in seen if isinstance(m, msg.StatsPanel))
        assert isinstance(first.body, str) and first.body.startswith("scanning")
