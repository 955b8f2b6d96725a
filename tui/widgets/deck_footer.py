"""The footer, cut to fit: a screen lists its bindings most important first, and at a narrow width the footer
shows the longest prefix of them that fits whole (Textual's own would run off the edge: `? He`). `?` help and
the palette key always stay, so every key is still one `?` away."""

from __future__ import annotations

from rich.cells import cell_len
from textual import events
from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import Footer
from textual.widgets._footer import FooterKey  # not re-exported by textual.widgets: the items Footer yields

ALWAYS = frozenset({"help"})  # actions whose key is never dropped


def key_width(widget: Widget, compact: bool) -> int:
    """Cells a footer item takes, from FooterKey's own padding rules (its CSS: key `0 1`, description
    `0 1 0 0`; compact: key 0, description `0 0 0 1` and a margin of 1)."""
    if not isinstance(widget, FooterKey):
        return 12  # a binding group: none of the deck's bindings use one; a generous guess
    key, description = cell_len(widget.key_display), cell_len(widget.description)
    if compact:
        width = key + (1 + description if description else 0) + 1
    else:
        width = key + 2 + (description + 1 if description else 0)
    if widget.has_class("-command-palette"):
        width += 2  # its left border and right padding
    return width


class DeckFooter(Footer):
    def compose(self) -> ComposeResult:
        # In the screen's BINDINGS order (Textual's follows the focus chain, so a focused field's key could come
        # first); the focused widget's and the app's keys after the screen's.
        rank = {}
        for _key, binding in self.screen._merge_bindings():
            rank.setdefault(binding.action, len(rank))
        widgets = sorted(
            super().compose(),
            key=lambda w: rank.get(w.action, len(rank)) if isinstance(w, FooterKey) else len(rank),
        )
        compact = self.compact
        kept = {id(w) for w in widgets if w.has_class("-command-palette")}
        kept |= {id(w) for w in widgets if isinstance(w, FooterKey) and w.action in ALWAYS}
        budget = self.app.size.width - sum(key_width(w, compact) for w in widgets if id(w) in kept)
        for widget in widgets:
            if id(widget) in kept:
                continue
            need = key_width(widget, compact)
            if need > budget:
                break  # a prefix: the most important keys, never a later one squeezed into a gap
            budget -= need
            kept.add(id(widget))
        yield from (w for w in widgets if id(w) in kept)

    _fitted_width = 0

    def on_resize(self, event: events.Resize) -> None:
        if event.size.width != self._fitted_width:
            self._fitted_width = event.size.width
            self.call_after_refresh(self.recompose)
