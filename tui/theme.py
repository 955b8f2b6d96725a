"""The deck's look: one dark theme whose colours survive the 256-colour palette of tmux, and job-state badges.

Every state has a symbol and a word, so states stay distinguishable in monochrome, colour-blind use, or a
terminal that drops colour; the colour only reinforces them.
"""

from __future__ import annotations

from rich.text import Text
from textual.theme import Theme

# Colours picked near xterm-256 cube entries so the downgrade in 256-colour tmux changes them little.
DECK_THEME = Theme(
    name="dpdeck",
    primary="#5fafff",
    secondary="#87afd7",
    accent="#ffaf00",
    warning="#ffaf00",
    error="#ff5f5f",
    success="#5fd75f",
    foreground="#d0d0d0",
    background="#121212",
    surface="#1c1c1c",
    panel="#262626",
    dark=True,
)

# state -> (symbol, style). Symbols are plain Unicode that tmux and common fonts render in one cell.
STATE_BADGES: dict[str, tuple[str, str]] = {
    "queued": ("…", "bold #87afd7"),
    "starting": ("↑", "bold #5fafff"),
    "running": ("▶", "bold #5fd75f"),
    "stopping": ("■", "bold #ffaf00"),
    "cleanup": ("~", "bold #ffaf00"),
    "draining": ("~", "bold #ffaf00"),
    "completed": ("✓", "bold #5fd75f"),
    "failed": ("✗", "bold #ff5f5f"),
    "cancelled": ("⊘", "#8a8a8a"),
    "oom": ("!", "bold #ff5f5f"),
    "hung": ("?", "bold #ff5f5f"),
    "interrupted": ("‖", "bold #ffaf00"),
}

FINISHED_STATES = frozenset({"completed", "failed", "cancelled", "oom", "hung", "interrupted"})


def state_badge(state: str) -> Text:
    """`✓ completed`: symbol + word, coloured; unknown states still show their word."""
    symbol, style = STATE_BADGES.get(state, ("·", ""))
    return Text(f"{symbol} {state}", style=style)
