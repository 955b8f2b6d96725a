"""The notification history (`!`): every note of this session, newest first, with its time and severity."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from tui.screens.list_keys import VIM_LIST_BINDINGS, OptionListKeys

KEEP = 500  # the newest this many; a day of busy use, and a bounded memory


@dataclass(frozen=True)
class Note:
    at: float  # time.time()
    severity: str
    title: str
    message: str


class NoteLog:
    """A bounded, thread-safe list of notes (screens notify from worker threads too)."""

    def __init__(self, keep: int = KEEP) -> None:
        self._notes: deque[Note] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, note: Note) -> None:
        with self._lock:
            self._notes.append(note)

    def newest_first(self) -> list[Note]:
        with self._lock:
            return list(reversed(self._notes))


MARKS = {"error": ("✗", "bold red"), "warning": ("!", "bold yellow"), "information": ("·", "")}


def note_line(note: Note, now: float | None = None) -> Text:
    """'14:03:22  ! job 2 already ended (completed)': local time, a severity mark, the title, the message."""
    now = time.time() if now is None else now
    stamp = time.strftime("%H:%M:%S" if now - note.at < 86400 else "%Y-%m-%d %H:%M", time.localtime(note.at))
    mark, style = MARKS.get(note.severity, MARKS["information"])
    line = Text(f"{stamp}  ")
    line.append(mark, style=style)
    head = f"{note.title}: " if note.title else ""
    line.append(f" {head}{note.message}")
    return line


class NotificationsScreen(OptionListKeys, ModalScreen[None]):
    BINDINGS = [
        *VIM_LIST_BINDINGS,
        Binding("escape,q", "close", "Close", id="notifications.close"),
    ]

    def __init__(self, notes: list[Note]) -> None:
        super().__init__()
        self.notes = notes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            count = len(self.notes)
            yield Static(f"Notifications this session: {count}, newest first", classes="dialog-text")
            options = [Option(note_line(n)) for n in self.notes] or [
                Option(Text("No notifications yet.", style="dim"), disabled=True)
            ]
            yield OptionList(*options, id="notification-list")
            yield Static("[b]j[/b]/[b]k[/b] move    [b]Esc[/b]/[b]q[/b] close", classes="dialog-keys")

    def action_close(self) -> None:
        self.dismiss(None)
