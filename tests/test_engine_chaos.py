"""Chaos: kill every part of a running job; each time the next job must run cleanly on a free port.

Real processes throughout: the daemon, the per-job shim, the deepspeed runner, launch.py and the ranks of a
tiny torch.distributed (gloo) training script that rendezvous on the leased master port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from engine_helpers import (
    find_proc,
    make_profile,
    setup_engine,
    teardown_engine,
    wait_for,
    wait_state,
    wait_step,
)

from engine.jobs import client, procs
from engine.jobs.job import Job
from engine.jobs.protocol import Action, Request, RequestError

pytestmark = pytest.mark.slow
FINAL = ("completed", "failed", "cancelled", "oom", "hung", "interrupted")


@pytest.fixture
def engine(tmp_path: Path):
    setup_engine(cpu_slots=1)
    yield tmp_path
    teardown_engine()


def _assert_clean(job_id: int) -> None:
    job = client.get_job(job_id)
    assert procs.marked_processes(job_id) == [], f"orphans of job {job_id} survived"
    if job.port:
        from engine.jobs.ports import listening_ports

        assert job.port not in listening_ports(), f"master port {job.port} still listening"


def _next_job_runs_clean(root: Path, tag: str) -> Job:
    main = make_profile(root, name=f"next-{tag}", epochs=1, steps_per_epoch=3, sleep_s=0.05)
    job_id = client.enqueue(str(main), name=f"next-{tag}")
    job = wait_state(job_id, FINAL, timeout=240)
    assert job.state == "completed", (job.state, job.exit_reason, job.evidence)
    assert job.exit_reason == "completed"
    _assert_clean(job_id)
    return job


def _long_job(root: Path, name: str, ranks: int = 1) -> int:
    main = make_profile(root, name=name, epochs=50, steps_per_epoch=10, sleep_s=0.3)
    job_id = client.enqueue(str(main), name=name, num_gpus=ranks)
    client.ensure_daemon()
    wait_step(job_id, 2)
    return job_id


@pytest.mark.parametrize(
    "victim",
    ["bin/deepspeed", "deepspeed.launcher.launch", "train.py"],
    ids=["runner", "launch.py", "one-rank"],
)
def test_sigkill_part_of_a_running_job(engine: Path, victim: str) -> None:
    job_id = _long_job(engine, "victim", ranks=2 if victim == "train.py" else 1)
    port = client.get_job(job_id).port
    proc = find_proc(job_id, victim)
    proc.send_signal(signal.SIGKILL)
    job = wait_state(job_id, FINAL, timeout=120)
    assert job.state in ("failed", "oom", "interrupted"), job
    assert job.exit_reason != "completed"
    _assert_clean(job_id)
    nxt = _next_job_runs_clean(engine, victim.replace("/", "_").replace(".", "_"))
    assert nxt.exit_reason != "port_in_use"
    # The freed port is reusable: the next job may well get the same one, and it worked.
    assert nxt.port is not None and (nxt.port == port or nxt.port > 0)


def test_sigkill_shim_marks_interrupted_and_reclaims(engine: Path) -> None:
    job_id = _long_job(engine, "shim")
    shim = psutil.Process(client.get_job(job_id).pid)
    assert " ".join(shim.cmdline()).startswith(f"dpdeck shim job {job_id}")
    shim.send_signal(signal.SIGKILL)
    job = wait_state(job_id, FINAL, timeout=120)
    assert job.state == "interrupted" and job.exit_reason == "interrupted", job
    _assert_clean(job_id)
    _next_job_runs_clean(engine, "shim")


def test_kill_daemon_reattach_and_finish(engine: Path) -> None:
    main = make_profile(engine, name="survivor", epochs=2, steps_per_epoch=6, sleep_s=0.4)
    job_id = client.enqueue(str(main), name="survivor")
    client.ensure_daemon()
    wait_step(job_id, 1)
    daemon = client.daemon_pid()
    assert daemon
    os.kill(daemon, signal.SIGKILL)
    wait_for(lambda: client.daemon_pid() is None, 30, what="daemon gone")
    step_then = client.get_job(job_id).step or 0
    # Training goes on without a daemon: the rank keeps writing steps to its log.
    time.sleep(2.0)
    assert psutil.pid_exists(client.get_job(job_id).pid), "the job died with its daemon"
    client.ensure_daemon()
    job = wait_state(job_id, FINAL, timeout=180)
    assert job.state == "completed", (job.state, job.exit_reason, job.evidence)
    assert (job.step or 0) > step_then and job.step == 12
    events = [e["kind"] for e in client.job_events(job_id)]
    assert "reattach" in events
    _assert_clean(job_id)


def test_foreign_listener_and_unmarked_process_survive(engine: Path) -> None:
    from engine.jobs.ports import pick_port
    from statefiles import settings

    low = pick_port(taken=set(), configured=(settings.get("ports.low"), settings.get("ports.high")))
    foreign = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    foreign.bind(("0.0.0.0", low))
    foreign.listen(1)
    bystander = subprocess.Popen(["sleep", "300"])  # same session, no marker
    try:
        main = make_profile(engine, name="neighbour", epochs=1, steps_per_epoch=3, sleep_s=0.05)
        job_id = client.enqueue(str(main), name="neighbour")
        job = wait_state(job_id, FINAL, timeout=240)
        assert job.state == "completed", (job.state, job.evidence)
        assert job.port != low, "the job was given a port a foreign process listens on"
        result = client.reclaim(dry_run=False)
        assert result["orphans"] == []
        assert bystander.poll() is None, "an unmarked process was killed"
        foreign.getsockname()  # still ours, still open
    finally:
        bystander.kill()
        bystander.wait()
        foreign.close()


def test_two_concurrent_jobs_on_two_cpu_slots(engine: Path) -> None:
    from statefiles import settings

    settings.set_value("scheduler.cpu_slots", "2")
    a = client.enqueue(str(make_profile(engine, name="a", epochs=1, steps_per_epoch=8, sleep_s=0.3)), name="a")
    b = client.enqueue(str(make_profile(engine, name="b", epochs=1, steps_per_epoch=8, sleep_s=0.3)), name="b")
    client.ensure_daemon()
    wait_for(
        lambda: client.get_job(a).state == "running" and client.get_job(b).state == "running",
        180, what="both jobs running at once",
    )
    assert client.get_job(a).port != client.get_job(b).port
    for jid in (a, b):
        job = wait_state(jid, FINAL)
        assert job.state == "completed", (job.state, job.evidence)
        _assert_clean(jid)


def test_cancel_during_startup_then_next_runs(engine: Path) -> None:
    main = make_profile(engine, name="early", epochs=5, steps_per_epoch=10, sleep_s=0.3)
    job_id = client.enqueue(str(main), name="early")
    client.ensure_daemon()
    wait_for(lambda: client.get_job(job_id).state in ("starting", "running"), 60, what="job starting")
    client.send(Request(Action.CANCEL, job_id)).check()
    job = wait_state(job_id, FINAL, timeout=120)
    assert job.state == "cancelled" and job.exit_reason == "cancelled"
    _assert_clean(job_id)
    refused = client.send(Request(Action.CANCEL, job_id))
    assert not refused.ok and "already ended" in refused.message
    with pytest.raises(RequestError, match="already ended"):
        refused.check()
    _next_job_runs_clean(engine, "early")


def test_graceful_stop_then_resume_continues(engine: Path) -> None:
    main = make_profile(engine, name="stopper", epochs=3, steps_per_epoch=5, sleep_s=0.3)
    job_id = client.enqueue(str(main), name="stopper")
    client.ensure_daemon()
    wait_step(job_id, 2)
    wait_for(lambda: client.get_job(job_id).run_dir, 60, what="run dir known")
    client.send(Request(Action.STOP, job_id)).check()
    job = wait_state(job_id, FINAL, timeout=120)
    assert job.state == "cancelled", (job.state, job.evidence)
    stopped_at = job.step
    run_dir = Path(job.run_dir)
    assert (run_dir / "latest").read_text() == f"global_step{stopped_at}"
    new_id = client.send(Request(Action.RESUME, job_id)).check().new_job
    assert new_id is not None
    resumed = wait_state(new_id, FINAL, timeout=180)
    assert resumed.state == "completed", (resumed.state, resumed.evidence)
    metrics = client.job_metrics(new_id)
    assert metrics[0]["step"] == stopped_at + 1, "resume did not continue at the next step"
    assert resumed.step == 15


def test_hang_watchdog_and_oom_classification(engine: Path) -> None:
    hung = client.enqueue(
        str(make_profile(engine, name="hang", epochs=1, steps_per_epoch=10, hang_at_step=2, sleep_s=0.05)),
        name="hang", hang_timeout_s=6,
    )
    client.ensure_daemon()
    job = wait_state(hung, FINAL, timeout=180)
    assert job.state == "hung" and job.exit_reason == "hung", job
    _assert_clean(hung)
    oom = client.enqueue(
        str(make_profile(engine, name="oom", epochs=1, steps_per_epoch=10, oom_at_step=2, sleep_s=0.05)), name="oom"
    )
    job = wait_state(oom, FINAL, timeout=180)
    assert job.state == "oom" and job.exit_reason == "cuda_oom", job
    assert any("CUDA out of memory" in line for line in job.evidence)
    _assert_clean(oom)


def test_cli_round_trip(engine: Path) -> None:
    env = dict(os.environ)
    main = make_profile(engine, name="cli", epochs=1, steps_per_epoch=3, sleep_s=0.05)
    out = subprocess.run(
        [sys.executable, "-m", "tui.cli", "queue", "add", str(main), "--name", "cli"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    job_id = int(out.stdout.strip())
    waited = subprocess.run(
        [sys.executable, "-m", "tui.cli", "wait", str(job_id), "--timeout", "200"],
        capture_output=True, text=True, env=env, timeout=260,
    )
    assert waited.returncode == 0, waited.stdout + waited.stderr
    ls = subprocess.run(
        [sys.executable, "-m", "tui.cli", "ls", "--all", "--json"], capture_output=True, text=True, env=env, timeout=60
    )
    import json

    rows = json.loads(ls.stdout)
    row = next(r for r in rows if r["id"] == job_id)
    for key in ("id", "name", "state", "exit_reason", "profile", "backend", "gpus", "port", "pid", "step", "epoch",
                "total_epochs", "loss", "samples_per_s", "eta_s", "created_at", "started_at", "ended_at", "run_dir"):
        assert key in row
    assert row["state"] == "completed" and row["step"] == 3 and row["epoch"] == 1
    logs = subprocess.run(
        [sys.executable, "-m", "tui.cli", "logs", str(job_id)], capture_output=True, text=True, env=env, timeout=60
    )
    assert "TRAINING COMPLETE!" in logs.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "tui.cli", "cancel", str(job_id)], capture_output=True, text=True, env=env, timeout=60
    )
    assert bad.returncode == 1 and "already ended" in bad.stderr


def test_daemon_stop_leaves_jobs_running_and_kill_jobs_cancels(engine: Path) -> None:
    job_id = _long_job(engine, "keep")
    shim_pid = client.get_job(job_id).pid
    assert client.stop_daemon(kill_jobs=False)
    assert client.daemon_pid() is None
    step = client.get_job(job_id).step or 0
    time.sleep(2.0)
    assert psutil.pid_exists(shim_pid), "stopping the daemon took the job with it"
    client.ensure_daemon()
    wait_step(job_id, step + 2)  # the new daemon follows the job's progress again
    assert client.stop_daemon(kill_jobs=True)
    job = client.get_job(job_id)
    assert job.state == "cancelled", job
    _assert_clean(job_id)
