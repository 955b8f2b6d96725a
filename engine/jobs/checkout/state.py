"""What dpdeck knows about its managed checkout, and the progress of an install or update in flight.

Both are small JSON files under `$DPDECK_HOME/backend/`, written atomically: the install record (url, the
ref the user asked for and whether it is a pin, the commit, the checkout and venv in use, verified or not)
and the progress file that `dpdeck backend install|update` rewrites after every step, which the System
screen reads while a run is in progress.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statefiles import paths
from statefiles.atomic import atomic_write_text

BACKEND = "diffusion-pipe"
DEFAULT_URL = "https://github.com/tdrussell/diffusion-pipe"


def backend_dir() -> Path:
    return paths.subdir("backend")


def default_home() -> Path:
    """Where checkouts and venvs go when `--path` is not given."""
    return backend_dir() / BACKEND


def record_path() -> Path:
    return backend_dir() / f"{BACKEND}.json"


def progress_path() -> Path:
    return backend_dir() / f"{BACKEND}.progress.json"


@dataclass
class Install:
    """One installed (or half-installed) checkout."""

    url: str
    home: str
    ref: str | None = None  # what the user asked for with --ref (None: the remote's default branch)
    pinned: bool = False  # a tag or commit: `update` keeps it until the user moves it with --ref
    branch: str | None = None  # the remote branch `update` fast-forwards to when not pinned
    commit: str | None = None
    checkout: str | None = None
    venv: str | None = None
    python: str | None = None
    base_python: str | None = None  # the interpreter the venv was made from (its torch is the one kept)
    requirements_sha: str | None = None
    verified: bool = False
    installed_at: float | None = None


@dataclass
class Record:
    current: Install | None = None  # the checkout the settings point at, when dpdeck installed it
    previous: list[Install] = field(default_factory=list)  # kept on disk; newest first
    last_fetch: float | None = None


def _install(data: Any) -> Install | None:
    if not isinstance(data, dict):
        return None
    known = {f.name for f in dataclasses.fields(Install)}
    try:
        return Install(**{k: v for k, v in data.items() if k in known})
    except TypeError:  # url or home missing: a hand-edited or foreign file
        return None


def load() -> Record:
    """The record, or an empty one when there is none or it cannot be read (it is rebuilt by install)."""
    try:
        data = json.loads(record_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Record()
    if not isinstance(data, dict):
        return Record()
    previous = [i for i in (_install(d) for d in data.get("previous") or []) if i is not None]
    last = data.get("last_fetch")
    return Record(_install(data.get("current")), previous, last if isinstance(last, (int, float)) else None)


def save(record: Record) -> None:
    atomic_write_text(record_path(), json.dumps(dataclasses.asdict(record), indent=2, sort_keys=True) + "\n")


# ---- progress ----------------------------------------------------------------------------------------


class Progress:
    """The progress file of one run: every step's state, rewritten atomically on each change."""

    def __init__(self, action: str, path: Path | None = None) -> None:
        self.path = path or progress_path()
        self.data: dict[str, Any] = {
            "action": action,
            "pid": os.getpid(),
            "started": time.time(),
            "finished": None,
            "ok": None,
            "summary": "",
            "steps": [],
        }
        self._write()

    def step(self, n: int, name: str, state: str, detail: str = "") -> None:
        steps: list[dict[str, Any]] = self.data["steps"]
        for entry in steps:
            if entry["n"] == n:
                entry.update(state=state, detail=detail)
                break
        else:
            steps.append({"n": n, "name": name, "state": state, "detail": detail})
        self._write()

    def finish(self, ok: bool, summary: str) -> None:
        self.data.update(finished=time.time(), ok=ok, summary=summary)
        self._write()

    def _write(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=2, sort_keys=True) + "\n")


def read_progress() -> dict[str, Any] | None:
    """The last run's progress, with `running` true while its process lives and it has not finished."""
    try:
        data = json.loads(progress_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    pid = data.get("pid")
    alive = False
    if isinstance(pid, int) and data.get("finished") is None:
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
    data["running"] = alive
    if data.get("finished") is None and not alive:
        data["summary"] = data.get("summary") or "interrupted (its process is gone); run it again to resume"
    return data
