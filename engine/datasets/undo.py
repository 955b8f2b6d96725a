"""Undo journal for dataset batch operations.

Layout: $DPDECK_HOME/datasets/undo/<op-id>/ with manifest.json (one entry per file), links/<i> and data.bin.
A file on the same filesystem as the journal is kept as a hard link to its original inode (links/<i>): no copy,
and undo renames that very inode back, so bytes, mode and mtime return exactly. The link also matters for speed:
ops replace files by rename, and a rename over a file whose inode is still linked elsewhere does not free its data
blocks, which on ext4 is most of a replace's cost (~5x). Files on another filesystem, or that may not be linked,
have their bytes packed into data.bin (offset + length in the manifest). A file the op creates is recorded as
absent (`offset: null`), so undo deletes it. Links, data.bin and then the manifest are made durable before any
dataset file changes, so a crash mid-op leaves a journal that can restore every file. Records written by older
versions (one `<i>.blob` per file) still restore.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.datasets.fastio import flush, read_bytes, replace_bytes
from profiles.atomic import atomic_write_text, fsync_dir
from profiles.paths import subdir

DATA_FILE = "data.bin"
LINKS_DIR = "links"
SUMMARY_FILE = "summary.json"


class UndoError(RuntimeError):
    pass


def undo_root() -> Path:
    root = subdir("datasets") / "undo"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _read_or_none(path: str) -> bytes | None:
    try:
        return read_bytes(path)
    except FileNotFoundError:
        return None


def record(
    description: str, paths: Sequence[Path | str], contents: Sequence[bytes | None] | None = None
) -> str:
    """Journal each file's current bytes (None: absent, so undo deletes it) and return the new op id.

    `contents` passes bytes the caller has just read (and checked), saving a second read of every file.
    """
    if contents is not None and len(contents) != len(paths):
        raise ValueError("record: contents must match paths one to one")
    # Time-sortable id so "the last op" is the greatest name; microseconds order ops of the same second (a TUI
    # edit and a batch op can be that close) and the uuid part keeps simultaneous ops apart.
    now = time.time_ns()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now // 10**9))
    op_id = f"{stamp}.{now // 1000 % 10**6:06d}-{uuid.uuid4().hex[:6]}"
    op_dir = undo_root() / op_id
    op_dir.mkdir()
    files = []
    offset = 0
    linker = _Linker(op_dir)
    with open(op_dir / DATA_FILE, "wb") as fh:
        for i, path in enumerate(paths):
            path = os.path.abspath(path)  # strings, not pathlib: this loop may run 100,000 times
            data = contents[i] if contents is not None else _read_or_none(path)
            if data is None:
                files.append({"path": path, "offset": None, "length": 0})
                continue
            entry = linker.link(path, i)
            if entry is None:
                fh.write(data)
                try:
                    mode: int | None = os.stat(path).st_mode & 0o7777
                except OSError:
                    mode = None
                entry = {"path": path, "offset": offset, "length": len(data), "mode": mode}
                offset += len(data)
            files.append(entry)
        fh.flush()
        os.fsync(fh.fileno())
    linker.sync()
    manifest = {"id": op_id, "description": description, "created": time.time(), "files": files}
    # The manifest appears last (atomically): a record without one is a crash before any dataset file changed.
    atomic_write_text(op_dir / "manifest.json", json.dumps(manifest, separators=(",", ":")))
    # A small summary so listing ops never parses a 100k-entry manifest.
    atomic_write_text(op_dir / SUMMARY_FILE, json.dumps(_summary(manifest)))
    fsync_dir(op_dir.parent)
    return op_id


class _Linker:
    """Hard-links journalled files into the record when they share its filesystem."""

    def __init__(self, op_dir: Path) -> None:
        self.op_dir = op_dir
        self.dir = op_dir / LINKS_DIR
        self.prefix = os.fspath(self.dir) + os.sep
        self.dev = os.stat(op_dir).st_dev
        self.usable: dict[str, bool] = {}  # per dataset folder: same filesystem and linking allowed

    def link(self, path: str, i: int) -> dict[str, Any] | None:
        folder = os.path.dirname(path)
        if folder not in self.usable:
            try:
                self.usable[folder] = os.stat(folder).st_dev == self.dev
            except OSError:
                self.usable[folder] = False
            if self.usable[folder]:
                self.dir.mkdir(exist_ok=True)
        if not self.usable[folder]:
            return None
        try:
            # A symlink is linked as itself (not its target), so undo puts the symlink back.
            os.link(path, f"{self.prefix}{i}", follow_symlinks=False)
        except OSError:  # e.g. fs.protected_hardlinks on a file of another user: keep its bytes instead
            self.usable[folder] = False
            return None
        return {"path": path, "link": f"{LINKS_DIR}/{i}"}

    def sync(self) -> None:
        if self.dir.exists():
            fsync_dir(self.dir)


def list_ops() -> list[dict[str, Any]]:
    """Recorded ops, newest first (id, description, created, file count)."""
    out = []
    for d in sorted(undo_root().iterdir(), reverse=True):
        try:
            out.append(json.loads((d / SUMMARY_FILE).read_text(encoding="utf-8")))
            continue
        except (OSError, ValueError):
            pass  # older record, or a crash between manifest and summary: the manifest says the same
        try:
            m = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # an op that crashed before its manifest existed changed nothing
        out.append(_summary(m))
    return out


def _summary(manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": manifest["id"],
        "description": manifest["description"],
        "created": manifest["created"],
        "files": len(manifest["files"]),
    }


def undo(op_id: str | None = None) -> dict[str, Any]:
    """Restore the files of `op_id` (default: the newest op) byte for byte; files it created are deleted."""
    ops = list_ops()
    if not ops:
        raise UndoError("nothing to undo")
    op_id = op_id or ops[0]["id"]
    op_dir = undo_root() / op_id
    try:
        manifest = json.loads((op_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UndoError(f"no undo record {op_id!r}") from exc
    restored = []
    data = _journal_bytes(op_dir)
    for entry in manifest["files"]:
        path = Path(entry["path"])
        if "link" in entry:
            link = op_dir / entry["link"]
            if link.exists():  # else an interrupted undo already moved it back
                os.replace(link, path)
            restored.append(str(path))
            continue
        old = _old_bytes(op_dir, entry, data)
        if old is None:
            path.unlink(missing_ok=True)
        else:
            replace_bytes(path, old, entry.get("mode"))
        restored.append(str(path))
    flush()
    # Only drop the record once every file is back, so a failed undo can be retried.
    shutil.rmtree(op_dir)
    return {"id": op_id, "description": manifest["description"], "restored": restored}


def _journal_bytes(op_dir: Path) -> memoryview:
    try:
        return memoryview((op_dir / DATA_FILE).read_bytes())
    except FileNotFoundError:  # a record from before the packed format
        return memoryview(b"")


def _old_bytes(op_dir: Path, entry: dict[str, Any], data: memoryview) -> bytes | None:
    if "blob" in entry:  # older layout: one file per blob
        return None if entry["blob"] is None else (op_dir / entry["blob"]).read_bytes()
    if entry["offset"] is None:
        return None
    start = entry["offset"]
    return bytes(data[start : start + entry["length"]])
