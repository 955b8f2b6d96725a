"""The deck's one door to profiles, and the engine calls that need more than the engine: every blocking data
call the screens make goes through here or through the app's engine (tui/engine_api.py).

Screens call these only from worker threads.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from profiles.backend_choice import BackendChoice
    from profiles.history import VersionInfo
    from tui.engine_api import Engine
    from tui.profile_summary import Summary


# Profiles.


@dataclass(frozen=True)
class ProfileRow:
    kind: str  # "template" or "profile"
    name: str
    model_type: str
    detail: str  # description (template) or last modified (profile)


def profile_rows() -> list[ProfileRow]:
    from profiles import store, templates

    rows = [
        ProfileRow("profile", p.name, p.model_type or "?", f"{p.versions} version(s), saved {p.modified}")
        for p in store.list_profiles()
    ]
    rows += [ProfileRow("template", t.name, t.model_type, t.description) for t in templates.list_templates()]
    return rows


def stored_files(name: str) -> dict[str, str]:
    from profiles import store

    return store.read_files(name)


def template_files(name: str) -> dict[str, str]:
    from profiles import templates

    files = templates.template_texts(name)
    if name == DEMO_TEMPLATE:  # its paths are placeholders that only `dpdeck demo` fills: fill them here
        values = demo_paths()
        for key, value in values.items():
            files = {fname: text.replace(f"'{key}'", repr(value)) for fname, text in files.items()}
    return files


def essential_keys(template: str | None) -> list[str]:
    """Easy-mode key paths (`dataset:` prefix for dataset keys).

    A stored profile does not remember its template, so it gets every template's essential keys (in index
    order); the editor shows those the profile actually has.
    """
    from profiles import templates

    if template:
        return list(templates.get_template(template).essential)
    seen: dict[str, None] = {}
    for info in templates.list_templates():
        seen.update(dict.fromkeys(info.essential))
    return list(seen)


def field_help(keypath: str) -> str:
    from profiles import templates

    return templates.field_help(keypath)


@dataclass(frozen=True)
class FieldProblem:
    severity: str
    file: str  # "main.toml", "dataset.toml", ...
    key: str
    line: int | None
    text: str  # one printable line


@dataclass
class Validation:
    problems: list[FieldProblem] = field(default_factory=list)
    runs_on: str = ""  # "runs on: built-in trainer (no diffusion-pipe checkout configured)"

    @property
    def errors(self) -> list[FieldProblem]:
        return [p for p in self.problems if p.severity == "error"]

    def verdict(self) -> str:
        """The counts in `dpdeck profile validate`'s words: 'INVALID (4 error(s), 0 warning(s))'."""
        errors = len(self.errors)
        status = "INVALID" if errors else "valid"
        return f"{status} ({errors} error(s), {len(self.problems) - errors} warning(s))"


CHECK_PATHS = "error"  # what `dpdeck profile validate` checks without --away


def validate_files(files: dict[str, str]) -> Validation:
    from profiles import store
    from profiles.errors import ProfileParseError

    chosen = _backend_for(files.get("main.toml", ""))
    # Checked against the backend named in the header (the queue's own choice), decided once here, and with
    # missing paths as errors: `dpdeck profile validate` and the enqueue judge so on the box that trains, and
    # the deck runs there (as warnings, the editor said "0 error(s)" for a profile both refuse).
    backend = (chosen.backend or "diffusion-pipe") if chosen else "auto"
    checked = store.validate_files(files, check_paths=CHECK_PATHS, backend=backend)
    out = Validation(runs_on=chosen.describe() if chosen else "")
    for prob in checked.problems:
        if isinstance(prob, ProfileParseError):
            fname = Path(str(prob.file)).name if getattr(prob, "file", None) else "main.toml"
            out.problems.append(
                FieldProblem("error", fname, "", prob.line, f"line {prob.line}: {prob.detail}")
            )
            continue
        fname = Path(str(getattr(prob, "file", ""))).name
        msg = getattr(prob, "message", str(prob))
        found, expected = getattr(prob, "found", None), getattr(prob, "expected", None)
        extra = ", ".join(
            x for x in (f"found {found}" if found else "", f"expected {expected}" if expected else "") if x
        )
        out.problems.append(
            FieldProblem(
                str(getattr(prob, "severity", "error")),
                fname,
                str(getattr(prob, "key", "")),
                getattr(prob, "line", None),
                f"{msg} ({extra})" if extra else msg,
            )
        )
    return out


def _backend_for(main_text: str) -> BackendChoice | None:
    """The backend the queue would pick for this text; None while it does not parse."""
    from profiles.backend_choice import choose_for_model
    from profiles.document import TomlFile
    from profiles.errors import ProfileParseError

    try:
        main = TomlFile.from_text(main_text, source="main.toml").data()
    except ProfileParseError:
        return None
    model = main.get("model")
    mtype = model.get("type") if isinstance(model, dict) else None
    return choose_for_model(model, mtype if isinstance(mtype, str) else None)


def profile_summary(engine: Engine, name: str) -> Summary:
    """The Profiles pane's summary of stored profile `name`: key settings, the validate verdict (the same
    function and arguments as the editor's, and `dpdeck profile validate`'s), the last runs."""
    from profiles.document import TomlFile
    from profiles.errors import ProfileParseError
    from tui.profile_summary import Summary, key_settings, last_runs

    files = stored_files(name)
    docs: dict[str, dict[str, Any]] = {}
    for fname, text in files.items():
        try:
            docs[fname] = TomlFile.from_text(text, source=fname).data()
        except ProfileParseError:
            docs[fname] = {}  # the verdict below names the line
    checked = validate_files(files)
    errors_first = sorted(checked.problems, key=lambda p: p.severity != "error")
    out = Summary(name, key_settings(docs), checked.verdict(), checked.runs_on)
    out.first_problems = [f"{p.file}:{p.line or '?'} {p.key}: {p.text}" for p in errors_first[:3]]
    try:
        out.runs = last_runs(name, engine.list_jobs(include_finished=True))
    except Exception:  # noqa: BLE001 - an unreadable job store must not hide the settings
        out.runs = []
    return out


def rename_profile(old: str, new: str) -> Path:
    from profiles import store

    return store.rename(old, new)


def copy_profile(source: str, dest: str) -> int:
    from profiles import store

    return store.copy(source, dest).version.version


def save_profile(
    name: str, files: dict[str, str], *, create: bool, message: str = "edited in the deck"
) -> int:
    from profiles import store

    return store.save(name, files, message, create=create).version.version


def versions(name: str) -> list[VersionInfo]:
    from profiles import store

    return list(store.list_versions(name))


def diff_versions(name: str, old: int, new: int) -> str:
    from profiles import store

    return store.diff_versions(name, old, new)


def rollback(name: str, version: int) -> int:
    from profiles import store

    return store.rollback(name, version).version.version


def diff_profiles(left: str, right: str) -> list[str]:
    from profiles import store
    from profiles.diff import diff_profiles as _diff
    from profiles.diff import render_value

    entries = _diff(store.resolve(left), store.resolve(right))
    return [
        f"{e.change:7} {e.file}:{e.key}  {render_value(e.left, e.left_present)} -> "
        f"{render_value(e.right, e.right_present)}"
        for e in entries
    ]


def export_profile(name: str, dest: Path) -> Path:
    from profiles.archive import export_profile as _export

    return _export(name, dest, overwrite=False).path


def import_profile(source: Path, name: str | None) -> str:
    from profiles.archive import import_path

    return import_path(source, name or None).name


def delete_profile(name: str) -> Path:
    from profiles import store

    return store.delete(name)


# The demo: a profile from the demo-tiny template trains as it is, on the tiny model `dpdeck demo` builds.

DEMO_TEMPLATE = "demo-tiny"


def demo_paths() -> dict[str, str]:
    """The demo template's placeholders -> the folders `dpdeck demo` builds (empty without the engine)."""
    try:
        from engine.demo import demo_dir
    except ImportError:
        return {}
    root = demo_dir()
    return {
        "<DEMO_MODEL_DIR>": str(root / "model"),
        "<DEMO_DATASET_DIR>": str(root / "dataset"),
        "<DEMO_OUTPUT_DIR>": str(root / "output"),
    }


DEMO_BUILD_NOTE = "building the demo model first (about 10 s, once)"
_demo_build = threading.Lock()  # one build at a time: two quick enqueues must not both build the folder


def demo_build_needed(profile: str) -> bool:
    """Whether an enqueue of the stored profile would wait for the demo model: it points at the demo model or
    dataset and they are not built yet, or their build is under way (the files appear before it ends)."""
    uses, built = _demo_state(profile)
    return uses and (not built or _demo_build.locked())


def _demo_state(profile: str) -> tuple[bool, bool]:
    """(the stored profile points at the demo folders, they hold a built model and captions)."""
    from profiles import store

    paths = demo_paths()
    if not paths or not store.exists(profile):
        return False, False
    text = "".join(store.read_files(profile).values())
    model, dataset = Path(paths["<DEMO_MODEL_DIR>"]), Path(paths["<DEMO_DATASET_DIR>"])
    uses = str(model) in text or str(dataset) in text
    return uses, (model / "model_index.json").is_file() and any(dataset.glob("*.txt"))


def build_demo_data_if_used(profile: str) -> bool:
    """Build the tiny demo model and dataset when the stored profile points at them and they are missing.

    Built in a child process, as `dpdeck demo` does (about 10 s on CPU, once), so the deck never loads torch.
    True when it built them.
    """
    with _demo_build:
        uses, built = _demo_state(profile)
        if not uses or built:
            return False
        _build_demo()
    return True


def _build_demo() -> None:
    import subprocess
    import sys

    import engine

    repo = str(Path(engine.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
    out = subprocess.run(
        [sys.executable, "-c", "from engine.demo import prepare; prepare()"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"building the demo model failed: {tail}")


# Enqueues under way (the demo build, validation): the Queue shows them until the job exists.
_pending: dict[int, str] = {}
_pending_lock = threading.Lock()


def pending_enqueues() -> list[str]:
    with _pending_lock:
        return list(_pending.values())


@contextmanager
def _pending_note(text: str) -> Iterator[int]:
    with _pending_lock:
        token = max(_pending, default=0) + 1
        _pending[token] = text
    try:
        yield token
    finally:
        with _pending_lock:
            _pending.pop(token, None)


def _set_pending(token: int, text: str) -> None:
    with _pending_lock:
        if token in _pending:
            _pending[token] = text


# Engine: only the calls that add to the engine's own (demo data, local figures); screens make the rest
# on the app's engine directly.


def enqueue(engine: Engine, profile: str, gpus: list[int] | None) -> int:
    """Queue `profile`; meanwhile pending_enqueues() says what it waits for (the Queue shows it)."""
    with _pending_note(f"enqueueing {profile}: checking the profile…") as token:
        if demo_build_needed(profile):
            _set_pending(token, f"enqueueing {profile}: {DEMO_BUILD_NOTE}…")
        build_demo_data_if_used(profile)
        return engine.enqueue(profile, gpus=gpus)


def system_stats(engine: Engine) -> dict[str, Any]:
    try:
        return dict(engine.system_stats())
    except Exception:  # noqa: BLE001 - the local figures below are the truth for this host anyway
        pass
    import psutil

    from statefiles.paths import state_dir

    vm = psutil.virtual_memory()
    home = state_dir()
    disk = shutil.disk_usage(home if home.exists() else Path(os.sep))
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "cpu_count": psutil.cpu_count(),
        "ram_used": vm.total - vm.available,
        "ram_total": vm.total,
        "disks": {str(home): {"used": disk.used, "total": disk.total, "free": disk.free}},
    }
