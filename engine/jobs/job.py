"""The job: one typed record (`Job`) and its states (`JobState`), used by the store, daemon, client, CLI and TUI.

A row of the store's `jobs` table becomes a `Job` in one place, `Job.from_row`. Fields marked internal are
the daemon's bookkeeping (process identity, deadlines, queue position): clients read them like any other, but
they are not part of the public rows (`dpdeck ls --json`, `dpdeck show --json`), whose shape scripts rely on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlite3


class JobState(str, Enum):
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    CLEANUP = "cleanup"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    OOM = "oom"
    HUNG = "hung"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:  # "running", not "JobState.RUNNING", in f-strings on every Python version
        return self.value


# A live job has processes the daemon supervises; a final one never changes again.
LIVE: frozenset[JobState] = frozenset(
    {JobState.STARTING, JobState.RUNNING, JobState.STOPPING, JobState.CLEANUP}
)
FINAL: frozenset[JobState] = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.OOM, JobState.HUNG, JobState.INTERRUPTED}
)


def state_in(states: Iterable[JobState]) -> str:
    """A SQL condition `state IN ('a','b')`: the values are this enum's own constants, never user input."""
    return "state IN (" + ",".join(f"'{s.value}'" for s in sorted(states, key=lambda s: s.value)) + ")"


LIVE_IN = state_in(LIVE)
FINAL_IN = state_in(FINAL)

_INTERNAL = {"internal": True}
JSON_COLUMNS = ("gpus", "evidence", "launcher_args")  # stored as JSON text in the table


@dataclass(frozen=True, kw_only=True)
class Job:
    # Declared in the order of the public row (`ls --json`): keyword-only, so defaults need not come last.
    id: int
    name: str
    state: JobState
    exit_reason: str | None = None
    profile: str
    backend: str
    gpus: list[int] | None = None
    num_gpus: int | None = None
    port: int | None = None
    pid: int | None = None
    step: int | None = None
    total_steps: int | None = None
    epoch: int | None = None
    total_epochs: int | None = None
    loss: float | None = None
    lr: float | None = None
    samples_per_s: float | None = None
    eta_s: float | None = None
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None
    run_dir: str | None = None
    job_dir: str
    priority: int = 0
    after_id: int | None = None
    parent_id: int | None = None
    resume_from: str | None = None
    launcher_args: list[str] | None = None
    wait_reason: str | None = None
    evidence: list[str] = field(default_factory=list)
    # The daemon's bookkeeping.
    pid_ctime: float | None = field(default=None, metadata=_INTERNAL)
    pgid: int | None = field(default=None, metadata=_INTERNAL)
    queue_pos: float = field(default=0.0, metadata=_INTERNAL)
    hang_timeout_s: float | None = field(default=None, metadata=_INTERNAL)
    last_progress_at: float | None = field(default=None, metadata=_INTERNAL)
    stop_deadline: float | None = field(default=None, metadata=_INTERNAL)

    @property
    def finished(self) -> bool:
        return self.state in FINAL

    @property
    def live(self) -> bool:
        return self.state in LIVE

    @classmethod
    def from_row(cls, row: sqlite3.Row | Mapping[str, Any]) -> Job:
        """The one row -> Job conversion: JSON columns decoded, the state typed."""
        keys = row.keys()
        values: dict[str, Any] = {name: row[name] for name in ALL_FIELDS if name in keys}
        for name in JSON_COLUMNS:
            if isinstance(values.get(name), str):
                values[name] = json.loads(values[name])
        values["evidence"] = values.get("evidence") or []
        values["state"] = JobState(values["state"])
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """The job as scripts see it (`ls --json`, `show --json`): the public fields, plain JSON values."""
        out = {name: getattr(self, name) for name in PUBLIC_FIELDS}
        out["state"] = self.state.value
        return out

    def as_dict(self) -> dict[str, Any]:
        """Every field (the job folder's record wants the internal ones too)."""
        out = {name: getattr(self, name) for name in ALL_FIELDS}
        out["state"] = self.state.value
        return out


ALL_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Job))
PUBLIC_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Job) if not f.metadata.get("internal"))
