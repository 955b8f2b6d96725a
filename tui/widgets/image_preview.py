"""Image preview in any terminal: half-block cells (`▀`, foreground = top pixel, background = bottom pixel).

Half blocks work everywhere Textual works (tmux over ssh included), so they are the only renderer; kitty/sixel
graphics are not used. Decoding runs on one background thread with "latest request wins": holding `j` over a
folder of 4096x4096 JPEGs decodes only the image the cursor stops on, never a backlog. JPEGs decode at 1/2..1/8
scale (`Image.draft`), a small LRU keeps the last previews, and the neighbours are prefetched into it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps
from rich.color import Color, ColorTriplet, ColorType
from rich.segment import Segment
from rich.style import Style
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

HALF = "▀"
CACHE_SIZE = 16
BACKGROUND = (30, 30, 30)  # behind transparent pixels, and around the image
ORIENTATION_TAG = 0x0112
# EXIF orientations that rotate by 90 degrees: the stored width is the shown height.
ROTATED = {5, 6, 7, 8}
# 64 levels per channel: invisible at cell resolution, but 4x fewer distinct colours (Rich Color objects are
# the slow part of building a big preview). The +2 keeps each level at the middle of its 4-value band.
QUANTIZE = [(v & 0xFC) | 0x02 for v in range(256)] * 3

Key = tuple[str, int, int, int, int]  # path, mtime_ns, file size, cols, rows


class PreviewError(Exception):
    """The file cannot be previewed; the message says why (shown in the pane)."""


def decode_for_cells(path: Path, cols: int, rows: int) -> Image.Image:
    """The image as RGB fitted (aspect kept) into cols x 2*rows pixels: one pixel per half cell."""
    box_w, box_h = max(1, cols), max(1, rows * 2)
    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(ORIENTATION_TAG, 1)
            # Fit against the size as shown: a portrait phone photo is stored landscape + rotate tag.
            fit = (box_h, box_w) if orientation in ROTATED else (box_w, box_h)
            if im.format == "JPEG":
                # libjpeg scales by 1/2..1/8 while decoding: a 4096^2 JPEG decodes as 512^2 for a small box.
                im.draft("RGB", fit)
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


def cache_key(path: Path, cols: int, rows: int) -> Key:
    st = path.stat()
    return (str(path), st.st_mtime_ns, st.st_size, cols, rows)


@dataclass
class Rendered:
    key: Key
    strips: list[Strip] | None
    error: str | None = None


class PreviewRenderer:
    """One daemon thread: the latest `want` first, then queued prefetches; results go to an LRU cache."""

    def __init__(self, deliver: Callable[[Rendered], None], cache_size: int = CACHE_SIZE) -> None:
        self._deliver = deliver
        self._cache: OrderedDict[Key, Rendered] = OrderedDict()
        self._cache_size = cache_size
        self._cond = threading.Condition()
        self._want: tuple[Path, int, int] | None = None
        self._prefetch: list[tuple[Path, int, int]] = []
        self._stopped = False
        self._thread: threading.Thread | None = None

    def cached(self, path: Path, cols: int, rows: int) -> Rendered | None:
        try:
            key = cache_key(path, cols, rows)
        except OSError:
            return None
        with self._cond:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
            return hit

    def want(self, path: Path, cols: int, rows: int) -> None:
        with self._cond:
            self._want = (path, cols, rows)
            self._start()
            self._cond.notify()

    def prefetch(self, paths: list[Path], cols: int, rows: int) -> None:
        with self._cond:
            self._prefetch = [(p, cols, rows) for p in paths]
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

    def _render(self, path: Path, cols: int, rows: int) -> Rendered:
        try:
            key = cache_key(path, cols, rows)
        except OSError as exc:
            return Rendered((str(path), 0, 0, cols, rows), None, f"cannot preview {path.name}: {exc}")
        try:
            out = Rendered(key, render_cells(path, cols, rows))
        except PreviewError as exc:
            out = Rendered(key, None, str(exc))
        with self._cond:
            self._cache[key] = out
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return out


class ImagePreview(Widget):
    """Shows one image (`show(path)`) as half blocks; redraws for the new size when resized."""

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
        self._strips: list[Strip] = []
        self._renderer = PreviewRenderer(self._from_thread)

    def on_unmount(self) -> None:
        self._renderer.stop()

    def show(self, path: Path | None) -> None:
        self.path = path
        self._request()

    def prefetch(self, paths: list[Path]) -> None:
        cols, rows = self.size
        if cols > 0 and rows > 0:
            self._renderer.prefetch(paths, cols, rows)

    def on_resize(self) -> None:
        self._request()

    def _request(self) -> None:
        cols, rows = self.size
        if self.path is None:
            self._set([], None, None)
            return
        if cols <= 0 or rows <= 0:
            return  # not laid out yet: on_resize asks again
        hit = self._renderer.cached(self.path, cols, rows)
        if hit is not None:
            self._apply(hit)  # a prefetched neighbour shows in the same frame as the key press
        else:
            self._renderer.want(self.path, cols, rows)

    def _from_thread(self, done: Rendered) -> None:
        # post_message is thread-safe and never blocks the decode thread on a busy (or closing) app.
        self.post_message(self._Delivered(done))

    def on_image_preview__delivered(self, message: _Delivered) -> None:
        message.stop()
        self._apply(message.done)

    def _apply(self, done: Rendered) -> None:
        if self.path is None or done.key[0] != str(self.path) or done.key[3:] != tuple(self.size):
            return  # stale: the cursor or the size moved on while this one decoded
        self._set(done.strips or [], self.path, done.error)

    def _set(self, strips: list[Strip], path: Path | None, error: str | None) -> None:
        self._strips = strips
        self.error = error
        self.painted_path = path
        self.painted_at = time.perf_counter()
        self.refresh()
        if path is not None:
            self.post_message(self.Painted(path))

    def render_line(self, y: int) -> Strip:
        cols = self.size.width
        if self.error:
            line = self.error[y * cols : (y + 1) * cols] if cols else ""
            return Strip([Segment(line.ljust(cols))], cols)
        if y < len(self._strips):
            return self._strips[y].crop_extend(0, cols, None)
        return Strip.blank(cols)
