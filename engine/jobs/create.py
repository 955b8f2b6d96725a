"""Creating a job: its row in the store and its folder holding the frozen profile, in one transaction."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from engine.jobs import launch, store
from profiles import paths
from profiles.atomic import atomic_write_text
from profiles.document import TomlFile


def insert_job(
    *,
    conn: sqlite3.Connection,
    name: str,
    profile: str,
    backend: str,
    gpus: list[int] | None,
    num_gpus: int | None,
    priority: int,
    after: int | None,
    frozen_from: Path | None = None,
    profile_obj: Any = None,
    resume_from: str | None = None,
    parent_id: int | None = None,
    hang_timeout_s: float | None = None,
    launcher_args: list[str] | None = None,
) -> int:
    """Create a queued job and freeze its TOMLs into jobs/<id>/ in one transaction."""
    now = time.time()
    with store.transaction(conn):
        pos = conn.execute("SELECT COALESCE(MAX(queue_pos), -1) + 1 FROM jobs").fetchone()[0]
        cur = conn.execute(
            "INSERT INTO jobs(name, state, profile, backend, gpus, num_gpus, priority, after_id, queue_pos,"
            " resume_from, parent_id, hang_timeout_s, launcher_args, job_dir, created_at)"
            " VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '', ?)",
            (name, profile, backend, json.dumps(gpus) if gpus else None, num_gpus, priority, after, pos,
             resume_from, parent_id, hang_timeout_s, json.dumps(launcher_args) if launcher_args else None, now),
        )
        job_id = int(cur.lastrowid or 0)
        job_dir = paths.jobs_dir() / str(job_id)
        if job_dir.exists():  # a leftover from a store that was deleted: never mix two jobs' files
            shutil.rmtree(job_dir)
        job_dir.mkdir(parents=True)
        if frozen_from is not None:
            copy_frozen(frozen_from, job_dir)
        else:
            launch.freeze(profile_obj, job_dir)
        conn.execute("UPDATE jobs SET job_dir=? WHERE id=?", (str(job_dir), job_id))
        store.add_event(conn, job_id, "enqueue", f"queued {name} ({backend})")
    return job_id


def copy_frozen(src: Path, dst: Path) -> None:
    for f in src.glob("*.toml"):
        shutil.copy2(f, dst / f.name)
    main = TomlFile.load(dst / "main.toml")
    if (dst / "dataset.toml").exists():
        main.set("dataset", str(dst / "dataset.toml"))
    evals = main.get("eval_datasets")
    if isinstance(evals, list):
        for i, entry in enumerate(evals):
            if isinstance(entry, dict) and (dst / f"eval-{i}.toml").exists():
                main.set(f"eval_datasets[{i}].config", str(dst / f"eval-{i}.toml"))
    atomic_write_text(dst / "main.toml", main.dumps())
