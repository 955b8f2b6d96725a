"""Crash-safe file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from statefiles import paths


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path | str, data: bytes, mode: int | None = None) -> None:
    """Write via temp file in the same folder + fsync + rename (+ fsync of the folder).

    `mode` sets the permissions before any byte is written, so a secret is never readable by others.
    When `mode` is None an existing file's permissions are kept; a new file is 0600 inside the state dir
    (store, job folders, config: private) and 0644 elsewhere (captions, exports: the user's files).
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        mode_dir = paths.DIR_MODE if paths.is_state_path(parent) else 0o777
        parent.mkdir(mode=mode_dir, parents=True, exist_ok=True)
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = paths.FILE_MODE if paths.is_state_path(parent) else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(parent)


def atomic_write_text(path: Path | str, text: str, mode: int | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)
