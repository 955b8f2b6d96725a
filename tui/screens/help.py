"""`?`: every binding of the deck, grouped by screen, read from the Binding objects themselves."""

from __future__ import annotations

import importlib

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

# (title, module, class) of every screen whose keys help lists.
SCREENS = [
    ("Profiles", "tui.screens.profiles", "ProfilesScreen"),
    ("Profile editor", "tui.screens.editor", "EditorScreen"),
    ("History", "tui.screens.history", "HistoryDialog"),
    ("Queue", "tui.screens.queue", "QueueScreen"),
    ("Run", "tui.screens.run", "RunScreen"),
    ("System", "tui.screens.system", "SystemScreen"),
    ("Datasets", "tui.screens.datasets", "DatasetsScreen"),
    ("Batch caption operation", "tui.widgets.dataset_dialogs", "BatchDialog"),
    ("Batch dry run", "tui.widgets.dataset_dialogs", "ApplyDialog"),
    ("Confirm dialog", "tui.screens.dialogs", "ConfirmDialog"),
    ("Text prompt", "tui.screens.dialogs", "PromptDialog"),
    ("Choice list", "tui.screens.dialogs", "ChoiceDialog"),
    ("Text viewer", "tui.screens.dialogs", "TextDialog"),
    ("Help", "tui.screens.help", "HelpScreen"),
]


def _bindings(items: list[BindingType]) -> list[Binding]:
    return [b for b in items if isinstance(b, Binding)]


def binding_sections() -> list[tuple[str, list[Binding]]]:
    from tui.app import DeckApp
    from tui.screens.base import VIM_LIST_BINDINGS

    sections = [("Everywhere", _bindings(DeckApp.BINDINGS)), ("Lists (besides arrows)", VIM_LIST_BINDINGS)]
    for title, module, cls in SCREENS:
        klass = getattr(importlib.import_module(module), cls)
        own = [b for b in _bindings(klass.BINDINGS) if b not in VIM_LIST_BINDINGS]
        sections.append((title, own))
    return sections


def _key_text(binding: Binding) -> str:
    keys = binding.key_display or binding.key
    return keys.replace("question_mark", "?").replace("slash", "/")


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "close", "Close help", id="help.close")]

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, expand=True, padding=(0, 1))
        table.add_column("key", style="bold", no_wrap=True, min_width=12)
        table.add_column("does")
        table.add_column("id", style="dim", no_wrap=True)
        for title, bindings in binding_sections():
            table.add_row(f"[b underline]{title}[/]", "", "")
            for b in bindings:
                table.add_row(_key_text(b), b.description, b.id or "")
        table.add_row("", "", "")
        table.add_row("ctrl+p", "command palette (every screen and action by name)", "")
        with VerticalScroll(id="help-body", can_focus=True):
            yield Static("[b]dpdeck keys[/b]  (q / Esc / ? closes; remap by id in $DPDECK_HOME/keymap.toml)")
            yield Static(table)

    def action_close(self) -> None:
        self.dismiss(None)
