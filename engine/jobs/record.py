"""A job folder's own record of the job, so the folders stay the truth the store can be rebuilt from.

- `job.json`: the row's identity (written once, at creation).
- `state.json`: how it ended (written atomically when the daemon records the end); the shim's `exit.json` is
  the launcher's side of the same story.
- `env.json`: the enqueuing client's environment, secret-looking variables removed.
- `secrets.json`: the secrets the job asked for, held (0600) only until the shim reads and deletes it right
  before it starts the launcher, so no secret outlives the launch.

Everything here is 0600 in a 0700 folder. Light imports only: the shim reads the secrets file.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from statefiles.atomic import atomic_write_text

JOB_FILE = "job.json"
STATE_FILE = "state.json"
ENV_FILE = "env.json"
SECRETS_FILE = "secrets.json"

IDENTITY_KEYS = (
    "id", "name", "profile", "backend", "gpus", "num_gpus", "priority", "after_id", "parent_id",
    "resume_from", "launcher_args", "hang_timeout_s", "created_at", "secrets",
)
STATE_KEYS = (
    "state", "exit_reason", "ended_at", "started_at", "evidence", "step", "total_steps", "epoch",
    "total_epochs", "loss", "lr", "run_dir", "port",
)


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode=0o600)


def _read_json(path: Path) -> Any:
    """The file's JSON, or None when it is missing or unreadable (a torn or hand-edited file is no record)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_job(job_dir: Path, identity: Mapping[str, Any]) -> None:
    _write_json(job_dir / JOB_FILE, {k: identity.get(k) for k in IDENTITY_KEYS})


def read_job(job_dir: Path) -> dict[str, Any] | None:
    data = _read_json(job_dir / JOB_FILE)
    return data if isinstance(data, dict) else None


def write_state(job_dir: Path, fields: Mapping[str, Any]) -> None:
    """Record how the job ended (state.json, atomically) and seal its folder.

    `fields` may be the whole job row: only STATE_KEYS are kept. Sealing drops a secrets file a shim never got
    to read and takes group/other permissions off what the launcher and ranks created with the job's umask.
    """
    evidence = fields.get("evidence")
    if isinstance(evidence, str):
        with contextlib.suppress(ValueError):
            evidence = json.loads(evidence)
    data = {k: fields.get(k) for k in STATE_KEYS if k in fields}
    if "evidence" in fields:
        data["evidence"] = evidence or []
    try:
        _write_json(job_dir / STATE_FILE, data)
    except OSError as exc:  # a full disk must not stop the daemon: the store has the row, exit.json the end
        print(f"dpdeck: cannot write {job_dir / STATE_FILE}: {exc}", file=sys.stderr)
    seal(job_dir)


def read_state(job_dir: Path) -> dict[str, Any] | None:
    data = _read_json(job_dir / STATE_FILE)
    return data if isinstance(data, dict) and data.get("state") else None


def write_env(job_dir: Path, env: Mapping[str, str]) -> None:
    _write_json(job_dir / ENV_FILE, dict(env))


def read_env(job_dir: Path) -> dict[str, str] | None:
    data = _read_json(job_dir / ENV_FILE)
    if not isinstance(data, dict):
        return None
    return {str(k): str(v) for k, v in data.items()}


def write_secrets(job_dir: Path, env: Mapping[str, str]) -> None:
    """Hold the job's secrets (env var -> value) until its launch; nothing is written when there are none."""
    if env:
        _write_json(job_dir / SECRETS_FILE, dict(env))


def peek_secrets(job_dir: Path) -> dict[str, str]:
    data = _read_json(job_dir / SECRETS_FILE)
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def take_secrets(job_dir: Path) -> dict[str, str]:
    """The job's secrets, read once: the file is deleted before this returns, whatever it held."""
    found = peek_secrets(job_dir)
    discard_secrets(job_dir)
    return found


def discard_secrets(job_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(job_dir / SECRETS_FILE)


def seal(job_dir: Path) -> None:
    """Drop leftover secrets; make the folder 0700 and every file in it 0600 (or less)."""
    discard_secrets(job_dir)
    for dirpath, dirs, files in os.walk(job_dir):
        _tighten(Path(dirpath), 0o700)
        for name in files:
            _tighten(Path(dirpath) / name, 0o600)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(dirpath, d))]


def _tighten(path: Path, most: int) -> None:
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return
        mode = stat.S_IMODE(st.st_mode)
        if mode & ~most & 0o077:
            os.chmod(path, mode & most)
