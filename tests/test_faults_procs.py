"""Faults around the processes a job leaves: torch's op-build baton, the port reservation dir, escaping children.

Real files, real torch FileBaton code, real shims and (where the machine allows it) real cgroups.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from engine_helpers import make_profile, setup_engine, teardown_engine, wait_for, wait_state

from engine.jobs import cgroup, oplock, ports, procs
from statefiles import paths

FINAL = ("completed", "failed", "cancelled", "oom", "hung", "interrupted")


def _file_baton_source() -> Path:
    # The installed torch's own FileBaton, loaded by file so a child does not pay for `import torch`.
    spec = importlib.util.find_spec("torch")
    if spec is None:  # as an import would: tests/conftest.py skips the test where torch is not installed
        raise ModuleNotFoundError("No module named 'torch'", name="torch")
    assert spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0]) / "utils" / "file_baton.py"


HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("file_baton", sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
baton = mod.FileBaton(sys.argv[2])
assert baton.try_acquire()
print("held", flush=True)
time.sleep(600)
"""


def _hold_baton(lock: Path) -> subprocess.Popen[str]:
    lock.parent.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(_file_baton_source()), str(lock)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


@pytest.fixture(autouse=True)
def no_cgroups_left() -> Iterator[None]:
    yield
    procs.drop_job_cgroups(set())  # a failed test must not leave job cgroups behind on the machine


@pytest.fixture
def ext_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "torch_ext"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(root))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # keep the real ~/.cache out of it
    return root


# ----- 1. a builder killed mid-build leaves torch's baton lock: every later job waits on it forever -------------
def test_killed_builders_lock_is_cleared_and_a_live_holders_is_kept(ext_root: Path) -> None:
    lock = ext_root / "deepspeed_shm_comm" / "lock"
    holder = _hold_baton(lock)
    try:
        assert oplock.baton_locks() == [lock]
        assert oplock.clear_stale() == []  # the builder holds its fd: never touched
        assert lock.exists()
        assert oplock.op_state()["state"] == "building"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock.exists()  # SIGKILL skips FileBaton.release: this is what hangs every later job at step 0
    assert oplock.op_state()["state"] == "stale lock"
    assert oplock.clear_stale() == [lock]
    assert not lock.exists()
    spec = importlib.util.spec_from_file_location("file_baton", _file_baton_source())
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    started = time.monotonic()
    mod.FileBaton(str(lock)).wait()  # what torch's waiters do: now returns at once
    assert time.monotonic() - started < 1.0


def test_a_process_working_in_the_build_dir_counts_as_building(ext_root: Path) -> None:
    build = ext_root / "cpu_adam"
    build.mkdir(parents=True)
    (build / "lock").write_text("")  # the python builder is gone, its ninja/c++ still compile in there
    ninja = subprocess.Popen(["sleep", "60"], cwd=build)
    try:
        wait_for(lambda: Path(f"/proc/{ninja.pid}/cwd").resolve() == build.resolve(), 5, 0.02, what="cwd")
        assert oplock.clear_stale() == []
        assert (build / "lock").exists()
    finally:
        ninja.kill()
        ninja.wait()
    assert oplock.clear_stale() == [build / "lock"]


def test_a_lock_owned_by_someone_else_is_never_removed(ext_root: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to give a file away")
    lock = ext_root / "fused_adam" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    os.chown(lock, 54321, 54321)
    assert oplock.clear_stale() == []
    assert lock.exists()


def test_lock_paths_match_torchs_build_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils import cpp_extension

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    expected = Path(cpp_extension._get_build_directory("deepspeed_shm_comm", False))
    assert oplock.build_dir("deepspeed_shm_comm") == expected
    (expected / "lock").write_text("")  # found under the default root's <py>_<accelerator> folder
    assert oplock.clear_stale() == [expected / "lock"]
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    expected = Path(cpp_extension._get_build_directory("deepspeed_shm_comm", False))
    assert oplock.build_dir("deepspeed_shm_comm") == expected


def test_dpdecks_own_kill_of_a_builder_leaves_no_lock(ext_root: Path) -> None:
    # A job killed by dpdeck during its first-launch op build must not leave the baton behind.
    lock = ext_root / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(_file_baton_source()), str(lock)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, procs.MARKER: "41", "DPDECK_HOME": str(paths.state_dir())},
        start_new_session=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    victims = procs.marked_processes(41)
    assert [v.pid for v in victims] == [child.pid]
    assert procs.kill_marked(victims, grace_s=0.5) == []
    child.wait()
    assert not lock.exists()


def test_daemon_sweep_clears_a_stale_lock_with_an_event(ext_root: Path) -> None:
    from engine.jobs import daemon

    lock = ext_root / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    d = daemon.Daemon()
    d.sweep()
    assert not lock.exists()
    messages = [r[0] for r in d.conn.execute("SELECT message FROM events")]
    assert f"cleared a stale torch extension build lock {lock} (no process was building)" in messages
    d.conn.close()


# ----- 4. the port reservation dir: per user, private, never followed through a symlink ------------------------
@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    tmp = tmp_path / "tmp"
    tmp.mkdir(mode=0o1777)
    os.chmod(tmp, 0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return tmp


def test_runtime_dir_is_private_under_tempdir(private_tmp: Path) -> None:
    d = ports.runtime_dir()
    assert d.parent == private_tmp and d.name == f"dpdeck-{os.getuid()}"
    st = d.lstat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o700, os.getuid())


def test_runtime_dir_prefers_xdg_runtime_dir(private_tmp: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    xdg = tmp_path / "run-user"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    assert ports.runtime_dir() == xdg / "dpdeck"
    os.chmod(xdg, 0o777)  # not private: not ours to trust
    assert ports.runtime_dir().parent == private_tmp


@pytest.mark.parametrize("attack", ["symlink", "world-writable", "foreign-owner"])
def test_a_planted_runtime_dir_is_refused(private_tmp: Path, tmp_path: Path, attack: str) -> None:
    planted = private_tmp / f"dpdeck-{os.getuid()}"
    target = tmp_path / "victim"
    target.mkdir()
    if attack == "symlink":
        planted.symlink_to(target)
    else:
        planted.mkdir()
        os.chmod(planted, 0o777 if attack == "world-writable" else 0o700)
        if attack == "foreign-owner":
            if os.getuid() != 0:
                pytest.skip("needs root to give a folder away")
            os.chown(planted, 54321, 54321)
    d = ports.runtime_dir()
    assert d != planted and planted not in d.parents
    problems = " ".join(ports.runtime_problems())
    assert str(planted) in problems
    assert {"symlink": "symlink", "world-writable": "mode", "foreign-owner": "owned by uid 54321"}[attack] in problems
    st = d.lstat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o700, os.getuid())
    port, fd = ports.pick_and_reserve(set())
    ports.release(fd)
    assert list(target.iterdir()) == [] and not any(planted.iterdir() if planted.is_dir() else [])
    assert (d / "ports" / f"{port}.lock").exists()


def test_reservation_files_are_not_followed(private_tmp: Path, tmp_path: Path) -> None:
    lock_dir = ports.runtime_dir() / "ports"
    lock_dir.mkdir(exist_ok=True)
    target = tmp_path / "elsewhere"
    (lock_dir / "29123.lock").symlink_to(target)
    assert ports.reserve(29123) is None
    assert not target.exists()


HOLD_PORTS = """
import socket, sys
from engine.jobs import ports
low, high = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", low)); s.listen()
fds = [ports.reserve(p) for p in range(low + 1, high + 1)]
assert all(fd is not None for fd in fds), fds
print("holding", flush=True)
sys.stdin.read()
"""


def _holder(low: int, high: int) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", HOLD_PORTS, str(low), str(high)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "holding"
    return child


def _pair() -> tuple[int, int]:
    for low in range(29990, 29600, -2):
        if ports.is_free(low) and ports.is_free(low + 1):
            fds = [ports.reserve(low), ports.reserve(low + 1)]
            for fd in fds:
                ports.release(fd)
            if all(fd is not None for fd in fds):
                return low, low + 1
    raise AssertionError("no two free consecutive ports")


def test_every_port_taken_raises_no_free_port() -> None:
    low, high = _pair()
    holder = _holder(low, high)
    try:
        with pytest.raises(ports.NoFreePort) as err:
            ports.pick_and_reserve(set(), (low, high))
        assert str(err.value).startswith(f"waiting for a free master port: {low}-{high} all taken")
        assert "1 listening" in str(err.value) and "1 reserved by another process" in str(err.value)
    finally:
        holder.communicate("")
    port, fd = ports.pick_and_reserve(set(), (low, high))
    ports.release(fd)
    assert port == low


@pytest.mark.slow
def test_a_job_waits_for_a_port_instead_of_failing(tmp_path: Path) -> None:
    from engine.jobs import client
    from statefiles import settings

    setup_engine(cpu_slots=1)
    low, high = _pair()
    settings.set_value("ports.low", str(low))
    settings.set_value("ports.high", str(high))
    holder = _holder(low, high)
    try:
        job_id = client.enqueue(str(make_profile(tmp_path, epochs=1, steps_per_epoch=2, sleep_s=0.01)), name="p")
        client.ensure_daemon()
        job = wait_for(lambda: (j := client.get_job(job_id)).wait_reason and j, 60, what="a wait reason")
        assert job.state == "queued"
        assert job.wait_reason.startswith(f"waiting for a free master port: {low}-{high} all taken")
        time.sleep(2)
        assert client.get_job(job_id).state == "queued"
        holder.communicate("")
        job = wait_state(job_id, FINAL, timeout=180)
        assert job.state == "completed", (job.state, job.exit_reason, job.evidence)
        assert job.port in (low, high)
    finally:
        if holder.poll() is None:
            holder.kill()
        teardown_engine()


# ----- Deliver 2: a job's processes are tracked by cgroup; nothing escapes however it detaches ----------------
ESCAPER = """
import os, sys, time
from pathlib import Path
out, go = Path(sys.argv[1]), Path(sys.argv[2])
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        out.write_text(str(os.getpid()))
        os.execv("/usr/bin/env", ["env", "-i", "sleep", "1000"])
    os._exit(0)
while not go.exists():
    time.sleep(0.02)
"""


def _write_launch(job_dir: Path, job_id: int) -> tuple[Path, Path]:
    job_dir.mkdir(parents=True)
    script, pidfile, go = job_dir / "escaper.py", job_dir / "sleeper.pid", job_dir / "go"
    script.write_text(ESCAPER)
    spec = {
        "argv": [sys.executable, str(script), str(pidfile), str(go)],
        "cwd": str(job_dir),
        "env": {procs.MARKER: str(job_id), "DPDECK_HOME": str(paths.state_dir())},
        "log": str(job_dir / "output.log"),
        "attempt_dir": str(job_dir),
        "command": "escaper",
    }
    (job_dir / "launch.json").write_text(json.dumps(spec))
    return pidfile, go


class ShimRun:
    """A real shim on a launch.json whose launcher leaves a setsid'd, env-less sleeper behind and exits."""

    def __init__(self, job_dir: Path, job_id: int, extra_env: dict[str, str]) -> None:
        pidfile, self.go = _write_launch(job_dir, job_id)
        self.job_dir = job_dir
        env = {**os.environ, procs.MARKER: str(job_id), "DPDECK_HOME": str(paths.state_dir()), **extra_env}
        self.shim = subprocess.Popen([sys.executable, "-m", "engine.jobs.shim", str(job_dir)], env=env,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.sleeper = 0
        self.sleeper = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 30, 0.05, what="the sleeper"))
        wait_for(lambda: psutil.Process(self.sleeper).name() == "sleep", 10, 0.02, what="the exec")
        assert psutil.Process(self.sleeper).environ() == {}  # no marker to find it by
        assert os.getsid(self.sleeper) != os.getsid(self.shim.pid)

    def end(self) -> None:
        """Let the launcher exit; the shim cleans up and records the exit."""
        self.go.write_text("")
        assert self.shim.wait(timeout=30) == 0
        assert json.loads((self.job_dir / "exit.json").read_text())["returncode"] == 0

    def close(self) -> None:
        self.go.write_text("")
        if self.sleeper and psutil.pid_exists(self.sleeper):
            os.kill(self.sleeper, signal.SIGKILL)
        if self.shim.poll() is None:
            self.shim.kill()
            self.shim.wait()


@pytest.fixture
def shim_runs() -> Iterator[list[ShimRun]]:
    runs: list[ShimRun] = []
    yield runs
    for run in runs:
        run.close()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_setsid_env_less_grandchild_is_killed_through_the_jobs_cgroup(tmp_path: Path,
                                                                     shim_runs: list[ShimRun]) -> None:
    if not cgroup.available():
        pytest.skip(f"no usable cgroup v2 here: {cgroup.describe()}")
    run = ShimRun(tmp_path / "job", 31, {})
    shim_runs.append(run)
    path = cgroup.job_cgroup(31, create=False)
    assert path is not None and path.is_dir()
    assert run.sleeper in cgroup.members(31) and run.shim.pid in cgroup.members(31)
    assert run.sleeper in [m.pid for m in procs.marked_processes(31)]  # ours by cgroup, without any marker
    assert procs.marker_of_pid(run.sleeper) == 31
    run.end()
    assert _gone(run.sleeper)
    assert not path.exists()


def test_without_cgroups_the_subreaper_shim_kills_its_descendants(tmp_path: Path,
                                                                   shim_runs: list[ShimRun]) -> None:
    run = ShimRun(tmp_path / "job", 32, {cgroup.ENV: "off"})
    shim_runs.append(run)
    assert psutil.Process(run.sleeper).ppid() == run.shim.pid  # re-parented to the subreaper
    run.end()
    assert _gone(run.sleeper)


def test_cgroup_members_are_reclaimed_by_the_sweep(tmp_path: Path) -> None:
    if not cgroup.available():
        pytest.skip(f"no usable cgroup v2 here: {cgroup.describe()}")
    from engine.jobs import daemon

    sleeper = subprocess.Popen(["env", "-i", "sleep", "1000"], start_new_session=True)
    try:
        assert cgroup.join(77, sleeper.pid)
        assert [m.pid for m in procs.marked_processes(77)] == [sleeper.pid]
        d = daemon.Daemon()  # job 77 is not live in this state dir: an orphan
        killed = d.sweep()
        assert [m.pid for m in killed] == [sleeper.pid]
        assert _gone(sleeper.pid)  # (this test is the daemon: it reaped the sleeper itself)
        assert cgroup.job_cgroup(77, create=False) is None or not cgroup.job_cgroup(77, create=False).exists()
        d.conn.close()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()


def test_cgroup_kill_and_remove(tmp_path: Path) -> None:
    if not cgroup.available():
        pytest.skip(f"no usable cgroup v2 here: {cgroup.describe()}")
    kids = [subprocess.Popen(["sleep", "1000"]) for _ in range(3)]
    try:
        for k in kids:
            assert cgroup.join(78, k.pid)
        assert sorted(cgroup.members(78)) == sorted(k.pid for k in kids)
        assert 78 in cgroup.job_ids()
        assert cgroup.oom_kills(78) in (None, 0)
        assert cgroup.kill(78) == []
        for k in kids:
            assert k.wait(timeout=5) == -signal.SIGKILL
        assert cgroup.remove(78)
        assert 78 not in cgroup.job_ids()
    finally:
        for k in kids:
            if k.poll() is None:
                k.kill()


def test_cgroup_off_is_reported() -> None:
    os.environ[cgroup.ENV] = "off"
    try:
        assert not cgroup.available()
        assert "DPDECK_CGROUP=off" in cgroup.describe()
    finally:
        del os.environ[cgroup.ENV]


def test_doctor_reports_tracking_runtime_dir_and_op_cache(ext_root: Path) -> None:
    from engine import doctor

    lock = ext_root / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    checks = {c.name: c for c in doctor.tracking_checks()}
    assert checks["process tracking"].detail.startswith(("cgroup at ", "env markers only"))
    assert "stale lock" in checks["deepspeed ops cache"].detail and str(lock) in checks["deepspeed ops cache"].detail
    assert "dpdeck doctor --fix" in checks["deepspeed ops cache"].fix
    assert str(ports.runtime_dir()) in checks["runtime dir"].detail
    actions = doctor.fix(build=False)
    assert any(str(lock) in a for a in actions)
    assert not lock.exists()


@pytest.mark.slow
def test_doctor_fix_builds_the_op_once(ext_root: Path) -> None:
    result = subprocess.run([sys.executable, "-c", "import sys; from tui.cli import main; sys.exit(main())", "doctor", "--fix"], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert "deepspeed_shm_comm" in result.stdout, result.stdout + result.stderr
    assert oplock.op_state()["state"] == "built", oplock.op_state()
    assert oplock.baton_locks() == []

