"""A log pane that follows a file: a reader thread fills a deque, a timer drains it into `Log`.

The full log stays on disk; the pane keeps the last `max_lines`. Writing in batches (every 0.1 s under a
flood, every 0.5 s otherwise) keeps key handling responsive while a job prints thousands of lines a second.
Appending repaints only the pane: the log's growth never lays out the rest of the screen.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from pathlib import Path

from rich.cells import cell_len, chop_cells
from rich.style import Style
from rich.text import Text
from textual.geometry import Region, Size
from textual.reactive import Reactive
from textual.strip import Strip
from textual.widgets import Log

from statefiles.logtail import LogFollower

ERROR_RE = re.compile(r"Traceback|Error|error:|OutOfMemory|CUDA out of memory|Killed|FAILED|EADDRINUSE")
MAX_BATCH = 2000  # lines per drain: a flood shows its tail rather than stalling the UI
BUSY_S, TRICKLE_S = 0.1, 0.5  # drain intervals under a flood and otherwise: a trickle repaints 2x a second
FLOOD = 100  # lines in one drain that make the next come sooner
QUIET_S = 0.25  # a quiet file is re-read this often (in the reader thread)
MEASURE_HERE = 500  # batches up to this many lines are measured on the spot, not in a thread worker
# dpdeck's own machine-readable lines (engine/jobs/progress.py parses them into the job record, which the
# Run screen's header shows): hidden from the pane unless asked for. Ranks may prefix them ("[rank0]: ").
EVENT_MARK = "[dpdeck] {"
# Search matches: reverse video reads in every theme and in the 16 ANSI colours; the current one also bold.
MATCH_STYLE = Style(reverse=True)
CURRENT_MATCH_STYLE = Style(reverse=True, bold=True, underline=True)


def clean_line(line: str) -> str:
    # tqdm redraws with \r: only the last state of such a line is worth showing.
    return line.rstrip("\n").rsplit("\r", 1)[-1]


def wrap_line(line: str, width: int) -> list[str]:
    """`line` cut into rows of at most `width` cells (tabs expanded, as the pane shows them)."""
    if "\t" in line:
        line = line.expandtabs()
    if line.isascii():  # the common case, and a flood's: plain slicing
        if len(line) <= width:
            return [line]
        return [line[i : i + width] for i in range(0, len(line), width)]
    return chop_cells(line, width) or [""]


def match_spans(text: str, needle: str) -> list[tuple[int, int]]:
    """Where `needle` occurs in `text`, case-insensitively, without overlaps."""
    low, want = text.lower(), needle.lower()
    spans: list[tuple[int, int]] = []
    at = low.find(want) if want else -1
    while at >= 0:
        spans.append((at, at + len(want)))
        at = low.find(want, at + len(want))
    return spans


class LogFeed:
    """Tails one file from a thread into a bounded deque; survives the file appearing late.

    The reading itself (FIFO safety, bounded lines, truncation, tail jump) is statefiles.logtail's; this adds
    only the thread and the hand-over to the UI.
    """

    READ_BYTES = 1 << 18  # per read: a flood still reaches the deque in small, lock-friendly batches

    def __init__(self, path: Path, keep: int, *, hide_events: bool = True, wrap: int | None = None) -> None:
        self.path = path
        self.hide_events = hide_events
        self.wrap = wrap  # a width: each line becomes rows of at most this many cells
        self.hidden = 0  # event lines left out of the pane
        # A display shows a `\r`-redrawn line once, in its last state; a huge old log opens at its tail.
        self.reader = LogFollower(path, cr_ends_line=False, jump_to_tail=True)
        self.lines: deque[str] = deque(maxlen=keep)
        self.dropped = 0  # lines that scrolled out of the buffer before the pane took them (still on disk)
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"log-{path.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def take(self, limit: int) -> list[str]:
        with self.lock:
            return [self.lines.popleft() for _ in range(min(limit, len(self.lines)))]

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            before = self.reader.offset
            parts = self.reader.read_lines(self.READ_BYTES)
            if self.reader.offset == before:
                # A quiet (or not yet created) file is re-read 4x a second; a busy one is read back to back.
                self._stop.wait(QUIET_S)
                continue
            if not parts:
                continue
            rows = self._rows(parts)
            with self.lock:
                overflow = len(self.lines) + len(rows) - (self.lines.maxlen or 0)
                self.lines.extend(rows)
                if overflow > 0:
                    self.dropped += overflow

    def _rows(self, parts: list[str]) -> list[str]:
        lines = [clean_line(p) for p in parts]
        if self.hide_events:
            kept = [line for line in lines if EVENT_MARK not in line]
            self.hidden += len(lines) - len(kept)
            lines = kept
        if self.wrap:
            width = self.wrap
            return [row for line in lines for row in wrap_line(line, width)]
        return lines


class LogPane(Log):
    """`follow(path)` to start; `set_follow(False)` stops the scroll-follow (lines still arrive).

    Two views of the same file, each switched by reading its tail again: `show_events` (dpdeck's own
    `[dpdeck] {...}` lines, hidden by default) and `wrap` (long lines as several rows, else one row each and the
    pane scrolls sideways). `needle` highlights search matches; the `current` match line is marked apart.
    """

    # Log declares its growth as a layout change, and a layout re-renders every widget on the screen (the
    # largest CPU cost of a Run screen following a job). Growth only moves this pane's own scrollbars.
    virtual_size = Reactive(Size(0, 0), layout=False)

    def __init__(self, max_lines: int = 5000, **kwargs: object) -> None:
        super().__init__(max_lines=max_lines, highlight=False, auto_scroll=True, **kwargs)  # type: ignore[arg-type]
        self.follower: LogFeed | None = None
        self.keep = max_lines
        self.total_written = 0
        self.path: Path | None = None
        self.show_events = False
        self.wrap = False
        self.needle = ""
        self.current = -1  # the line of the current search match
        self._wrap_width = 0

    armed = False

    _pass_style: Style | None = None

    @property
    def rich_style(self) -> Style:
        # Log asks for it for every line it renders, and each ask walks up the DOM merging styles: a third of
        # the deck's CPU while it follows a job. Within one render pass it cannot change.
        return self._pass_style if self._pass_style is not None else super().rich_style

    def _render_line_strip(self, y: int, rich_style: Style) -> Strip:
        if not self.needle:
            return super()._render_line_strip(y, rich_style)
        line = self._process_line(self._lines[y])
        text = Text(line, no_wrap=True)
        text.stylize(rich_style)
        style = CURRENT_MATCH_STYLE if y == self.current else MATCH_STYLE
        for start, end in match_spans(line, self.needle):
            text.stylize(style, start, end)
        return Strip(text.render(self.app.console), cell_len(line))

    def render_lines(self, crop: Region) -> list[Strip]:
        self._pass_style = super().rich_style
        try:
            return super().render_lines(crop)
        finally:
            self._pass_style = None

    def _update_size(self, updates: int, lines: list[str]) -> None:  # type: ignore[override]
        # Log measures every batch in a thread worker: a thread hop and three messages per write. A trickle's
        # few lines measure in microseconds; only a flood's big batches are worth the thread.
        if len(lines) > MEASURE_HERE:
            Log._update_size(self, updates, lines)
        elif lines:
            process = self._process_line
            self._update_maximum_width(updates, max(cell_len(process(line)) for line in lines))

    def watch_virtual_size(self, size: Size) -> None:
        # What a layout would have done for this pane alone; showing/hiding a scrollbar still lays out.
        if self.is_mounted:
            self._scroll_update(size)

    def _arm(self, delay: float = BUSY_S) -> None:
        # Only while following a file: an idle pane costs nothing.
        if self.follower is not None and not self.armed and self.is_mounted:
            self.armed = True
            self.set_timer(delay, self._drain)

    def follow(self, path: Path | None) -> None:
        if self.follower is not None:
            self.follower.stop()
            self.follower = None
        self.clear()
        self.total_written = 0
        self.current = -1
        self.path = path
        if path is not None:
            self._wrap_width = self.wrap_width() if self.wrap else 0
            self.follower = LogFeed(
                path, self.keep, hide_events=not self.show_events, wrap=self._wrap_width or None
            )
            self.follower.start()
            self._arm()

    def wrap_width(self) -> int:
        # The vertical scrollbar's columns are kept free whether or not it shows yet.
        return max(10, self.size.width - self.styles.scrollbar_size_vertical)

    @property
    def hidden_events(self) -> int:
        return self.follower.hidden if self.follower is not None else 0

    def set_show_events(self, on: bool) -> None:
        self.show_events = on
        self.follow(self.path)

    def set_wrap(self, on: bool) -> None:
        self.wrap = on
        self.scroll_to(x=0, animate=False)
        self.follow(self.path)

    def on_resize(self) -> None:
        if self.wrap and self.path is not None and self.wrap_width() != self._wrap_width:
            self.follow(self.path)  # rows cut for the old width: read the tail again at the new one

    def set_needle(self, needle: str, current: int = -1) -> None:
        self.needle, self.current = needle, current
        self.refresh()

    def match_lines(self, needle: str) -> list[int]:
        """The lines containing `needle` (case-insensitive), in order."""
        low = needle.lower()
        return [i for i, line in enumerate(self.lines) if low in line.lower()] if low else []

    def _drain(self) -> None:
        self.armed = False
        follower = self.follower
        if follower is not None and follower.lines:
            batch = follower.take(MAX_BATCH)
            self.write_lines(batch)
            self.total_written += len(batch)
            self._arm(BUSY_S if len(batch) >= FLOOD else TRICKLE_S)
        else:
            self._arm(TRICKLE_S)

    def set_follow(self, on: bool) -> None:
        self.auto_scroll = on
        if on:
            self.scroll_end(animate=False)

    def find(self, needle: str, start: int, *, backwards: bool = False) -> int | None:
        """Index of the next line containing `needle` (case-insensitive) from `start`, wrapping."""
        lines = self.lines
        if not lines:
            return None
        n = len(lines)
        order = (
            [(start - i) % n for i in range(1, n + 1)]
            if backwards
            else [(start + i) % n for i in range(1, n + 1)]
        )
        low = needle.lower()
        return next((i for i in order if low in lines[i].lower()), None)

    def find_error(self, start: int) -> int | None:
        lines = self.lines
        n = len(lines)
        return (
            next((i for i in ((start + k) % n for k in range(1, n + 1)) if ERROR_RE.search(lines[i])), None)
            if n
            else None
        )

    def jump_to(self, index: int) -> None:
        self.set_follow(False)
        self.scroll_to(y=max(0, index - 2), animate=False)

    def on_unmount(self) -> None:
        if self.follower is not None:
            self.follower.stop()
