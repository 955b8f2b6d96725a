"""Stored profiles: `$DPDECK_HOME/profiles/<name>/main.toml` + `dataset.toml` (+ `eval-*.toml`).

A stored profile is self-contained: its main TOML's `dataset` key is `dataset.toml`, next to it. Every save
goes through `save()`: secrets are stripped (and moved to the secrets store), the history version and every
new file are written to temp files, then the files are renamed into place and the version last, so a failed
save (disk full) changes nothing and the history never runs ahead of the live files. Deleting moves the
folder to `$DPDECK_HOME/trash/`, so it can be brought back. All mutations hold one store-wide lock: saves
are rare, and one lock cannot deadlock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from profiles.document import Profile, TomlFile, load_profile
from profiles.errors import ProfileError, ProfileNotFound
from statefiles.atomic import fsync_dir
from statefiles.paths import profiles_dir, state_dir

if TYPE_CHECKING:
    from profiles.history import VersionInfo

MAIN = "main.toml"
DATASET = "dataset.toml"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\.toml$")
_LOCK = ".store.lock"


class InvalidName(ProfileError):
    """A profile name that could escape the store or be mistaken for an option."""


class ProfileExists(ProfileError):
    pass


@dataclass(frozen=True)
class StoredInfo:
    name: str
    path: Path
    model_type: str | None
    versions: int
    modified: str  # UTC ISO time of the last save

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "path": str(self.path),
            "model_type": self.model_type,
            "versions": self.versions,
            "modified": self.modified,
        }


@dataclass
class SaveResult:
    name: str
    version: VersionInfo
    warnings: list[str] = field(default_factory=list)


def check_name(name: str) -> str:
    """Profile names are folder names: letters, digits, `.`, `_`, `-`; no leading `.` or `-`, max 64."""
    if not _NAME.match(name) or name in {".", ".."}:
        raise InvalidName(
            f"invalid profile name {name!r}: expected 1-64 characters from A-Z a-z 0-9 . _ -, "
            "not starting with '.' or '-'"
        )
    return name


def profile_dir(name: str) -> Path:
    return profiles_dir() / check_name(name)


def exists(name: str) -> bool:
    return _NAME.match(name) is not None and (profiles_dir() / name / MAIN).is_file()


def _require(name: str) -> Path:
    pdir = profile_dir(name)
    if not (pdir / MAIN).is_file():
        raise ProfileNotFound(_not_found_message(name))
    return pdir


def names() -> list[str]:
    root = profiles_dir()
    return sorted(e.name for e in root.iterdir() if _NAME.match(e.name) and (e / MAIN).is_file())


def _not_found_message(name: str) -> str:
    import difflib

    known = names()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if close:
        return f"no stored profile named {name!r}; did you mean: {', '.join(close)}?"
    if known:
        return f"no stored profile named {name!r}; stored profiles: {', '.join(known)}"
    return f"no stored profile named {name!r}; none stored yet (create one: dpdeck profile new NAME)"


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    fd = os.open(profiles_dir() / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def list_profiles() -> list[StoredInfo]:
    # history is imported on first use here and below: `dpdeck profile validate NAME` only resolves
    from profiles import history

    out: list[StoredInfo] = []
    for name in names():
        pdir = profiles_dir() / name
        versions = history.list_versions(pdir)
        model_type: str | None = None
        try:
            value = TomlFile.load(pdir / MAIN).get("model.type")
            model_type = value if isinstance(value, str) else None
        except ProfileError:
            pass  # listed anyway; `validate` says what is wrong
        mtime = datetime.fromtimestamp((pdir / MAIN).stat().st_mtime, timezone.utc)
        out.append(StoredInfo(name, pdir, model_type, len(versions), mtime.isoformat(timespec="seconds")))
    return out


def read_files(name: str) -> dict[str, str]:
    """The live files of a stored profile, by file name."""
    pdir = _require(name)
    out: dict[str, str] = {}
    for entry in sorted(pdir.iterdir()):
        if entry.is_file() and _FILE.match(entry.name):
            out[entry.name] = entry.read_text(encoding="utf-8")
    return out


def load_stored(name: str) -> Profile:
    profile = load_profile(_require(name) / MAIN)
    profile.name = name
    return profile


def resolve(name_or_path: str) -> Profile:
    """An existing path to a main TOML (or a folder holding main.toml) wins; else a stored name."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return load_profile(path)
    if path.is_dir():
        if (path / MAIN).is_file():
            return load_profile(path / MAIN)
        if not exists(name_or_path):
            raise ProfileNotFound(f"{path}: is a folder without a {MAIN}; expected a main TOML file")
    if exists(name_or_path):
        return load_stored(name_or_path)
    if "/" in name_or_path or name_or_path.endswith(".toml"):
        raise ProfileNotFound(f"{name_or_path}: file not found (and not a stored profile name)")
    template = _template_or_none(name_or_path)
    if template is not None:
        return template
    raise ProfileNotFound(_not_found_message(name_or_path) + " (nor a file or a template of that name)")


def _template_or_none(name: str) -> Profile | None:
    """Built-in templates are the last resort, so `validate chroma-e6ai-512` works before any `new`."""
    from profiles.templates import list_templates, load_template

    if name not in {str(info.name) for info in list_templates()}:
        return None
    profile = load_template(name)
    profile.name = profile.name or name
    return profile


def _eval_file_name(entry_name: str, index: int, taken: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", entry_name).strip("._-") or str(index)
    candidate = f"eval-{stem}.toml"
    if candidate in taken or not _FILE.match(candidate):
        candidate = f"eval-{index}.toml"
    return candidate


def files_from_profile(profile: Profile) -> dict[str, str]:
    """The files a profile is stored as, with its references pointing at the stored copies.

    A referenced file that could not be found keeps its reference, so validation can report it.
    """
    main = TomlFile.from_text(profile.main.dumps(), source=profile.main.source, path=profile.main.path)
    files: dict[str, str] = {}
    if profile.dataset is not None:
        if main.get("dataset") != DATASET:
            main.set("dataset", DATASET)
        files[DATASET] = profile.dataset.dumps()
    evals = main.get("eval_datasets")
    if isinstance(evals, list) and profile.eval_datasets:
        for index, entry in enumerate(evals):
            if not isinstance(entry, dict) or not isinstance(entry.get("config"), str):
                continue
            key = str(entry.get("name", entry["config"]))
            toml = profile.eval_datasets.get(key)
            if toml is None:
                continue
            fname = _eval_file_name(key, index, set(files) | {MAIN})
            if entry["config"] != fname:
                main.set(f"eval_datasets[{index}].config", fname)
            files[fname] = toml.dumps()
    files[MAIN] = main.dumps()
    return files


def _check_files(files: dict[str, str]) -> None:
    if MAIN not in files:
        raise ProfileError(f"a profile needs a {MAIN}")
    for fname in files:
        if not _FILE.match(fname):
            raise ProfileError(f"invalid profile file name {fname!r}: expected NAME.toml (A-Z a-z 0-9 . _ -)")


def _strip_all(files: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    from profiles.secrets import move_to_store, redact, strip_secrets

    clean: dict[str, str] = {}
    found = []
    notes: list[str] = []
    for fname, text in files.items():
        stripped, hits = strip_secrets(text, fname)
        found.extend(hits)
        # A key pasted into a comment or another value is masked too; the result must stay valid TOML.
        masked = redact(stripped)
        if masked != stripped:
            TomlFile.from_text(masked, source=fname)
            notes.append(f"{fname}: masked secret-looking text with ***")
        clean[fname] = masked
    return clean, move_to_store(found) + notes


def _stage_file(pdir: Path, fname: str, text: str) -> str:
    """Write `text` to a fsynced temp file beside `fname` (keeping the live file's mode); returns its path."""
    try:
        mode = (pdir / fname).stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{fname}.", suffix=".tmp", dir=pdir)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def _stage_live(pdir: Path, files: dict[str, str]) -> list[tuple[str, str]]:
    """(temp, file name) for every new file, written and fsynced, in replacement order; a failure (disk full)
    removes the temps written so far, so no live file changed."""
    # Dataset first, main last: main is what readers open, and it should never point at a missing file.
    staged: list[tuple[str, str]] = []
    try:
        for fname in sorted(files, key=lambda f: f == MAIN):
            staged.append((_stage_file(pdir, fname, files[fname]), fname))
    except BaseException:
        _remove_temps(staged)
        raise
    return staged


def _remove_temps(staged: list[tuple[str, str]]) -> None:
    for tmp, _ in staged:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _replace_live(pdir: Path, files: dict[str, str], staged: list[tuple[str, str]]) -> None:
    for done, (tmp, fname) in enumerate(staged):
        try:
            os.replace(tmp, pdir / fname)
        except BaseException:
            _remove_temps(staged[done:])
            raise
    for entry in pdir.iterdir():
        if entry.is_file() and _FILE.match(entry.name) and entry.name not in files:
            entry.unlink()
    fsync_dir(pdir)


def _write_live(pdir: Path, files: dict[str, str]) -> None:
    """Replace the live files; all new ones are written first, so a full disk fails before any is replaced."""
    pdir.mkdir(parents=True, exist_ok=True)
    _replace_live(pdir, files, _stage_live(pdir, files))


def save(name: str, files: dict[str, str], message: str = "save", *, create: bool = False) -> SaveResult:
    """Store new content for a profile as a new history version.

    `create=True` requires that the profile does not exist yet; otherwise it must exist.
    Secret keys are stripped first (their values go to the secrets store) and reported as warnings.
    A write that fails (disk full, read-only) raises ProfileError and leaves the profile as it was.
    """
    check_name(name)
    _check_files(files)
    clean, warnings = _strip_all(files)
    with _locked():
        pdir = profile_dir(name)
        present = (pdir / MAIN).is_file()
        if create and present:
            raise ProfileExists(f"a profile named {name!r} already exists ({pdir})")
        if not create and not present:
            raise ProfileNotFound(_not_found_message(name))
        info = _save_locked(name, pdir, clean, message, present)
    return SaveResult(name, info, warnings)


def _save_locked(name: str, pdir: Path, files: dict[str, str], message: str, present: bool) -> VersionInfo:
    """Stage the version and every live file, replace the live files, then commit the version."""
    from profiles import history

    made_dir = not pdir.exists()
    staged = None
    try:
        pdir.mkdir(parents=True, exist_ok=True)
        staged = history.stage_version(pdir, files, message)
        live = _stage_live(pdir, files)
    except OSError as exc:
        if staged is not None:
            history.discard_version(staged)
        if made_dir and not present:
            shutil.rmtree(pdir, ignore_errors=True)  # a new profile that could not be written is none
        raise ProfileError(
            f"cannot save profile {name!r}: {_where(exc, pdir)}; nothing was changed "
            f"(free space or fix the permissions of {pdir.parent}, then save again)"
        ) from exc
    try:
        _replace_live(pdir, files, live)
    except OSError as exc:
        history.discard_version(staged)
        versions = history.list_versions(pdir)
        previous = versions[-1].version if versions else None
        hint = f": `dpdeck profile rollback {name} {previous}` restores v{previous}" if previous else ""
        raise ProfileError(
            f"cannot save profile {name!r}: {_where(exc, pdir)}; some of its files may already hold the new "
            f"content{hint}"
        ) from exc
    try:
        return history.commit_version(staged)
    except OSError as exc:
        history.discard_version(staged)
        raise ProfileError(
            f"profile {name!r}: the files were saved, but history version {staged.info.version} could not be "
            f"recorded ({_where(exc, pdir)})"
        ) from exc


def _where(exc: OSError, default: Path) -> str:
    return f"{exc.filename or default}: {exc.strerror or exc}"


def save_profile(name: str, profile: Profile, message: str = "save", *, create: bool = False) -> SaveResult:
    return save(name, files_from_profile(profile), message, create=create)


def create_from_template(template: str, name: str) -> SaveResult:
    from profiles.templates import load_template

    check_name(name)
    if exists(name):
        raise ProfileExists(f"a profile named {name!r} already exists ({profile_dir(name)})")
    return save_profile(name, load_template(template), f"created from template {template}", create=True)


def copy(source: str, dest: str) -> SaveResult:
    """A copy starts its own history with the source's current content."""
    files = read_files(source)
    return save(dest, files, f"copied from {source}", create=True)


def rename(old: str, new: str) -> Path:
    """Rename a profile; its history moves with it."""
    check_name(new)
    with _locked():
        src = _require(old)
        dst = profile_dir(new)
        if dst.exists():
            raise ProfileExists(f"a profile named {new!r} already exists ({dst})")
        os.rename(src, dst)
        fsync_dir(dst.parent)
    return dst


def trash_dir() -> Path:
    path = state_dir() / "trash"
    path.mkdir(parents=True, exist_ok=True)
    return path


def delete(name: str) -> Path:
    """Move the profile (with its history) to the trash; returns where it went."""
    with _locked():
        src = _require(name)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        dst = trash_dir() / f"{name}.{stamp}"
        os.rename(src, dst)
        fsync_dir(src.parent)
    return dst


def undelete(name: str) -> Path:
    """Bring back the most recently deleted profile of that name."""
    check_name(name)
    with _locked():
        candidates = sorted(p for p in trash_dir().iterdir() if p.name.rsplit(".", 1)[0] == name)
        if not candidates:
            raise ProfileNotFound(f"no deleted profile named {name!r} in {trash_dir()}")
        dst = profile_dir(name)
        if dst.exists():
            raise ProfileExists(f"a profile named {name!r} already exists ({dst})")
        os.rename(candidates[-1], dst)
    return dst


# History by profile name.


def list_versions(name: str) -> list[VersionInfo]:
    from profiles import history

    return history.list_versions(_require(name))


def read_version(name: str, version: int) -> dict[str, str]:
    from profiles import history

    return history.read_version(_require(name), version)


def diff_versions(name: str, old: int, new: int) -> str:
    from profiles import history

    return history.diff_versions(_require(name), old, new)


def rollback(name: str, version: int) -> SaveResult:
    """Save an old version's content as a new version (so the rollback itself can be undone)."""
    files = read_version(name, version)
    return save(name, files, f"rollback to v{version}")


# Validation of files before they are stored (edit, import).


@dataclass
class Checked:
    problems: list[object]  # validator Problems (or the ProfileParseError)
    errors: list[str]  # printable lines, `file:line: key: message`
    warnings: list[str]


def _label_line(problem: object, staged: dict[str, str]) -> str:
    text = str(problem)
    for path, label in staged.items():
        text = text.replace(path, label)
    return text


def _staging_failed(stage_root: Path, exc: OSError) -> str:
    return (
        f"cannot stage the profile for validation in {stage_root}: {exc.filename or stage_root}: "
        f"{exc.strerror or exc}; nothing was changed (free space there, or fix its permissions)"
    )


def validate_files(
    files: dict[str, str],
    *,
    labels: dict[str, str] | None = None,
    backend: str = "diffusion-pipe",
    check_paths: str = "warn",
    num_gpus: int | None = None,
) -> Checked:
    """Validate files exactly as they would be stored (secret keys stripped, in a stored-like folder).

    `labels` maps a file name to what messages should call it (the user's file, an archive member).
    """
    from profiles.errors import ProfileParseError
    from profiles.secrets import strip_secrets
    from profiles.validate import validate_profile

    labels = labels or {}
    clean: dict[str, str] = {}
    for fname, text in files.items():
        try:
            clean[fname] = strip_secrets(text, fname)[0]
        except ProfileParseError as exc:
            where = f"{labels.get(fname, fname)}:{exc.line}" if exc.line else labels.get(fname, fname)
            return Checked([exc], [f"{where}: {exc.detail}"], [])
    stage_root = state_dir() / "tmp"
    try:
        stage_root.mkdir(parents=True, exist_ok=True)
        tmp_dir = tempfile.TemporaryDirectory(prefix="check-", dir=stage_root)
    except OSError as exc:
        raise ProfileError(_staging_failed(stage_root, exc)) from exc
    with tmp_dir as tmp:
        stage = Path(tmp)
        try:
            for fname, text in clean.items():
                (stage / fname).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ProfileError(_staging_failed(stage_root, exc)) from exc
        staged = {str(stage / fname): labels.get(fname, fname) for fname in clean}
        try:
            profile = load_profile(stage / MAIN)
        except ProfileParseError as exc:
            return Checked([exc], [_label_line(exc, staged)], [])
        problems = validate_profile(profile, backend=backend, check_paths=check_paths, num_gpus=num_gpus)
        errors = [_label_line(p, staged) for p in problems if getattr(p, "severity", "") == "error"]
        warnings = [_label_line(p, staged) for p in problems if getattr(p, "severity", "") != "error"]
    return Checked(list(problems), errors, warnings)
