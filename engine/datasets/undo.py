"""Undo journal for dataset batch operations.

Layout: $DPDECK_HOME/datasets/undo/<op-id>/manifest.json + one blob per file. The manifest is written (atomically)
before any dataset file changes, so a crash mid-op still leaves a journal that can restore every file.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from profiles.atomic import atomic_write_bytes, atomic_write_text
from profiles.paths import subdir


class UndoError(RuntimeError):
    pass


def undo_root() -> Path:
    root = subdir("datasets") / "undo"
    root.mkdir(parents=True, exist_ok=True)
    return root


def record(description: str, paths: list[Path]) -> str:
    """Save each file's current bytes (or that it is absent) and return the new op id."""
    # Time-sortable id so "the last op" is the greatest name; the uuid part keeps same-second ops apart.
    op_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    op_dir = undo_root() / op_id
    op_dir.mkdir()
    files = []
    for i, path in enumerate(paths):
        path = Path(path).absolute()
        if path.exists():
            atomic_write_bytes(op_dir / f"{i}.blob", path.read_bytes())
            files.append({"path": str(path), "blob": f"{i}.blob"})
        else:
            files.append({"path": str(path), "blob": None})
    manifest = {"id": op_id, "description": description, "created": time.time(), "files": files}
    atomic_write_text(op_dir / "manifest.json", json.dumps(manifest, indent=1))
    return op_id


def list_ops() -> list[dict[str, Any]]:
    """Recorded ops, newest first (id, description, created, file count)."""
    out = []
    for d in sorted(undo_root().iterdir(), reverse=True):
        try:
            m = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # an op that crashed before its manifest existed changed nothing
        out.append(
            {
                "id": m["id"],
                "description": m["description"],
                "created": m["created"],
                "files": len(m["files"]),
            }
        )
    return out


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
    for entry in manifest["files"]:
        path = Path(entry["path"])
        if entry["blob"] is None:
            path.unlink(missing_ok=True)
        else:
            atomic_write_bytes(path, (op_dir / entry["blob"]).read_bytes())
        restored.append(str(path))
    # Only drop the record once every file is back, so a failed undo can be retried.
    for child in op_dir.iterdir():
        child.unlink()
    op_dir.rmdir()
    return {"id": op_id, "description": manifest["description"], "restored": restored}
