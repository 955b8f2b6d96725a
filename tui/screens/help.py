"""`?`: the keys of the screen it was opened over, read from that screen's live bindings (as Textual resolves
them: the user's keymap.toml applied, keys that cannot act right now marked), that screen's own first, then
the app's, then those of the focused widget. Nothing here names a screen: a new one is listed by being
there."""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.dom import DOMNode
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

EVERYWHERE = "Everywhere"


@dataclass
class HelpRow:
    keys: list[str]  # as the footer shows them, e.g. "^s", "/"
    description: str
    binding_id: str
    enabled: bool  # False: bound here, but does nothing right now (the screen's check_action says so)


@dataclass
class HelpSection:
    title: str
    rows: list[HelpRow]


def screen_title(screen: Screen[object]) -> str:
    # Deck screens name themselves for the title bar; the rest (the editor, dialogs) by their class.
    title = getattr(screen, "TITLE_TEXT", "")
    if title:
        return str(title)
    name = type(screen).__name__
    for suffix in ("Screen", "Dialog"):
        name = name.removesuffix(suffix)
    return name


def binding_sections(screen: Screen[object]) -> list[HelpSection]:
    """The screen's bindings grouped by where they are bound: the screen, the app, the focused widget.

    Read from Textual's binding chain, not `screen.active_bindings`: that keeps one binding per key, so a
    screen key that the focused list binds too (Enter) would vanish from the screen's own section. The chain
    has the keymap applied already; `_check_action_state` is what active_bindings asks too (both False and None mean
    the key does nothing right now).
    """
    app = screen.app
    grouped: dict[int, tuple[DOMNode, dict[str, HelpRow]]] = {}
    for node, bindings in screen._modal_binding_chain:
        rows = grouped.setdefault(id(node), (node, {}))[1]
        for _key, binding in bindings:
            if not binding.description:
                continue
            ident = binding.id or f"{binding.action}|{binding.description}"
            row = rows.get(ident)
            if row is None:
                state = app._check_action_state(binding.action, node)
                row = rows[ident] = HelpRow([], binding.description, binding.id or "", bool(state))
            key = app.get_key_display(binding)
            if key not in row.keys:
                row.keys.append(key)
    sections: list[HelpSection] = []
    focused: list[HelpRow] = []
    for node, rows in grouped.values():
        # The deck's own bindings (they have ids) before Textual's (focus cycling, copy).
        ordered = sorted(rows.values(), key=lambda r: not r.binding_id)
        if node is screen:
            sections.insert(0, HelpSection(screen_title(screen), ordered))
        elif node is app:
            sections.append(HelpSection(EVERYWHERE, ordered))
        else:
            focused += ordered
    if focused and screen.focused is not None:
        sections.append(HelpSection(f"The focused {type(screen.focused).__name__}", focused))
    return [s for s in sections if s.rows]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "close", "Close help", id="help.close")]

    def __init__(self, sections: list[HelpSection]) -> None:
        super().__init__()
        self.sections = sections

    @classmethod
    def over(cls, screen: Screen[object]) -> HelpScreen:
        """Help for `screen`, read before this modal covers it (a modal's bindings hide everything else)."""
        return cls(binding_sections(screen))

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, expand=True, padding=(0, 1))
        table.add_column("key", style="bold", no_wrap=True, min_width=12)
        table.add_column("does")
        table.add_column("id", style="dim", no_wrap=True)
        for section in self.sections:
            table.add_row(f"[b underline]{section.title}[/]", "", "")
            for row in section.rows:
                does = row.description if row.enabled else f"[dim]{row.description} (not now)[/]"
                table.add_row(" ".join(row.keys), does, row.binding_id)
        table.add_row("", "", "")
        table.add_row("ctrl+p", "command palette (every screen and action by name)", "")
        with VerticalScroll(id="help-body", can_focus=True):
            yield Static(
                "[b]dpdeck keys[/b] here  (q / Esc / ? closes; remap by id in $DPDECK_HOME/keymap.toml)"
            )
            yield Static(table)

    def action_close(self) -> None:
        self.dismiss(None)
