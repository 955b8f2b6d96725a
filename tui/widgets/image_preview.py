"""Image preview in any terminal: kitty graphics or sixel where the terminal draws them, half blocks elsewhere.

Half-block cells (`▀`, foreground = top pixel, background = bottom pixel) work everywhere Textual works, tmux
over ssh included, and stay the fallback (dpdeck's own: it measures faster than textual-image's half-cell
renderable, docs/dependencies.md). Kitty graphics show the image through Unicode placeholder cells (plain text
to Textual); sixel is one image per cell row, carried in that row's strip as a zero-width control segment, so
Textual redraws exactly the rows it repaints. Which one is used: tui.widgets.term_graphics.choose
(docs/datasets.md, "Image preview").

Decoding and encoding run on one background thread with "latest request wins": holding `j` over a folder of
4096x4096 JPEGs decodes only the image the cursor stops on, never a backlog. JPEGs decode at 1/2..1/8 scale
(`Image.draft`), a small LRU keeps the last previews, and the neighbours are prefetched into it.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps
from rich.color import Color, ColorTriplet, ColorType
from rich.segment import ControlType, Segment
from rich.style import Style
from textual.errors import NoWidget
from textual.geometry import Region
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

from tui.widgets import term_graphics as tg

HALF = "▀"
CACHE_SIZE = 16
# Kitty and sixel previews carry their escape (raw RGB for a 200x60 screen is ~10 MB of base64): the cache
# also stops at this many bytes of them.
CACHE_BYTES = 64 * 2**20
BACKGROUND = (30, 30, 30)  # behind transparent pixels, and around the image
ORIENTATION_TAG = 0x0112
# EXIF orientations that rotate by 90 degrees: the stored width is the shown height.
ROTATED = {5, 6, 7, 8}
# 64 levels per channel: invisible at cell resolution, but 4x fewer distinct colours (Rich Color objects are
# the slow part of building a big preview). The +2 keeps each level at the middle of its 4-value band.
QUANTIZE = [(v & 0xFC) | 0x02 for v in range(256)] * 3

KITTY_KEEP = 8  # kitty images left in the terminal: the one shown and the last few, for going back


@dataclass(frozen=True)
class Mode:
    """How previews are drawn; part of the cache key, so a changed protocol or font size renders anew."""

    protocol: str = tg.HALFBLOCK
    cell: tuple[int, int] = tg.DEFAULT_CELL  # pixels per cell, to size kitty and sixel images
    tmux: bool = False  # kitty escapes go through tmux passthrough
    # kitty: raw RGB for a local terminal (no encode time), PNG over ssh (fewer bytes)
    raw: bool = False


HALFBLOCK_MODE = Mode()
Key = tuple[str, int, int, int, int, Mode]  # path, mtime_ns, file size, cols, rows, mode


class PreviewError(Exception):
    """The file cannot be previewed; the message says why (shown in the pane)."""


def decode_for_cells(path: Path, cols: int, rows: int) -> Image.Image:
    """The image as RGB fitted (aspect kept) into cols x 2*rows pixels: one pixel per half cell."""
    return decode_fitted(path, (max(1, cols), max(1, rows * 2)), upscale=False)


def decode_fitted(path: Path, box: tuple[int, int], *, upscale: bool) -> Image.Image:
    """The image as RGB fitted (aspect kept) into `box` pixels; `upscale` also enlarges small images."""
    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(ORIENTATION_TAG, 1)
            rotated = orientation in ROTATED
            # Fit against the size as shown: a portrait phone photo is stored landscape + rotate tag.
            fit = (box[1], box[0]) if rotated else box
            if upscale:
                fit = tg.fit_pixels(im.size, fit)
            if im.format == "JPEG":
                # libjpeg scales by 1/2..1/8 while decoding: a 4096^2 JPEG decodes as 512^2 for a small box.
                im.draft("RGB", fit)
            if upscale:
                im = im.resize(fit, Image.Resampling.BILINEAR, reducing_gap=2.0)
            else:
                im.thumbnail(fit, Image.Resampling.BILINEAR, reducing_gap=2.0)
            shown = ImageOps.exif_transpose(im) if orientation != 1 else im
            return _flatten(shown)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise PreviewError(f"cannot preview {path.name}: {exc.__class__.__name__}: {exc}") from exc


def _flatten(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        under = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(under, rgba).convert("RGB")
    return im.convert("RGB")


class _Styles:
    """Style objects per (top, bottom) colour pair: building Rich Styles is the slow part of a big preview.

    Keys are raw RGB bytes straight out of `Image.tobytes()`: no tuples or string formatting per cell.
    """

    def __init__(self) -> None:
        self._colors: dict[bytes, Color] = {}
        self._styles: dict[bytes, Style] = {}

    def color(self, rgb: bytes) -> Color:
        c = self._colors.get(rgb)
        if c is None:
            # Direct construction: Color.from_rgb costs 4x more, and a 200x60 preview needs ~15k colours.
            c = self._colors[rgb] = Color("#" + rgb.hex(), ColorType.TRUECOLOR, None, ColorTriplet(*rgb))
        return c

    def style(self, pair: bytes) -> Style:
        s = self._styles.get(pair)
        if s is None:
            s = self._styles[pair] = Style.from_color(self.color(pair[:3]), self.color(pair[3:]))
        return s


def cells_to_strips(im: Image.Image, cols: int, rows: int) -> list[Strip]:
    """`rows` strips of exactly `cols` cells with the image centred; equal neighbouring cells share a segment."""
    w, h = im.size
    data = im.point(QUANTIZE).tobytes()
    styles = _Styles()
    back = bytes(BACKGROUND)
    blank_style = styles.style(back + back)
    blank_line = Strip([Segment(" " * cols, blank_style)], cols)
    cell_rows = (h + 1) // 2
    top_pad = max(0, (rows - cell_rows) // 2)
    left = max(0, (cols - w) // 2)
    right = max(0, cols - w - left)
    stride = w * 3
    strips = [blank_line] * top_pad
    for cy in range(min(cell_rows, rows)):
        top = data[2 * cy * stride : (2 * cy + 1) * stride]
        # An odd last pixel row has nothing under it: the lower half shows the background.
        bottom = data[(2 * cy + 1) * stride : (2 * cy + 2) * stride] if 2 * cy + 1 < h else back * w
        segments: list[Segment] = [Segment(" " * left, blank_style)] if left else []
        run_key = b""
        run = 0
        for i in range(0, stride, 3):
            key = top[i : i + 3] + bottom[i : i + 3]
            if key == run_key:
                run += 1
                continue
            if run:
                segments.append(Segment(HALF * run, styles.style(run_key)))
            run_key, run = key, 1
        if run:
            segments.append(Segment(HALF * run, styles.style(run_key)))
        if right:
            segments.append(Segment(" " * right, blank_style))
        strips.append(Strip(segments, cols))
    strips.extend([blank_line] * (rows - len(strips)))
    return strips


def render_cells(path: Path, cols: int, rows: int) -> list[Strip]:
    """The whole preview path: decode at reduced size, fit, and build the half-block strips."""
    return cells_to_strips(decode_for_cells(path, cols, rows), cols, rows)


@dataclass
class Graphic:
    """A kitty or sixel preview: the cells Textual draws, and the image escapes (kitty: sent out of band
    through the driver; sixel: carried in the rows' strips)."""

    strips: list[Strip]
    escape: str  # kitty: the transmission; sixel: every row's image (for the cache's byte count)
    image_id: int = 0  # kitty: the id the placeholder cells name
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # the image's cells in the widget: x, y, cols, rows
    rows: tuple[str, ...] = ()  # sixel: one image per cell row of the box, top to bottom


def _graphic_box(path: Path, cols: int, rows: int, mode: Mode) -> tuple[Image.Image, int, int, int, int]:
    """Decode for `mode`: the image fitted to the widget's pixels, and its cell box centred in the widget."""
    cols, rows = min(cols, tg.MAX_CELLS), min(rows, tg.MAX_CELLS)
    im = decode_fitted(path, (cols * mode.cell[0], rows * mode.cell[1]), upscale=True)
    img_cols, img_rows = tg.cells_for(im.size, mode.cell)
    img_cols, img_rows = min(img_cols, cols), min(img_rows, rows)
    return im, (cols - img_cols) // 2, (rows - img_rows) // 2, img_cols, img_rows


def _framed(inner: list[Strip], x: int, y: int, cols: int, rows: int) -> list[Strip]:
    """`inner` (strips of equal width) placed at x, y on a background of cols x rows."""
    back = Style.from_color(bgcolor=Color.from_triplet(ColorTriplet(*BACKGROUND)))
    blank_line = Strip([Segment(" " * cols, back)], cols)
    strips = [blank_line] * y
    for strip in inner:
        right = cols - x - strip.cell_length
        segments = [Segment(" " * x, back)] if x else []
        segments.extend(strip)
        if right > 0:
            segments.append(Segment(" " * right, back))
        strips.append(Strip(segments, cols))
    strips.extend([blank_line] * (rows - len(strips)))
    return strips


def render_kitty(path: Path, cols: int, rows: int, mode: Mode, image_id: int) -> Graphic:
    """Placeholder cells naming `image_id`, and the transmission that gives the terminal that image."""
    im, x, y, img_cols, img_rows = _graphic_box(path, cols, rows, mode)
    if mode.raw:
        escape = tg.kitty_transmit(im.tobytes(), image_id, img_cols, img_rows, size=im.size, tmux=mode.tmux)
    else:
        escape = tg.kitty_transmit(tg.png_bytes(im), image_id, img_cols, img_rows, tmux=mode.tmux)
    r, g, b = tg.id_rgb(image_id)
    # The id travels as the exact foreground colour, so this is a truecolour Color built directly.
    style = Style.from_color(
        Color(f"#{r:02x}{g:02x}{b:02x}", ColorType.TRUECOLOR, None, ColorTriplet(r, g, b)),
        Color.from_triplet(ColorTriplet(*BACKGROUND)),
    )
    inner = [Strip([Segment(tg.placeholder_row(row, img_cols), style)], img_cols) for row in range(img_rows)]
    return Graphic(_framed(inner, x, y, cols, rows), escape, image_id, (x, y, img_cols, img_rows))


def render_sixel(path: Path, cols: int, rows: int, mode: Mode) -> Graphic:
    """Blank cells, and the sixel images (one per cell row) drawn over the box in their middle."""
    im, x, y, img_cols, img_rows = _graphic_box(path, cols, rows, mode)
    sixels = tg.sixel_rows(im, mode.cell[1])[:img_rows]
    return Graphic(_framed([], 0, 0, cols, rows), "".join(sixels), 0, (x, y, img_cols, len(sixels)), sixels)


def cache_key(path: Path, cols: int, rows: int, mode: Mode = HALFBLOCK_MODE) -> Key:
    st = path.stat()
    return (str(path), st.st_mtime_ns, st.st_size, cols, rows, mode)


@dataclass
class Rendered:
    key: Key
    strips: list[Strip] | None
    error: str | None = None
    graphic: Graphic | None = None  # kitty / sixel: what goes to the terminal besides the cells


Job = tuple[Path, int, int, Mode]


class PreviewRenderer:
    """One daemon thread: the latest `want` first, then queued prefetches; results go to an LRU cache."""

    def __init__(self, deliver: Callable[[Rendered], None], cache_size: int = CACHE_SIZE) -> None:
        self._deliver = deliver
        self._cache: OrderedDict[Key, Rendered] = OrderedDict()
        self._cache_size = cache_size
        self._cond = threading.Condition()
        self._want: Job | None = None
        self._prefetch: list[Job] = []
        self._stopped = False
        self._thread: threading.Thread | None = None
        # Kitty image ids are global to the terminal window: start somewhere random so two decks in one
        # window (tmux panes) are unlikely to reuse each other's ids.
        self._next_id = random.randrange(1, tg.MAX_IMAGE_ID)

    def cached(self, path: Path, cols: int, rows: int, mode: Mode = HALFBLOCK_MODE) -> Rendered | None:
        try:
            key = cache_key(path, cols, rows, mode)
        except OSError:
            return None
        with self._cond:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
            return hit

    def want(self, path: Path, cols: int, rows: int, mode: Mode = HALFBLOCK_MODE) -> None:
        with self._cond:
            self._want = (path, cols, rows, mode)
            self._start()
            self._cond.notify()

    def prefetch(self, paths: list[Path], cols: int, rows: int, mode: Mode = HALFBLOCK_MODE) -> None:
        with self._cond:
            self._prefetch = [(p, cols, rows, mode) for p in paths]
            self._start()
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="dpdeck-preview", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and self._want is None and not self._prefetch:
                    self._cond.wait()
                if self._stopped:
                    return
                if self._want is not None:
                    job, wanted = self._want, True
                    self._want = None
                else:
                    job, wanted = self._prefetch.pop(0), False
            done = self.cached(*job) or self._render(*job)
            if wanted:
                self._deliver(done)

    def _image_id(self) -> int:
        with self._cond:
            image_id = self._next_id
            self._next_id = self._next_id % tg.MAX_IMAGE_ID + 1  # 1..2^24-1: 0 names no image
        return image_id

    def _render(self, path: Path, cols: int, rows: int, mode: Mode) -> Rendered:
        try:
            key = cache_key(path, cols, rows, mode)
        except OSError as exc:
            return Rendered((str(path), 0, 0, cols, rows, mode), None, f"cannot preview {path.name}: {exc}")
        try:
            if mode.protocol == tg.KITTY:
                graphic = render_kitty(path, cols, rows, mode, self._image_id())
                out = Rendered(key, graphic.strips, graphic=graphic)
            elif mode.protocol == tg.SIXEL:
                graphic = render_sixel(path, cols, rows, mode)
                out = Rendered(key, graphic.strips, graphic=graphic)
            else:
                out = Rendered(key, render_cells(path, cols, rows))
        except PreviewError as exc:
            out = Rendered(key, None, str(exc))
        with self._cond:
            self._cache[key] = out
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size or (
                len(self._cache) > 1 and self._cache_bytes() > CACHE_BYTES
            ):
                self._cache.popitem(last=False)
        return out

    def _cache_bytes(self) -> int:
        return sum(len(r.graphic.escape) for r in self._cache.values() if r.graphic is not None)


def _terminal_cell_pixels() -> tuple[int, int] | None:
    """The cell size the terminal reports on the stream Textual writes to (stderr), else on stdout."""
    for stream in (sys.__stderr__, sys.__stdout__):
        try:
            fd = stream.fileno() if stream is not None else None
        except (OSError, ValueError):
            continue  # not a real file (captured by a test runner)
        cell = tg.cell_pixels(fd) if fd is not None else None
        if cell is not None:
            return cell
    return None


class ImagePreview(Widget):
    """Shows one image (`show(path)`) with the terminal's best protocol; redraws for the new size."""

    class Painted(Message):
        """The preview of `path` is on screen (tests and the benchmark wait for it)."""

        def __init__(self, path: Path) -> None:
            super().__init__()
            self.path = path

    class _Delivered(Message):
        def __init__(self, done: Rendered) -> None:
            super().__init__()
            self.done = done

    DEFAULT_CSS = "ImagePreview { width: 1fr; height: 1fr; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.path: Path | None = None
        self.painted_path: Path | None = None
        self.painted_at = 0.0  # time.perf_counter() when painted_path's cells were handed to the screen
        self.error: str | None = None
        self.choice = tg.Choice(tg.HALFBLOCK, False, False, "not mounted yet")
        self._strips: list[Strip] = []
        self._graphic: Rendered | None = None  # the kitty / sixel preview on screen
        self._mode = HALFBLOCK_MODE  # the mode of the latest request
        self._kitty_sent: OrderedDict[int, None] = OrderedDict()  # image ids the terminal holds
        self._covered = False  # sixel: something is in front of part of the box (a toast, a menu)
        self._renderer = PreviewRenderer(self._from_thread)

    @property
    def protocol(self) -> str:
        return self.choice.protocol

    def on_mount(self) -> None:
        self.choice = self._choose()
        if self.choice.protocol == tg.SIXEL:
            # Immediate: the frame that shows an overlay must already be rendered without the sixel rows
            self.screen.screen_layout_refresh_signal.subscribe(self, self._layout_changed, immediate=True)
        self.log.info(f"image preview: {self.choice.protocol} ({self.choice.reason})")

    def on_unmount(self) -> None:
        self._renderer.stop()
        for image_id in self._kitty_sent:  # leave no image memory behind in the terminal
            self._write(tg.kitty_delete(image_id, tmux=self.choice.tmux))
        self._kitty_sent.clear()

    def _choose(self) -> tg.Choice:
        from statefiles import settings

        try:
            setting = settings.get(tg.SETTING)  # a bad value in config.toml reads as its default
        except OSError:  # an unreadable state dir must not take the preview down: detect instead
            setting = None
        choice = tg.choose(setting, os.environ)
        if choice.forced or choice.protocol == tg.HALFBLOCK:
            return choice
        if self.app.is_headless:
            return tg.Choice(tg.HALFBLOCK, False, choice.tmux, "headless: no terminal to draw graphics")
        if choice.protocol == tg.KITTY and self.app.console.color_system != "truecolor":
            # The image id is the placeholders' exact 24-bit colour; a downgraded palette colour names no image.
            return tg.Choice(tg.HALFBLOCK, False, choice.tmux, "kitty: output is not truecolour (COLORTERM)")
        if choice.protocol == tg.SIXEL and _terminal_cell_pixels() is None:
            # Sized from a guessed cell, a sixel could spill over the editor below or scroll the screen.
            return tg.Choice(
                tg.HALFBLOCK, False, choice.tmux, "sixel: the terminal reports no cell pixel size"
            )
        return choice

    def _current_mode(self) -> Mode:
        protocol = self.choice.protocol
        if protocol == tg.HALFBLOCK:
            return HALFBLOCK_MODE
        cell = _terminal_cell_pixels() or tg.DEFAULT_CELL
        return Mode(protocol, cell, self.choice.tmux, raw=not tg.remote(os.environ))

    def show(self, path: Path | None) -> None:
        self.path = path
        self._request()

    def prefetch(self, paths: list[Path]) -> None:
        cols, rows = self.size
        if cols > 0 and rows > 0:
            self._renderer.prefetch(paths, cols, rows, self._mode)

    def on_resize(self) -> None:
        self._request()

    def _request(self) -> None:
        cols, rows = self.size
        if self.path is None:
            self._set([], None, None)
            return
        if cols <= 0 or rows <= 0:
            return  # not laid out yet: on_resize asks again
        self._mode = self._current_mode()
        hit = self._renderer.cached(self.path, cols, rows, self._mode)
        if hit is not None:
            self._apply(hit)  # a prefetched neighbour shows in the same frame as the key press
        else:
            self._renderer.want(self.path, cols, rows, self._mode)

    def _from_thread(self, done: Rendered) -> None:
        # post_message is thread-safe and never blocks the decode thread on a busy (or closing) app.
        self.post_message(self._Delivered(done))

    def on_image_preview__delivered(self, message: _Delivered) -> None:
        message.stop()
        self._apply(message.done)

    def _apply(self, done: Rendered) -> None:
        key = done.key
        if (
            self.path is None
            or key[0] != str(self.path)
            or key[3:5] != tuple(self.size)
            or key[5] != self._mode
        ):
            return  # stale: the cursor, the size or the mode moved on while this one decoded
        self._set(done.strips or [], self.path, done.error, done if done.graphic else None)

    def _set(
        self, strips: list[Strip], path: Path | None, error: str | None, shown: Rendered | None = None
    ) -> None:
        if shown is not None and shown.graphic is not None and self.choice.protocol == tg.KITTY:
            self._transmit(shown.graphic)
        self._strips = strips
        self._graphic = shown
        self._covered = self._box_covered()
        self.error = error
        self.painted_path = path
        self.painted_at = time.perf_counter()
        self.refresh()  # sixel: the rows' strips carry the images (render_line)
        if path is not None:
            self.post_message(self.Painted(path))

    def _write(self, data: str) -> bool:
        """Out-of-band bytes to the terminal, in order with the frames (the driver's single writer)."""
        driver = getattr(self.app, "_driver", None)
        if driver is None:
            return False
        try:
            driver.write(data)
        except Exception:  # the driver is shutting down (or gone): the image is simply not shown
            return False
        return True

    def _transmit(self, graphic: Graphic) -> None:
        """Give the terminal this kitty image unless it still holds it; forget (delete) the oldest."""
        if graphic.image_id in self._kitty_sent:
            self._kitty_sent.move_to_end(graphic.image_id)
            return
        if not self._write(graphic.escape):
            return
        self._kitty_sent[graphic.image_id] = None
        while len(self._kitty_sent) > KITTY_KEEP:
            old, _ = self._kitty_sent.popitem(last=False)
            self._write(tg.kitty_delete(old, tmux=self.choice.tmux))

    def render_line(self, y: int) -> Strip:
        cols = self.size.width
        if self.error:
            line = self.error[y * cols : (y + 1) * cols] if cols else ""
            return Strip([Segment(line.ljust(cols))], cols)
        if y < len(self._strips):
            strip = self._strips[y].crop_extend(0, cols, None)
            sixel = self._sixel_segment(y)
            return Strip([sixel, *strip], strip.cell_length) if sixel is not None else strip
        return Strip.blank(cols)

    def _layout_changed(self, _screen: object) -> None:
        covered = self._box_covered()
        if covered != self._covered:
            self._covered = covered
            self.refresh()  # the rows' strips are rebuilt with (or without) their sixels

    def _box_covered(self) -> bool:
        """Whether any cell of the sixel box shows another widget (an overlay in front of the preview).

        Textual measures a control segment's text as if it were printed, so a strip with a sixel must never be
        cut by an overlay's edges (it would come out as a broken escape and stray text). While something covers
        the box no row carries its sixel; the layout refresh that removes the cover brings them back.
        """
        shown = self._graphic
        if shown is None or shown.graphic is None or self.choice.protocol != tg.SIXEL or not self.is_attached:
            return False
        x, top, cols, rows = shown.graphic.box
        origin = self.content_region
        box = Region(origin.x + x, origin.y + top, cols, rows)
        screen = self.screen
        mine = {self, *self.ancestors_with_self}
        # Whatever else is visible over the box is in front of it: the preview's own containers hold it, and
        # widgets in the layout never overlap it.
        for widget in screen.walk_children(with_self=False):
            if widget in mine or not widget.display or not widget.visible or not widget.region.overlaps(box):
                continue
            try:
                if screen.find_widget(widget).visible_region.overlaps(box):
                    return True
            except NoWidget:  # not on screen (scrolled out, hidden)
                continue
        return False

    def _sixel_segment(self, y: int) -> Segment | None:
        """Row `y`'s sixel as a zero-width control segment at the row's start: save the cursor, move right to
        the box's first cell, the image, restore the cursor.

        Textual writes a row's segments from the row's first cell, so the move is relative (a preview that moved
        without resizing still draws in place), and it writes the segment with the row: a frame that repaints
        the row (and blanks its cells) draws that row's image again, one that does not, does not. Cells written
        after it on the same line would cover it, but an overlay is never let near it (_box_covered); under a
        modal screen Textual renders the screen below without it.
        """
        shown = self._graphic
        if shown is None or shown.graphic is None or self.choice.protocol != tg.SIXEL or self._covered:
            return None
        x, top, _cols, rows = shown.graphic.box
        if not top <= y < top + rows or shown.key[3:5] != tuple(self.size):
            return None
        # Never on the screen's last line: the cursor after a sixel there could scroll the whole screen.
        if self.content_region.y + top + rows >= self.screen.size.height:
            return None
        forward = f"\x1b[{x}C" if x else ""
        text = f"\x1b7{forward}{shown.graphic.rows[y - top]}\x1b8"
        return Segment(text, None, ((ControlType.CURSOR_FORWARD, 0),))
