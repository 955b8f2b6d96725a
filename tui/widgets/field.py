"""One form field: key, input, plain-language help, and the problem (if any) right under it."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Label, Static

from statefiles import toml as tomllib


def show_value(value: Any) -> str:
    """How a TOML value is shown in an input: strings bare, everything else as TOML."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    import tomlkit

    return tomlkit.item(value).as_string()


def parse_value(raw: str, current: Any) -> Any:
    """The user's text as a value of the field's current type. Raises ValueError with the reason."""
    text = raw.strip()
    if isinstance(current, bool):
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise ValueError("expected true or false")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected a whole number, found {raw!r}") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number like 0.0001 or 1e-4, found {raw!r}") from None
    if isinstance(current, str):
        return raw
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if current is None:
            return raw
        raise ValueError(f"expected a TOML value like {show_value(current)}, found {raw!r}") from None


class FieldRow(Vertical):
    class Changed(Message):
        def __init__(self, row: FieldRow, value: Any) -> None:
            super().__init__()
            self.row = row
            self.value = value

    def __init__(self, file: str, keypath: str, value: Any, help_text: str) -> None:
        super().__init__(classes="field")
        self.file = file
        self.keypath = keypath
        self.value = value
        self.help_text = help_text

    @property
    def field_id(self) -> str:
        return f"{self.file}:{self.keypath}"

    def compose(self) -> ComposeResult:
        label = self.keypath if self.file == "main.toml" else f"{self.keypath}  ({self.file})"
        yield Label(label, classes="field-key")
        yield Input(show_value(self.value), classes="field-input")
        if self.help_text:
            yield Static(self.help_text, classes="field-help", markup=False)
        yield Static("", classes="problem field-problem", markup=False)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        try:
            value = parse_value(event.value, self.value)
        except ValueError as exc:
            self.set_problem(str(exc), "error", local=True)
            return
        self.local_error = False
        self.value = value
        self.post_message(self.Changed(self, value))

    local_error: bool = False

    def set_problem(self, text: str, severity: str = "error", *, local: bool = False) -> None:
        if not local and self.local_error:
            return  # the field's own refusal wins until the user fixes the text
        self.local_error = local and bool(text)
        box = self.query_one(".field-problem", Static)
        box.update(("✗ " if severity == "error" else "! ") + text if text else "")
        box.set_class(severity == "warning", "warning")
        self.set_class(bool(text) and severity == "error", "has-error")

    def set_value(self, value: Any) -> None:
        self.value = value
        box = self.query_one(Input)
        with box.prevent(Input.Changed):
            box.value = show_value(value)
        self.local_error = False
