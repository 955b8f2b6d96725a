"""The engine's client API as one object, for the deck (tui/engine_api.py `Engine` is its interface).

Each method is the client function of the same name (engine/jobs/client.py). The client is imported on the
first call, not here: the deck builds this object before its first paint and the client's imports (profile
validation, the store) are not needed for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.jobs.job import Job
    from engine.jobs.protocol import Request, Result
    from engine.jobs.tb_events import RunWatcher


class ClientEngine:
    def __init__(self) -> None:
        # One events reader per run folder: each poll of the Run screen parses only what was appended.
        self._tb: dict[str, RunWatcher] = {}

    def list_jobs(self, include_finished: bool = False) -> list[Job]:
        from engine.jobs import client

        return client.list_jobs(include_finished)

    def get_job(self, job_id: int) -> Job:
        from engine.jobs import client

        return client.get_job(job_id)

    def enqueue(self, profile: str, *, gpus: list[int] | None = None) -> int:
        from engine.jobs import client

        return client.enqueue(profile, gpus=gpus)

    def send(self, request: Request) -> Result:
        from engine.jobs import client

        return client.send(request)

    def dismissed_jobs(self) -> set[int]:
        from engine.jobs import client

        return client.dismissed_jobs()

    def dismiss_jobs(self, job_ids: list[int]) -> list[int]:
        from engine.jobs import client

        return client.dismiss_jobs(job_ids)

    def queue_paused(self) -> bool:
        from engine.jobs import client

        return client.queue_paused()

    def set_queue_paused(self, paused: bool) -> None:
        from engine.jobs import client

        client.set_queue_paused(paused)

    def job_metrics(self, job_id: int) -> list[dict[str, Any]]:
        from engine.jobs import client

        return client.job_metrics(job_id)

    def job_log_path(self, job_id: int, rank: int | None = None) -> Path:
        from engine.jobs import client

        return client.job_log_path(job_id, rank)

    def job_saves(self, job_id: int) -> list[dict[str, Any]]:
        from engine.jobs import client

        return client.job_saves(job_id)

    def job_tb_metrics(self, job_id: int) -> dict[str, Any]:
        from engine.jobs import client
        from engine.jobs.tb_events import RunMetrics, RunWatcher, TbReader

        run_dir = client.get_job(job_id).run_dir
        if not run_dir:
            return RunMetrics().as_dict()
        watcher = self._tb.get(run_dir)
        if watcher is None:
            watcher = self._tb[run_dir] = RunWatcher(TbReader(Path(run_dir)))
        return watcher.poll().as_dict()

    def gpu_report(self) -> list[dict[str, Any]]:
        from engine.jobs import client

        return client.gpu_report()

    def system_stats(self) -> dict[str, Any]:
        from engine.jobs import client

        return client.system_stats()

    def daemon_status(self) -> dict[str, Any]:
        from engine.jobs import client

        return client.daemon_status()

    def check_daemon(self) -> str | None:
        from engine.jobs import client

        return client.check_daemon()

    def ensure_daemon(self) -> int:
        from engine.jobs import client

        return client.ensure_daemon()

    def reclaim(self, dry_run: bool = False) -> dict[str, Any]:
        from engine.jobs import client

        return client.reclaim(dry_run)
