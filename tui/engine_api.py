"""The engine as the deck sees it: exactly the calls the TUI makes, as one typed interface.

`DeckApp(engine=...)` takes any object with these methods; by default the real one,
engine/jobs/facade.py `ClientEngine`, whose methods call engine/jobs/client.py. The tests' stand-in
(tests/fake_engine.py `FakeEngine`) implements the same Protocol and is type-checked against it.
Screens reach it with `engine_of(self.app)`, and call it only from worker threads (each call may block).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from engine.jobs.job import Job
from engine.jobs.protocol import Request, Result


class Engine(Protocol):
    # Jobs.
    def list_jobs(self, include_finished: bool = False) -> list[Job]: ...
    def get_job(self, job_id: int) -> Job: ...
    def enqueue(self, profile: str, *, gpus: list[int] | None = None) -> int: ...
    def send(self, request: Request) -> Result: ...  # the daemon's answer, a refusal included
    def queue_paused(self) -> bool: ...
    def set_queue_paused(self, paused: bool) -> None: ...
    def job_metrics(self, job_id: int) -> list[dict[str, Any]]: ...
    def job_log_path(self, job_id: int, rank: int | None = None) -> Path: ...
    def job_saves(self, job_id: int) -> list[dict[str, Any]]: ...
    # Epoch / eval losses from the run folder's TensorBoard events: {"epoch_loss", "evals", "note"}.
    def job_tb_metrics(self, job_id: int) -> dict[str, Any]: ...

    # The machine and the daemon.
    def gpu_report(self) -> list[dict[str, Any]]: ...
    def system_stats(self) -> dict[str, Any]: ...
    def daemon_status(self) -> dict[str, Any]: ...
    def check_daemon(self) -> str | None: ...
    def ensure_daemon(self) -> int: ...
    def reclaim(self, dry_run: bool = False) -> dict[str, Any]: ...


@runtime_checkable
class HoldsEngine(Protocol):
    engine: Engine


def engine_of(app: object) -> Engine:
    """The engine the app was started with."""
    if not isinstance(app, HoldsEngine):
        raise TypeError(f"{type(app).__name__} holds no engine; run the screen inside DeckApp(engine=...)")
    return app.engine
