"""Shared output helpers for CLI commands: JSON for scripts, tables for people, errors on stderr."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import Any


def print_json(data: Any) -> None:
    """Stable, machine-readable output (sorted keys, ISO strings for anything non-JSON)."""
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def error(message: str) -> None:
    print(f"dpdeck: error: {message}", file=sys.stderr)


def warn(message: str) -> None:
    print(f"dpdeck: warning: {message}", file=sys.stderr)


def require_paths(*paths: Path) -> None:
    """A path named on the command line that does not exist is a usage error (exit 2), as an unknown job,
    profile or setting is: the command stops before doing anything, with the path as given."""
    from tui.cli import UsageError

    for path in paths:
        if not os.path.lexists(os.path.expanduser(path)):  # a link that loops is the scan's to report
            raise UsageError(f"{path}: no such file or folder")


def table(rows: list[list[str]], headers: list[str]) -> str:
    """A plain aligned text table (no colour) that survives pipes and narrow terminals."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return "\n".join(lines)


# A state dir dpdeck cannot write.

_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _state_root() -> str:
    """The state dir as the profiles layer spells it, without creating it."""
    from statefiles import paths

    root = getattr(paths, "state_root", None)
    if root is not None:
        return str(root())
    env = os.environ.get(paths.ENV_HOME)
    if env:
        return os.path.realpath(os.path.expanduser(env))
    import platformdirs

    return os.path.realpath(platformdirs.user_data_dir("dpdeck", appauthor=False))


def _existing(path: str) -> str:
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _writable(path: str) -> bool:
    """Whether `path`, or the nearest folder above it that exists, can be written (a read-only mount cannot)."""
    return os.access(_existing(path), os.W_OK)


def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(_existing(path)).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def state_write_error(exc: BaseException) -> str | None:
    """One line for a write dpdeck's state dir refused (read-only mount, no permission): the path, what dpdeck
    needs and the fix. None when `exc` is something else (another path, another error), for the caller to
    handle or re-raise."""
    state = _state_root()
    sqlite3 = sys.modules.get("sqlite3")
    if isinstance(exc, OSError):
        if exc.errno not in _UNWRITABLE:
            return None
        where = os.fsdecode(exc.filename) if exc.filename else state
        reason = exc.strerror or str(exc)
        if not any(
            w == state or w.startswith(state.rstrip("/") + "/") for w in (where, os.path.realpath(where))
        ):
            return None  # not the state dir: the command's own handling (or a traceback) says more
    elif sqlite3 is not None and isinstance(exc, sqlite3.OperationalError) and not _writable(state):
        # SQLite says only "unable to open database file": name the store and why.
        where = os.path.join(state, "dpdeck.db")
        reason = f"{exc}: " + ("Read-only file system" if _read_only(state) else "Permission denied")
    else:
        return None
    return (
        f"{where}: {reason}; dpdeck keeps its state in {state} and must be able to write there: make it "
        "writable, or point DPDECK_HOME at a writable folder (export DPDECK_HOME=~/dpdeck-state)"
    )
