"""Every notification the deck shows, kept with its time: a toast fades in seconds, the history does not.

`NotifyHistory` is mixed into the app (tui/app.py): its `notify` records (tui/screens/notifications.py NoteLog),
then shows as Textual does; `!` (deck.notifications) opens the NotificationsScreen on the kept list.
"""

from __future__ import annotations

import time

from textual.app import App
from textual.notifications import SeverityLevel

from tui.screens.notifications import Note, NoteLog, NotificationsScreen


class NotifyHistory(App[None]):
    """App mixin: `notify` keeps every note; `action_notifications` shows them."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.note_log = NoteLog()

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        self.note_log.add(
            Note(time.time(), str(severity), title, _plain(str(message)) if markup else str(message))
        )
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    def action_notifications(self) -> None:
        if not isinstance(self.screen, NotificationsScreen):
            self.push_screen(NotificationsScreen(self.note_log.newest_first()))


def _plain(message: str) -> str:
    """The text a toast shows for a markup message ('[b]x[/b]' -> 'x'); the message itself if it is not markup."""
    from textual.content import Content

    try:
        return Content.from_markup(message).plain
    except Exception:  # noqa: BLE001 - brackets that are not markup: the toast shows them as they are too
        return message
