"""Undo journal for dataset batch operations.

Layout: $DPDECK_HOME/datasets/undo/<op-id>/ with manifest.json (one entry per file), links/<w>/<i> and data.bin.
A file on the same filesystem as the journal is kept as a hard link to its original inode (links/<w>/<i>): no copy,
and undo renames that very inode back, so bytes, mode and mtime return exactly. The link also matters for speed:
ops replace files by rename, and a rename over a file whose inode is still linked elsewhere does not free its data
blocks, which on ext4 is most of a replace's cost (~5x). Files on another filesystem, or that may not be linked,
have their bytes packed into data.bin (offset + length in the manifest). A file the op creates is recorded as
absent (`offset: null`), so undo deletes it. Links, data.bin and then the manifest are made durable before any
dataset file changes, so a crash mid-op leaves a journal that can restore every file. Records written by older
versions (one `<i>.blob` per file) still restore.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from engine.datasets.fastio import CommitError, flush, read_bytes, replace_bytes, run_workers, worker_count
from statefiles.atomic import atomic_write_text, fsync_dir
from statefiles.paths import subdir

DATA_FILE = "data.bin"
LINKS_DIR = "links"
SUMMARY_FILE = "summary.json"


class UndoError(RuntimeError):
    pass


def _same_mount(op_dir: Path, items: Sequence[tuple[str, bytes, int | None]]) -> bool:
    """Whether names can move between the record and every folder of `items`. Equal st_dev is not enough: a bind
    mount of the same filesystem refuses renames across it (EXDEV), so one existing file per folder is
    hard-linked into the record as a probe (nothing is written in the dataset folder)."""
    probed: set[str] = set()
    folders: set[str] = set()
    probe = op_dir / ".mount-probe"
    for path, _, _ in items:
        folder = os.path.dirname(path) or "."
        folders.add(folder)
        if folder in probed or not os.path.lexists(path):
            continue
        try:
            os.link(path, probe, follow_symlinks=False)
        except OSError:
            return False
        probe.unlink()
        probed.add(folder)
    return probed == folders  # a folder of only new files cannot be probed this way: take the safe path


class SwapError(UndoError):
    """A batch replace failed part way; the message names the undo record that restores it."""


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
    """Journal each file's current state and return the new op id.

    `contents`, when given, says which files are absent (None: undo deletes what the op creates) and passes bytes
    the caller has just read, used only for a file that cannot be hard-linked; without it every file is linked
    (or read, when linking fails) as it is now.
    """
    if contents is not None and len(contents) != len(paths):
        raise ValueError("record: contents must match paths one to one")
    op_id, op_dir = _new_op()
    try:
        _record_into(op_dir, op_id, description, paths, contents)
    except BaseException:
        # Half a record restores nothing and would be listed as an op: a failure (disk full) leaves none.
        shutil.rmtree(op_dir, ignore_errors=True)
        raise
    return op_id


def _record_into(
    op_dir: Path,
    op_id: str,
    description: str,
    paths: Sequence[Path | str],
    contents: Sequence[bytes | None] | None,
) -> None:
    absolute = [os.path.abspath(p) for p in paths]  # strings, not pathlib: this may be 100,000 paths
    files = _link_all(op_dir, absolute, contents)
    offset = 0
    with open(op_dir / DATA_FILE, "wb") as fh:
        for i, entry in enumerate(files):
            if entry is not None:
                continue
            path = absolute[i]
            data = contents[i] if contents is not None else _read_or_none(path)
            if data is None:
                files[i] = {"path": path, "offset": None, "length": 0}
                continue
            fh.write(data)
            try:
                mode: int | None = os.stat(path).st_mode & 0o7777
            except OSError:
                mode = None
            files[i] = {"path": path, "offset": offset, "length": len(data), "mode": mode}
            offset += len(data)
        fh.flush()
        os.fsync(fh.fileno())
    _write_manifest(op_dir, op_id, description, files)  # type: ignore[arg-type]  # all slots filled above


def drop_record(op_id: str) -> None:
    """Delete a record whose op changed nothing (it failed before its first write)."""
    shutil.rmtree(undo_root() / op_id, ignore_errors=True)


def _new_op() -> tuple[str, Path]:
    # Time-sortable id so "the last op" is the greatest name; microseconds order ops of the same second (a TUI
    # edit and a batch op can be that close) and the uuid part keeps simultaneous ops apart.
    now = time.time_ns()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now // 10**9))
    op_id = f"{stamp}.{now // 1000 % 10**6:06d}-{uuid.uuid4().hex[:6]}"
    op_dir = undo_root() / op_id
    op_dir.mkdir()
    return op_id, op_dir


def _write_manifest(op_dir: Path, op_id: str, description: str, files: list[dict[str, Any]]) -> None:
    manifest = {"id": op_id, "description": description, "created": time.time(), "files": files}
    # The manifest appears last (atomically): a record without one is a crash before any dataset file changed.
    atomic_write_text(op_dir / "manifest.json", json.dumps(manifest, separators=(",", ":")))
    # A small summary so listing ops never parses a 100k-entry manifest.
    atomic_write_text(op_dir / SUMMARY_FILE, json.dumps(_summary(manifest)))
    fsync_dir(op_dir.parent)


def replace_journalled(description: str, items: Sequence[tuple[str, bytes, int | None]]) -> str:
    """Replace each (path, data, mode) atomically, journalled for undo; returns the op id.

    Where the journal shares the files' filesystem (and mount) and it supports RENAME_EXCHANGE, each new file is
    written into the record and exchanged with the old one (engine.datasets.swap). Elsewhere the old files are
    hard-linked or packed into the record while the new ones are staged beside them (engine.datasets.fastio),
    then one sync and a rename each. A failure before the first replacement changes nothing and leaves no
    record; SwapError means a failure part way, and the record restores every file.
    """
    op_id = _record_swapped(description, items)
    if op_id is not None:
        return op_id
    from concurrent.futures import ThreadPoolExecutor

    from engine.datasets.fastio import stage_all

    with ThreadPoolExecutor(1, thread_name_prefix="dpdeck-stage") as pool:
        staging = pool.submit(stage_all, items)  # the journal and the temp files are written at the same time
        try:
            op_id = record(description, [path for path, _, _ in items])  # each file as it is; absent ones noted
        except BaseException:
            with contextlib.suppress(Exception):  # staging failed too: it removed its own temp files
                staging.result().discard()
            raise
        try:
            staged = staging.result()
        except BaseException:
            shutil.rmtree(undo_root() / op_id, ignore_errors=True)  # nothing changed: no op to undo
            raise
    try:
        staged.commit()
    except CommitError as err:
        staged.discard()  # the temp files not renamed yet
        _raise_commit_failure(op_id, err)
    return op_id


def _raise_commit_failure(op_id: str, err: CommitError) -> NoReturn:
    """Before the first replacement nothing changed: drop the record, raise the plain OSError. Part way: the
    (complete) record restores every file, and the SwapError says so."""
    exc = err.cause
    if err.done == 0:
        drop_record(op_id)
        raise exc from None  # the OSError as it was raised, without the CommitError wrapped around it
    where = exc.filename2 or exc.filename or exc  # a rename names the temp file first, the caption second
    raise SwapError(
        f"{where}: {exc.strerror or exc}; {err.done} file(s) before it were changed: "
        f"`dpdeck dataset undo {op_id}` restores them all"
    ) from exc


def _record_swapped(description: str, items: Sequence[tuple[str, bytes, int | None]]) -> str | None:
    """Replace each (path, data, mode) and journal it in one pass (engine.datasets.swap); the op id, or None when
    this filesystem cannot do it (then nothing was written and the caller takes the links + rename path).

    Raises SwapError when it fails after files started changing; the record then restores every file.
    """
    from engine.datasets import swap

    root = undo_root()
    dev = os.stat(root).st_dev
    try:
        if any(os.stat(folder).st_dev != dev for folder in {os.path.dirname(i[0]) or "." for i in items}):
            return None
    except OSError:
        return None
    op_id, op_dir = _new_op()
    try:
        if not swap.supported(op_dir) or not _same_mount(op_dir, items):
            shutil.rmtree(op_dir, ignore_errors=True)
            return None
        entries = swap.write_new(op_dir, items)
        _write_manifest(op_dir, op_id, description, entries)
    except BaseException:
        shutil.rmtree(op_dir, ignore_errors=True)  # no dataset file changed: no op to undo
        raise
    try:
        swap.commit(op_dir, entries)
    except CommitError as err:
        _raise_commit_failure(op_id, err)
    return op_id


# Threads that hard-link journalled files; each links into its own folder (links/<worker>/), since ext4 serialises
# the creation of names in one folder.
LINK_WORKERS = 2


def _link_all(op_dir: Path, paths: list[str], contents: Sequence[bytes | None] | None) -> list[dict[str, Any] | None]:
    """Hard-link each file that shares the journal's filesystem into op_dir/links/<w>/<i> (no copy: undo renames
    that very inode back, so bytes, mode and mtime return exactly). The entry of a file that is absent is marked
    so; None marks a file whose bytes must be kept instead (another filesystem, or linking refused, e.g.
    fs.protected_hardlinks on another user's file)."""
    files: list[dict[str, Any] | None] = [None] * len(paths)
    dev = os.stat(op_dir).st_dev
    usable: dict[str, bool] = {}  # per dataset folder: same filesystem and linking allowed
    for path in paths:
        folder = os.path.dirname(path)
        if folder not in usable:
            try:
                usable[folder] = os.stat(folder).st_dev == dev
            except OSError:
                usable[folder] = False
    if not any(usable.values()):
        return files
    workers = worker_count(len(paths), LINK_WORKERS)
    dirs = [op_dir / LINKS_DIR / str(w) for w in range(workers)]
    for d in dirs:
        d.mkdir(parents=True)

    def work(w: int) -> None:
        prefix = f"{dirs[w]}{os.sep}"
        for i in range(w, len(paths), workers):
            path = paths[i]
            folder = os.path.dirname(path)
            if not usable[folder] or (contents is not None and contents[i] is None):
                continue
            try:
                # A symlink is linked as itself (not its target), so undo puts the symlink back.
                os.link(path, f"{prefix}{i}", follow_symlinks=False)
            except FileNotFoundError:
                if contents is None:
                    files[i] = {"path": path, "offset": None, "length": 0}
                continue
            except OSError:
                usable[folder] = False  # a racy write is harmless: at worst one more refused link
                continue
            files[i] = {"path": path, "link": f"{LINKS_DIR}/{w}/{i}"}

    run_workers(work, workers, "dpdeck-undo")
    for d in dirs:
        fsync_dir(d)
    return files


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


def prune(keep: int | None = None) -> list[str]:
    """Delete every record but the newest `keep` (default: the `datasets.undo_keep` setting; 0 keeps them all) and
    return the deleted ids. Records pin their files' old inodes (hard links), so an unbounded journal would hold
    every old version of a dataset on disk. Callers run this after an op has been reported, not inside it: deleting
    a 100,000-file record takes a second or two."""
    if keep is None:
        from statefiles import settings

        keep = settings.load().datasets.undo_keep
    if not keep or keep < 0:
        return []
    root = undo_root()
    ids = sorted((d.name for d in root.iterdir() if d.is_dir()), reverse=True)
    for op_id in ids[keep:]:
        shutil.rmtree(root / op_id, ignore_errors=True)
    return ids[keep:]


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
    from engine.datasets import swap

    restored = []
    data = _journal_bytes(op_dir)
    for entry in manifest["files"]:
        path = Path(entry["path"])
        if "swap" in entry:
            swap.restore(op_dir, entry)
            restored.append(str(path))
            continue
        if "link" in entry:
            link = op_dir / entry["link"]
            if os.path.lexists(link):  # else an interrupted undo already moved it back
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
