"""Profiles: the user's stored profiles and the built-in templates; open, create, copy, rename, delete,
history, diff, import/export, enqueue. The right pane summarises the highlighted profile (tui/profile_summary.py).
"""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from tui import data
from tui.engine_api import engine_of
from tui.keyscheme import bind
from tui.screens.base import DeckScreen
from tui.screens.list_keys import VIM_LIST_BINDINGS


class SummaryLoaded(Message):
    def __init__(self, name: str, text: str) -> None:
        super().__init__()
        self.name = name
        self.text = text


class RowsLoaded(Message):
    def __init__(self, rows: list[data.ProfileRow], error: str | None = None) -> None:
        super().__init__()
        self.rows = rows
        self.error = error


def parse_gpus(text: str) -> list[int] | None:
    """`0,1` -> [0, 1]; empty -> None (any free GPU). Raises ValueError with the reason."""
    text = text.strip()
    if not text:
        return None
    out: list[int] = []
    for part in text.replace(" ", ",").split(","):
        if not part:
            continue
        if not part.isdigit():
            raise ValueError(f"{part!r} is not a GPU index; expected numbers like 0,1")
        out.append(int(part))
    if len(set(out)) != len(out):
        raise ValueError("a GPU is listed twice")
    return out


def check_profile_name(name: str) -> str | None:
    from profiles import store

    try:
        store.check_name(name)
    except store.InvalidName as exc:
        return str(exc)
    if store.exists(name):
        return f"a profile named {name!r} already exists"
    return None


class ProfilesScreen(DeckScreen):
    TITLE_TEXT = "Profiles"
    BINDINGS = [
        *VIM_LIST_BINDINGS,
        bind("profiles.open", "open", "Open"),
        bind("profiles.enqueue", "enqueue", "Enqueue"),
        bind("profiles.new", "new", "New"),
        bind("profiles.delete", "delete", "Delete"),
        bind("profiles.rename", "rename", "Rename"),
        bind("profiles.copy", "copy", "Copy"),
        # priority + open_field: the letters typed in the same burst as `/` land in the filter
        bind("profiles.search", "search", "Search", priority=True),
        bind("profiles.history", "history", "History"),
        bind("profiles.diff", "diff", "Diff"),
        bind("profiles.import", "import", "Import"),
        bind("profiles.export", "export", "Export"),
        bind("profiles.reload", "reload", "Reload", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[data.ProfileRow] = []
        self.filter = ""
        self.just_made: str | None = None
        self.summaries: dict[str, str] = {}  # profile name -> its summary text, until the rows reload

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="profiles-body"):
            yield OptionList(id="profile-list")
            with VerticalScroll(id="profile-preview"):
                yield Static("Loading profiles…", id="profile-detail")
        # Always displayed (compact): focusing a widget that is still display:none would lose the keys
        # typed right after `/`.
        yield Input(
            placeholder="/ search profiles (Enter keeps, Esc clears)", id="profile-search", compact=True
        )

    def on_mount(self) -> None:
        super().on_mount()
        self.load_rows()
        self.query_one("#profile-list", OptionList).focus()

    def on_screen_resume(self) -> None:
        self.load_rows()

    @work(thread=True, exclusive=True, group="profiles-load")
    def load_rows(self) -> None:
        try:
            rows = data.profile_rows()
        except Exception as exc:  # a broken store must not take the deck down; show why
            self.post_message(RowsLoaded([], f"cannot read profiles: {exc}"))
            return
        self.post_message(RowsLoaded(rows))

    def on_rows_loaded(self, message: RowsLoaded) -> None:
        self.rows = message.rows
        self.summaries.clear()  # a save, a rename, a run may have changed any of them
        if message.error:
            self.query_one("#profile-detail", Static).update(escape(message.error))
        self._fill()

    def _visible(self) -> list[data.ProfileRow]:
        needle = self.filter.lower()
        return [r for r in self.rows if needle in r.name.lower() or needle in r.model_type.lower()]

    def _fill(self) -> None:
        olist = self.query_one("#profile-list", OptionList)
        keep = self.selected()
        olist.clear_options()
        visible = self._visible()
        for kind in ("profile", "template"):
            group = [r for r in visible if r.kind == kind]
            title = "Your profiles" if kind == "profile" else "Templates (Enter: new profile from it)"
            olist.add_option(Option(Text(title, style="bold underline"), disabled=True))
            if kind == "profile" and not group:
                olist.add_option(
                    Option(Text("  none yet: pick a template below", style="dim"), disabled=True)
                )
            for row in group:
                olist.add_option(Option(Text(f"  {row.name}  [{row.model_type}]"), id=f"{kind}:{row.name}"))
        target = f"{keep.kind}:{keep.name}" if keep else None
        if self.just_made and any(r.kind == "profile" and r.name == self.just_made for r in visible):
            target, self.just_made = f"profile:{self.just_made}", None  # a new profile, once saved: on it
        index = next(
            (i for i in range(olist.option_count) if target and olist.get_option_at_index(i).id == target),
            None,
        )
        if index is None:
            index = next(
                (i for i in range(olist.option_count) if not olist.get_option_at_index(i).disabled), None
            )
        olist.highlighted = index
        self._show_detail()

    def selected(self) -> data.ProfileRow | None:
        olist = self.query_one("#profile-list", OptionList)
        if olist.highlighted is None or olist.highlighted >= olist.option_count:
            return None
        oid = olist.get_option_at_index(olist.highlighted).id
        if not oid:
            return None
        kind, _, name = oid.partition(":")
        return next((r for r in self.rows if r.kind == kind and r.name == name), None)

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        self._show_detail()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.action_open()

    def _show_detail(self) -> None:
        row = self.selected()
        detail = self.query_one("#profile-detail", Static)
        if row is None:
            detail.update("No profile selected.")
            return
        row = data.ProfileRow(row.kind, escape(row.name), escape(row.model_type), escape(row.detail))
        if row.kind == "template":
            text = (
                f"[b]{row.name}[/b]  template · {row.model_type}\n\n{row.detail}\n\n"
                f"{self.key_hint('profiles.open')}/{self.key_hint('profiles.new')} new profile from this template"
            )
        else:
            summary = self.summaries.get(row.name)
            text = (
                f"[b]{row.name}[/b]  profile · {row.model_type}\n{row.detail}\n\n"
                + (escape(summary) if summary is not None else "reading its settings and runs…")
                + "\n\n"
                + self.key_hints(
                    [
                        ("profiles.open", "edit"),
                        ("profiles.enqueue", "enqueue"),
                        ("profiles.history", "history"),
                        ("profiles.diff", "diff"),
                        ("profiles.delete", "delete"),
                    ]
                )
            )
            if summary is None:
                self._load_summary(row.name)
        detail.update(text)

    @work(thread=True, exclusive=True, group="profiles-summary")
    def _load_summary(self, name: str) -> None:
        from tui.profile_summary import summary_text

        try:
            text = summary_text(data.profile_summary(engine_of(self.app), name))
        except Exception as exc:  # a profile deleted meanwhile, an unreadable file: say why in the pane
            text = f"cannot summarise {name}: {exc}"
        self.post_message(SummaryLoaded(name, text))

    def on_summary_loaded(self, message: SummaryLoaded) -> None:
        self.summaries[message.name] = message.text
        row = self.selected()
        if row is not None and row.kind == "profile" and row.name == message.name:
            self._show_detail()

    # list movement (vim keys)
    def action_cursor_down(self) -> None:
        self.query_one("#profile-list", OptionList).action_cursor_down()

    def action_cursor_up(self) -> None:
        self.query_one("#profile-list", OptionList).action_cursor_up()

    def action_first(self) -> None:
        self.query_one("#profile-list", OptionList).action_first()

    def action_last(self) -> None:
        self.query_one("#profile-list", OptionList).action_last()

    FIELD_ACTIONS = frozenset({"search"})

    def action_search(self) -> None:
        self.open_field(self.query_one("#profile-search", Input))

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "profile-search":
            self.filter = event.value
            self._fill()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "profile-search":
            self.query_one("#profile-list", OptionList).focus()

    def on_key(self, event: object) -> None:
        from textual.events import Key

        if isinstance(event, Key) and event.key == "escape":
            box = self.query_one("#profile-search", Input)
            if box.has_focus:
                box.value = ""
                self.query_one("#profile-list", OptionList).focus()
                event.stop()

    # actions
    def _need_profile(self, verb: str) -> data.ProfileRow | None:
        row = self.selected()
        if row is None or row.kind != "profile":
            self.notify(
                f"Select one of your profiles to {verb} (templates: Enter makes a profile).",
                severity="warning",
            )
            return None
        return row

    def action_open(self) -> None:
        row = self.selected()
        if row is None:
            return
        if row.kind == "template":
            self.action_new()
            return
        from tui.screens.editor import EditorScreen

        self.app.push_screen(EditorScreen(row.name, data.stored_files(row.name), template=None, is_new=False))

    def action_new(self) -> None:
        row = self.selected()
        template = row.name if row is not None and row.kind == "template" else None
        if template is None:
            from profiles.templates import default_template

            template = default_template().name
        from tui.screens.dialogs import PromptDialog

        def made(name: str | None) -> None:
            if not name:
                return
            self.just_made = name  # highlighted when the editor closes, ready for q
            from tui.screens.editor import EditorScreen

            files = data.template_files(template)
            self.app.push_screen(EditorScreen(name, files, template=template, is_new=True))

        self.app.push_screen(
            PromptDialog(
                f"New profile from template {template}. Name:", f"my-{template}", check_profile_name
            ),
            made,
        )

    def action_history(self) -> None:
        row = self._need_profile("see its history")
        if row is None:
            return
        from tui.screens.history import HistoryDialog

        self.app.push_screen(HistoryDialog(row.name), lambda _: self.load_rows())

    def action_diff(self) -> None:
        row = self._need_profile("diff it")
        if row is None:
            return
        from tui.screens.dialogs import ChoiceDialog

        others = [(f"{r.kind}:{r.name}", f"{r.name} ({r.kind})") for r in self.rows if r.name != row.name]

        def chosen(oid: str | None) -> None:
            if oid:
                self._diff(row.name, oid.partition(":")[2])

        self.app.push_screen(ChoiceDialog(f"Diff {row.name} against:", others), chosen)

    @work(thread=True, exclusive=True, group="profiles-diff")
    def _diff(self, left: str, right: str) -> None:
        try:
            lines = data.diff_profiles(left, right)
            text = "\n".join(lines) if lines else "The two profiles are the same."
        except Exception as exc:
            text = f"cannot diff: {exc}"
        from tui.screens.dialogs import TextDialog

        self.app.call_from_thread(self.app.push_screen, TextDialog(f"{left} -> {right}", text))

    def action_export(self) -> None:
        row = self._need_profile("export it")
        if row is None:
            return
        from tui.screens.dialogs import PromptDialog

        default = str(Path.cwd() / f"{row.name}.dpdeck.tar.gz")

        def go(dest: str | None) -> None:
            if dest:
                self._run_io(lambda: f"exported to {data.export_profile(row.name, Path(dest).expanduser())}")

        self.app.push_screen(PromptDialog(f"Export {row.name} to:", default, path=True), go)

    def action_import(self) -> None:
        from tui.screens.dialogs import PromptDialog

        def check(path: str) -> str | None:
            return None if Path(path).expanduser().is_file() else f"{path}: no such file"

        def go(src: str | None) -> None:
            if src:
                self._run_io(lambda: f"imported as {data.import_profile(Path(src).expanduser(), None)}")

        self.app.push_screen(
            PromptDialog("Import a .dpdeck.tar.gz archive or a main TOML:", "", check, path=True), go
        )

    @work(thread=True, group="profiles-io")
    def _run_io(self, job: object) -> None:
        try:
            msg = job()  # type: ignore[operator]
        except Exception as exc:
            self.app.call_from_thread(self.notify, str(exc), severity="error", timeout=8)
            return
        self.app.call_from_thread(self.notify, str(msg))
        self.load_rows()

    def action_enqueue(self) -> None:
        row = self._need_profile("enqueue it")
        if row is None:
            return
        from tui.screens.dialogs import PromptDialog

        def check(text: str) -> str | None:
            try:
                parse_gpus(text)
            except ValueError as exc:
                return str(exc)
            return None

        def go(text: str | None) -> None:
            if text is not None:
                # Said at once: the enqueue may wait ten seconds for the demo model (tui/data.py enqueue).
                self.notify(f"enqueueing {row.name}…", timeout=4)
                self._enqueue(row.name, parse_gpus(text))

        self.app.push_screen(
            PromptDialog(f"Enqueue {row.name}. GPUs (e.g. 0,1; empty = any free GPU):", "", check), go
        )
        self._prebuild_demo(row.name)

    @work(thread=True, group="profiles-prebuild")
    def _prebuild_demo(self, name: str) -> None:
        """Start the demo model's build (the ten seconds of an enqueue) while the GPUs are being typed; the
        enqueue waits for it (tui/data.py holds one build at a time) and reports a failure itself."""
        try:
            data.build_demo_data_if_used(name)
        except Exception:  # noqa: BLE001 - the enqueue builds again and shows the reason
            return

    @work(thread=True, group="profiles-enqueue")
    def _enqueue(self, name: str, gpus: list[int] | None) -> None:
        try:
            if data.demo_build_needed(name):
                self.app.call_from_thread(
                    self.notify, f"{name}: {data.DEMO_BUILD_NOTE}; the job is queued right after", timeout=12
                )
            job_id = data.enqueue(engine_of(self.app), name, gpus)
        except Exception as exc:
            self.app.call_from_thread(
                self.notify, f"cannot enqueue {name}: {exc}", severity="error", timeout=8
            )
            return
        self.app.call_from_thread(self.notify, f"job {job_id} queued: {name} (Queue: key 2)")
        self.summaries.pop(name, None)  # its last runs changed

    def action_reload(self) -> None:
        self.load_rows()

    # delete / rename / copy: the CLI's own store functions (profiles/store.py), so both keep the same rules

    def action_delete(self) -> None:
        row = self._need_profile("delete it")
        if row is None:
            return
        self.confirm(
            f"Delete profile {row.name}? It moves to the trash with its history; "
            f"bring it back with: dpdeck profile undelete {row.name}",
            lambda: self._run_io(lambda: self._deleted(row.name)),
        )

    @staticmethod
    def _deleted(name: str) -> str:
        where = data.delete_profile(name)
        return f"deleted {name} (moved to {where}; bring it back with: dpdeck profile undelete {name})"

    def action_rename(self) -> None:
        row = self._need_profile("rename it")
        if row is None:
            return
        from tui.screens.dialogs import PromptDialog

        def go(new: str | None) -> None:
            if new:
                self.just_made = new
                self._run_io(lambda: f"renamed {row.name} to {new} ({data.rename_profile(row.name, new)})")

        self.app.push_screen(PromptDialog(f"Rename {row.name} to:", row.name, check_profile_name), go)

    def action_copy(self) -> None:
        row = self._need_profile("copy it")
        if row is None:
            return
        from tui.screens.dialogs import PromptDialog

        def go(new: str | None) -> None:
            if new:
                self.just_made = new
                self._run_io(lambda: f"copied {row.name} to {new} (v{data.copy_profile(row.name, new)})")

        self.app.push_screen(PromptDialog(f"Copy {row.name} as:", f"{row.name}-copy", check_profile_name), go)
