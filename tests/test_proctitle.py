"""Process titles (engine/proctitle.py): the real daemon, download worker, shim and a trainer rank, read back
from /proc through psutil as `ps` and `htop` read them, with the job marker in /proc/PID/environ intact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from engine import proctitle
from engine.jobs import client, procs, repair
from engine.models import downloads
from statefiles import paths

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubServer, stop_downloads  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _cmdline(pid: int) -> str:
    return " ".join(psutil.Process(pid).cmdline()).strip()


def _wait(pred, timeout: float = 60.0, what: str = "condition"):  # noqa: ANN001, ANN202
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_title_table_and_matching() -> None:
    assert proctitle.title_for("shim", job=12) == "dpdeck shim job 12"
    assert proctitle.title_for("train", job=3, rank=1) == "dpdeck train job 3 rank 1"
    with pytest.raises(ValueError, match="no process title for 'nope'"):
        proctitle.title_for("nope")
    assert proctitle.is_kind(["dpdeck shim job 4", "", ""], "shim")
    # untitled (setproctitle missing, or a shim an older dpdeck started) still counts
    assert proctitle.is_kind(["/usr/bin/python3", "-m", "engine.jobs.shim", "/x/jobs/4"], "shim")
    assert not proctitle.is_kind(["dpdeck daemon (/h)"], "shim")
    assert not proctitle.is_kind(["python", "-m", "engine.jobs.shimmer_not"], "daemon")


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    monkeypatch.setenv("DPDECK_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("DPDECK_MIN_FREE_BYTES", "0")
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server
        stop_downloads()


def test_daemon_and_download_worker_show_dpdeck_titles(hub: HubServer) -> None:
    hub.add("acme/slow", {"s.safetensors": os.urandom(1_000_000)})
    hub.throttle = 200_000.0
    dl = downloads.pull_file("acme/slow", "s.safetensors")  # starts the daemon, which starts the worker
    daemon = client.daemon_pid()
    assert daemon is not None
    home = paths.state_dir()
    assert _wait(lambda: _cmdline(daemon) == f"dpdeck daemon ({home})", 10, "the daemon's title")
    assert psutil.Process(daemon).name() == "dpdeck daemon ("  # comm: 15 bytes, what `top` shows by default
    worker = _wait(lambda: (d := downloads.get(dl.id)).state == "running" and d.pid, what="a running worker")
    assert _wait(lambda: _cmdline(worker) == f"dpdeck download {dl.id}", 10, "the worker's title")
    # The title is not written over the environment block (SPT_NOENV): it is still readable from /proc.
    assert psutil.Process(daemon).environ().get("DPDECK_HOME") == str(home)
    found = subprocess.run(["pgrep", "-f", f"dpdeck download {dl.id}"], capture_output=True, text=True)
    assert str(worker) in found.stdout.split()
    hub.throttle = None
    assert downloads.wait(dl.id, 60).state == "completed"


def test_service_refuses_a_state_dir_that_is_not_its_own(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "engine.service", str(tmp_path / "elsewhere")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "its state dir is" in out.stderr and "DPDECK_HOME" in out.stderr


def test_shim_title_keeps_the_job_marker_and_repair_finds_it(tmp_path: Path) -> None:
    job_id = 41
    job_dir = paths.jobs_dir() / str(job_id)
    job_dir.mkdir(parents=True)
    go = job_dir / "go"
    spec = {
        "argv": [
            sys.executable,
            "-c",
            f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.05)",
        ],
        "cwd": str(job_dir),
        "env": procs.marker_env(job_id),
        "log": str(job_dir / "output.log"),
        "attempt_dir": str(job_dir),
        "command": "waiter",
    }
    (job_dir / "launch.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(REPO), **procs.marker_env(job_id)}
    shim = subprocess.Popen(
        [sys.executable, "-m", "engine.jobs.shim", str(job_dir)],
        env=env,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        start_new_session=True,  # the shim ends its own process group when it is done, as under the daemon
    )
    try:
        assert _wait(lambda: _cmdline(shim.pid) == f"dpdeck shim job {job_id}", 30, "the shim's title")
        # procs finds job processes by the marker in /proc/PID/environ: the title must leave it there
        marked = {m.pid for m in procs.marked_processes(job_id)}
        assert shim.pid in marked
        assert repair._live_shims()[job_id].pid == shim.pid
    finally:
        go.write_text("")
        shim.wait(timeout=30)
    assert json.loads((job_dir / "exit.json").read_text())["returncode"] == 0


def test_trainer_rank_title(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    code = (
        "import sys\n"
        "from engine.trainer.main import Trainer, parse_args\n"
        "Trainer(parse_args(['--config', 'x.toml']))\n"
        "print(open('/proc/self/cmdline', 'rb').read().rstrip(b'\\0').decode())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "DPDECK_JOB": "12", "RANK": "1", "WORLD_SIZE": "2"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "dpdeck train job 12 rank 1"
