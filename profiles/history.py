"""Version history of one stored profile: every save is a numbered snapshot of all its files.

Layout inside a profile folder: `history/v000001/{main.toml,dataset.toml,...,meta.json}`. A version is
written whole into a hidden temp folder (`history/.staging-v000001-<pid>`, `meta.json` last) and renamed
into place, so a version folder is complete or absent, even on a full disk; a version without `meta.json`
(only from older versions of dpdeck) is simply not a version. `profiles.store.save` stages the version,
replaces the live files, and only then commits the version, so the history never claims content the live
files do not have. Rolling back saves the old content as a new version, so a rollback can itself be
undone. These functions work on a profile folder; `profiles.store` wraps them by profile name.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from profiles.errors import ProfileError, ProfileNotFound
from statefiles.atomic import atomic_write_text, fsync_dir

HISTORY_DIR = "history"
META = "meta.json"
STAGING_PREFIX = ".staging-"
_VERSION_DIR = re.compile(r"^v(\d{6,})$")


@dataclass(frozen=True)
class VersionInfo:
    version: int
    timestamp: str  # UTC, ISO 8601
    message: str
    files: list[str]
    sha256: str  # over all files, to spot identical versions

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def files_digest(files: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode("utf-8") + b"\0")
    return digest.hexdigest()


def _history_root(pdir: Path) -> Path:
    return pdir / HISTORY_DIR


def _version_dir(pdir: Path, version: int) -> Path:
    return _history_root(pdir) / f"v{version:06d}"


def _read_meta(vdir: Path) -> VersionInfo | None:
    try:
        raw = json.loads((vdir / META).read_text(encoding="utf-8"))
        return VersionInfo(
            version=int(raw["version"]),
            timestamp=str(raw["timestamp"]),
            message=str(raw.get("message", "")),
            files=[str(f) for f in raw["files"]],
            sha256=str(raw.get("sha256", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_versions(pdir: Path) -> list[VersionInfo]:
    """Complete versions, oldest first."""
    root = _history_root(pdir)
    if not root.is_dir():
        return []
    out: list[VersionInfo] = []
    for entry in root.iterdir():
        match = _VERSION_DIR.match(entry.name)
        if match and entry.is_dir():
            info = _read_meta(entry)
            if info is not None and info.version == int(match.group(1)):
                out.append(info)
    return sorted(out, key=lambda v: v.version)


def _next_version(pdir: Path) -> int:
    root = _history_root(pdir)
    highest = 0
    if root.is_dir():
        for entry in root.iterdir():
            match = _VERSION_DIR.match(entry.name)
            if match:  # count incomplete ones too, so a number is never reused
                highest = max(highest, int(match.group(1)))
    return highest + 1


@dataclass(frozen=True)
class StagedVersion:
    """A complete version written to a temp folder, not yet part of the history."""

    folder: Path
    target: Path
    info: VersionInfo


def _remove_stale_staging(root: Path) -> None:
    # The caller holds the store lock, so no other save is staging now: anything left is from a crash.
    for entry in root.iterdir():
        if entry.name.startswith(STAGING_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)


def stage_version(pdir: Path, files: dict[str, str], message: str) -> StagedVersion:
    """Write `files` as the next version into a temp folder (meta.json last). The caller holds the lock.

    A failure (disk full) removes the temp folder and raises the OSError; the history is unchanged.
    """
    root = _history_root(pdir)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(root)
    version = _next_version(pdir)
    folder = root / f"{STAGING_PREFIX}v{version:06d}-{os.getpid()}"
    info = VersionInfo(
        version=version,
        timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        message=message,
        files=sorted(files),
        sha256=files_digest(files),
    )
    try:
        folder.mkdir()
        for name, text in files.items():
            atomic_write_text(folder / name, text, mode=0o600)
        atomic_write_text(folder / META, json.dumps(info.to_dict(), indent=2) + "\n", mode=0o600)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return StagedVersion(folder, _version_dir(pdir, version), info)


def commit_version(staged: StagedVersion) -> VersionInfo:
    """Make a staged version part of the history (one rename: it appears whole or not at all)."""
    os.rename(staged.folder, staged.target)
    fsync_dir(staged.target.parent)
    return staged.info


def discard_version(staged: StagedVersion) -> None:
    shutil.rmtree(staged.folder, ignore_errors=True)


def record_version(pdir: Path, files: dict[str, str], message: str) -> VersionInfo:
    """Snapshot `files` as the next version. The caller holds the profile's lock."""
    staged = stage_version(pdir, files, message)
    try:
        return commit_version(staged)
    except BaseException:
        discard_version(staged)
        raise


def get_version(pdir: Path, version: int) -> VersionInfo:
    info = _read_meta(_version_dir(pdir, version))
    if info is None:
        known = [v.version for v in list_versions(pdir)]
        have = f"versions {known[0]}..{known[-1]}" if known else "no versions"
        raise ProfileNotFound(f"{pdir.name}: no version {version} in its history (it has {have})")
    return info


def read_version(pdir: Path, version: int) -> dict[str, str]:
    """All files of one version, by file name."""
    info = get_version(pdir, version)
    vdir = _version_dir(pdir, version)
    try:
        return {name: (vdir / name).read_text(encoding="utf-8") for name in info.files}
    except OSError as exc:
        raise ProfileError(f"{vdir}: cannot read version {version}: {exc.strerror or exc}") from exc


def diff_versions(pdir: Path, old: int, new: int, context: int = 3) -> str:
    """Unified diff of every file between two versions (empty when identical)."""
    a = read_version(pdir, old)
    b = read_version(pdir, new)
    chunks: list[str] = []
    for name in sorted(set(a) | set(b)):
        chunks.extend(
            difflib.unified_diff(
                a.get(name, "").splitlines(keepends=True),
                b.get(name, "").splitlines(keepends=True),
                fromfile=f"v{old}/{name}" if name in a else "/dev/null",
                tofile=f"v{new}/{name}" if name in b else "/dev/null",
                n=context,
            )
        )
    return "".join(line if line.endswith("\n") else line + "\n" for line in chunks)
