"""Downloads owned by the daemon: a real daemon, real worker processes, real signals, against tests/hub_server.py.

Each test kills something the way the world does (SIGKILL = the OOM killer, SIGTERM to the daemon = a restart)
and checks the file still ends up complete and verified, with no duplicate worker."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from engine.jobs import client
from engine.models import downloads

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubServer, stop_downloads  # noqa: E402

WAIT = 60.0


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    monkeypatch.setenv("DPDECK_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("DPDECK_MIN_FREE_BYTES", "0")
    monkeypatch.setenv("DPDECK_HUB_READ_TIMEOUT", "20")
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server
        stop_downloads()


def wait_for(pred, timeout: float = WAIT, what: str = "condition"):  # noqa: ANN001, ANN201
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def running_pid(dl_id: str, not_pid: int | None = None) -> int:
    def look() -> int | None:
        dl = downloads.get(dl_id)
        return dl.pid if dl.state == "running" and dl.pid and dl.pid != not_pid and dl.bytes_done > 0 else None

    return wait_for(look, what=f"a running worker for {dl_id} other than {not_pid}")


def gets(hub: HubServer, name: str) -> list[str | None]:
    """The Range of every GET of the file's bytes (from the CDN, where the Hub's 302 sends them)."""
    return [r["range"] for r in hub.requests if r["method"] == "GET" and (r["file"] or "").endswith(name)]


def test_daemon_resumes_a_killed_worker_to_a_verified_file(hub: HubServer) -> None:
    data = os.urandom(1_500_000)
    hub.add("acme/slow", {"s.safetensors": data})
    hub.throttle = 300_000.0
    dl = downloads.pull_file("acme/slow", "s.safetensors")
    assert dl.state == "queued" and client.daemon_pid() is not None  # pull queued it and started the daemon
    pid = running_pid(dl.id)
    wait_for(lambda: downloads.get(dl.id).bytes_done > 200_000, what="partial bytes")
    os.kill(pid, signal.SIGKILL)  # what the OOM killer does
    hub.throttle = None
    final = downloads.wait(dl.id, WAIT)
    assert final.state == "completed", final.error
    assert Path(final.dest).read_bytes() == data
    assert final.retries == 1 and final.pid != pid
    assert "SIGKILL" in (final.last_death or ""), final.last_death
    ranges = gets(hub, "s.safetensors")
    assert ranges[0] is None and ranges[-1] is not None  # continued from the partial file, not restarted
    assert {r["host"] for r in hub.requests if r["method"] == "GET" and r["file"]} == {"cdn"}  # via the 302
    assert int(ranges[-1].split("=")[1].rstrip("-")) >= 200_000
    events = [m for _t, k, m in client._db().execute("SELECT t, kind, message FROM events") if k == "download"]
    assert any("killed by SIGKILL" in m and "retry 1 of 3" in m for m in events), events


def test_worker_that_keeps_dying_fails_with_the_reason_then_resumes(hub: HubServer,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPDECK_DOWNLOAD_RETRIES", "1")  # read by the daemon, which this test starts
    data = os.urandom(1_200_000)
    hub.add("acme/flaky", {"f.safetensors": data})
    hub.throttle = 200_000.0
    dl = downloads.pull_file("acme/flaky", "f.safetensors")
    first = running_pid(dl.id)
    os.kill(first, signal.SIGKILL)
    second = running_pid(dl.id, not_pid=first)
    os.kill(second, signal.SIGKILL)
    failed = wait_for(lambda: (d := downloads.get(dl.id)).state == "failed" and d, what="failed state")
    assert failed.code == "worker_died"
    assert "died 2 times" in (failed.error or "") and "SIGKILL" in (failed.error or "")
    assert f"dpdeck models resume {dl.id}" in (failed.error or "")
    part = Path(failed.dest).parent / f".{Path(failed.dest).name}.dpdeck-part"
    assert part.is_file() and part.stat().st_size > 0  # kept for the resume
    hub.throttle = None
    resumed = downloads.resume(dl.id)
    assert resumed.state in ("queued", "running", "completed")
    final = downloads.wait(dl.id, WAIT)
    assert final.state == "completed", final.error
    assert Path(final.dest).read_bytes() == data and final.retries == 0


def test_daemon_restart_adopts_the_running_worker(hub: HubServer) -> None:
    data = os.urandom(1_500_000)
    hub.add("acme/long", {"l.safetensors": data})
    hub.throttle = 300_000.0
    dl = downloads.pull_file("acme/long", "l.safetensors")
    pid = running_pid(dl.id)
    old_daemon = client.daemon_pid()
    assert client.stop_daemon()
    assert client.daemon_pid() is None
    assert psutil.pid_exists(pid)  # the worker does not depend on the daemon
    before = downloads.get(dl.id).bytes_done
    wait_for(lambda: downloads.get(dl.id).bytes_done > before, what="progress with no daemon")
    new_daemon = client.ensure_daemon()
    assert new_daemon != old_daemon

    def adopted() -> bool:
        rows = client._db().execute("SELECT message FROM events WHERE kind='download'").fetchall()
        return any(f"download {dl.id}: adopted its running worker (pid {pid})" in r[0] for r in rows)

    wait_for(adopted, what="the new daemon to adopt the worker")
    assert downloads.get(dl.id).state == "running"
    hub.throttle = None
    final = downloads.wait(dl.id, WAIT)
    assert final.state == "completed", final.error
    assert Path(final.dest).read_bytes() == data
    assert final.pid == pid and final.retries == 0
    assert gets(hub, "l.safetensors") == [None]  # one GET: adopted, never a second worker


def test_concurrency_limit_queues_the_rest(hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPDECK_MAX_DOWNLOADS", "2")
    blobs = {f"m{i}.safetensors": os.urandom(300_000) for i in range(3)}
    hub.add("acme/three", blobs)
    hub.throttle = 300_000.0
    ids = [downloads.pull_file("acme/three", name).id for name in blobs]
    most = 0
    waited = ""
    end = time.monotonic() + WAIT
    while time.monotonic() < end:
        states = [downloads.get(i) for i in ids]
        most = max(most, sum(1 for d in states if d.state == "running"))
        waited = waited or next((d.wait_reason for d in states if d.state == "queued" and d.wait_reason), "")
        if all(d.state not in downloads.LIVE for d in states):
            break
        time.sleep(0.03)
    finals = [downloads.get(i) for i in ids]
    assert [d.state for d in finals] == ["completed"] * 3, [d.error for d in finals]
    assert most == 2
    assert "waiting for a download slot (2 of 2 running" in waited


def test_cancel_a_queued_download_and_a_running_one(hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPDECK_MAX_DOWNLOADS", "1")
    hub.add("acme/two", {"a.safetensors": os.urandom(800_000), "b.safetensors": os.urandom(800_000)})
    hub.throttle = 100_000.0
    a = downloads.pull_file("acme/two", "a.safetensors")
    b = downloads.pull_file("acme/two", "b.safetensors")
    running_pid(a.id)
    assert downloads.get(b.id).state == "queued"
    downloads.cancel(b.id)
    assert downloads.wait(b.id, 10).state == "cancelled"
    downloads.cancel(a.id)
    final = downloads.wait(a.id, 15)
    assert final.state == "cancelled"
    assert not list(Path(final.dest).parent.glob(".*dpdeck-part"))
    assert not Path(final.dest).exists()
