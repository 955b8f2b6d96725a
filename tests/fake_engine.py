"""The deck's engine (tui/engine_api.py Engine) in memory, for Pilot and snapshot tests.

Jobs are real engine `Job`s in a dict; requests are recorded; refusals are worded as the daemon words them.
Host figures (GPUs, CPU/RAM, disks) are fixed attributes: the only engine answers a test cannot make real here
(test_tui_live's protocol test type-checks this class against the Protocol).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from engine.jobs.job import Job, JobState
from engine.jobs.protocol import Action, Request, Result


def make_job(job_id: int, name: str, **fields: Any) -> Job:
    """A real engine Job (the type the deck reads) with the figures a test sets, the rest as a queued job has."""
    base: dict[str, Any] = {
        "state": JobState.QUEUED,
        "gpus": [0],
        "total_steps": 100,
        "total_epochs": 4,
        "profile": "p",
        "backend": "builtin",
        "created_at": 0.0,
        "job_dir": f"/jobs/{job_id}",
    }
    base.update(fields)
    base["state"] = JobState(base["state"])
    return Job(id=job_id, name=name, **base)


class FakeEngine:
    """The deck's engine (tui/engine_api.py Engine) in memory: jobs in a dict, requests recorded, refusals as
    the daemon words them. Type-checked against the Protocol (test_fake_engine_implements_the_protocol)."""

    def __init__(self, log: Path | None = None) -> None:
        self.jobs: dict[int, Job] = {}
        self.requests: list[tuple[int | None, str, str | None]] = []
        self.refusals: dict[tuple[int | None, Action], str] = {}
        self.paused = False
        self.log = log
        self.metrics: list[dict[str, Any]] = []
        self.tb: dict[str, Any] = {"epoch_loss": [], "evals": {}, "note": None}
        self.enqueued: list[str] = []
        self.dismissed: set[int] = set()
        # What a real machine would report; fixed so a screen showing them renders the same on every box.
        self.gpus: list[dict[str, Any]] = []
        self.stats: dict[str, Any] = {
            "cpu_percent": 1.0,
            "cpu_count": 2,
            "ram_used": 2**30,
            "ram_total": 2**32,
            "disks": {},
        }
        self.saves: list[dict[str, Any]] = [{"kind": "epoch", "path": "/runs/x/epoch1", "complete": True}]

    def update(self, job_id: int, **fields: Any) -> None:
        self.jobs[job_id] = dataclasses.replace(self.jobs[job_id], **fields)

    def list_jobs(self, include_finished: bool = False) -> list[Job]:
        return list(self.jobs.values())

    def get_job(self, job_id: int) -> Job:
        return self.jobs[job_id]

    def enqueue(self, profile: str, *, gpus: list[int] | None = None) -> int:
        self.enqueued.append(profile)
        job_id = max(self.jobs, default=0) + 1
        self.jobs[job_id] = make_job(job_id, profile, gpus=gpus)
        return job_id

    def send(self, request: Request) -> Result:
        refusal = self.refusals.get((request.job_id, request.action))
        if refusal:
            return Result(False, refusal)
        self.requests.append((request.job_id, request.action.value, request.arg))
        return Result(True, f"{request.action} done")

    def dismissed_jobs(self) -> set[int]:
        return self.dismissed

    def dismiss_jobs(self, job_ids: list[int]) -> list[int]:
        self.dismissed |= set(job_ids)
        return sorted(job_ids)

    def queue_paused(self) -> bool:
        return self.paused

    def set_queue_paused(self, paused: bool) -> None:
        self.paused = paused

    def job_metrics(self, job_id: int) -> list[dict[str, Any]]:
        return self.metrics

    def job_saves(self, job_id: int) -> list[dict[str, Any]]:
        return self.saves

    def job_tb_metrics(self, job_id: int) -> dict[str, Any]:
        return self.tb

    def job_log_path(self, job_id: int, rank: int | None = None) -> Path:
        assert self.log is not None
        return self.log

    def gpu_report(self) -> list[dict[str, Any]]:
        return self.gpus

    def system_stats(self) -> dict[str, Any]:
        return self.stats

    def daemon_status(self) -> dict[str, Any]:
        return {"running": True, "pid": 1, "paused": self.paused}

    def check_daemon(self) -> str | None:
        return None

    def ensure_daemon(self) -> int:
        return 1

    def reclaim(self, dry_run: bool = False) -> dict[str, Any]:
        return {"dry_run": dry_run, "orphans": [], "killed": []}
