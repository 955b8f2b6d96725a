"""Shared set-up for the engine tests: a fake diffusion-pipe checkout and profiles that inject failures."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psutil

from engine import config
from engine.jobs import client

FAKE_DP = Path(__file__).resolve().parent / "fake_diffusion_pipe"


def setup_engine(cpu_slots: int = 1) -> None:
    config.set_value("diffusion_pipe.path", str(FAKE_DP))
    config.set_value("scheduler.cpu_slots", str(cpu_slots))
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def make_profile(root: Path, name: str = "job", epochs: int = 2, **fake: Any) -> Path:
    """A valid flux profile (diffusion-pipe backend) whose run the fake train.py performs."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "flux_diffusers").mkdir(exist_ok=True)
    (root / "flux_diffusers" / "model_index.json").write_text("{}")
    (root / "images").mkdir(exist_ok=True)
    (root / "dataset.toml").write_text(
        f'resolutions = [64]\nenable_ar_bucket = false\n\n[[directory]]\npath = "{root / "images"}"\n'
    )
    fake_lines = "\n".join(f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in fake.items())
    main = root / f"{name}.toml"
    main.write_text(
        f'output_dir = "{root / "out" / name}"\n'
        f'dataset = "{root / "dataset.toml"}"\n'
        f"epochs = {epochs}\n"
        "micro_batch_size_per_gpu = 1\n"
        "save_every_n_epochs = 1\n\n"
        "[model]\n"
        'type = "flux"\n'
        f'diffusers_path = "{root / "flux_diffusers"}"\n'
        'dtype = "bfloat16"\n\n'
        "[adapter]\ntype = \"lora\"\nrank = 4\ndtype = \"bfloat16\"\n\n"
        "[optimizer]\ntype = \"adamw_optimi\"\nlr = 2e-5\n\n"
        f"[fake]\n{fake_lines}\n"
    )
    return main


def wait_for(predicate, timeout: float = 120.0, poll: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def wait_state(job_id: int, states: tuple[str, ...], timeout: float = 180.0) -> client.JobView:
    return wait_for(
        lambda: (j := client.get_job(job_id)).state in states and j,
        timeout,
        what=f"job {job_id} to reach {states} (now {client.get_job(job_id).state})",
    )


def wait_step(job_id: int, step: int, timeout: float = 180.0) -> client.JobView:
    return wait_for(
        lambda: ((j := client.get_job(job_id)).step or 0) >= step and j, timeout, what=f"job {job_id} step {step}"
    )


def job_processes(job_id: int) -> list[psutil.Process]:
    from engine.jobs import procs

    return [psutil.Process(m.pid) for m in procs.marked_processes(job_id) if psutil.pid_exists(m.pid)]


def find_proc(job_id: int, needle: str) -> psutil.Process:
    def look() -> psutil.Process | None:
        for p in job_processes(job_id):
            try:
                if needle in " ".join(p.cmdline()):
                    return p
            except psutil.Error:
                continue
        return None

    return wait_for(look, 120, what=f"a process of job {job_id} matching {needle!r}")


def teardown_engine() -> None:
    from engine.jobs import procs

    client.stop_daemon(kill_jobs=True, timeout=60)
    procs.kill_marked(procs.marked_processes(), grace_s=3)
