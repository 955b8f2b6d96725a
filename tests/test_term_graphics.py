"""Kitty and sixel previews: the encoders decoded back, protocol detection, and the Datasets screen drawing them."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import random
import re
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from tests.test_tui_datasets import make_dataset, open_target
from tests.tui_helpers import screen_text, wait_until
from tui.widgets import term_graphics as tg

# --- sixel: a small decoder, independent of the encoder ---------------------------------------------------


def decode_sixel(seq: str) -> tuple[list[list[int | None]], dict[int, tuple[int, int, int]]]:
    """Pixels (palette register per pixel, None where nothing was drawn) and the registers' RGB percentages."""
    assert seq.startswith("\x1bP") and seq.endswith("\x1b\\")
    params, q, data = seq[2:-2].partition("q")
    assert q == "q" and params.split(";")[1] == "1"  # P2=1: unset pixels stay transparent
    raster = re.match(r'"(\d+);(\d+);(\d+);(\d+)', data)
    assert raster is not None and raster.group(1, 2) == ("1", "1")  # square pixels
    width, height = int(raster[3]), int(raster[4])
    pixels: list[list[int | None]] = [[None] * width for _ in range(height)]
    registers: dict[int, tuple[int, int, int]] = {}
    x = y = 0
    colour: int | None = None
    pos = raster.end()
    while pos < len(data):
        char = data[pos]
        if char == "#":
            m = re.compile(r"#(\d+)(?:;2;(\d+);(\d+);(\d+))?").match(data, pos)
            assert m is not None
            colour = int(m[1])
            if m[2] is not None:
                registers[colour] = (int(m[2]), int(m[3]), int(m[4]))
            pos = m.end()
            continue
        repeat = 1
        if char == "!":
            m = re.compile(r"!(\d+)(.)").match(data, pos)
            assert m is not None
            repeat, char, pos = int(m[1]), m[2], m.end()
        else:
            pos += 1
        if char == "$":
            x = 0
        elif char == "-":
            x, y = 0, y + 6
        else:
            bits = ord(char) - 63
            assert 0 <= bits < 64 and colour is not None, char
            for _ in range(repeat):
                for b in range(6):
                    if bits >> b & 1:
                        assert y + b < height and x < width, "drawn outside the declared raster"
                        pixels[y + b][x] = colour
                x += 1
    return pixels, registers


def photo_like(size: tuple[int, int], seed: int) -> Image.Image:
    """Gradients and blotches: many colours per band, runs of every length."""
    rng = random.Random(seed)
    w, h = size
    im = Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize(size),
            Image.linear_gradient("L").rotate(90).resize(size),
            Image.effect_noise(size, 60).convert("L"),
        ),
    )
    for _ in range(6):
        x, y = rng.randrange(w), rng.randrange(h)
        im.paste(
            tuple(rng.randrange(256) for _ in range(3)),
            (x, y, min(w, x + rng.randrange(1, 40)), min(h, y + 9)),
        )
    return im


@pytest.mark.parametrize(
    ("size", "colors", "seed"),
    [((37, 23), 128, 1), ((120, 61), 255, 2), ((64, 6), 16, 3), ((1, 1), 128, 4), ((200, 5), 2, 5)],
)
def test_sixel_decodes_back_to_the_quantised_image(size: tuple[int, int], colors: int, seed: int) -> None:
    quantised = tg.sixel_quantize(photo_like(size, seed), colors)
    pixels, registers = decode_sixel(tg.sixel_encode(quantised))
    w, h = size
    assert len(pixels) == h and all(len(row) == w for row in pixels)
    palette = quantised.getpalette() or []
    percent = [
        tuple(round(v * 100 / 255) for v in palette[3 * i : 3 * i + 3]) for i in range(len(palette) // 3)
    ]
    expected = [percent[i] for i in quantised.tobytes()]
    assert all(i is not None for row in pixels for i in row)  # every pixel drawn
    # ... in its own colour (the encoder numbers its registers its own way: compared by colour)
    assert [registers[i] for row in pixels for i in row if i is not None] == expected
    assert len(registers) <= colors


def test_sixel_run_length_encoding_and_size() -> None:
    flat = Image.new("RGB", (300, 12), (200, 30, 30))
    seq = tg.sixel_image(flat)
    assert "!300~" in seq  # a full band of one colour is one run
    assert len(seq) < 80
    # A colour that starts late in a band is positioned by a run of empty sixels, not 250 "?".
    late = Image.new("RGB", (300, 6), (0, 0, 0))
    late.paste((255, 255, 255), (250, 0, 260, 6))
    pixels, _ = decode_sixel(tg.sixel_image(late))
    assert "?" * 5 not in tg.sixel_image(late)
    assert {pixels[0][x] for x in range(250, 260)} != {pixels[0][0]}


# --- kitty -------------------------------------------------------------------------------------------------


def apc_chunks(seq: str) -> list[tuple[dict[str, str], str]]:
    chunks = re.findall(r"\x1b_G([^;\x1b]*);([^\x1b]*)\x1b\\", seq)
    assert "".join(f"\x1b_G{k};{p}\x1b\\" for k, p in chunks) == seq, "only graphics escapes"
    return [(dict(kv.split("=") for kv in keys.split(",")), payload) for keys, payload in chunks]


def test_kitty_transmission_chunks_keys_and_payload() -> None:
    im = photo_like((150, 90), 7)
    png = tg.png_bytes(im)
    seq = tg.kitty_transmit(png, 0xABCDEF, 15, 5)
    chunks = apc_chunks(seq)
    assert len(chunks) > 2  # large enough to need chunking
    first_keys = chunks[0][0]
    assert first_keys == {
        "a": "T", "U": "1", "f": "100", "t": "d", "i": str(0xABCDEF), "c": "15", "r": "5", "C": "1", "q": "2", "m": "1",
    }  # fmt: skip
    for keys, _ in chunks[1:]:
        assert set(keys) == {"m", "q"} and keys["q"] == "2"
    assert [k["m"] for k, _ in chunks] == ["1"] * (len(chunks) - 1) + ["0"]
    assert all(len(p) == tg.KITTY_CHUNK for _, p in chunks[:-1]) and 0 < len(chunks[-1][1]) <= tg.KITTY_CHUNK
    data = base64.standard_b64decode("".join(p for _, p in chunks))
    assert data == png
    assert Image.open(io.BytesIO(data)).convert("RGB").tobytes() == im.tobytes()


def test_kitty_raw_rgb_small_image_and_delete() -> None:
    im = Image.new("RGB", (3, 2), (1, 2, 3))
    chunks = apc_chunks(tg.kitty_transmit(im.tobytes(), 42, 1, 1, size=im.size))
    assert len(chunks) == 1
    keys, payload = chunks[0]
    assert (keys["f"], keys["s"], keys["v"], keys["m"]) == ("24", "3", "2", "0")
    assert base64.standard_b64decode(payload) == bytes([1, 2, 3] * 6)
    assert tg.kitty_delete(42) == "\x1b_Ga=d,d=I,i=42,q=2\x1b\\"


def test_tmux_passthrough_doubles_every_escape() -> None:
    inner = tg.kitty_transmit(b"x" * 5000, 9, 2, 2)
    wrapped = tg.kitty_transmit(b"x" * 5000, 9, 2, 2, tmux=True)
    pieces = re.findall(r"\x1bPtmux;(.*?)\x1b\\(?=\x1bPtmux;|$)", wrapped, flags=re.S)
    assert len(pieces) == 2  # one passthrough per chunk
    for piece in pieces:
        assert re.search(r"(?<!\x1b)\x1b(?!\x1b)", piece.replace("\x1b\x1b", "")) is None
    assert "".join(p.replace("\x1b\x1b", "\x1b") for p in pieces) == inner
    assert tg.tmux_passthrough("\x1b_Gq=2\x1b\\") == "\x1bPtmux;\x1b\x1b_Gq=2\x1b\x1b\\\x1b\\"


def test_placeholder_cells_carry_row_and_column_diacritics() -> None:
    assert len(tg.DIACRITICS) == tg.MAX_CELLS == 297
    # The spec's own examples: U+0305 is 0, U+030D is 1, U+030E is 2.
    assert tg.DIACRITICS[:3] == ("\u0305", "\u030d", "\u030e")
    assert len(set(tg.DIACRITICS)) == 297
    assert all(unicodedata.combining(d) == 230 and not unicodedata.decomposition(d) for d in tg.DIACRITICS)
    # Marks kitty leaves out because normalisation can fuse them with a base letter (A + U+0300 -> À).
    fused = [*range(0x300, 0x305), *range(0x306, 0x30D), 0x30F, 0x311, 0x313, 0x314, 0x342, 0x653, 0x654]
    assert not set(tg.DIACRITICS) & {chr(c) for c in fused}
    assert (ord(tg.DIACRITICS[100]), ord(tg.DIACRITICS[-1])) == (0x7EB, 0x1D244)
    assert hashlib.sha256("".join(tg.DIACRITICS).encode()).hexdigest()[:16] == "5e5fb029e3fe73fb"
    for row, cols in ((0, 1), (7, 12), (296, 297)):
        text = tg.placeholder_row(row, cols)
        cells = [text[i : i + 3] for i in range(0, len(text), 3)]
        assert len(cells) == cols
        for col, cell in enumerate(cells):
            assert cell[0] == tg.PLACEHOLDER
            assert tg.DIACRITICS.index(cell[1]) == row and tg.DIACRITICS.index(cell[2]) == col
    assert tg.id_rgb(0x123456) == (0x12, 0x34, 0x56)


# --- detection ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "protocol"),
    [
        ({"TERM": "xterm-kitty"}, tg.KITTY),
        ({"TERM": "xterm-256color", "KITTY_WINDOW_ID": "3"}, tg.KITTY),
        ({"TERM": "xterm-ghostty"}, tg.KITTY),
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "ghostty"}, tg.KITTY),
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "WezTerm"}, tg.SIXEL),
        ({"TERM": "foot"}, tg.SIXEL),
        ({"TERM": "foot-extra"}, tg.SIXEL),
        ({"TERM": "mlterm"}, tg.SIXEL),
        ({"TERM": "xterm-256color"}, tg.HALFBLOCK),
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "iTerm.app"}, tg.HALFBLOCK),
        ({"TERM": "linux"}, tg.HALFBLOCK),
        ({}, tg.HALFBLOCK),
        # A multiplexer hides what is outside: conservative, even in kitty.
        ({"TERM": "tmux-256color", "TMUX": "/tmp/tmux-0/default,1,0", "KITTY_WINDOW_ID": "1"}, tg.HALFBLOCK),
        ({"TERM": "screen-256color", "TERM_PROGRAM": "WezTerm"}, tg.HALFBLOCK),
        ({"TERM": "xterm-kitty", "STY": "1234.pts-0"}, tg.HALFBLOCK),
    ],
)
def test_detection_matrix(env: dict[str, str], protocol: str) -> None:
    choice = tg.choose(None, env)
    assert (choice.protocol, choice.forced) == (protocol, False), choice.reason
    assert tg.choose("auto", env).protocol == protocol


def test_forced_protocol_is_honoured_and_the_env_var_wins() -> None:
    tmux_env = {"TERM": "tmux-256color", "TMUX": "/tmp/x,1,0"}
    kitty = tg.choose("kitty", tmux_env)
    assert (kitty.protocol, kitty.forced, kitty.tmux) == (tg.KITTY, True, True)  # wrapped for passthrough
    assert tg.choose("sixel", {"TERM": "dumb"}).protocol == tg.SIXEL
    assert (
        tg.choose("kitty", {"DPDECK_IMAGE_PROTOCOL": "halfblock", "TERM": "xterm-kitty"}).protocol
        == tg.HALFBLOCK
    )
    assert tg.choose(None, {"DPDECK_IMAGE_PROTOCOL": " Sixel "}).protocol == tg.SIXEL
    # "auto" in the env var brings detection back over a forced setting.
    assert tg.choose("sixel", {"DPDECK_IMAGE_PROTOCOL": "auto", "TERM": "xterm-kitty"}).protocol == tg.KITTY
    bad = tg.choose("iterm", {"TERM": "xterm-kitty"})
    assert bad.protocol == tg.HALFBLOCK and "iterm" in bad.reason
    assert tg.choose(None, {"TERM": "xterm-kitty"}).tmux is False


def test_the_setting_takes_only_known_protocols() -> None:
    from statefiles import settings

    assert settings.get(tg.SETTING) == "auto"
    with pytest.raises(ValueError, match="auto, halfblock, kitty, sixel"):
        settings.set_value(tg.SETTING, "iterm")
    assert settings.set_value(tg.SETTING, "sixel") == "sixel" and settings.get(tg.SETTING) == "sixel"


def test_cell_pixels_from_the_tty_and_none_without() -> None:
    import fcntl
    import struct
    import termios

    main, other = os.openpty()
    try:
        fcntl.ioctl(other, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 1440, 1000))
        assert tg.cell_pixels(other) == (9, 20)
        fcntl.ioctl(other, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        assert tg.cell_pixels(other) is None  # many terminals report no pixels
    finally:
        os.close(main)
        os.close(other)
    with open(os.devnull, "wb") as devnull:
        assert tg.cell_pixels(devnull.fileno()) is None


def test_fit_and_cells() -> None:
    assert tg.fit_pixels((4096, 4096), (1140, 820)) == (820, 820)
    assert tg.fit_pixels((64, 32), (1000, 1000)) == (1000, 500)  # enlarged to fill the box
    assert tg.cells_for((820, 820), (10, 20)) == (82, 41)
    assert tg.cells_for((821, 801), (10, 20)) == (83, 41)


# --- the Datasets screen -----------------------------------------------------------------------------------


def capture_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Everything handed to the headless driver from app start on: the driver drops it, the test keeps it."""
    from textual.drivers.headless_driver import HeadlessDriver

    written: list[str] = []
    monkeypatch.setattr(HeadlessDriver, "write", lambda self, data: written.append(data))
    return written


@pytest.fixture
def deck_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # the deck opens the folder it starts in; targets are typed relative to it
    monkeypatch.delenv(tg.ENV_OVERRIDE, raising=False)
    return make_dataset(tmp_path)


async def test_kitty_forced_renders_placeholders_and_transmits_the_image(
    deck_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from statefiles import settings
    from tui.app import DeckApp
    from tui.widgets.image_preview import ImagePreview

    settings.set_value(tg.SETTING, "kitty")
    written = capture_writes(monkeypatch)
    app = DeckApp(start_mode="datasets")
    async with app.run_test(size=(100, 30)) as pilot:
        await open_target(pilot, app, deck_dir.parent)
        preview = app.screen.query_one("#ds-preview", ImagePreview)
        assert preview.protocol == tg.KITTY and preview.choice.forced
        await wait_until(pilot, lambda: preview.painted_path == deck_dir / "a_red.png", what="red preview")
        shown = preview._graphic
        assert shown is not None and shown.graphic is not None
        image_id = shown.graphic.image_id
        x, y, cols, rows = shown.graphic.box
        # The cells: rows of placeholders naming the image by colour, framed by background cells.
        cells = [
            (seg.text, seg.style)
            for strip in preview._strips
            for seg in strip
            if seg.text.startswith(tg.PLACEHOLDER)
        ]
        assert len(cells) == rows and 0 < cols <= preview.size.width and 0 < rows <= preview.size.height
        for row, (text, style) in enumerate(cells):
            assert text == tg.placeholder_row(row, cols)
            assert style is not None and style.color is not None
            assert style.color.triplet == tg.id_rgb(image_id)
        # The compositor keeps them intact: what the terminal gets is the same placeholder text.
        lines = screen_text(app).splitlines()
        region = preview.content_region
        assert lines[region.y + y][region.x + x : region.x + x + 3 * cols] == tg.placeholder_row(0, cols)
        # The image went out of band, once, under the id the cells name, and decodes to the red picture.
        sent = [w for w in written if w.startswith("\x1b_G")]
        assert len(sent) == 1
        chunks = apc_chunks(sent[0])
        assert chunks[0][0]["i"] == str(image_id) and chunks[0][0]["U"] == "1"
        assert (chunks[0][0]["c"], chunks[0][0]["r"]) == (str(cols), str(rows))
        data = base64.standard_b64decode("".join(p for _, p in chunks))
        if chunks[0][0]["f"] == "24":
            im = Image.frombytes("RGB", (int(chunks[0][0]["s"]), int(chunks[0][0]["v"])), data)
        else:
            im = Image.open(io.BytesIO(data)).convert("RGB")
        assert im.getpixel((im.width // 2, im.height // 2)) == (250, 10, 10)
        # The next image gets its own id; going back reuses the one the terminal still holds.
        await pilot.press("j")
        await wait_until(
            pilot, lambda: preview.painted_path == deck_dir / "b_green.jpg", what="green preview"
        )
        second = preview._graphic
        assert second is not None and second.graphic is not None and second.graphic.image_id != image_id
        await pilot.press("k")
        await wait_until(pilot, lambda: preview.painted_path == deck_dir / "a_red.png", what="red again")
        assert len([w for w in written if w.startswith("\x1b_G")]) == 2
    # Quitting deletes the images from the terminal's memory.
    deleted = {m for w in written for m in re.findall(r"\x1b_Ga=d,d=I,i=(\d+),q=2", w)}
    assert {str(image_id), str(second.graphic.image_id)} <= deleted


_TOKEN = re.compile(r"\x1bP.*?\x1b\\|\x1b\[([0-9;?]*)([A-Za-z])|\x1b([78])|([^\x1b]+)", re.S)


def _sixels_in(output: str) -> list[tuple[int, int, str]]:
    """(row, column) where the terminal draws each sixel in `output` (1-based), following the cursor as a
    terminal does: absolute moves, cursor-forward, save/restore, and text advancing it by its cell width."""
    from rich.cells import cell_len

    row = col = 1
    saved = (1, 1)
    found = []
    for m in _TOKEN.finditer(output):
        params, final, save, text = m.group(1, 2, 3, 4)
        if m[0].startswith("\x1bP"):
            found.append((row, col, m[0]))
        elif final == "H":
            r, _, c = (params or "1;1").partition(";")
            row, col = int(r or 1), int(c or 1)
        elif final == "C":
            col += int(params or 1)
        elif save == "7":
            saved = (row, col)
        elif save == "8":
            row, col = saved
        elif text:
            col += cell_len(text)
    return found


async def test_sixel_forced_is_drawn_row_by_row_inside_the_frames_textual_writes(
    deck_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tui.app import DeckApp
    from tui.widgets.image_preview import ImagePreview

    monkeypatch.setenv(tg.ENV_OVERRIDE, "sixel")
    written = capture_writes(monkeypatch)
    app = DeckApp(start_mode="datasets")
    async with app.run_test(size=(100, 30)) as pilot:
        await open_target(pilot, app, deck_dir.parent)
        preview = app.screen.query_one("#ds-preview", ImagePreview)
        assert preview.protocol == tg.SIXEL
        await wait_until(pilot, lambda: preview.painted_path == deck_dir / "a_red.png", what="red preview")
        await pilot.pause(0.2)
        shown = preview._graphic
        assert shown is not None and shown.graphic is not None
        x, y, cols, rows = shown.graphic.box
        region = preview.content_region
        cell_w, cell_h = shown.key[5].cell
        # A whole frame as Textual renders it for the terminal (headless Pilot writes no frames): one sixel per
        # cell row of the box, each at its row's first cell (1-based), together the whole image.
        frame = app.screen._compositor.render_update(full=True).render_segments(app.console)
        drawn = _sixels_in(frame)
        assert [(r, c) for r, c, _ in drawn] == [
            (region.y + y + 1 + i, region.x + x + 1) for i in range(rows)
        ]
        height = 0
        for _r, _c, seq in drawn:
            pixels, registers = decode_sixel(seq)
            assert len(pixels) <= cell_h and len(pixels[0]) <= cols * cell_w
            assert set(registers.values()) == {(98, 4, 4)}  # the flat red image: one colour
            height += len(pixels)
        assert (rows - 1) * cell_h < height <= rows * cell_h
        # Each row's strip carries its own sixel, so a frame that rewrites some rows redraws exactly those;
        # rows outside the box carry none.
        for row in range(preview.size.height):
            in_strip = _sixels_in("".join(seg.text for seg in preview.render_line(row)))
            assert len(in_strip) == (1 if y <= row < y + rows else 0)
        # What Textual does to a row's strip when it composes frames keeps the escape whole or drops it, never
        # cuts it: divided at other widgets' edges, cropped for a partial repaint, its segments hashed (cached).
        strip = preview.render_line(y)
        width = strip.cell_length
        for cuts in ([width], [3, width], [1, 7, 20, width]):
            parts = ["".join(seg.text for seg in part) for part in strip.divide(cuts)]
            assert sum(len(_sixels_in(p)) for p in parts) == 1 and sum(p.count("\x1bP") for p in parts) == 1
        for start, end in ((0, width), (0, 5), (2, width - 1), (0, 0)):
            text = "".join(seg.text for seg in strip.crop(start, end))
            assert text.count("\x1bP") == len(_sixels_in(text)) <= 1
        assert all(hash(seg) is not None for seg in strip)
        # An overlay in front of part of the box (a toast, a menu): no row carries its sixel while it is there
        # (Textual would cut the strips at the overlay's edges, escape and all), and every row again once it goes.
        from textual.widgets import Static

        cover = Static("COVER", id="cover")
        cover.styles.overlay = "screen"
        cover.styles.position = "absolute"
        cover.styles.offset = (region.x + x + 2, region.y + y + 1)
        cover.styles.width, cover.styles.height = 10, 2
        await app.screen.mount(cover)
        await wait_until(pilot, lambda: preview._covered, what="the overlay seen")
        frame = app.screen._compositor.render_update(full=True).render_segments(app.console)
        assert "COVER" in frame and "\x1bP" not in frame
        await cover.remove()
        await wait_until(pilot, lambda: not preview._covered, what="the overlay gone")
        frame = app.screen._compositor.render_update(full=True).render_segments(app.console)
        assert len(_sixels_in(frame)) == rows == frame.count("\x1bP")
        assert not any("\x1bP" in w for w in written)  # nothing out of band: sixels go with the frames


async def test_halfblock_forced_renders_half_blocks(deck_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tui.app import DeckApp
    from tui.widgets.image_preview import ImagePreview

    monkeypatch.setenv(tg.ENV_OVERRIDE, "halfblock")
    monkeypatch.setenv("TERM", "xterm-kitty")  # would be kitty if detection ran
    written = capture_writes(monkeypatch)
    app = DeckApp(start_mode="datasets")
    async with app.run_test(size=(100, 30)) as pilot:
        await open_target(pilot, app, deck_dir.parent)
        preview = app.screen.query_one("#ds-preview", ImagePreview)
        await wait_until(pilot, lambda: preview.painted_path == deck_dir / "a_red.png", what="red preview")
        assert preview.protocol == tg.HALFBLOCK
        text = "".join(s.text for s in preview._strips)
        assert "▀" in text and tg.PLACEHOLDER not in text
        assert not any(w.startswith(("\x1b_G", "\x1b7")) for w in written)
