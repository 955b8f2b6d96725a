"""The deck's look: one dark theme whose colours survive the 256-colour palette of tmux, and job-state badges.

Every state has a symbol and a word, so states stay distinguishable in monochrome, colour-blind use, or a
terminal that drops colour; the colour only reinforces them.
"""

from __future__ import annotations

from rich.text import Text
from textual.theme import Theme

from engine.jobs.job import JobState

# The focus border (app.tcss draws it in $accent): cyan, so the widget that takes the keys never looks like a
# warning (amber) or an error (red). A test compares the computed colours.
FOCUS_COLOUR = "#5fd7ff"
WARNING_COLOUR = "#ffaf00"

# Colours picked near xterm-256 cube entries so the downgrade in 256-colour tmux changes them little.
DECK_THEME = Theme(
    name="dpdeck",
    primary="#5fafff",
    secondary="#87afd7",
    accent=FOCUS_COLOUR,
    warning=WARNING_COLOUR,
    error="#ff5f5f",
    success="#5fd75f",
    foreground="#d0d0d0",
    background="#121212",
    surface="#1c1c1c",
    panel="#262626",
    dark=True,
)

# state -> (symbol, style). Symbols are plain Unicode that tmux and common fonts render in one cell.
STATE_BADGES: dict[str, tuple[str, str]] = {  # keyed by JobState (a str: a state's text finds it too)
    JobState.QUEUED: ("…", "bold #87afd7"),
    JobState.STARTING: ("↑", "bold #5fafff"),
    JobState.RUNNING: ("▶", "bold #5fd75f"),
    JobState.STOPPING: ("■", "bold #ffaf00"),
    JobState.CLEANUP: ("~", "bold #ffaf00"),
    JobState.COMPLETED: ("✓", "bold #5fd75f"),
    JobState.FAILED: ("✗", "bold #ff5f5f"),
    JobState.CANCELLED: ("⊘", "#8a8a8a"),
    JobState.OOM: ("!", "bold #ff5f5f"),
    JobState.HUNG: ("?", "bold #ff5f5f"),
    JobState.INTERRUPTED: ("‖", "bold #ffaf00"),
}


def state_badge(state: str) -> Text:
    """`✓ completed`: symbol + word, coloured; unknown states still show their word."""
    symbol, style = STATE_BADGES.get(state, ("·", ""))
    return Text(f"{symbol} {state}", style=style)
