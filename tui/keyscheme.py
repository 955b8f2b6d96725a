"""The deck's key scheme as data: one verb per key on every screen, and which verbs confirm.

Screens build their bindings with `bind(id, action, description)`: the key comes from here, so a verb cannot
drift to another letter on one screen. docs/tui.md's scheme table is rendered from `SCHEME`
(`python -m tui.keyscheme`) and tests/test_tui_keys.py holds the app, this table and the doc together.

The rules this table keeps (tests check each):
- a key means one verb wherever it is bound (case matters: `d` and `D` are two keys);
- a binding id is `<area>.<verb>`; an id whose suffix is not its verb's name is listed in the verb's `ids`;
- global verbs (`GLOBAL`) are bound only by the app, so no screen can change what they mean;
- yes/no dialogs answer with their own keys (`dialog=True`): a modal answer, not a verb, so `n` there is "no"
  while elsewhere it is "next match".
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import Enum
from typing import Any

from textual.binding import Binding
from textual.keys import format_key


class Confirm(Enum):
    NO = "no"
    YES = "yes"  # destructive or costly: a yes/no dialog first
    PROMPT = "prompt"  # asks for input first (a name, GPUs, a profile); Esc there cancels
    LARGE = "when large"  # a download: asks when it is large
    UNSAVED = "unsaved"  # asks only when an editor has unsaved changes


@dataclass(frozen=True)
class Verb:
    name: str
    keys: tuple[str, ...]  # Textual key names; the first is the main one
    does: str
    confirms: Confirm = Confirm.NO
    ids: tuple[str, ...] = ()  # binding ids whose suffix is not `name`
    dialog: bool = False


C = Confirm
SCHEME: tuple[Verb, ...] = (
    # Global: bound by the app only.
    Verb("profiles", ("1",), "go to Profiles"),
    Verb("queue", ("2",), "go to Queue"),
    Verb("run", ("3",), "go to Run"),
    Verb("system", ("4",), "go to System"),
    Verb("datasets", ("5",), "go to Datasets"),
    Verb("models", ("6",), "go to Models"),
    Verb("help", ("question_mark", "f1"), "help: this screen's keys first", ids=("help.toggle",)),
    Verb(
        "back",
        ("q", "escape"),
        "back: close a field, panel, dialog or sub-screen; `q` on an area quits the deck (jobs keep running)",
        ids=(
            "help.close",
            "history.close",
            "models.check.back",
            "choice.cancel",
            "text.close",
            "prompt.cancel",
            "batch.cancel",
            "run.search_close",
            "editor.close_esc",
            "datasets.back",
            "notifications.close",
        ),
    ),
    Verb("quit", ("ctrl+q",), "quit the deck (jobs keep running)", C.UNSAVED),
    Verb("notifications", ("exclamation_mark",), "notification history"),
    # Lists and text.
    Verb("down", ("j",), "down in a list"),
    Verb("up", ("k",), "up in a list"),
    Verb("top", ("g",), "top of a list"),
    Verb("bottom", ("G",), "bottom of a list"),
    Verb("open", ("enter",), "open the highlighted item", ids=("datasets.edit_enter",)),
    Verb("search", ("slash",), "search / filter", ids=("datasets.tag",)),
    Verb("next_match", ("n",), "next match of the search", ids=("run.search_next",)),
    Verb("prev_match", ("N",), "previous match of the search", ids=("run.search_prev",)),
    Verb("edit", ("e",), "edit"),
    Verb("save", ("ctrl+s",), "save"),
    Verb("revert", ("ctrl+r",), "drop the unsaved edit"),
    Verb("next_tab", ("ctrl+t",), "next tab"),
    Verb("close", ("ctrl+w",), "close the editor", C.UNSAVED),
    Verb("complete", ("tab",), "complete the path typed in a prompt"),
    Verb("next_problem", ("ctrl+n",), "next problem / error line", ids=("run.next_error",)),
    # Profiles.
    Verb("new", ("a",), "new (add)", C.PROMPT),
    Verb("enqueue", ("E",), "enqueue a profile", C.PROMPT),
    Verb("delete", ("d",), "delete", C.YES),
    Verb("delete_ended", ("D",), "delete every ended job", C.YES),
    Verb("rename", ("M",), "rename (mv)", C.PROMPT),
    Verb("copy", ("y",), "copy (yank)", C.PROMPT),
    Verb("history", ("h",), "history"),
    Verb("import", ("less_than_sign",), "import", C.PROMPT),
    Verb("export", ("greater_than_sign",), "export", C.PROMPT),
    Verb("compare", ("equals_sign",), "compare with another", ids=("profiles.diff",)),
    Verb("clear_compare", ("minus",), "clear the comparison"),
    Verb(
        "refresh",
        ("r",),
        "refresh / reload / rescan",
        ids=("profiles.reload", "datasets.rescan", "models.check.recheck"),
    ),
    # Jobs.
    Verb("cancel", ("c",), "cancel (a job, a download)", C.YES),
    Verb("stop", ("s",), "stop with a save", C.YES),
    Verb("retry", ("t",), "retry", C.YES),
    Verb("resume", ("R",), "resume (a job, a download)", C.YES),
    Verb("move_up", ("K",), "move up the queue"),
    Verb("move_down", ("J",), "move down the queue"),
    Verb("pause", ("space",), "pause / unpause the queue"),
    # Run.
    Verb("follow", ("F",), "follow the log on/off"),
    Verb("wrap", ("w",), "wrap long lines on/off"),
    Verb("events", ("L",), "dpdeck's own event lines in the log on/off"),
    Verb("rank_prev", ("left_square_bracket",), "previous rank's log"),
    Verb("rank_next", ("right_square_bracket",), "next rank's log"),
    Verb("sample_older", ("comma",), "older sample"),
    Verb("sample_newer", ("full_stop",), "newer sample"),
    Verb("sample_prompt", ("semicolon",), "next sample prompt"),
    # System.
    Verb("reclaim", ("X",), "reclaim orphan processes (after a dry run)", C.YES),
    Verb("backend", ("I",), "install / update diffusion-pipe", C.YES),
    # Datasets.
    Verb("open_folder", ("o",), "open a folder or dataset TOML", ids=("datasets.open",)),
    Verb("open_profile", ("O",), "open a profile's dataset", ids=("datasets.profile",)),
    Verb("use", ("u",), "use in a profile", C.PROMPT),
    Verb("use_file", ("U",), "use one file in a profile", C.PROMPT),
    Verb("undo", ("z",), "undo / roll back", C.YES, ids=("history.rollback",)),
    Verb("batch", ("A",), "batch caption operation (preview, then apply)", C.YES),
    Verb("info", ("i",), "info panel on/off", ids=("datasets.stats", "models.details")),
    Verb("buckets", ("b",), "bucket panel"),
    Verb("bucket_profile", ("B",), "the profile the bucket panel uses"),
    Verb("missing", ("m",), "filter: missing captions"),
    Verb("bucket_filter", ("f",), "filter: one bucket"),
    Verb("dupes", ("asterisk",), "filter: duplicates"),
    Verb("clear_filters", ("backspace",), "clear every filter", ids=("datasets.clear",)),
    Verb("next_image", ("ctrl+down", "alt+n"), "next image", ids=("datasets.next",)),
    Verb("prev_image", ("ctrl+up", "alt+p"), "previous image", ids=("datasets.prev",)),
    # Models.
    Verb("pull", ("p",), "pull (download)", C.LARGE, ids=("models.check.pull_all",)),
    Verb("pull_part", ("P",), "pull one part", C.LARGE),
    Verb("check", ("v",), "verify a profile's models"),
    # Yes/no dialogs.
    Verb("yes", ("y", "enter"), "yes", dialog=True),
    Verb("no", ("n", "escape", "q"), "no", dialog=True),
)

# Where each verb acts: the screens (by the first part of their binding ids, see `place_of`) and the reserved
# ones that another screen is about to bind. tests/test_tui_keys.py checks every binding's place is listed.
WHERE: dict[str, str] = {
    **{area: "everywhere" for area in ("profiles", "queue", "run", "system", "datasets", "models")},
    "help": "everywhere, help",
    "back": "everywhere, help, history, dialogs, Run, Datasets, Models, editor",
    "quit": "everywhere",
    "notifications": "everywhere",
    "down": "lists, help",
    "up": "lists, help",
    "top": "lists, help",
    "bottom": "lists, help",
    "open": "Profiles, Queue, Datasets, dialogs",
    "search": "Profiles, Run, Datasets, help",
    "next_match": "Run",
    "prev_match": "Run",
    "edit": "Datasets",
    "save": "editor, Datasets",
    "revert": "Datasets",
    "next_tab": "editor",
    "close": "editor",
    "complete": "dialogs",
    "next_problem": "editor, Run",
    "new": "Profiles",
    "enqueue": "Profiles",
    "delete": "Profiles, Queue",
    "delete_ended": "Queue",
    "rename": "Profiles",
    "copy": "Profiles",
    "history": "Profiles",
    "import": "Profiles",
    "export": "Profiles",
    "compare": "Profiles, Run",
    "clear_compare": "Run",
    "refresh": "Profiles, System, Datasets, Models",
    "cancel": "Queue, Models",
    "stop": "Queue",
    "retry": "Queue",
    "resume": "Queue, Models",
    "move_up": "Queue",
    "move_down": "Queue",
    "pause": "Queue",
    "follow": "Run",
    "wrap": "Run",
    "events": "Run",
    "rank_prev": "Run",
    "rank_next": "Run",
    "sample_older": "Run",
    "sample_newer": "Run",
    "sample_prompt": "Run",
    "reclaim": "System",
    "backend": "System",
    "open_folder": "Datasets",
    "open_profile": "Datasets",
    "use": "Datasets, Models",
    "use_file": "Models",
    "undo": "Datasets, history",
    "batch": "Datasets",
    "info": "Datasets, Models",
    "buckets": "Datasets",
    "bucket_profile": "Datasets",
    "missing": "Datasets",
    "bucket_filter": "Datasets",
    "dupes": "Datasets",
    "clear_filters": "Datasets",
    "next_image": "Datasets",
    "prev_image": "Datasets",
    "pull": "Models",
    "pull_part": "Models",
    "check": "Models",
    "yes": "dialogs",
    "no": "dialogs",
}
# A binding id's first part -> the place WHERE names it by.
PLACES = {
    "deck": "everywhere", "list": "lists", "profiles": "Profiles", "queue": "Queue", "run": "Run",
    "system": "System", "datasets": "Datasets", "models": "Models", "editor": "editor", "help": "help",
    "history": "history", "confirm": "dialogs", "apply": "dialogs", "prompt": "dialogs", "choice": "dialogs",
    "text": "dialogs", "batch": "dialogs", "picker": "dialogs", "path": "dialogs", "notifications": "dialogs",
}  # fmt: skip


def place_of(binding_id: str) -> str:
    return PLACES.get(binding_id.split(".", 1)[0], binding_id.split(".", 1)[0])


GLOBAL = frozenset({"profiles", "queue", "run", "system", "datasets", "models", "quit", "notifications"})
BY_NAME: dict[str, Verb] = {verb.name: verb for verb in SCHEME}
_BY_ID: dict[str, Verb] = {binding_id: verb for verb in SCHEME for binding_id in verb.ids}


def verb_of(binding_id: str) -> Verb | None:
    """The verb a binding id stands for: listed in a verb's `ids`, else named by the id's last part."""
    listed = _BY_ID.get(binding_id)
    if listed is not None:
        return listed
    return BY_NAME.get(binding_id.rsplit(".", 1)[-1])


def bind(binding_id: str, action: str, description: str, *, keys: str = "", **kwargs: Any) -> Binding:
    """A Binding whose key is its verb's. `keys` may narrow it to some of the verb's keys (the app's `q` is
    not also Esc); any other key is a mistake caught at import."""
    verb = verb_of(binding_id)
    if verb is None:
        raise KeyError(f"{binding_id}: no verb in tui/keyscheme.py SCHEME for this id")
    chosen = tuple(k.strip() for k in keys.split(",")) if keys else verb.keys
    stray = [k for k in chosen if k not in verb.keys]
    if stray:
        raise ValueError(f"{binding_id}: key(s) {stray} are not the keys of verb {verb.name!r} ({verb.keys})")
    return Binding(",".join(chosen), action, description, id=binding_id, **kwargs)


# Keys docs/tui.md spells out (Textual's footer shows them as symbols: ⏎, ⌫).
DOC_KEY_NAMES = {"escape": "Esc", "enter": "Enter", "space": "Space", "backspace": "Backspace", "f1": "F1"}


def key_label(key: str) -> str:
    """A key as docs/tui.md writes it: the character for a symbol (`/`, `<`), else the key's name."""
    return DOC_KEY_NAMES.get(key) or format_key(key)


def scheme_table() -> str:
    """SCHEME as the markdown table in docs/tui.md (between its `keyscheme` markers)."""
    lines = ["| key | verb | where | confirms |", "| --- | --- | --- | --- |"]
    for verb in SCHEME:
        keys = " ".join(f"`{key_label(k)}`" for k in verb.keys)
        lines.append(f"| {keys} | {verb.does} | {WHERE[verb.name]} | {verb.confirms.value} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(scheme_table() + "\n")
