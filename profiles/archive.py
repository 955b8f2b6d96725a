"""Export a profile as one portable `.tar.gz`; import one (or a plain main TOML) after validating it.

Archive layout (flat): `manifest.json`, `main.toml`, `dataset.toml` (+ `eval-*.toml`). Paths inside the
TOMLs are kept as they are; secrets are removed. Import never extracts to disk: members are read into
memory one by one from a stream, and anything that is not a small regular file with a plain name
(`../`, absolute paths, links, devices, oversize members) rejects the whole archive before anything is
stored. The profile is validated before it is stored; an invalid one changes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from profiles import store
from profiles.atomic import atomic_write_bytes
from profiles.document import TomlFile, load_profile
from profiles.errors import ProfileError, ProfileNotFound, ProfileParseError

FORMAT = "dpdeck-profile"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUFFIX = ".dpdeck.tar.gz"
MAX_ARCHIVE_BYTES = 8 * 1024 * 1024
MAX_MEMBER_BYTES = 1024 * 1024
MAX_TOTAL_BYTES = 4 * 1024 * 1024
MAX_MEMBERS = 32
_MEMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ArchiveRejected(ProfileError):
    """The archive is unsafe or malformed; nothing was stored."""


class ImportRejected(ProfileError):
    """The profile does not validate; nothing was stored. `problems` are the validator's Problems."""

    def __init__(self, message: str, problems: list[Any], lines: list[str]):
        super().__init__(message)
        self.problems = problems
        self.lines = lines


@dataclass
class ExportResult:
    path: Path
    name: str
    files: list[str]
    removed: list[str] = field(default_factory=list)  # warnings about stripped secrets


@dataclass
class ImportResult:
    name: str
    version: int
    created: bool
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # validation warnings (errors reject the import)


# Export.


def _scrub(files: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Drop secret keys, then mask any secret-looking text left (e.g. a key pasted into a comment)."""
    from profiles.secrets import redact, strip_secrets

    out: dict[str, str] = {}
    notes: list[str] = []
    for fname, text in files.items():
        clean, found = strip_secrets(text, fname)
        notes.extend(f"{fname}: {f.keypath}: removed (secrets are never exported)" for f in found)
        masked = redact(clean)
        if masked != clean:
            TomlFile.from_text(masked, source=fname)  # masking must leave valid TOML
            notes.append(f"{fname}: masked secret-looking text with ***")
        out[fname] = masked
    return out, notes


def _add_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    tar.addfile(info, io.BytesIO(data))


def build_archive(name: str, files: dict[str, str]) -> tuple[bytes, list[str]]:
    """The archive bytes for these profile files (secrets removed) and notes about what was removed."""
    clean, notes = _scrub(files)
    blobs = {fname: text.encode("utf-8") for fname, text in clean.items()}
    from tui import __version__ as dpdeck_version  # a version string only; tui/__init__ imports nothing

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dpdeck_version": dpdeck_version,
        "model_type": TomlFile.from_text(clean[store.MAIN]).get("model.type"),
        "files": {fname: hashlib.sha256(blob).hexdigest() for fname, blob in sorted(blobs.items())},
    }
    buf = io.BytesIO()
    mtime = int(time.time())
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        _add_member(tar, MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode(), mtime)
        for fname in sorted(blobs, key=lambda f: (f != store.MAIN, f)):
            _add_member(tar, fname, blobs[fname], mtime)
    return buf.getvalue(), notes


def export_profile(name_or_path: str, dest: Path | None = None, *, overwrite: bool = False) -> ExportResult:
    """Export a stored profile (or a main TOML path) to `dest` (default `./<name>.dpdeck.tar.gz`)."""
    if store.exists(name_or_path):
        name = name_or_path
        files = store.read_files(name)
    else:
        profile = store.resolve(name_or_path)
        path = profile.main.path
        from_path = (path.parent.name if path.name == store.MAIN else path.stem) if path else "profile"
        name = profile.name or from_path
        files = store.files_from_profile(profile)
    dest = dest or Path.cwd() / f"{name}{SUFFIX}"
    if dest.exists() and not overwrite:
        raise ProfileError(f"{dest}: already exists; pass --force to overwrite or -o to pick another path")
    data, notes = build_archive(name, files)
    try:
        atomic_write_bytes(dest, data, mode=0o644)
    except OSError as exc:
        raise ProfileError(f"{dest}: cannot write the archive: {exc.strerror or exc}") from exc
    return ExportResult(dest, name, sorted(files), notes)


# Reading an archive safely.


def _member_problem(member: tarfile.TarInfo) -> str | None:
    raw = member.name
    if raw.startswith("/") or raw.startswith("\\") or re.match(r"^[A-Za-z]:", raw):
        return f"member {raw!r} has an absolute path"
    parts = PurePosixPath(raw.replace("\\", "/")).parts
    if ".." in parts:
        return f"member {raw!r} points outside the archive ('../')"
    if member.issym() or member.islnk():
        return f"member {raw!r} is a link (to {member.linkname!r}); only regular files are accepted"
    if member.ischr() or member.isblk():
        return f"member {raw!r} is a device file; only regular files are accepted"
    if member.isfifo():
        return f"member {raw!r} is a FIFO; only regular files are accepted"
    if not (member.isreg() or member.isdir()):
        return f"member {raw!r} is not a regular file"
    if member.isreg() and member.size > MAX_MEMBER_BYTES:
        return f"member {raw!r} is {member.size} bytes, over the {MAX_MEMBER_BYTES}-byte limit for a profile file"
    return None


def read_archive(path: Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Member name -> bytes, and the manifest ({} when absent). Raises ArchiveRejected."""
    size = path.stat().st_size
    if size > MAX_ARCHIVE_BYTES:
        raise ArchiveRejected(
            f"{path}: {size} bytes, over the {MAX_ARCHIVE_BYTES}-byte limit for a profile archive"
        )
    members: dict[str, bytes] = {}
    total = 0
    count = 0
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                count += 1
                if count > MAX_MEMBERS:
                    raise ArchiveRejected(f"{path}: more than {MAX_MEMBERS} members; not a profile archive")
                problem = _member_problem(member)
                if problem:
                    raise ArchiveRejected(
                        f"{path}: {problem}; refusing the whole archive, nothing was stored"
                    )
                if member.isdir():
                    continue
                name = "/".join(p for p in PurePosixPath(member.name).parts if p != ".")
                handle = tar.extractfile(member)
                data = handle.read(MAX_MEMBER_BYTES + 1) if handle else b""
                total += len(data)
                if len(data) > MAX_MEMBER_BYTES or total > MAX_TOTAL_BYTES:
                    raise ArchiveRejected(f"{path}: member {member.name!r} is over the size limit")
                if name in members:
                    raise ArchiveRejected(f"{path}: member {name!r} appears twice")
                members[name] = data
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise ArchiveRejected(f"{path}: not a readable .tar.gz profile archive ({exc})") from exc
    members = _strip_top_folder(path, members)
    manifest: dict[str, Any] = {}
    if MANIFEST in members:
        try:
            manifest = json.loads(members.pop(MANIFEST).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ArchiveRejected(f"{path}: {MANIFEST} is not valid JSON ({exc})") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ArchiveRejected(
                f'{path}: {MANIFEST} is not a {FORMAT} manifest (expected "format": "{FORMAT}")'
            )
        _check_hashes(path, members, manifest)
    return members, manifest


def _strip_top_folder(path: Path, members: dict[str, bytes]) -> dict[str, bytes]:
    """Accept `name/main.toml` as made by `tar czf x.tar.gz name/`; deeper trees are not profiles."""
    split = {name: name.split("/") for name in members}
    if split and all(len(p) == 2 for p in split.values()) and len({p[0] for p in split.values()}) == 1:
        members = {p[1]: members[name] for name, p in split.items()}
    for name in members:
        if "/" in name or not _MEMBER.match(name):
            raise ArchiveRejected(
                f"{path}: unexpected member {name!r}; a profile archive holds only {MANIFEST} and NAME.toml files"
            )
    return members


def _check_hashes(path: Path, members: dict[str, bytes], manifest: dict[str, Any]) -> None:
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        return
    for fname, digest in listed.items():
        if fname not in members:
            raise ArchiveRejected(f"{path}: {MANIFEST} lists {fname!r} but the archive does not contain it")
        if hashlib.sha256(members[fname]).hexdigest() != digest:
            raise ArchiveRejected(f"{path}: {fname!r} does not match its checksum in {MANIFEST} (damaged?)")


def _decode(path: Path, members: dict[str, bytes]) -> dict[str, str]:
    files: dict[str, str] = {}
    for fname, data in members.items():
        if not fname.endswith(".toml"):
            raise ArchiveRejected(f"{path}: unexpected member {fname!r}; expected NAME.toml files")
        try:
            files[fname] = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ArchiveRejected(f"{path}: {fname} is not UTF-8 text, expected TOML") from exc
    if store.MAIN not in files:
        raise ArchiveRejected(f"{path}: no {store.MAIN} in the archive; not a dpdeck profile export")
    return files


# Import.


def import_files(
    files: dict[str, str],
    name: str,
    *,
    labels: dict[str, str] | None = None,
    source: str = "import",
    force: bool = False,
    backend: str = "diffusion-pipe",
) -> ImportResult:
    """Validate, move secrets to the secrets store, then store. Nothing changes when it is rejected."""
    from profiles.secrets import move_to_store, strip_secrets

    try:
        store.check_name(name)
    except store.InvalidName as exc:
        raise store.InvalidName(f"{exc}; pass --name NAME to choose a valid one") from exc
    present = store.exists(name)
    if present and not force:
        raise store.ProfileExists(
            f"a profile named {name!r} already exists; pass --name to choose another, "
            "or --force to store this as a new version of it"
        )
    clean: dict[str, str] = {}
    found = []
    for fname, text in files.items():
        try:
            clean[fname], hits = strip_secrets(text, fname)
        except ProfileParseError as exc:
            label = (labels or {}).get(fname, fname)
            detail = f"{label}:{exc.line}: {exc.detail}" if exc.line else f"{label}: {exc.detail}"
            raise ImportRejected(f"{source}: not valid TOML; nothing was stored", [exc], [detail]) from exc
        found.extend(hits)
    # Paths in an imported profile usually name another machine's files: warn, do not reject.
    checked = store.validate_files(clean, labels=labels, backend=backend, check_paths="warn")
    if checked.errors:
        raise ImportRejected(
            f"{source}: the profile is invalid ({len(checked.errors)} error(s)); nothing was stored",
            checked.problems,
            checked.errors,
        )
    secret_notes = move_to_store(found)
    result = store.save(name, clean, f"imported from {source}", create=not present)
    return ImportResult(
        name, result.version.version, not present, secret_notes + result.warnings, checked.warnings
    )


def import_path(
    source: Path, name: str | None = None, *, force: bool = False, backend: str = "diffusion-pipe"
) -> ImportResult:
    """Import a `.tar.gz` export, or a plain main TOML (with the dataset TOML it references)."""
    if not source.exists():
        raise ProfileNotFound(f"{source}: file not found")
    if source.is_dir():
        raise ProfileNotFound(f"{source}: is a folder; expected a {SUFFIX} archive or a main TOML file")
    if tarfile.is_tarfile(source) or source.name.endswith((".tar.gz", ".tgz", ".tar")):
        members, manifest = read_archive(source)
        files = _decode(source, members)
        default = str(manifest.get("name") or source.name.removesuffix(SUFFIX).split(".")[0])
        labels = {fname: f"{source}:{fname}" for fname in files}
        return import_files(
            files, name or default, labels=labels, source=str(source), force=force, backend=backend
        )
    profile = load_profile(source)
    files = store.files_from_profile(profile)
    labels = {store.MAIN: str(source)}
    if profile.dataset is not None and profile.dataset.path is not None:
        labels[store.DATASET] = str(profile.dataset.path)
    default = source.parent.name if source.name == store.MAIN else source.stem
    return import_files(
        files, name or default, labels=labels, source=str(source), force=force, backend=backend
    )
