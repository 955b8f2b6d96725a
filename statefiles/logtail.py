"""The one reader of growing log files: the daemon's progress parsing and the deck's log pane both use it.

Safe by construction: a FIFO, device or symlink in place of a log is never opened for reading (an open() on a
FIFO blocks until a writer appears, which would stall the daemon or a pane's thread for good), a line without
an end is cut at MAX_LINE instead of growing without bound, and a log that was truncated or replaced (rotated,
or a job folder reused) is read again from its start rather than from a stale offset. Pure stdlib, no
textual: widgets wrap it in their own thread.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

# Progress parsing wants every `\r` redraw of a progress bar as a line of its own (the last step counts);
# a display wants a `\r`-redrawn line whole, to show only its last state.
_LINE_ENDS = re.compile(rb"\r\n|\n|\r")
_NEWLINES = re.compile(rb"\r?\n")


def open_regular(path: Path) -> int | None:
    """A read-only fd on `path` when it is a regular file (not a FIFO, device or symlink), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def read_regular(path: Path, limit: int = 1 << 20) -> bytes | None:
    """The first `limit` bytes of a small regular file (exit.json, child.json), or None."""
    fd = open_regular(path)
    if fd is None:
        return None
    try:
        return os.pread(fd, limit, 0)
    finally:
        os.close(fd)


def last_lines(path: Path, lines: int, max_bytes: int = 64 * 1024) -> list[str]:
    """The last `lines` lines of a regular file, from at most its last `max_bytes` (`\\r` ends a line)."""
    fd = open_regular(path)
    if fd is None:
        return []
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, max_bytes, max(0, size - max_bytes))
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace").replace("\r", "\n").splitlines()[-lines:]


class LogFollower:
    """New complete lines of a growing log, read from where the last read stopped.

    Never blocks: each read opens the file afresh (so a log that appears late, is truncated or is replaced is
    picked up), reads at most `max_bytes` and keeps an unfinished last line for the next read.
    """

    MAX_LINE = 64 * 1024
    CHUNK = 4 * 1024 * 1024
    # At most this much unread log is read by read_to_end() (and by a jump_to_tail() follower's first read):
    # the end of a run is what classifies it, and a job that printed gigabytes must not stall its reader.
    END_TAIL = 8 * 1024 * 1024

    def __init__(self, path: Path, *, cr_ends_line: bool = True, jump_to_tail: bool = False) -> None:
        self.path = path
        self.offset = 0
        self.skipped = 0  # bytes passed over by tail jumps (still on disk)
        self.restarts = 0  # times the file was found truncated or replaced and read again from its start
        self._split_re = _LINE_ENDS if cr_ends_line else _NEWLINES
        self._partial = b""
        self._skip_to_newline = False  # after a jump into the tail: its first, cut line is dropped
        self._identity: tuple[int, int] | None = None
        self._jump_pending = jump_to_tail

    def _restart_if_replaced(self, st: os.stat_result) -> None:
        identity = (st.st_dev, st.st_ino)
        replaced = self._identity is not None and identity != self._identity
        self._identity = identity
        if replaced or st.st_size < self.offset:
            self.offset = 0
            self._partial = b""
            self._skip_to_newline = False
            self.restarts += 1

    def _read(self, max_bytes: int, *, tail_only: bool = False) -> bytes:
        fd = open_regular(self.path)
        if fd is None:
            return b""
        try:
            st = os.fstat(fd)
            self._restart_if_replaced(st)
            if (tail_only or self._jump_pending) and st.st_size - self.offset > self.END_TAIL:
                self.skipped += st.st_size - self.END_TAIL - self.offset
                self.offset = st.st_size - self.END_TAIL
                self._partial = b""
                self._skip_to_newline = True
            self._jump_pending = False
            data = os.pread(fd, max_bytes, self.offset)
        finally:
            os.close(fd)
        self.offset += len(data)
        return data

    def _split(self, data: bytes) -> list[str]:
        data = self._partial + data
        parts = self._split_re.split(data)
        self._partial = parts.pop()
        if self._skip_to_newline and parts:
            parts.pop(0)  # the cut line before the tail we jumped to
            self._skip_to_newline = False
        if len(self._partial) > self.MAX_LINE:
            parts.append(self._partial[: self.MAX_LINE])
            self._partial = b""
        return [p[: self.MAX_LINE].decode("utf-8", "replace") for p in parts]

    def read_lines(self, max_bytes: int = CHUNK) -> list[str]:
        """The complete lines in the next `max_bytes` of the file; [] when nothing new arrived."""
        data = self._read(max_bytes)
        return self._split(data) if data else []

    def read_to_end(self) -> Iterator[str]:
        """Every line up to the end of the file (at most END_TAIL of it), the unfinished last one included:
        for the final read at a job's end."""
        first = True
        while True:
            data = self._read(self.CHUNK, tail_only=first)
            first = False
            if not data:
                break
            yield from self._split(data)
        if self._partial:
            yield self._partial[: self.MAX_LINE].decode("utf-8", "replace")
            self._partial = b""
