"""What each job action needs of the job, as data: the daemon enforces these (engine/jobs/daemon.py) and the
deck checks them before it asks for a confirmation, so "already ended" comes before any warning and both say
it in the same words.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.jobs.job import Job, JobState
from engine.jobs.protocol import Action

STOPPABLE = frozenset({JobState.QUEUED, JobState.STARTING, JobState.RUNNING})


def _ended(job: Job) -> str | None:
    return f"job {job.id} already ended ({job.state})" if job.finished else None


def _stoppable(job: Job) -> str | None:
    return None if job.state in STOPPABLE else f"job {job.id} is {job.state}: nothing to stop"


def _needs_ended(action: Action) -> Callable[[Job], str | None]:
    def check(job: Job) -> str | None:
        return None if job.finished else f"job {job.id} is still {job.state}; {action} needs an ended job"

    return check


def _resumable(job: Job) -> str | None:
    return _needs_ended(Action.RESUME)(job) or (
        None if job.run_dir else f"job {job.id} has no run folder to resume from"
    )


def _movable(job: Job) -> str | None:
    return None if job.state == JobState.QUEUED else f"job {job.id} is {job.state}; only queued jobs move"


# action -> the reason it is refused for a job, or None when the job allows it.
REFUSALS: dict[Action, Callable[[Job], str | None]] = {
    Action.CANCEL: _ended,
    Action.STOP: _stoppable,
    Action.RETRY: _needs_ended(Action.RETRY),
    Action.RESUME: _resumable,
    Action.MOVE: _movable,
}


def refusal(action: Action, job: Job) -> str | None:
    """Why `job` does not allow `action` right now (None: it does; actions without a rule always do)."""
    rule = REFUSALS.get(action)
    return rule(job) if rule else None
