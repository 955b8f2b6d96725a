"""Modal dialogs: confirm, prompt (with a validator), choose from a list, and read-only text."""

from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from tui.keyscheme import bind
from tui.screens.list_keys import VIM_LIST_BINDINGS, OptionListKeys
from tui.widgets.path_input import PathInput, candidates_line


class ConfirmDialog(ModalScreen[bool]):
    """Yes/no. `y`/Enter confirms; `n`/Esc cancels (Esc is never the only way out: `n` works too)."""

    BINDINGS = [
        bind("confirm.yes", "answer(True)", "Yes"),
        bind("confirm.no", "answer(False)", "No"),
    ]

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.message, classes="dialog-text", markup=False)
            yield Static("[b]y[/b] yes    [b]n[/b] no", classes="dialog-keys")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class PromptDialog(ModalScreen[str | None]):
    """One line of text. `check(value)` returns an error message (shown, dialog stays) or None.

    path=True: the text is a file system path and Tab completes it (tui/widgets/path_input.py).
    """

    BINDINGS = [bind("prompt.cancel", "cancel", "Cancel", keys="escape")]

    def __init__(
        self,
        label: str,
        value: str = "",
        check: Callable[[str], str | None] | None = None,
        *,
        path: bool = False,
    ) -> None:
        super().__init__()
        self.label = label
        self.value = value
        self.check = check
        self.path = path

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.label, classes="dialog-text", markup=False)
            yield PathInput(self.value, id="prompt-input") if self.path else Input(self.value, id="prompt-input")
            yield Static("", id="prompt-error", classes="problem", markup=False)
            yield Static("", id="prompt-candidates", markup=False)
            keys = "[b]Tab[/b] complete    " if self.path else ""
            yield Static(f"{keys}[b]Enter[/b] ok    [b]Esc[/b] cancel", classes="dialog-keys")

    def on_path_input_candidates(self, event: PathInput.Candidates) -> None:
        event.stop()
        self.query_one("#prompt-candidates", Static).update(candidates_line(event.names))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        error = self.check(event.value) if self.check else None
        if error:
            self.query_one("#prompt-error", Static).update(error)
            return
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ChoiceDialog(OptionListKeys, ModalScreen[str | None]):
    """Pick one of several (id, label) choices."""

    BINDINGS = [*VIM_LIST_BINDINGS, bind("choice.cancel", "cancel", "Cancel")]

    def __init__(self, title: str, choices: list[tuple[str, str]]) -> None:
        super().__init__()
        self.title_text = title
        self.choices = choices

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.title_text, classes="dialog-text", markup=False)
            yield OptionList(*[Option(label, id=cid) for cid, label in self.choices], id="choice-list")
            yield Static("[b]Enter[/b] choose    [b]Esc[/b] cancel", classes="dialog-keys")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)


class TextDialog(ModalScreen[None]):
    """Scrollable read-only text (diffs, previews)."""

    BINDINGS = [bind("text.close", "close", "Close")]

    def __init__(self, title: str, text: str) -> None:
        super().__init__()
        self.title_text = title
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Static(self.title_text, classes="dialog-text", markup=False)
            with VerticalScroll(id="text-body", can_focus=True):
                yield Static(self.text or "(nothing)", markup=False)
            yield Static("[b]q[/b]/[b]Esc[/b] close    arrows/PgUp/PgDn scroll", classes="dialog-keys")

    def action_close(self) -> None:
        self.dismiss(None)
