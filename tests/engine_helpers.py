"""Shared set-up for the engine tests: a fake diffusion-pipe checkout and profiles that inject failures."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import psutil

from engine.jobs import client
from engine.jobs.job import Job
from statefiles import settings

FAKE_DP = Path(__file__).resolve().parent / "fake_diffusion_pipe"


def setup_engine(cpu_slots: int = 1) -> None:
    settings.set_value("diffusion_pipe.path", str(FAKE_DP))
    settings.set_value("scheduler.cpu_slots", str(cpu_slots))
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


FAKE_WANDB = Path(__file__).resolve().parent / "fake_wandb"


def use_fake_wandb(monkeypatch: Any, record: Path | None = None) -> None:
    """Jobs enqueued after this find tests/fake_wandb as `wandb` (the fake train.py imports it when W&B is on,
    as upstream does; the real package is not installed here). record: where it writes what it was given."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(FAKE_WANDB), os.environ.get("PYTHONPATH")) if p))
    if record is not None:
        monkeypatch.setenv("FAKE_WANDB_RECORD", str(record))


def wait_for(predicate, timeout: float = 120.0, poll: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def wait_state(job_id: int, states: tuple[str, ...], timeout: float = 180.0) -> Job:
    return wait_for(
        lambda: (j := client.get_job(job_id)).state in states and j,
        timeout,
        what=f"job {job_id} to reach {states} (now {client.get_job(job_id).state})",
    )


def wait_step(job_id: int, step: int, timeout: float = 180.0) -> Job:
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


# ----- chaos helpers (tests/test_chaos_matrix.py) ----------------------------------------------------------


def read_phase(job_id: int) -> dict[str, str] | None:
    """The fake trainer's phase marker (`fake-phase` in the job folder): phase, rank, pid; None before any."""
    try:
        lines = (Path(client.get_job(job_id).job_dir) / "fake-phase").read_text().splitlines()
    except OSError:
        return None
    if not lines:
        return None
    fields = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    return {"phase": lines[0], **fields}


def process_tree(pid: int | None) -> list[tuple[int, float, str]]:
    """(pid, create_time, cmdline) of a process and all its descendants, for checking later that none survived."""
    if not pid:
        return []
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    out = []
    for p in members:
        try:
            out.append((p.pid, p.create_time(), " ".join(p.cmdline())[:160]))
        except psutil.Error:
            continue
    return out


def still_alive(tree: list[tuple[int, float, str]]) -> list[tuple[int, float, str]]:
    """The members of a process_tree snapshot that are still the same live (non-zombie) process."""
    from engine.jobs import procs

    return [m for m in tree if procs.is_same_process(m[0], m[1])]


def port_listeners(port: int) -> list[str]:
    """'pid name' of every socket listening on the port (IPv4 or IPv6)."""
    found = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            name = "?"
            with contextlib.suppress(psutil.Error, TypeError):
                name = psutil.Process(conn.pid).name()
            found.append(f"pid {conn.pid} {name}")
    return found


def open_holders(path: Path) -> list[int]:
    """Pids of the processes that hold the file open (torch's FileBaton keeps its fd open while it builds)."""
    target = str(path)
    holders = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == target:
                        holders.append(int(entry.name))
                        break
    return holders


def port_reservation_holders(port: int) -> list[int]:
    """Pids holding the machine-wide reservation of a master port (engine.jobs.ports.reserve), if any."""
    from engine.jobs import ports

    fd = ports.reserve(port)
    if fd is not None:
        ports.release(fd)
        return []
    return open_holders(ports._reservation_dir() / f"{port}.lock") or [-1]


def job_report(job_id: int, lines: int = 8) -> str:
    """Everything a reader of a failed chaos test needs about one job: state, reason, evidence, events, logs."""
    job = client.get_job(job_id)
    out = [
        f"job {job_id} ({job.name}): state={job.state} exit_reason={job.exit_reason} step={job.step} "
        f"port={job.port} pid={job.pid} phase-marker={read_phase(job_id)}",
    ]
    out += [f"  evidence: {e}" for e in (job.evidence or [])[-lines:]]
    out += [f"  event {e['kind']}: {e['message'][:200]}" for e in client.job_events(job_id)]
    job_dir = Path(job.job_dir)
    logs = [job_dir / "output.log", job_dir / "shim.log"]
    if (job_dir / "ranks").is_dir():
        logs += sorted((job_dir / "ranks").glob("*.log"))
    for log in logs:
        with contextlib.suppress(OSError):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out += [f"  {log.name}: {t[:200]}" for t in tail]
    for proc in job_processes(job_id):
        with contextlib.suppress(psutil.Error):
            out.append(f"  still running: pid {proc.pid} {' '.join(proc.cmdline())[:160]}")
    return "\n".join(out)
