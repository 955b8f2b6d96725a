"""Profile editor: Easy form (the template's essential fields), Advanced form (every field, by TOML table)
and the raw TOML, all over one set of file texts. Live validation; unsaved changes are never dropped silently.
"""

from __future__ import annotations

from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Static, TabbedContent, TabPane, TextArea

from tui import data
from tui.keyscheme import bind
from tui.widgets.deck_footer import DeckFooter
from tui.widgets.field import FieldRow

TABS = ("easy", "advanced", "toml")


def leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every editable leaf of a TOML document as (keypath, value); arrays of tables are walked by index."""
    out: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            out += leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
        for i, value in enumerate(node):
            out += leaves(value, f"{prefix}[{i}]")
    else:
        out.append((prefix, node))
    return out


def table_of(keypath: str) -> str:
    head = keypath.split(".", 1)[0]
    return head.split("[", 1)[0] if ("." in keypath or "[" in head) else ""


class Validated(Message):
    def __init__(self, generation: int, result: data.Validation | None, error: str | None) -> None:
        super().__init__()
        self.generation = generation
        self.result = result
        self.error = error


class Saved(Message):
    def __init__(self, version: int | None, error: str | None) -> None:
        super().__init__()
        self.version = version
        self.error = error


class EditorScreen(Screen[None]):
    BINDINGS = [
        bind("editor.save", "save", "Save", priority=True),
        bind("editor.next_tab", "next_tab", "Easy/Adv/TOML", priority=True),
        bind("editor.next_problem", "next_problem", "Next problem", priority=True),
        bind("editor.close", "close", "Close", priority=True),
        bind("editor.close_esc", "close", "Close", keys="escape", show=False),
    ]

    def __init__(self, name: str, files: dict[str, str], *, template: str | None, is_new: bool) -> None:
        super().__init__()
        from profiles.document import TomlFile

        self.profile_name = name
        self.template = template
        self.is_new = is_new
        self.files = dict(files)
        self.docs: dict[str, TomlFile] = {f: TomlFile.from_text(t, source=f) for f, t in self.files.items()}
        self.parse_errors: dict[str, str] = {}
        self.dirty = is_new
        # The texts a save in flight is writing, and whether a close waits for it (the save runs in a thread:
        # ctrl+s, ctrl+w in one breath must not ask about changes that are being saved that moment).
        self.saving: dict[str, str] | None = None
        self.close_after_save = False
        self.generation = 0
        self.validation: data.Validation | None = None
        self.validated_generation = -1  # the text generation self.validation judged
        self._debounce: Timer | None = None
        self._problem_cursor = 0

    # layout

    def compose(self) -> ComposeResult:
        yield Static("", id="editor-status")
        with TabbedContent(id="editor-tabs", initial="easy"):
            with TabPane("Easy", id="easy"), VerticalScroll(id="easy-form"):
                yield Static("", classes="form-problems", id="easy-problems")
                yield from self._easy_fields()
            with TabPane("Advanced", id="advanced"), VerticalScroll(id="advanced-form"):
                yield Static("", classes="form-problems", id="advanced-problems")
                yield from self._advanced_fields()
            with TabPane("TOML", id="toml"):
                yield Static("", id="toml-status", markup=False)
                with TabbedContent(id="toml-files"):
                    for i, (fname, text) in enumerate(self.files.items()):
                        with TabPane(fname, id=f"file-{i}"):
                            yield TextArea(text, id=f"text-{i}", classes="toml-text", show_line_numbers=True)
        yield DeckFooter()

    def _value(self, file: str, keypath: str) -> Any:
        doc = self.docs.get(file)
        return doc.get(keypath) if doc is not None else None

    def _easy_fields(self) -> ComposeResult:
        keys = data.essential_keys(self.template)
        for key in keys:
            file, keypath = (
                ("dataset.toml", key[len("dataset:") :]) if key.startswith("dataset:") else ("main.toml", key)
            )
            if file not in self.docs or (self.template is None and not self.docs[file].has(keypath)):
                continue
            yield FieldRow(file, keypath, self._value(file, keypath), data.field_help(key))

    def _advanced_fields(self) -> ComposeResult:
        for fname, doc in self.docs.items():
            current = None
            for keypath, value in leaves(doc.data()):
                group = table_of(keypath)
                if group != current:
                    current = group
                    title = f"[{group}]" if group else "top level"
                    yield Static(f"{fname}  {title}", classes="form-group")
                yield FieldRow(fname, keypath, value, data.field_help(keypath))

    def on_mount(self) -> None:
        self._status()
        self.validate_soon(0.05)  # not 0: a zero-interval timer breaks Textual's timer shutdown
        self.call_after_refresh(self._focus_first_field)

    def _focus_first_field(self) -> None:
        rows = list(self.query_one("#easy-form").query(FieldRow))
        if rows:
            from textual.widgets import Input

            rows[0].query_one(Input).focus()

    # state

    def _status(self) -> None:
        flag = "new, not saved yet" if self.is_new else ("unsaved changes" if self.dirty else "saved")
        parse = "; TOML does not parse" if self.parse_errors else ""
        if self.validation is None or self.validated_generation != self.generation:
            # Counts of an older text (or none yet) would read as a verdict on this one.
            verdict = "validating…"
        else:
            verdict = self.validation.verdict()
            if self.validation.runs_on:
                verdict += f" · {self.validation.runs_on}"
        self.query_one("#editor-status", Static).update(
            f" {self.profile_name} · {flag} · {verdict}{parse}   ctrl+s save · ctrl+t next tab · ctrl+w close"
        )

    def _mark_dirty(self) -> None:
        self.dirty = True
        self._status()
        self.validate_soon()

    # edits from the forms

    @on(FieldRow.Changed)
    def field_changed(self, event: FieldRow.Changed) -> None:
        row = event.row
        if row.file in self.parse_errors:
            row.set_problem(f"{row.file} does not parse; fix it in the TOML tab first", local=True)
            return
        doc = self.docs[row.file]
        if doc.has(row.keypath) and doc.get(row.keypath) == event.value:
            return  # the input's first value, not an edit
        doc.set(row.keypath, event.value)
        self.files[row.file] = doc.dumps()
        for other in self.query(FieldRow):  # the same key lives in both forms
            if other is not row and other.field_id == row.field_id:
                other.set_value(event.value)
        self._sync_text(row.file)
        self._mark_dirty()

    def _sync_text(self, fname: str) -> None:
        index = list(self.files).index(fname)
        area = self.query_one(f"#text-{index}", TextArea)
        if area.text != self.files[fname]:
            with area.prevent(TextArea.Changed):
                area.load_text(self.files[fname])

    # edits in the raw TOML

    @on(TextArea.Changed)
    def text_changed(self, event: TextArea.Changed) -> None:
        from profiles.document import TomlFile
        from profiles.errors import ProfileParseError

        index = int((event.text_area.id or "text-0").split("-")[1])
        fname = list(self.files)[index]
        if event.text_area.text == self.files[fname]:
            return  # the initial load, or our own sync from a form
        self.files[fname] = event.text_area.text  # the user's text is kept whether or not it parses
        try:
            doc = TomlFile.from_text(self.files[fname], source=fname)
        except ProfileParseError as exc:
            where = f"line {exc.line}" if exc.line else "somewhere"
            self.parse_errors[fname] = f"{fname} {where}: {exc.detail}"
        else:
            self.parse_errors.pop(fname, None)
            self.docs[fname] = doc
            for row in self.query(FieldRow):
                if row.file == fname:
                    row.set_value(doc.get(row.keypath))
        self._show_parse_errors()
        self._mark_dirty()

    def _show_parse_errors(self) -> None:
        status = self.query_one("#toml-status", Static)
        status.update("✗ " + "; ".join(self.parse_errors.values()) if self.parse_errors else "")
        status.set_class(bool(self.parse_errors), "problem")

    # validation

    def validate_soon(self, delay: float = 0.4) -> None:
        if self._debounce is not None:
            self._debounce.stop()
        self.generation += 1
        self._status()
        self._debounce = self.set_timer(delay, lambda: self._validate(self.generation, dict(self.files)))

    @work(thread=True, exclusive=True, group="editor-validate")
    def _validate(self, generation: int, files: dict[str, str]) -> None:
        try:
            result = data.validate_files(files)
        except Exception as exc:  # validation must never crash the editor
            self.post_message(Validated(generation, None, f"validation failed: {exc}"))
            return
        self.post_message(Validated(generation, result, None))

    def on_validated(self, message: Validated) -> None:
        if message.generation != self.generation:
            return  # an older text's result
        if message.error:
            self.notify(message.error, severity="error")
            return
        self.validation = message.result
        self.validated_generation = message.generation
        self._show_problems()
        self._status()

    def _show_problems(self) -> None:
        assert self.validation is not None
        by_field: dict[str, data.FieldProblem] = {}
        for prob in self.validation.problems:
            by_field.setdefault(f"{prob.file}:{prob.key}", prob)
        for row in self.query(FieldRow):
            prob = by_field.get(row.field_id)
            row.set_problem(prob.text if prob else "", prob.severity if prob else "error")
        for form in ("easy", "advanced"):
            shown = {r.field_id for r in self.query_one(f"#{form}-form").query(FieldRow)}
            rest = [p for p in self.validation.problems if f"{p.file}:{p.key}" not in shown]
            lines = [
                f"{'✗' if p.severity == 'error' else '!'} {p.file}:{p.line or '?'} {p.key}: {p.text}"
                for p in rest
            ]
            self.query_one(f"#{form}-problems", Static).update("\n".join(lines))
        if not self.parse_errors:
            lines = [
                f"{'✗' if p.severity == 'error' else '!'} {p.file}:{p.line or '?'} {p.key}: {p.text}"
                for p in self.validation.problems
            ]
            self.query_one("#toml-status", Static).update("\n".join(lines[:6]))

    def action_next_problem(self) -> None:
        """Jump to the next field with a problem (or the line of it, in the TOML tab)."""
        if not self.validation or not self.validation.problems:
            self.notify("No problems.")
            return
        prob = self.validation.problems[self._problem_cursor % len(self.validation.problems)]
        self._problem_cursor += 1
        tabs = self.query_one("#editor-tabs", TabbedContent)
        if tabs.active == "toml" and prob.line and prob.file in self.files:
            index = list(self.files).index(prob.file)
            self.query_one("#toml-files", TabbedContent).active = f"file-{index}"
            area = self.query_one(f"#text-{index}", TextArea)
            area.move_cursor((prob.line - 1, 0))
            area.focus()
            return
        form = "easy" if tabs.active == "easy" else "advanced"
        for row in self.query_one(f"#{form}-form").query(FieldRow):
            if row.field_id == f"{prob.file}:{prob.key}":
                from textual.widgets import Input

                row.query_one(Input).focus()
                row.scroll_visible()
                return
        self.notify(f"{prob.file}:{prob.line or '?'} {prob.key}: {prob.text}", severity="warning")

    # save / close

    def action_save(self) -> None:
        if self.parse_errors:
            self.notify("Cannot save: " + "; ".join(self.parse_errors.values()), severity="error", timeout=8)
            return
        self.saving = dict(self.files)
        self._save(self.saving, self.is_new)

    @work(thread=True, exclusive=True, group="editor-save")
    def _save(self, files: dict[str, str], create: bool) -> None:
        try:
            version = data.save_profile(self.profile_name, files, create=create)
        except Exception as exc:
            self.post_message(Saved(None, str(exc)))
            return
        self.post_message(Saved(version, None))

    def on_saved(self, message: Saved) -> None:
        written, self.saving = self.saving, None
        close, self.close_after_save = self.close_after_save, False
        if message.error:
            self.notify(f"Not saved: {message.error}", severity="error", timeout=10)
            return
        self.is_new = False
        # An edit made while the save ran is not in the stored version: still dirty then.
        self.dirty = written != self.files
        if close and not self.dirty:
            self.notify(f"Saved {self.profile_name} v{message.version}")
            self.dismiss(None)
            return
        errors = len(self.validation.errors) if self.validation else 0
        note = (
            f" (with {errors} validation error(s): it will not train until they are fixed)" if errors else ""
        )
        self.notify(f"Saved {self.profile_name} v{message.version}{note}")
        self._status()

    def action_next_tab(self) -> None:
        tabs = self.query_one("#editor-tabs", TabbedContent)
        tabs.active = TABS[(TABS.index(tabs.active) + 1) % len(TABS)]
        if tabs.active == "toml":  # the TOML tab is its text: the keys typed next go there (issue 16)
            inner = self.query_one("#toml-files", TabbedContent)
            self.call_after_refresh(lambda: inner.active_pane and self.set_focus(inner.active_pane.query_one(TextArea)))

    def action_close(self) -> None:
        if not self.dirty:
            self.dismiss(None)
            return
        if self.saving is not None and self.saving == self.files:
            self.close_after_save = True  # on_saved closes (or, if the save fails, says so and stays)
            return
        from tui.screens.dialogs import ConfirmDialog

        def answer(discard: bool | None) -> None:
            if discard:
                self.dirty = False
                self.dismiss(None)

        self.app.push_screen(
            ConfirmDialog(
                f"{self.profile_name} has unsaved changes. Discard them? (n keeps editing; ctrl+s saves)"
            ),
            answer,
        )
