"""Check a profile's model files: what is missing, which registry entry provides it, pull it all with one key,
watch the downloads, then fill the profile so it validates.

This is the issue's "done when" as a screen: an empty box, the Chroma E6AI 512 profile, `p` pulls the
missing files (the daemon runs them: a dropped ssh session does not stop them), `u` fills the paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from textual import work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Static

from engine.models import downloads
from engine.models.fill import ModelFileIssue
from tui.keyscheme import bind
from tui.screens.base import DeckScreen
from tui.screens.models_text import download_line
from tui.screens.use_in_profile import UseInProfile


@dataclass
class CheckState:
    issues: list[ModelFileIssue] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)  # registry entries that provide what is missing
    dls: list[downloads.Download] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # validation errors left (any key)
    failure: str | None = None  # the profile could not be read


class CheckLoaded(Message):
    def __init__(self, state: CheckState) -> None:
        super().__init__()
        self.state = state


def read_state(name: str, plan: list[str]) -> CheckState:
    """Everything the view shows, read in one go (called from a worker thread)."""
    from engine.models.fill import missing_model_files
    from profiles import store
    from profiles.validate import validate_profile

    state = CheckState()
    try:
        profile = store.load_stored(name)
    except Exception as exc:  # a broken profile is shown, not raised
        state.failure = str(exc)
        return state
    state.issues = missing_model_files(profile)
    state.plan = list(plan)
    for issue in state.issues:
        if issue.provided_by and not any(p in state.plan for p in issue.provided_by):
            state.plan.append(issue.provided_by[0])
    state.dls = [d for d in downloads.list_downloads() if d.entry in state.plan]
    state.errors = [str(p) for p in validate_profile(profile, check_paths="error") if p.severity == "error"]
    return state


class CheckScreen(UseInProfile, DeckScreen):
    TITLE_TEXT = "Models · check profile"
    POLL_SECONDS = 1.0
    BINDINGS = [
        bind("models.check.pull_all", "pull_all", "Pull all missing"),
        bind("models.check.use", "use", "Use in profile"),
        bind("models.check.recheck", "recheck", "Re-check"),
        bind("models.check.back", "back", "Back"),
    ]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.profile_name = name
        self.state = CheckState()

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="check-body"):
            yield Static(f"[b]Profile {self.profile_name}[/b]: model files", id="check-head")
            yield Static("checking…", id="check-issues", markup=False)
            yield Static("[b]Downloads[/b]")
            yield Static("none started", id="check-downloads", markup=False)
            yield Static("[b]Validation[/b]")
            yield Static("…", id="check-validation", markup=False)

    def on_mount(self) -> None:
        self.query_one("#check-body", VerticalScroll).styles.height = "1fr"
        super().on_mount()

    def poll(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, group="check-load")
    def load(self) -> None:
        self.post_message(CheckLoaded(read_state(self.profile_name, self.state.plan)))

    def on_check_loaded(self, message: CheckLoaded) -> None:
        st = self.state = message.state
        if st.failure:
            self.query_one("#check-issues", Static).update(f"cannot read the profile: {st.failure}")
            return
        if st.issues:
            lines = [f"{i.key}: {i.problem}" + (f" <- {', '.join(i.provided_by[:2])}" if i.provided_by else
                                                 " (no registry entry provides it: `models use FILE`)")
                     for i in st.issues]
            lines.append(f"a: pull {', '.join(st.plan)}; u: fill the profile's paths" if st.plan else "")
        else:
            lines = ["all model files are in place"]
        self.query_one("#check-issues", Static).update("\n".join(lines))
        live = [d for d in st.dls if d.state in downloads.LIVE]
        text = "\n".join(download_line(d) for d in sorted(st.dls, key=lambda d: d.created_at)[-6:])
        if st.dls and not live and st.issues:
            text += "\nno download running: press u to fill the profile"
        self.query_one("#check-downloads", Static).update(text or "none started (a pulls)")
        verdict = "the profile validates" if not st.errors else f"{len(st.errors)} error(s) left:\n" + "\n".join(
            e[-76:] for e in st.errors[:4])
        self.query_one("#check-validation", Static).update(verdict)

    def action_recheck(self) -> None:
        self.load()

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_pull_all(self) -> None:
        if not self.state.plan:
            self.notify("nothing to pull: every model file is in place, or no registry entry provides it")
            return
        self._ask_pull(list(self.state.plan))

    @work(thread=True, exclusive=True, group="check-ask")
    def _ask_pull(self, plan: list[str]) -> None:
        """All of it at once can be tens of GB: a large pull names its size and the free space first."""
        from engine.models.registry import load_registry
        from tui.screens.models_text import free_bytes, part_infos, pull_question, to_download

        fetch = [p for entry_id in plan for p in to_download(part_infos(load_registry().get(entry_id)))]
        question = pull_question(", ".join(plan), fetch, free_bytes())
        if question is None:
            self.app.call_from_thread(self._pull, plan)  # workers start on the app's thread
        else:
            self.app.call_from_thread(self.confirm, question, lambda: self._pull(plan))

    @work(thread=True, exclusive=True, group="check-pull")
    def _pull(self, plan: list[str]) -> None:
        from engine.models.registry import load_registry

        started = 0
        for entry_id in plan:
            try:
                started += len(downloads.pull_entry(load_registry().get(entry_id)))
            except Exception as exc:  # the message says what to do (gated, no space, offline)
                self._note(f"pull {entry_id}: {exc}", error=True)
                return
        self._note(f"{started} download(s) started; they keep going if you close the deck" if started
                   else "every part is already downloaded: press u to fill the profile")
        self.load()

    def action_use(self) -> None:
        if not self.state.plan:
            self.notify("no registry entry to fill from")
            return
        plan = list(self.state.plan)

        def edit(profile: object) -> tuple[list[object], str]:
            from engine.models.fill import use_entry
            from engine.models.registry import load_registry

            changes: list[object] = []
            for entry_id in plan:
                changes += use_entry(profile, load_registry().get(entry_id))  # type: ignore[arg-type]
            return changes, " + ".join(plan)

        self.propose_use(self.profile_name, edit, f"models use {' '.join(plan)}")  # type: ignore[arg-type]
