"""Dialogs of the Datasets screen: a batch operation's arguments and scope, and its dry-run diff to confirm."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Checkbox, Input, OptionList, Static
from textual.widgets.option_list import Option

from tui.keymap import shown_key
from tui.keyscheme import bind
from tui.widgets.dataset_model import OP_FIELDS, OPS, BatchSpec, check_spec

MAX_DIFF_LINES = 3000  # more would make the dialog slow to lay out; the count says what is left out


class BatchDialog(ModalScreen[tuple[BatchSpec, str] | None]):
    """Arguments of one op and the files it covers. Enter runs the dry run; the reason shows when refused."""

    BINDINGS = [bind("batch.cancel", "cancel", "Cancel", keys="escape")]

    def __init__(self, op: str, scopes: list[tuple[str, str]]) -> None:
        super().__init__()
        self.op = op
        self.scopes = scopes  # (scope id, label), the first is the default

    def compose(self) -> ComposeResult:
        title = dict(OPS)[self.op]
        with Vertical(classes="dialog", id="batch-dialog"):
            yield Static(f"Batch: {title}", classes="dialog-text", markup=False)
            for i, label in enumerate(OP_FIELDS.get(self.op, [])):
                yield Input(placeholder=label, id=f"batch-arg{i}", compact=True)
            if self.op == "remove":
                yield Checkbox("regular expression (full match)", id="batch-regex", compact=True)
            yield Static("Files:", markup=False)
            yield OptionList(*[Option(label, id=sid) for sid, label in self.scopes], id="batch-scope")
            yield Static("", id="batch-error", classes="problem")
            yield Static(
                "[b]Enter[/b] dry run (shows the diff)  [b]Tab[/b] next field  [b]Esc[/b] cancel",
                classes="dialog-keys",
            )

    def on_mount(self) -> None:
        self.query_one("#batch-scope", OptionList).highlighted = 0
        first = self.query(Input).first() if self.query(Input) else self.query_one("#batch-scope")
        first.focus()

    def spec(self) -> BatchSpec:
        args = [i.value for i in self.query(Input)]
        regex = bool(self.query("#batch-regex")) and self.query_one("#batch-regex", Checkbox).value
        return BatchSpec(self.op, args, regex)

    def _submit(self) -> None:
        spec = self.spec()
        error = check_spec(spec)
        if error:
            self.query_one("#batch-error", Static).update(Text(error))
            return
        scope = self.query_one("#batch-scope", OptionList)
        index = scope.highlighted or 0
        self.dismiss((spec, str(scope.get_option_at_index(index).id)))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._submit()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self._submit()

    def action_cancel(self) -> None:
        self.dismiss(None)


def diff_text(diff: str) -> Text:
    lines = diff.splitlines()
    out = Text()
    for line in lines[:MAX_DIFF_LINES]:
        style = ""
        if line.startswith(("+++", "---")):
            style = "bold"
        elif line.startswith("+"):
            style = "green"
        elif line.startswith("-"):
            style = "red"
        elif line.startswith("@@"):
            style = "cyan"
        out.append(line + "\n", style=style)
    if len(lines) > MAX_DIFF_LINES:
        out.append(f"... {len(lines) - MAX_DIFF_LINES} more diff lines not shown\n", style="bold")
    return out


class ApplyDialog(ModalScreen[bool]):
    """The dry run: what would change, as a diff. `y` applies (undoable), `n`/`q`/Esc cancels."""

    BINDINGS = [
        bind("apply.yes", "answer(True)", "Apply", keys="y"),
        bind("apply.no", "answer(False)", "Cancel"),
    ]

    def __init__(self, title: str, summary: str, diff: str) -> None:
        super().__init__()
        self.title_text = title
        self.summary = summary
        self.diff = diff

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Static(self.title_text, classes="dialog-text", markup=False)
            yield Static(self.summary, id="apply-summary", markup=False)
            with VerticalScroll(id="apply-diff", can_focus=True):
                yield Static(diff_text(self.diff) if self.diff else Text("(no file would change)"))
            yield Static(
                f"[b]y[/b] apply (undo with {shown_key(self.app, 'datasets.undo')})    [b]n[/b]/[b]Esc[/b] cancel    "
                "arrows/PgUp/PgDn scroll",
                classes="dialog-keys",
            )

    def on_mount(self) -> None:
        self.query_one("#apply-diff").focus()

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)
