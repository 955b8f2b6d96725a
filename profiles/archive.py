"""Export a profile as one portable `.tar.gz`; import one (or a plain main TOML) after validating it.

Archive layout (flat): `manifest.json`, `main.toml`, `dataset.toml` (+ `eval-*.toml`). Paths inside the
TOMLs are kept as they are; secrets are removed. Import never extracts to disk: members are read into
memory one by one from a stream, and anything that is not a small regular file with a plain name
(`../`, absolute paths, links, devices, sparse files, oversize members) rejects the whole archive before
anything is stored. The profile is validated before it is stored; an invalid one changes nothing.

Bounded reading: tarfile reads a GNU long-name or PAX header's whole body as soon as it meets the header (a
2 GB size field in a 2 MB gzip took 87 s and 7.8 GB). So we decompress ourselves into a reader that refuses
more than a profile archive can hold (MAX_TAR_BYTES), and hand tarfile a TarInfo subclass that checks each
raw header's type and size before tarfile reads the body.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import re
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

from profiles import store
from profiles.document import TomlFile, load_profile
from profiles.errors import ProfileError, ProfileNotFound, ProfileParseError
from statefiles import __version__
from statefiles.atomic import atomic_write_bytes

FORMAT = "dpdeck-profile"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUFFIX = ".dpdeck.tar.gz"
MAX_ARCHIVE_BYTES = 8 * 1024 * 1024
MAX_MEMBER_BYTES = 1024 * 1024
MAX_TOTAL_BYTES = 4 * 1024 * 1024
MAX_MEMBERS = 32
# A GNU long-name/long-link or PAX header body: a profile member's name is at most 64 characters, and a PAX
# header of a real export holds a few times; 64 KiB leaves room for xattrs a `tar` may add.
MAX_EXT_HEADER_BYTES = 64 * 1024
MAX_EXT_HEADERS_IN_A_ROW = 4  # tarfile parses each following header recursively
# All the tar data (headers, padding, member data) once decompressed: the member data limit plus generous room
# for MAX_MEMBERS members' headers.
MAX_TAR_BYTES = MAX_TOTAL_BYTES + 2 * 1024 * 1024
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

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dpdeck_version": __version__,
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
    if member.issparse():
        return f"member {raw!r} is a sparse file; only regular files are accepted"
    if not (member.isreg() or member.isdir()):
        return f"member {raw!r} is not a regular file"
    if member.isreg() and member.size > MAX_MEMBER_BYTES:
        return f"member {raw!r} is {member.size} bytes, over the {MAX_MEMBER_BYTES}-byte limit for a profile file"
    return None


_EXT_HEADERS = {
    tarfile.GNUTYPE_LONGNAME: "GNU long-name header",
    tarfile.GNUTYPE_LONGLINK: "GNU long-link header",
    tarfile.XHDTYPE: "PAX extended header",
    tarfile.XGLTYPE: "PAX global header",
    tarfile.SOLARIS_XHDTYPE: "Solaris extended header",
}
_REFUSE = "refusing the whole archive, nothing was stored"


class BoundedReader(io.RawIOBase):
    """A decompressed stream that raises ArchiveRejected once more than `limit` bytes were asked of it.

    tarfile asks for whole header bodies at once; a read is served at most `limit - pos + 1` bytes, so memory
    stays within the limit however much is asked for. `member` names what tarfile was reading (for messages).
    """

    def __init__(self, inner: IO[bytes], path: Path, limit: int) -> None:
        super().__init__()
        self.inner = inner
        self.path = path
        self.limit = limit
        self.pos = 0
        self.member: str | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        want = self.limit - self.pos + 1 if size is None or size < 0 else min(size, self.limit - self.pos + 1)
        data = self.inner.read(want)
        self.pos += len(data)
        if self.pos > self.limit:
            where = f" (reading member {self.member!r})" if self.member else ""
            raise ArchiveRejected(
                f"{self.path}: more than {self.limit} bytes once decompressed{where}; a profile archive "
                f"holds at most {MAX_TOTAL_BYTES} bytes of files; {_REFUSE}"
            )
        return data


def _header_problem(info: tarfile.TarInfo) -> str | None:
    """What is wrong with a raw header, judged before tarfile reads anything after it."""
    if info.type == tarfile.GNUTYPE_SPARSE:
        return f"member {info.name!r} is a sparse file; only regular files are accepted"
    kind = _EXT_HEADERS.get(info.type)
    if kind is not None and info.size > MAX_EXT_HEADER_BYTES:
        return (
            f"member {info.name!r} is a {kind} of {info.size} bytes, over the {MAX_EXT_HEADER_BYTES}-byte "
            "limit for a profile archive"
        )
    return None


def _checked_tarinfo(path: Path, reader: BoundedReader) -> type[tarfile.TarInfo]:
    """A TarInfo class that refuses a bad raw header before tarfile reads its body (see the module doc).

    `_proc_member` and `_proc_gnusparse_10` are tarfile's own dispatch points (unchanged since Python 3.2); if
    a later Python renamed them, the BoundedReader still caps time and memory.
    """
    in_a_row = [0]

    class Checked(tarfile.TarInfo):
        def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
            reader.member = self.name
            problem = _header_problem(self)
            if problem is None and self.type in _EXT_HEADERS:
                in_a_row[0] += 1
                if in_a_row[0] > MAX_EXT_HEADERS_IN_A_ROW:
                    problem = (
                        f"member {self.name!r} is one of more than {MAX_EXT_HEADERS_IN_A_ROW} extension "
                        "headers in a row"
                    )
            elif problem is None:
                in_a_row[0] = 0
            if problem:
                raise ArchiveRejected(f"{path}: {problem}; {_REFUSE}")
            checked: tarfile.TarInfo = super()._proc_member(tar)  # type: ignore[misc]
            return checked

        def _proc_gnusparse_10(self, next: tarfile.TarInfo, pax_headers: Any, tar: Any) -> None:
            # Its sparse map is read line by line from the member data, as long as the map's count says.
            raise ArchiveRejected(
                f"{path}: member {next.name!r} is a sparse file; only regular files are accepted; {_REFUSE}"
            )

    return Checked


def _decompressed(raw: IO[bytes]) -> IO[bytes]:
    """The tar stream inside `raw`, told by its first bytes (gzip, bzip2, xz, else plain tar)."""
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        # typeshed has GzipFile as a BufferedIOBase only; it is a readable binary stream like the others
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    return raw


def looks_like_archive(path: Path) -> bool:
    """A compressed stream, or a first block that parses as a tar header. Unlike tarfile.is_tarfile this
    reads one block and no member: is_tarfile parses the first member, a header bomb included."""
    try:
        with path.open("rb") as fh:
            head = fh.read(tarfile.BLOCKSIZE)
    except OSError:
        return False
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")):
        return True
    try:
        tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def read_archive(path: Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Member name -> bytes, and the manifest ({} when absent). Raises ArchiveRejected."""
    size = path.stat().st_size
    if size > MAX_ARCHIVE_BYTES:
        raise ArchiveRejected(
            f"{path}: {size} bytes, over the {MAX_ARCHIVE_BYTES}-byte limit for a profile archive"
        )
    try:
        with path.open("rb") as raw:
            members = _read_members(path, raw)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
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


def _read_members(path: Path, raw: IO[bytes]) -> dict[str, bytes]:
    with _decompressed(raw) as inner:
        reader = BoundedReader(inner, path, MAX_TAR_BYTES)
        with tarfile.open(fileobj=reader, mode="r|", tarinfo=_checked_tarinfo(path, reader)) as tar:
            return _members_of(path, tar)


def _members_of(path: Path, tar: tarfile.TarFile) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    total = 0
    for count, member in enumerate(tar, 1):
        if count > MAX_MEMBERS:
            raise ArchiveRejected(f"{path}: more than {MAX_MEMBERS} members; not a profile archive")
        problem = _member_problem(member)
        if problem:
            raise ArchiveRejected(f"{path}: {problem}; {_REFUSE}")
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
    return members


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
    if looks_like_archive(source) or source.name.endswith((".tar.gz", ".tgz", ".tar")):
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
