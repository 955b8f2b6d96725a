"""The job as clients see it (CLI --json rows, the TUI): a pydantic model at the engine's edge."""

from __future__ import annotations

from pydantic import BaseModel, Field

FINAL_STATES = ("completed", "failed", "cancelled", "oom", "hung", "interrupted")


class JobView(BaseModel):
    id: int
    name: str
    state: str
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
    evidence: list[str] = Field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES
