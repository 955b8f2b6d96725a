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

from rich.cells import cell_len
from rich.style import Style
from textual.geometry import Region, Size
from textual.reactive import Reactive
from textual.strip import Strip
from textual.widgets import Log

from engine.jobs.progress import open_regular

ERROR_RE = re.compile(r"Traceback|Error|error:|OutOfMemory|CUDA out of memory|Killed|FAILED|EADDRINUSE")
MAX_BATCH = 2000  # lines per drain: a flood shows its tail rather than stalling the UI
BUSY_S, TRICKLE_S = 0.1, 0.5  # drain intervals under a flood and otherwise: a trickle repaints 2x a second
FLOOD = 100  # lines in one drain that make the next come sooner
QUIET_S = 0.25  # a quiet file is re-read this often (in the reader thread)
MEASURE_HERE = 500  # batches up to this many lines are measured on the spot, not in a thread worker


def clean_line(line: str) -> str:
    # tqdm redraws with \r: only the last state of such a line is worth showing.
    return line.rstrip("\n").rsplit("\r", 1)[-1]


class LogFollower:
    """Tails one file from a thread into a bounded deque; survives the file appearing late."""

    MAX_LINE = 64 * 1024

    def __init__(self, path: Path, keep: int) -> None:
        self.path = path
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
        handle = None
        partial = ""
        while not self._stop.is_set():
            if handle is None:
                fd = open_regular(self.path)  # never a FIFO: an open() on one would hang this thread for good
                if fd is None:
                    self._stop.wait(0.25)
                    continue
                handle = open(fd, encoding="utf-8", errors="replace", newline="")  # noqa: SIM115 - closed below
            chunk = handle.read(1 << 16)
            if not chunk:
                # A quiet file is re-read 4x a second; a busy one is read back to back.
                self._stop.wait(QUIET_S)
                continue
            text = partial + chunk
            parts = text.split("\n")
            partial = parts.pop()
            if len(partial) > LogFollower.MAX_LINE:  # a line without end must not grow without bound
                parts.append(partial[: LogFollower.MAX_LINE])
                partial = ""
            with self.lock:
                overflow = len(self.lines) + len(parts) - (self.lines.maxlen or 0)
                self.lines.extend(clean_line(p) for p in parts)
                if overflow > 0:
                    self.dropped += overflow
        if handle is not None:
            handle.close()


class LogPane(Log):
    """`follow(path)` to start; `paused` stops the scroll-follow (lines still arrive)."""

    # Log declares its growth as a layout change, and a layout re-renders every widget on the screen (the
    # largest CPU cost of a Run screen following a job). Growth only moves this pane's own scrollbars.
    virtual_size = Reactive(Size(0, 0), layout=False)

    def __init__(self, max_lines: int = 5000, **kwargs: object) -> None:
        super().__init__(max_lines=max_lines, highlight=False, auto_scroll=True, **kwargs)  # type: ignore[arg-type]
        self.follower: LogFollower | None = None
        self.keep = max_lines
        self.total_written = 0

    armed = False

    _pass_style: Style | None = None

    @property
    def rich_style(self) -> Style:
        # Log asks for it for every line it renders, and each ask walks up the DOM merging styles: a third of
        # the deck's CPU while it follows a job. Within one render pass it cannot change.
        return self._pass_style if self._pass_style is not None else super().rich_style

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
        if path is not None:
            self.follower = LogFollower(path, self.keep)
            self.follower.start()
            self._arm()

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
