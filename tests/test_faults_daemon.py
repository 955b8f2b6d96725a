"""Faults of the daemon found by an adversarial pass (issue 12 items 2, 3, 6, 7, 10, 12), each reproduced first.

Real processes and files throughout: the daemon, the fake diffusion-pipe trainer under the real `deepspeed`
launcher, FIFOs, a full tmpfs, SIGSTOP/SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from engine_helpers import make_profile, setup_engine, teardown_engine, wait_for, wait_state, wait_step

from engine.jobs import classify, client, lock
from engine.jobs.progress import Progress, feed_line
from statefiles.logtail import LogFollower

FINAL = ("completed", "failed", "cancelled", "oom", "hung", "interrupted")


# ----- item 6: malformed progress events, long ends, endless lines ---------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        {"event": "progress", "step": "two", "loss": [1, 2]},
        {"event": "progress", "step": [3], "total_steps": {"a": 1}, "epoch": "x", "lr": "fast"},
        {"event": "progress", "step": 1.5, "loss": True},
        {"event": "run_dir", "path": ["not", "a", "path"]},
        {"event": "save", "kind": 3, "path": {"x": 1}},
        {"event": ["progress"]},
    ],
)
def test_malformed_progress_event_changes_nothing(event: dict) -> None:
    prog = Progress()
    feed_line(prog, '[dpdeck] {"event": "progress", "step": 4, "total_steps": 10, "loss": 0.5}')
    feed_line(prog, "[dpdeck] " + json.dumps(event))
    assert prog.step == 4 and prog.total_steps == 10 and prog.loss == 0.5
    assert prog.run_dir is None
    for save in prog.saves:
        assert isinstance(save["path"], str)
    # Later good lines still count.
    feed_line(prog, '[dpdeck] {"event": "progress", "step": 5, "loss": 0.25}')
    assert prog.step == 5 and prog.loss == 0.25


def test_follower_bounds_a_line_without_newlines(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    follower = LogFollower(log)
    with open(log, "wb") as fh:
        for _ in range(40):
            fh.write(b"x" * (1 << 20))  # 40 MB without a newline
            fh.flush()
            follower.read_lines()
        fh.write(b"\nTRAINING COMPLETE!\n")
    lines = follower.read_lines()
    assert len(follower._partial) <= LogFollower.MAX_LINE
    assert lines[-1] == "TRAINING COMPLETE!"


def test_follower_to_end_sees_completion_after_a_flood(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    prog = Progress()
    follower = LogFollower(log)
    with open(log, "wb") as fh:
        fh.write(b"steps: 1 loss: 0.5 iter time (s): 0.1 samples/sec: 1.0\n")
        fh.flush()
        for line in follower.read_lines():  # the daemon followed the run while it trained
            feed_line(prog, line)
        fh.write((b"noise " * 20 + b"\n") * 200_000)  # ~25 MB printed at the very end
        fh.write(b"TRAINING COMPLETE!\n")
    t0 = time.monotonic()
    for line in follower.read_to_end():
        feed_line(prog, line)
    assert prog.complete and prog.step == 1
    assert time.monotonic() - t0 < 10


def test_follower_never_blocks_on_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "x_rank0.log"
    os.mkfifo(fifo)
    done = threading.Event()

    def read() -> None:
        LogFollower(fifo).read_lines()
        LogFollower(fifo).read_to_end()
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(5), "reading a FIFO blocked"


# ----- item 12: a SIGKILL by a person is not an OOM -----------------------------------------------------------


def test_sigkill_without_oom_evidence_is_named_killed() -> None:
    assert classify.classify(-9, ["steps: 3 loss: 0.1 iter time (s): 0.1 samples/sec: 1"]) == "killed"
    assert classify.classify(247, ["[launch.py] ... exits with return code = -9"]) == "killed"
    assert classify.state_for("killed") == "failed"
    # With kernel evidence it is an OOM.
    assert classify.classify(-9, ["x"], oom_evidence=["Out of memory: Killed process 123 (python)"]) == "host_oom"
    # A Python MemoryError in the log is evidence too.
    assert classify.classify(1, ["MemoryError"]) == "host_oom"


# ----- the real daemon --------------------------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path):
    setup_engine(cpu_slots=1)
    yield tmp_path
    teardown_engine()


def _long(root: Path, name: str, steps: int = 30, sleep_s: float = 0.3, **kw) -> int:
    main = make_profile(root, name=name, epochs=1, steps_per_epoch=steps, sleep_s=sleep_s)
    job_id = client.enqueue(str(main), name=name, **kw)
    return job_id


def _hang_timeout_from_now(seconds: int) -> None:
    # Set once the job trains: a start-up slowed by a loaded machine must not be what the test measures.
    from statefiles import settings

    settings.set_value("scheduler.hang_timeout_s", str(seconds))


def _survives_then_completes(job_id: int) -> None:
    """After the daemon's absence the job keeps training under the short hang timeout (the fault killed it at
    once), then completes (the timeout goes back up first: a 4 s timeout would catch the trainer's slow exit)."""
    from statefiles import settings

    resumed_at = client.get_job(job_id).step or 0
    wait_step(job_id, resumed_at + 12, timeout=120)
    assert client.get_job(job_id).state == "running", [e["message"] for e in client.job_events(job_id)]
    settings.set_value("scheduler.hang_timeout_s", "1800")
    job = wait_state(job_id, FINAL, timeout=120)
    assert job.state == "completed", (job.state, job.exit_reason, [e["message"] for e in client.job_events(job_id)])


@pytest.mark.slow
def test_daemon_down_longer_than_hang_timeout_does_not_kill_healthy_jobs(engine: Path) -> None:
    job_id = _long(engine, "overnight", steps=120, sleep_s=0.25)
    wait_step(job_id, 2)
    _hang_timeout_from_now(4)
    pid = client.daemon_pid()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: client.daemon_pid() is None, 30, what="daemon gone")
    time.sleep(6)  # longer than the job's hang timeout, while nobody watches
    client.ensure_daemon()
    _survives_then_completes(job_id)


@pytest.mark.slow
def test_daemon_paused_longer_than_hang_timeout_does_not_kill(engine: Path) -> None:
    job_id = _long(engine, "paused", steps=120, sleep_s=0.25)
    wait_step(job_id, 2)
    _hang_timeout_from_now(4)
    pid = client.daemon_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(6)
    finally:
        os.kill(pid, signal.SIGCONT)
    _survives_then_completes(job_id)


@pytest.mark.slow
def test_a_real_hang_is_still_caught(engine: Path) -> None:
    main = make_profile(engine, name="stuck", epochs=1, steps_per_epoch=20, sleep_s=0.1, hang_at_step=3)
    job_id = client.enqueue(str(main), name="stuck")
    wait_step(job_id, 1)
    _hang_timeout_from_now(3)
    job = wait_state(job_id, FINAL, timeout=120)
    assert job.state == "hung" and job.exit_reason == "hung", job
    assert job.step == 2  # the fake hangs inside step 3, before printing it


@pytest.mark.slow
def test_malformed_event_from_a_job_does_not_stall_others(engine: Path, tmp_path: Path) -> None:
    # A job whose log gains a malformed event (as a trainer bug would print), and a second job that must end
    # on time and be classified from its own log.
    job_id = _long(engine, "bad", steps=8, sleep_s=0.2)
    wait_step(job_id, 2)
    with open(Path(client.get_job(job_id).job_dir) / "output.log", "a") as fh:
        fh.write('[dpdeck] {"event": "progress", "step": "two", "total_steps": [1], "loss": "x"}\n')
    job = wait_state(job_id, FINAL, timeout=120)
    assert job.state == "completed", (job.state, job.exit_reason, job.evidence)
    errors = [e for e in client.job_events(job_id) if e["kind"] == "error"]
    assert errors == [], errors


@pytest.mark.slow
def test_completion_after_a_flood_at_the_end_is_completed(engine: Path) -> None:
    # 24 MB printed right before `TRAINING COMPLETE!`: the daemon used to read 4 MB of it at the exit and call
    # a job that completed and exited 0 `failed (crashed)`.
    main = make_profile(engine, name="flood", epochs=1, steps_per_epoch=6, sleep_s=0.2, flood_before_end_mb=24)
    job_id = client.enqueue(str(main), name="flood")
    wait_step(job_id, 2)
    pid = client.daemon_pid()
    os.kill(pid, signal.SIGSTOP)  # the daemon is busy elsewhere while the end lands: it finds all of it at once
    try:
        wait_for(lambda: (Path(client.get_job(job_id).job_dir) / "exit.json").exists(), 120, what="exit.json")
    finally:
        os.kill(pid, signal.SIGCONT)
    job = wait_state(job_id, FINAL, timeout=180)
    assert job.state == "completed", (job.state, job.exit_reason, job.evidence)


@pytest.mark.slow
def test_a_stale_build_lock_met_during_startup_is_cleared_for_that_job(engine: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A builder killed after this job's launch (so no sweep ran since) leaves torch's baton; the job, waiting on
    it before its first step, is freed and told why."""
    ext = tmp_path / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(ext))
    main = make_profile(engine, name="waiter", epochs=1, steps_per_epoch=3, sleep_s=0.1, startup_s=4, op_build_s=1)
    job_id = client.enqueue(str(main), name="waiter")
    wait_for(lambda: client.get_job(job_id).state in ("starting", "running"), 60, what="job launched")
    # A real torch FileBaton taken by a process that is then SIGKILLed: the baton stays behind.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from torch.utils.cpp_extension import _get_build_directory;"
        "from torch.utils.file_baton import FileBaton;"
        "d = _get_build_directory('deepspeed_shm_comm', verbose=False);"
        "assert FileBaton(d + '/lock').try_acquire(); print(d, flush=True); time.sleep(600)")],
        stdout=subprocess.PIPE, text=True)
    lock_file = Path(holder.stdout.readline().strip()) / "lock"
    holder.kill()
    holder.wait()
    assert lock_file.exists()
    job = wait_state(job_id, FINAL, timeout=180)
    assert job.state == "completed", (job.state, job.exit_reason, job.evidence)
    assert any("stale torch extension build lock" in e["message"] for e in client.job_events(job_id)), \
        [e["message"] for e in client.job_events(job_id)]


@pytest.mark.slow
def test_fifo_in_ranks_does_not_block_the_daemon(engine: Path) -> None:
    job_id = _long(engine, "fifo", steps=8, sleep_s=0.2)
    wait_step(job_id, 1)
    ranks = Path(client.get_job(job_id).job_dir) / "ranks"
    ranks.mkdir(exist_ok=True)
    os.mkfifo(ranks / "0000_rank0.log")  # sorts before the real one: the daemon used to open it and block
    os.mkfifo(ranks / "9999_rank0.log")
    assert client.job_log_path(job_id).is_file()
    job = wait_state(job_id, FINAL, timeout=120)
    assert job.state == "completed", (job.state, job.exit_reason, job.evidence)
    # The daemon still answers requests.
    client.set_queue_paused(True)
    assert client.queue_paused()


@pytest.mark.slow
def test_person_sigkill_of_the_runner_is_killed_not_oom(engine: Path) -> None:
    from engine_helpers import find_proc

    job_id = _long(engine, "victim", steps=40, sleep_s=0.3)
    wait_step(job_id, 2)
    find_proc(job_id, "bin/deepspeed").send_signal(signal.SIGKILL)
    job = wait_state(job_id, FINAL, timeout=120)
    assert job.exit_reason == "killed" and job.state == "failed", (job.state, job.exit_reason, job.evidence)
    assert any("signal 9" in line for line in job.evidence), job.evidence


# ----- item 10: the lock file deleted under a running daemon ------------------------------------------------


@pytest.mark.slow
def test_deleted_lock_second_daemon_first_leaves(engine: Path, dpdeck_home: Path) -> None:
    job_id = _long(engine, "solo", steps=16, sleep_s=0.25)
    wait_step(job_id, 1)
    first = client.daemon_pid()
    (dpdeck_home / "daemon.lock").unlink()
    second = subprocess.Popen([sys.executable, "-m", "engine.service"], cwd=str(dpdeck_home),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE,
                 20, what="the first daemon to leave after losing its lock")
        assert client.daemon_pid() == second.pid
        job = wait_state(job_id, FINAL, timeout=120)
        assert job.state == "completed", (job.state, job.exit_reason, job.evidence)
        # One launch only: the job was never started twice.
        starts = [e for e in client.job_events(job_id) if e["kind"] == "start"]
        assert len(starts) == 1, starts
    finally:
        with contextlib.suppress(ProcessLookupError):
            second.terminate()
        second.wait(30)


def test_lock_recheck_notices_replacement(dpdeck_home: Path) -> None:
    fd = lock.acquire_lock()
    assert fd is not None and lock.still_holds(fd)
    lock.lock_path().unlink()
    assert not lock.still_holds(fd)
    other = lock.acquire_lock()
    assert other is not None and lock.still_holds(other) and not lock.still_holds(fd)
    os.close(fd)
    os.close(other)


# ----- item 3: store errors ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_dead_daemon_is_noticed_and_started(engine: Path, dpdeck_home: Path) -> None:
    job_id = _long(engine, "orphan", steps=200, sleep_s=0.2)
    wait_for(lambda: client.get_job(job_id).state in ("starting", "running"), 60, what="job starting")
    os.kill(client.daemon_pid(), signal.SIGKILL)
    wait_for(lambda: client.daemon_pid() is None, 30, what="daemon gone")
    note = client.check_daemon()
    assert note and "not running" in note and "started" in note, note
    assert client.daemon_pid() is not None
    assert client.check_daemon() is None


def test_kernel_oom_record_is_found_for_a_real_oom_kill(tmp_path: Path) -> None:
    """A real OOM kill: a process in a 64 MiB memory cgroup (v1) allocates 400 MiB."""
    from engine.jobs import oomlog

    memcg = Path("/sys/fs/cgroup/memory") / f"dpdeck-test-{os.getpid()}"
    try:
        memcg.mkdir()
        (memcg / "memory.limit_in_bytes").write_text(str(64 << 20))
    except OSError as exc:
        pytest.skip(f"no writable cgroup v1 memory controller here: {exc}")
    try:
        since = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(0.3); x = bytearray(400 << 20); time.sleep(1)"]
        )
        (memcg / "cgroup.procs").write_text(str(proc.pid))
        assert proc.wait(30) == -9
        lines = wait_for(lambda: oomlog.oom_kills({proc.pid}, since), 10, what="the kernel's OOM record")
        assert any(str(proc.pid) in line for line in lines), lines
        assert oomlog.oom_kills({proc.pid + 100000}, since) == []
        assert classify.classify(-9, [], oom_evidence=lines) == "host_oom"
    finally:
        memcg.rmdir()


@pytest.mark.slow
def test_full_disk_does_not_kill_the_daemon_and_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "small-home"
    home.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(home)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    monkeypatch.setenv("DPDECK_HOME", str(home))
    try:
        setup_engine(cpu_slots=1)
        job_id = _long(tmp_path, "filled", steps=80, sleep_s=0.2)
        wait_step(job_id, 2)
        daemon = client.daemon_pid()
        filler = home / "filler"
        with open(filler, "wb") as fh, contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * (1 << 20))
        time.sleep(4)  # the daemon keeps ticking against a full store
        assert psutil.pid_exists(daemon) and client.daemon_pid() == daemon, "the daemon died on a full disk"
        problems = client.daemon_status()["problems"]
        assert any("ENOSPC" in p and str(home) in p for p in problems), problems
        filler.unlink()
        t0 = time.monotonic()
        job = wait_state(job_id, FINAL, timeout=120)  # recorded once space is back, whatever killed it
        print("job ended", job.state, job.exit_reason, job.evidence[-3:], f"{time.monotonic() - t0:.1f}s after")
        assert client.daemon_pid() == daemon
        if job.state != "completed":
            assert job.evidence, job
        wait_for(lambda: client.daemon_status()["problems"] == [], 30, what="the daemon to report itself healthy")
    finally:
        teardown_engine()
        subprocess.run(["umount", "-l", str(home)], capture_output=True)  # our own store connection holds it


def test_daemon_and_jobs_import_this_tree(dpdeck_home: Path) -> None:
    """The daemon (and through it every job) must run the code of the tree the client runs, not whatever an
    installed copy provides: PYTHONPATH names this tree's root first."""
    from engine.jobs import launch

    root = str(Path(client.__file__).resolve().parents[2])
    assert (Path(root) / "engine" / "jobs" / "client.py").is_file()
    pid = client.ensure_daemon()
    assert psutil.Process(pid).environ()["PYTHONPATH"].split(os.pathsep)[0] == root
    assert launch.job_env(1, False)["PYTHONPATH"].split(os.pathsep)[0] == root
    client.stop_daemon()


@pytest.mark.slow
def test_store_deleted_under_the_running_daemon(engine: Path, dpdeck_home: Path) -> None:
    first = _long(engine, "first", steps=40, sleep_s=0.25)
    wait_step(first, 2)
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            (dpdeck_home / f"dpdeck.db{suffix}").unlink()
    second = _long(engine, "second", steps=3, sleep_s=0.1)
    assert second != first, "a deleted store handed out the running job's id again"
    # The daemon notices the new file, brings the running job back from its folder and finishes both.
    wait_for(lambda: client._db().execute("SELECT 1 FROM jobs WHERE id=?", (first,)).fetchone(), 30,
             what="the running job back in the new store")
    job = wait_state(first, FINAL, timeout=180)
    assert job.state == "completed", (job.state, job.exit_reason, job.evidence)
    assert wait_state(second, FINAL, timeout=180).state == "completed"
    assert any("store file replaced" in e["message"] for e in client.job_events(first) + _daemon_events())


def _daemon_events() -> list[dict]:
    return [dict(r) for r in client._db().execute("SELECT kind, message FROM events WHERE job_id IS NULL")]
