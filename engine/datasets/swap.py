"""Journalled batch replace by atomic exchange: one new file per change, and the old file becomes the undo record.

The plain way to replace N files with an undo journal creates 2N names: a hard link that keeps each old file for
undo, and a temp file renamed over it. On Linux, `renameat2(RENAME_EXCHANGE)` swaps two names atomically, so the
temp file can be created inside the undo record itself and exchanged with the dataset file: afterwards the
dataset name holds the new file and the record's name holds the old one, exactly as a hard link would. That is N
names instead of 2N, and name creation is most of the kernel's work in a batch (about 30 us each on ext4).

Order (so a crash or kill -9 at any point leaves each file old or new, and undo can tell which):
1. every temp file is written in the record (two threads, each in its own folder; ext4 creates one name at a
   time per folder), and the inode number of each is noted;
2. the manifest is written (atomic, fsynced) and one sync makes all the new data durable;
3. each temp file is exchanged with its dataset file, in order; a second sync ends the batch.
Undo compares each record file's inode with the noted one: equal means the exchange never happened (the dataset
file is still old, the record file is the unused new one), different means it holds the old file to put back.

Needs the record and the dataset on one filesystem that supports RENAME_EXCHANGE (ext4, xfs, btrfs, tmpfs); the
caller falls back to links + staged renames (engine.datasets.fastio) otherwise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.datasets.fastio import CommitError, flush, run_workers, worker_count, write_temp

RENAME_EXCHANGE = 2
AT_FDCWD = -100
WORKERS = 2

_renameat2: Any = None


def _libc_renameat2() -> Any:
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            func = libc.renameat2  # glibc >= 2.28; AttributeError elsewhere (musl < 1.2.?, macOS)
            func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            func.restype = ctypes.c_int
            _renameat2 = func
        except (OSError, AttributeError):
            pass
    return _renameat2


def exchange(a: str, b: str) -> None:
    """Atomically swap the names `a` and `b` (both must exist)."""
    func = _libc_renameat2()
    if not func:
        raise OSError(38, "renameat2 is not available")
    if func(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), b)


def supported(folder: Path) -> bool:
    """Whether names in `folder` can be exchanged (tried on two scratch files there)."""
    if not _libc_renameat2():
        return False
    a, b = folder / ".swap-probe-a", folder / ".swap-probe-b"
    try:
        a.write_bytes(b"a")
        b.write_bytes(b"b")
        exchange(str(a), str(b))
        return a.read_bytes() == b"b"
    except OSError:
        return False
    finally:
        a.unlink(missing_ok=True)
        b.unlink(missing_ok=True)


def write_new(op_dir: Path, items: Sequence[tuple[str, bytes, int | None]]) -> list[dict[str, Any]]:
    """Step 1: write each (path, data, mode) as op_dir/links/<w>/<i>; the manifest entries for them.

    A file that does not exist yet gets a plain entry (`offset: null`: undo deletes it) and is renamed into
    place in step 3 instead of exchanged.
    """
    workers = worker_count(len(items), WORKERS)
    dirs = [op_dir / "links" / str(w) for w in range(workers)]
    for d in dirs:
        d.mkdir(parents=True)
    entries: list[dict[str, Any] | None] = [None] * len(items)

    def work(w: int) -> None:
        prefix = f"{dirs[w]}{os.sep}"
        for i in range(w, len(items), workers):
            path, data, mode = items[i]
            tmp = write_temp(path, data, mode, f"{prefix}{i}")
            link = f"links/{w}/{i}"
            if mode is None and not os.path.lexists(path):
                entries[i] = {"path": path, "offset": None, "length": 0, "new": link}
            else:
                entries[i] = {"path": path, "link": link, "swap": os.lstat(tmp).st_ino}

    run_workers(work, workers, "dpdeck-swap")
    return entries  # type: ignore[return-value]  # every slot is filled once no worker raised


def commit(op_dir: Path, entries: list[dict[str, Any]]) -> None:
    """Step 3 (after the manifest is durable): one sync for the new data, the exchanges in order, a last sync.

    Raises CommitError (how many files were replaced, and the OSError) when an exchange or rename fails.
    """
    flush()
    for done, entry in enumerate(entries):
        try:
            if "swap" in entry:
                exchange(f"{op_dir}{os.sep}{entry['link']}", entry["path"])
            else:
                os.replace(op_dir / entry["new"], entry["path"])
        except OSError as exc:
            raise CommitError(done, exc) from exc
    flush()


def restore(op_dir: Path, entry: dict[str, Any]) -> None:
    """Undo one exchanged entry: put the old file back, or drop the unused new one if the swap never happened."""
    link = op_dir / entry["link"]
    try:
        ino = os.lstat(link).st_ino
    except FileNotFoundError:
        return  # an interrupted undo already moved it back
    if ino == entry["swap"]:
        link.unlink()
    else:
        os.replace(link, entry["path"])
