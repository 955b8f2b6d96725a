"""Creating a job: its row in the store and its folder holding the frozen profile, in one transaction.

The folder is the job's own record (job.json, env.json, the frozen TOMLs; later state.json): the store can be
rebuilt from the folders (`dpdeck doctor --repair`), so an id whose folder exists is never given out again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.jobs import launch, record, store
from profiles.document import TomlFile
from statefiles import paths
from statefiles.atomic import atomic_write_text

# Created empty (0600) with the folder: the shim and the daemon append to them, which keeps that mode.
PRIVATE_LOGS = ("output.log", "shim.log")


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
    client_env: Mapping[str, str] | None = None,
) -> int:
    """Create a queued job and freeze its TOMLs into jobs/<id>/ in one transaction.

    `client_env` is the enqueuing client's environment: the job runs with it (credentials removed) plus the
    secrets its profile asks for. A copy (`frozen_from`, retry/resume) reuses the original job's environment.
    Raises launch.EnqueueError when a secret the job needs cannot be read safely.
    """
    asked, env, secrets = _environment(frozen_from, profile_obj, client_env)
    now = time.time()
    with store.transaction(conn):
        pos = conn.execute("SELECT COALESCE(MAX(queue_pos), -1) + 1 FROM jobs").fetchone()[0]
        job_id, job_dir = _claim_id(conn)
        identity: dict[str, Any] = {
            "id": job_id, "name": name, "profile": profile, "backend": backend, "gpus": gpus or None,
            "num_gpus": num_gpus, "priority": priority, "after_id": after, "parent_id": parent_id,
            "resume_from": resume_from, "launcher_args": launcher_args or None,
            "hang_timeout_s": hang_timeout_s, "created_at": now, "secrets": sorted(asked),
        }
        try:
            conn.execute(
                "INSERT INTO jobs(id, name, state, profile, backend, gpus, num_gpus, priority, after_id,"
                " queue_pos, resume_from, parent_id, hang_timeout_s, launcher_args, job_dir, created_at)"
                " VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, name, profile, backend, json.dumps(gpus) if gpus else None, num_gpus, priority,
                 after, pos, resume_from, parent_id, hang_timeout_s,
                 json.dumps(launcher_args) if launcher_args else None, str(job_dir), now),
            )
            _fill_folder(job_dir, identity, frozen_from, profile_obj, env, secrets)
        except BaseException:
            # The row rolls back; a half-made folder must not keep a secret (its id stays burnt).
            record.discard_secrets(job_dir)
            raise
        store.add_event(conn, job_id, "enqueue", f"queued {name} ({backend})")
    return job_id


def _claim_id(conn: sqlite3.Connection) -> tuple[int, Path]:
    """The next id past every row, every id ever given (sqlite_sequence) and every job folder; and its folder.

    Runs inside the write transaction, so two clients never claim the same id; the folder is created here
    (never reused, never removed), so a deleted or rebuilt store cannot hand out a running job's folder.
    """
    jobs = paths.jobs_dir()
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='jobs'").fetchone()
    max_row = conn.execute("SELECT COALESCE(MAX(id), 0) FROM jobs").fetchone()[0]
    highest = max(int(row[0]) if row else 0, max_row, highest_folder_id(jobs))
    job_id = highest + 1
    while True:
        job_dir = jobs / str(job_id)
        try:
            job_dir.mkdir(mode=0o700)
            return job_id, job_dir
        except FileExistsError:  # made between the scan and now (a repair, a hand-made folder): skip it
            job_id += 1


def highest_folder_id(jobs: Path) -> int:
    highest = 0
    with os.scandir(jobs) as entries:
        for entry in entries:
            if entry.name.isdigit():
                highest = max(highest, int(entry.name))
    return highest


def _environment(
    frozen_from: Path | None, profile_obj: Any, client_env: Mapping[str, str] | None
) -> tuple[dict[str, str | None], dict[str, str] | None, dict[str, str]]:
    """(secrets asked for, captured environment, {ENV VAR: secret}) for a new job, read before any write."""
    from profiles.secrets import SecretsError, secret_env

    if frozen_from is not None:
        asked = launch.secrets_asked_by([_load(f) for f in _frozen_tomls(frozen_from)])
        original = record.read_job(frozen_from) or {}
        for name in original.get("secrets") or []:
            asked.setdefault(str(name), None)
        env = record.read_env(frozen_from)
        held = record.peek_secrets(frozen_from)  # the original never launched: its secrets are still here
        environ: Mapping[str, str] = {}  # never the daemon's environment: the secrets file, then the profile
    else:
        asked = launch.secrets_asked_by(launch.profile_tomls(profile_obj))
        environ = os.environ if client_env is None else client_env
        env = launch.capture_env(environ)
        held = {}
    try:
        secrets = {**secret_env(asked, environ), **held} if asked else {}
    except SecretsError as exc:
        raise launch.EnqueueError(str(exc)) from exc
    return asked, env, secrets


def _frozen_tomls(job_dir: Path) -> list[Path]:
    main = job_dir / "main.toml"
    return [main, *sorted(p for p in job_dir.glob("*.toml") if p != main)]


def _load(path: Path) -> TomlFile | None:
    try:
        return TomlFile.load(path)
    except Exception:  # an unreadable frozen copy fails the job at pre-flight, with its message
        return None


def _fill_folder(job_dir: Path, identity: dict[str, Any], frozen_from: Path | None, profile_obj: Any,
                 env: dict[str, str] | None, secrets: dict[str, str]) -> None:
    for log in PRIVATE_LOGS:
        os.close(os.open(job_dir / log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    (job_dir / "ranks").mkdir(mode=0o700)  # the launcher writes each rank's log here
    record.write_job(job_dir, identity)
    if env is not None:
        record.write_env(job_dir, env)
    record.write_secrets(job_dir, secrets)
    if frozen_from is not None:
        copy_frozen(frozen_from, job_dir)
    else:
        launch.freeze(profile_obj, job_dir)


def copy_frozen(src: Path, dst: Path) -> None:
    """Copy a job's frozen TOMLs (retry/resume), repointed at the copies and without secrets."""
    for f in src.glob("*.toml"):
        if f.name != "main.toml":
            atomic_write_text(dst / f.name, launch.frozen_text(f.read_text(encoding="utf-8"), f.name))
    text = launch.frozen_text((src / "main.toml").read_text(encoding="utf-8"), "main.toml")
    main = TomlFile.from_text(text, source=str(dst / "main.toml"))
    if (dst / "dataset.toml").exists():
        main.set("dataset", str(dst / "dataset.toml"))
    evals = main.get("eval_datasets")
    if isinstance(evals, list):
        for i, entry in enumerate(evals):
            if isinstance(entry, dict) and (dst / f"eval-{i}.toml").exists():
                main.set(f"eval_datasets[{i}].config", str(dst / f"eval-{i}.toml"))
    atomic_write_text(dst / "main.toml", main.dumps())
