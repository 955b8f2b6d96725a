"""An Input that completes file system paths on Tab, as a shell does: the one match in full (a folder with its
`/`), else the longest common start, with the candidates shown under it."""

from __future__ import annotations

import os
from pathlib import Path

from textual.binding import Binding
from textual.message import Message
from textual.widgets import Input

SHOWN = 8  # candidates listed under the field; the rest are counted


def complete_path(text: str) -> tuple[str, list[str]]:
    """(the completed text, the names that still match) for `text` typed as a path.

    `~` is expanded for reading the folder but kept in the text; a folder is completed with a trailing `/`.
    An unreadable or missing folder gives no candidates and leaves the text as it is.
    """
    head, _, prefix = text.rpartition("/")
    folder_text = head + "/" if "/" in text else ""
    folder = Path(os.path.expanduser(folder_text or ".")) if folder_text != "/" else Path("/")
    try:
        names = sorted(
            entry.name + ("/" if entry.is_dir() else "")
            for entry in os.scandir(folder)
            if entry.name.startswith(prefix) and (prefix.startswith(".") or not entry.name.startswith("."))
        )
    except OSError:
        return text, []
    if not names:
        return text, []
    common = os.path.commonprefix(names)
    return folder_text + common, names if len(names) > 1 else []


class PathInput(Input):
    """Tab completes the path typed so far; several matches are posted as `Candidates` for the caller to show."""

    BINDINGS = [Binding("tab", "complete", "Complete path", id="path.complete", priority=True, show=False)]

    class Candidates(Message):
        def __init__(self, names: list[str]) -> None:
            super().__init__()
            self.names = names

    def action_complete(self) -> None:
        completed, names = complete_path(self.value)
        if completed != self.value:
            self.value = completed
            self.cursor_position = len(completed)
        self.post_message(self.Candidates(names))


def candidates_line(names: list[str]) -> str:
    """The candidates as one line: 'a/  b.toml  c/  … and 12 more'."""
    more = len(names) - SHOWN
    shown = "  ".join(names[:SHOWN])
    return f"{shown}  … and {more} more" if more > 0 else shown
