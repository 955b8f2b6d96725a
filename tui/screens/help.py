"""`?`: the keys of the screen it was opened over, read from that screen's live bindings (as Textual resolves
them: the user's keymap.toml applied, keys that cannot act right now marked), that screen's own first, then
the app's, then those of the focused widget. Nothing here names a screen: a new one is listed by being
there. `/` filters the rows as you type; j/k/g/G scroll."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.markup import escape
from rich.table import Table
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.dom import DOMNode
from textual.screen import ModalScreen, Screen
from textual.widgets import Input, Static

from tui.keyscheme import bind
from tui.screens.list_keys import VIM_LIST_BINDINGS

EVERYWHERE = "Everywhere"


@dataclass
class HelpRow:
    keys: list[str]  # as the footer shows them, e.g. "^s", "/"
    description: str
    binding_id: str
    enabled: bool  # False: bound here, but does nothing right now (the screen's check_action says so)
    action: str = ""
    node: DOMNode | None = field(default=None, compare=False, repr=False)  # where the action runs

    def matches(self, needle: str) -> bool:
        return any(needle in text.lower() for text in (*self.keys, self.description, self.binding_id))


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
                row = rows[ident] = HelpRow(
                    [], binding.description, binding.id or "", bool(state), binding.action, node
                )
            key = app.get_key_display(binding)
            if key not in row.keys:
                row.keys.append(key)
    for node, rows in grouped.values():
        # A binding whose key a keymap.toml clash took is not in the chain any more: listed, with no key.
        for _key, binding in node._merge_bindings():
            if binding.id and binding.description and binding.id not in rows:
                state = app._check_action_state(binding.action, node)
                rows[binding.id] = HelpRow(
                    [], binding.description, binding.id, bool(state), binding.action, node
                )
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


def filtered(sections: list[HelpSection], needle: str) -> list[HelpSection]:
    """The rows whose key, description or id contains `needle` (any case); a section's title matching keeps
    all of its rows ("queue" lists the Queue screen's keys)."""
    needle = needle.strip().lower()
    if not needle:
        return sections
    out = []
    for section in sections:
        rows = (
            section.rows
            if needle in section.title.lower()
            else [r for r in section.rows if r.matches(needle)]
        )
        if rows:
            out.append(HelpSection(section.title, rows))
    return out


def help_table(sections: list[HelpSection]) -> Table:
    table = Table(box=None, show_header=False, expand=True, padding=(0, 1))
    table.add_column("key", style="bold", no_wrap=True, min_width=12)
    table.add_column("does")
    table.add_column("id", style="dim", no_wrap=True)
    for section in sections:
        table.add_row(f"[b underline]{section.title}[/]", "", "")
        for row in section.rows:
            # Escaped: a key may be `[` (Run's ranks), a description may hold brackets.
            does = escape(row.description) if row.enabled else f"[dim]{escape(row.description)} (not now)[/]"
            table.add_row(escape(" ".join(row.keys)) or "[dim]no key[/]", does, row.binding_id)
    table.add_row("", "", "")
    table.add_row("ctrl+p", "command palette (every action by name, with its key)", "")
    return table


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    #help-search { display: none; margin: 0 0 1 0; }
    #help-scroll { height: 1fr; }
    """
    BINDINGS = [
        *VIM_LIST_BINDINGS,
        bind("help.search", "search", "Search keys", priority=True),
        bind("help.close", "close", "Close help (Esc: the search first)"),
        bind("help.toggle", "dismiss_help", "Close help", keys="question_mark"),
    ]

    def __init__(self, sections: list[HelpSection]) -> None:
        super().__init__()
        self.sections = sections

    @classmethod
    def over(cls, screen: Screen[object]) -> HelpScreen:
        """Help for `screen`, read before this modal covers it (a modal's bindings hide everything else)."""
        return cls(binding_sections(screen))

    def compose(self) -> ComposeResult:
        with Vertical(id="help-body"):
            yield Static(
                "[b]dpdeck keys[/b] here  (/ searches · q / Esc / ? closes · remap by id in "
                "$DPDECK_HOME/keymap.toml)"
            )
            yield Input(placeholder="search keys: a key, a word or an id", id="help-search")
            with VerticalScroll(id="help-scroll", can_focus=True):
                yield Static(help_table(self.sections), id="help-table")

    def on_mount(self) -> None:
        self.query_one("#help-scroll").focus()

    @property
    def shown(self) -> list[HelpSection]:
        """The sections on screen now (the search applied)."""
        return filtered(self.sections, self.query_one("#help-search", Input).value)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # `/` is priority (a burst like `/stop` must not lose its first letters); in the field it is a letter.
        return not (action == "search" and isinstance(self.focused, Input))

    def action_search(self) -> None:
        search = self.query_one("#help-search", Input)
        search.display = True
        self.set_focus(search)  # at once, not on the next turn: see DeckScreen.open_field

    @on(Input.Changed, "#help-search")
    def _filter(self, event: Input.Changed) -> None:
        self.query_one("#help-table", Static).update(help_table(filtered(self.sections, event.value)))

    @on(Input.Submitted, "#help-search")
    def _keep_filter(self) -> None:
        self.query_one("#help-scroll").focus()

    def action_close(self) -> None:
        """One step back: an open search closes (and its filter clears) first, then help."""
        search = self.query_one("#help-search", Input)
        if search.display:
            search.value = ""
            search.display = False
            self.query_one("#help-scroll").focus()
            return
        self.dismiss(None)

    def action_dismiss_help(self) -> None:
        self.dismiss(None)

    def _scroll(self) -> VerticalScroll:
        return self.query_one("#help-scroll", VerticalScroll)

    def action_cursor_down(self) -> None:
        self._scroll().scroll_down(animate=False)

    def action_cursor_up(self) -> None:
        self._scroll().scroll_up(animate=False)

    def action_first(self) -> None:
        self._scroll().scroll_home(animate=False)

    def action_last(self) -> None:
        self._scroll().scroll_end(animate=False)
