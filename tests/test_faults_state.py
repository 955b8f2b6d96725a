"""Issue 12 items 5, 8, 9: secrets stay out of job folders, the state dir is private and canonical, and the
job folders are the truth the store is rebuilt from.

Real SQLite, real processes, real files: slow tests run jobs through the real deepspeed launcher; one reads
the live rank's /proc/<pid>/environ.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from engine_helpers import (
    make_profile,
    setup_engine,
    teardown_engine,
    use_fake_wandb,
    wait_for,
    wait_state,
    wait_step,
)

from engine import proctitle
from engine.jobs import client, create, launch, procs, record, repair, store
from engine.jobs.job import Job
from engine.jobs.lock import daemon_pid
from profiles.secrets import set_secret
from statefiles import paths
from statefiles.atomic import atomic_write_text
from tui.cli import main as cli_main

FINAL = ("completed", "failed", "cancelled", "oom", "hung", "interrupted")


def _secret(tag: str) -> str:
    # Unique per run, so a hit in a file can only come from this test.
    return f"dpdeck{tag}{uuid.uuid4().hex}"


def _add_secrets(main: Path, wandb_key: str, hf_token: str, hub_token: str | None = None) -> None:
    """A profile that asks for W&B and carries secrets in its main, dataset (and eval) TOMLs."""
    text = main.read_text()
    if hub_token is not None:
        evals = main.parent / "eval.toml"
        evals.write_text(f'hub_token = "{hub_token}"\nresolutions = [64]\n\n[[directory]]\n'
                         f'path = "{main.parent / "images"}"\n')
        evals_line = f'eval_datasets = [{{ name = "e", config = "{evals}" }}]\n'
        text = text.replace("epochs =", evals_line + "epochs =", 1)
    text += ('\n[monitoring]\nenable_wandb = true\nwandb_tracker_name = "t"\nwandb_run_name = "r"\n'
             f'wandb_api_key = "{wandb_key}"\n')
    main.write_text(text)
    dataset = main.parent / "dataset.toml"
    dataset.write_text(f'hf_token = "{hf_token}"\n' + dataset.read_text())


def _files_under(root: Path) -> Iterator[Path]:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            yield Path(dirpath) / name


def _holders(roots: list[Path], value: str) -> list[str]:
    needle = value.encode()
    hits = []
    for root in roots:
        for f in _files_under(root):
            try:
                if stat.S_ISREG(os.lstat(f).st_mode) and needle in f.read_bytes():  # never open the wake FIFO
                    hits.append(str(f))
            except OSError:
                continue
    return hits


def _paused_queue() -> None:
    store.set_setting(store.connect(), "paused", "1")


# ----- item 5: secrets ------------------------------------------------------------------------------------


def test_frozen_job_holds_no_secret_and_its_files_are_private(tmp_path: Path) -> None:
    setup_engine()
    _paused_queue()
    wandb_key, hf, hub = _secret("W"), _secret("H"), _secret("E")
    main = make_profile(tmp_path, name="sec", epochs=1)
    _add_secrets(main, wandb_key, hf, hub)
    job_id = client.enqueue(str(main), name="sec")
    job_dir = Path(client.get_job(job_id).job_dir)

    frozen = {f.name: f.read_text() for f in job_dir.glob("*.toml")}
    assert {"main.toml", "dataset.toml", "eval-0.toml"} <= set(frozen)
    for text in frozen.values():
        assert wandb_key not in text and hf not in text and hub not in text
        assert "hf_token" not in text and "hub_token" not in text
    # diffusion-pipe reads config['monitoring']['wandb_api_key'] (KeyError when absent); "" makes wandb.login
    # fall back to WANDB_API_KEY, which the job gets at launch.
    assert 'wandb_api_key = ""' in frozen["main.toml"]
    # Until the launch, the job's secrets wait in a 0600 file that the shim deletes before the launcher runs.
    held = json.loads((job_dir / record.SECRETS_FILE).read_text())
    assert held == {"WANDB_API_KEY": wandb_key, "HF_TOKEN": hf}
    assert stat.S_IMODE(os.stat(job_dir / record.SECRETS_FILE).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(job_dir).st_mode) == 0o700
    for f in job_dir.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f
    assert json.loads((job_dir / record.JOB_FILE).read_text())["secrets"] == ["hf_token", "wandb_api_key"]


def test_client_env_is_captured_without_secret_looking_variables(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    setup_engine()
    _paused_queue()
    monkeypatch.setenv("DPDECK_CLIENT_VAR", "from-client")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # looks like *TOKEN* but is no secret
    secret_looking = ("GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "OPENAI_API_KEY", "HF_TOKEN",
                      "my_token")
    for name in secret_looking:
        monkeypatch.setenv(name, _secret("X"))
    job_id = client.enqueue(str(make_profile(tmp_path, name="env", epochs=1)), name="env")
    env_file = Path(client.get_job(job_id).job_dir) / record.ENV_FILE
    env = json.loads(env_file.read_text())
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert env["DPDECK_CLIENT_VAR"] == "from-client" and env["TOKENIZERS_PARALLELISM"] == "false"
    for name in secret_looking:
        assert name not in env
    # No secret asked for (no W&B, no token key in the profile): no secrets file at all.
    assert not (env_file.parent / record.SECRETS_FILE).exists()


def test_retry_of_an_old_job_strips_its_frozen_secrets(tmp_path: Path) -> None:
    """A job frozen before the fix holds its key verbatim; a retry (daemon.clone_job) must not copy it on."""
    setup_engine()
    key = _secret("OLD")
    old = tmp_path / "old-job"
    old.mkdir()
    main = make_profile(tmp_path, name="old", epochs=1)
    monitoring = f'\n[monitoring]\nenable_wandb = true\nwandb_api_key = "{key}"\n'
    (old / "main.toml").write_text(main.read_text() + monitoring)
    (old / "dataset.toml").write_text((tmp_path / "dataset.toml").read_text())
    conn = store.connect()
    new_id = create.insert_job(conn=conn, name="retry", profile=str(main), backend="diffusion-pipe",
                               gpus=None, num_gpus=None, priority=0, after=None, frozen_from=old)
    new_dir = paths.jobs_dir() / str(new_id)
    # Only the 0600 file the shim deletes at launch holds it: the retry still gets its W&B key.
    assert _holders([new_dir], key) == [str(new_dir / record.SECRETS_FILE)]
    assert 'wandb_api_key = ""' in (new_dir / "main.toml").read_text()


def test_retry_reuses_the_original_jobs_environment(tmp_path: Path) -> None:
    """daemon.clone_job runs in the daemon: the copy must take the enqueuer's env, not the daemon's."""
    setup_engine()
    key = _secret("RW")
    main = make_profile(tmp_path, name="orig", epochs=1)
    _add_secrets(main, key, _secret("RH"))
    conn = store.connect()
    orig = create.insert_job(conn=conn, name="orig", profile=str(main), backend="diffusion-pipe", gpus=None,
                             num_gpus=None, priority=0, after=None, profile_obj=launch.resolve_profile(str(main)),
                             client_env={"PATH": "/client/bin", "DPDECK_CLIENT_VAR": "orig"})
    orig_dir = paths.jobs_dir() / str(orig)
    copy = create.insert_job(conn=conn, name="orig", profile=str(main), backend="diffusion-pipe", gpus=None,
                             num_gpus=None, priority=0, after=None, frozen_from=orig_dir, parent_id=orig)
    copy_dir = paths.jobs_dir() / str(copy)
    assert record.read_env(copy_dir) == {"PATH": "/client/bin", "DPDECK_CLIENT_VAR": "orig"}
    # The original never launched, so its secrets still wait in its folder: the copy takes them.
    assert record.peek_secrets(copy_dir)["WANDB_API_KEY"] == key
    assert json.loads((copy_dir / record.JOB_FILE).read_text())["parent_id"] == orig


def test_state_dir_and_store_are_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)  # a state dir made by an older dpdeck
    monkeypatch.setenv("DPDECK_HOME", str(home))
    assert stat.S_IMODE(paths.state_dir().stat().st_mode) == 0o700
    assert stat.S_IMODE(paths.jobs_dir().stat().st_mode) == 0o700
    conn = store.connect()
    with store.transaction(conn):
        store.add_event(conn, None, "t", "wal gets written")
    for name in ("dpdeck.db", "dpdeck.db-wal", "dpdeck.db-shm"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    atomic_write_text(home / "some.json", "{}")
    assert stat.S_IMODE((home / "some.json").stat().st_mode) == 0o600
    # Outside the state dir a new file follows the umask, as open() would.
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "caption.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "caption.txt").stat().st_mode) == 0o644


@pytest.mark.slow
def test_secret_reaches_the_job_and_no_file_keeps_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup_engine()
    inline_w, inline_h, store_w = _secret("IW"), _secret("IH"), _secret("SW")
    client_h, client_gh, daemon_w = _secret("CH"), _secret("GH"), _secret("DW")
    # The daemon starts with a variable (and a secret) that no job may inherit from it.
    monkeypatch.setenv("DPDECK_DAEMON_ONLY", "leak")
    monkeypatch.setenv("WANDB_API_KEY", daemon_w)
    client.ensure_daemon()
    monkeypatch.delenv("DPDECK_DAEMON_ONLY")
    monkeypatch.delenv("WANDB_API_KEY")
    # The enqueuing client: its own variables, its HF token, an unrelated token; the W&B key in the store.
    monkeypatch.setenv("DPDECK_CLIENT_VAR", "from-client")
    monkeypatch.setenv("HF_TOKEN", client_h)
    monkeypatch.setenv("GITHUB_TOKEN", client_gh)
    set_secret("wandb_api_key", store_w)
    use_fake_wandb(monkeypatch)  # the profile turns W&B on: the trainer imports wandb
    main = make_profile(tmp_path, name="live", epochs=1, steps_per_epoch=24, sleep_s=0.15)
    _add_secrets(main, inline_w, inline_h)
    job_id = client.enqueue(str(main), name="live")
    wait_step(job_id, 2, timeout=180)

    def rank() -> psutil.Process | None:
        for m in procs.marked_processes(job_id):
            try:
                proc = psutil.Process(m.pid)
                if any(a.startswith("--local_rank") for a in proc.cmdline()):
                    return proc
            except psutil.Error:
                continue
        return None

    env = wait_for(rank, 60, what="the rank process").environ()  # /proc/<pid>/environ of the live rank
    assert env.get("WANDB_API_KEY") == store_w
    assert env.get("HF_TOKEN") == client_h
    assert env.get("DPDECK_CLIENT_VAR") == "from-client"
    assert "DPDECK_DAEMON_ONLY" not in env and "GITHUB_TOKEN" not in env
    job_dir = Path(client.get_job(job_id).job_dir)
    assert not (job_dir / record.SECRETS_FILE).exists(), "the shim deletes the secrets file before launching"
    assert "WANDB_API_KEY" not in json.loads((job_dir / "launch.json").read_text())["env"]

    job = wait_state(job_id, FINAL, timeout=240)
    assert job.state == "completed", (job.state, job.exit_reason, job.evidence)
    roots = [paths.state_dir(), tmp_path / "out"]
    for value in (inline_w, inline_h, client_h, client_gh, daemon_w):
        assert _holders(roots, value) == [], value
    assert _holders(roots, store_w) == [str(paths.secrets_path())]
    for dirpath, dirs, files in os.walk(paths.state_dir()):
        for d in dirs:
            assert stat.S_IMODE(os.stat(Path(dirpath) / d).st_mode) == 0o700, Path(dirpath) / d
        for f in files:
            if f == "daemon.log":
                continue  # opened by client.ensure_daemon: see test_daemon_log_is_private
            assert stat.S_IMODE(os.lstat(Path(dirpath) / f).st_mode) & 0o077 == 0, Path(dirpath) / f
    state = json.loads((job_dir / record.STATE_FILE).read_text())
    assert state["state"] == "completed" and state["step"] == 24
    teardown_engine()


def test_daemon_log_is_private_and_the_daemon_holds_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_" + "d" * 30)
    pid = client.ensure_daemon()
    try:
        assert "HF_TOKEN" not in psutil.Process(pid).environ()
    finally:
        client.stop_daemon()
    assert stat.S_IMODE((paths.state_dir() / "daemon.log").stat().st_mode) & 0o077 == 0


# ----- item 8: one canonical state dir --------------------------------------------------------------------


def test_state_dir_is_canonical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv("DPDECK_HOME", str(tmp_path / "link"))
    assert paths.state_dir() == real.resolve()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DPDECK_HOME", "rel")
    assert paths.state_dir() == (tmp_path / "rel").resolve()
    # Pinned: the daemon (cwd = the state dir) and the jobs inherit the absolute path, not "rel" again.
    assert os.environ["DPDECK_HOME"] == str((tmp_path / "rel").resolve())
    monkeypatch.setenv("DPDECK_HOME", "~/x")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.state_dir() == (tmp_path / "x").resolve()


def test_daemon_starts_with_a_relative_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DPDECK_HOME", "h")
    try:
        client.ensure_daemon(timeout=20)  # before the fix: the daemon locked h/h and this timed out
        assert (tmp_path / "h" / "daemon.lock").exists()
        assert not (tmp_path / "h" / "h").exists()
    finally:
        client.stop_daemon()
        _terminate_daemons_under(tmp_path)  # one that locked h/h (the fault) must not outlive the test
    assert daemon_pid() is None


def _terminate_daemons_under(root: Path) -> None:
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proctitle.is_kind(proc.cmdline(), "daemon") and proc.cwd().startswith(str(root)):
                proc.terminate()


def test_marker_matches_through_a_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    other = tmp_path / "other"
    other.mkdir()

    def spawn(home: Path, job: int) -> subprocess.Popen:
        env = {**os.environ, procs.MARKER: str(job), "DPDECK_HOME": str(home)}
        return subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)

    old_style = spawn(link, 7)  # a job started before the fix: its marker spells the symlink
    foreign = spawn(other, 8)
    try:
        wait_for(lambda: psutil.Process(old_style.pid).environ(), 10, what="the env of the process")
        for home in (link, real):
            monkeypatch.setenv("DPDECK_HOME", str(home))
            found = {m.pid: m.job_id for m in procs.marked_processes()}
            assert found.get(old_style.pid) == 7 and foreign.pid not in found
            assert procs.marker_of_pid(old_style.pid) == 7
        assert procs.marker_env(3)["DPDECK_HOME"] == str(real.resolve())
        assert procs.kill_marked(procs.marked_processes(7), grace_s=3) == []
        assert old_style.wait(5) is not None
    finally:
        for p in (old_style, foreign):
            p.kill()
            p.wait()


# ----- item 9: the folders are the truth ------------------------------------------------------------------


def _insert(tmp_path: Path, conn: sqlite3.Connection, name: str = "j") -> int:
    prof = launch.resolve_profile(str(make_profile(tmp_path, name=name, epochs=1)))
    return create.insert_job(conn=conn, name=name, profile=name, backend="diffusion-pipe", gpus=None,
                             num_gpus=None, priority=0, after=None, profile_obj=prof,
                             client_env=dict(os.environ))


def _drop_store() -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(paths.store_path()) + suffix).unlink(missing_ok=True)


def test_deleted_store_never_reuses_a_job_folder(tmp_path: Path) -> None:
    setup_engine()
    conn = store.connect()
    first = _insert(tmp_path, conn)
    running_log = paths.jobs_dir() / str(first) / "output.log"
    running_log.write_text("the running job's log\n")
    conn.close()
    _drop_store()
    conn = store.connect()
    second = _insert(tmp_path, conn)
    assert second > first
    assert running_log.read_text() == "the running job's log\n"
    identity = json.loads((paths.jobs_dir() / str(second) / record.JOB_FILE).read_text())
    assert identity["id"] == second and identity["name"] == "j" and identity["backend"] == "diffusion-pipe"
    for key in ("profile", "gpus", "num_gpus", "priority", "after_id", "parent_id", "resume_from",
                "launcher_args", "hang_timeout_s", "created_at"):
        assert key in identity


def test_write_state_is_atomic_private_and_complete(tmp_path: Path) -> None:
    job_dir = tmp_path / "7"
    job_dir.mkdir()
    (job_dir / record.SECRETS_FILE).write_text("{}")  # a shim that died before reading it
    record.write_state(job_dir, {"state": "failed", "exit_reason": "crashed", "ended_at": 5.0,
                                 "evidence": ["RuntimeError: x"], "step": 3, "name": "ignored"})
    state = json.loads((job_dir / record.STATE_FILE).read_text())
    assert state["state"] == "failed" and state["evidence"] == ["RuntimeError: x"] and state["step"] == 3
    assert "name" not in state
    assert stat.S_IMODE((job_dir / record.STATE_FILE).stat().st_mode) == 0o600
    assert not (job_dir / record.SECRETS_FILE).exists()


def test_corrupt_store_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths.store_path().write_bytes(b"this is not a database" * 100)
    with pytest.raises(store.StoreCorrupt) as exc:
        store.connect()
    assert isinstance(exc.value, RuntimeError)
    assert str(paths.store_path()) in str(exc.value) and "dpdeck doctor --repair" in str(exc.value)
    assert cli_main(["ls"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dpdeck doctor --repair" in err and "Traceback" not in err


def test_daemon_stop_works_with_a_corrupt_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A stand-in daemon that only holds the lock (a real one would sweep the marked process itself).
    code = "import time\nfrom engine.jobs.lock import acquire_lock\nassert acquire_lock()\ntime.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    job = subprocess.Popen(["sleep", "60"], start_new_session=True, env={**os.environ, **procs.marker_env(1)})
    try:
        wait_for(daemon_pid, 20, what="the stand-in daemon")
        wait_for(lambda: procs.marked_processes(1), 10, what="the marked job process")
        paths.store_path().write_bytes(b"garbage" * 1000)
        assert cli_main(["daemon", "stop", "--kill-jobs"]) == 0
        assert daemon_pid() is None and holder.wait(10) is not None
        # Found by its marker (the store could not say it runs). kill_marked reaps the children of this very
        # process, so Popen may only learn that it is gone, not its signal.
        assert job.wait(10) is not None and not psutil.pid_exists(job.pid)
    finally:
        for p in (holder, job):
            p.kill()
            p.wait()
    assert "daemon stopped" in capsys.readouterr().out


def _fake_shim(job_dir: Path, job_id: int) -> subprocess.Popen:
    """A live process that looks like a job's shim: its marker and `engine.jobs.shim` in its command line."""
    env = {**os.environ, **procs.marker_env(job_id)}
    argv = [sys.executable, "-c", "import time; time.sleep(60)", "engine.jobs.shim", str(job_dir)]
    return subprocess.Popen(argv, env=env, start_new_session=True)


def test_repair_rebuilds_the_store_from_the_folders(tmp_path: Path) -> None:
    setup_engine()
    conn = store.connect()
    done, crashed, lost, live = (_insert(tmp_path, conn, n) for n in ("done", "crashed", "lost", "live"))
    jobs = paths.jobs_dir()
    record.write_state(jobs / str(done), {"state": "completed", "exit_reason": "completed", "ended_at": 9.0,
                                          "evidence": [], "step": 8, "run_dir": "/x/run"})
    atomic_write_text(jobs / str(crashed) / "exit.json", json.dumps({"returncode": 1, "ended_at": 8.0}))
    (jobs / str(crashed) / "output.log").write_text("step 1\nRuntimeError: fake crash\n")
    atomic_write_text(jobs / str(live) / "launch.json", json.dumps(
        {"argv": ["deepspeed", "--num_gpus", "1", "--master_port", "29777", "train.py"], "env": {}}))
    atomic_write_text(jobs / str(live) / "child.json", json.dumps({"pid": 1, "started_at": 7.0}))
    shim = _fake_shim(jobs / str(live), live)
    try:
        wait_for(lambda: procs.marked_processes(live), 10, what="the fake shim")
        conn.close()
        paths.store_path().write_bytes(b"corrupted!" * 500)
        report = repair.repair()
        moved = [p for p in paths.state_dir().iterdir() if p.name.startswith("dpdeck.db.corrupt-")]
        assert len(moved) == 1 and moved[0].read_bytes().startswith(b"corrupted!")
        assert report.moved_aside == moved[0]
        rows = {r["id"]: Job.from_row(r).as_dict() for r in store.connect().execute("SELECT * FROM jobs")}
        assert rows[done]["state"] == "completed" and rows[done]["step"] == 8
        assert rows[done]["run_dir"] == "/x/run" and rows[done]["name"] == "done"
        assert rows[crashed]["state"] == "failed" and rows[crashed]["exit_reason"] == "crashed"
        assert "RuntimeError: fake crash" in rows[crashed]["evidence"]
        assert rows[lost]["state"] == "interrupted" and rows[lost]["exit_reason"] == "interrupted"
        assert rows[live]["state"] == "running" and rows[live]["pid"] == shim.pid
        assert abs(rows[live]["pid_ctime"] - psutil.Process(shim.pid).create_time()) < 0.01
        assert rows[live]["port"] == 29777 and rows[live]["started_at"] == 7.0
        # A new job after the repair gets a new id, past every folder.
        assert _insert(tmp_path, store.connect(), "after") == max(rows) + 1
    finally:
        shim.kill()
        shim.wait()


def test_repair_refuses_while_a_daemon_runs(capsys: pytest.CaptureFixture[str]) -> None:
    client.ensure_daemon()
    try:
        with pytest.raises(repair.RepairError, match="dpdeck daemon stop"):
            repair.repair()
        assert cli_main(["doctor", "--repair"]) == 2
        assert "dpdeck daemon stop" in capsys.readouterr().err
    finally:
        client.stop_daemon()


@pytest.mark.slow
def test_repair_brings_a_running_job_back_to_the_daemon(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    setup_engine()
    main = make_profile(tmp_path, name="survivor", epochs=1, steps_per_epoch=50, sleep_s=0.2)
    job_id = client.enqueue(str(main), name="survivor")
    wait_step(job_id, 2, timeout=180)
    assert cli_main(["daemon", "stop"]) == 0  # the job keeps running
    # This process's cached store connection would keep the WAL (a good copy of every page) alive: close it,
    # so the damage below is what a later dpdeck command really finds.
    client.close_db()
    paths.store_path().write_bytes(b"\0garbage" * 4096)
    assert cli_main(["ls"]) == 2
    assert cli_main(["doctor", "--repair"]) == 0
    out = capsys.readouterr().out
    assert "moved the damaged store aside" in out and "1 running" in out, out
    assert client.get_job(job_id).state == "running"
    client.ensure_daemon()  # re-attaches to the live shim
    job = wait_state(job_id, FINAL, timeout=240)
    assert job.state == "completed", (job.state, job.exit_reason, job.evidence)
    assert job.step == 50
    teardown_engine()


def test_cli_doctor_repair_on_an_empty_state_dir(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["doctor", "--repair"]) == 0
    assert "0 job(s)" in capsys.readouterr().out


def test_output_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """`dpdeck ls | head` used to end in a BrokenPipeError traceback (and `profile ...` in an error line)."""
    import shutil

    exe = shutil.which("dpdeck")
    assert exe
    for command in ("ls --all", "profile templates", "daemon status"):
        proc = subprocess.run(f"{exe} {command} | true", shell=True, executable="/bin/bash",
                              capture_output=True, text=True, timeout=60)
        assert proc.stderr.strip() == "", (command, proc.stderr)
