"""The client's store connection under threads: the TUI reads the store from several worker threads at once.

CI once died of SIGBUS here: two System-screen workers both saw the state dir change and closed the one shared
connection together while a third used it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HAMMER = textwrap.dedent(
    """
    import os, sys, threading, time
    from engine.jobs import client
    a, b = sys.argv[1], sys.argv[2]
    os.environ["DPDECK_HOME"] = a
    client._db()
    stop = time.monotonic() + 3.0
    errors = []

    def hammer():
        while time.monotonic() < stop:
            try:
                client._db().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
            except Exception as exc:
                errors.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for t in threads:
        t.start()
    while time.monotonic() < stop:  # a test switching DPDECK_HOME under a still-running worker
        os.environ["DPDECK_HOME"] = b if os.environ["DPDECK_HOME"] == a else a
        time.sleep(0.001)
    for t in threads:
        t.join()
    print("errors:", len(errors), sorted(set(errors))[:3])
    sys.exit(1 if errors else 0)
    """
)


def test_store_connection_survives_threads_and_state_dir_switches(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", HAMMER, str(a), str(b)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert "errors: 0" in proc.stdout


def test_each_thread_gets_its_own_connection(tmp_path: Path, monkeypatch) -> None:
    import threading

    from engine.jobs import client

    monkeypatch.setenv("DPDECK_HOME", str(tmp_path))
    here = client._db()
    assert client._db() is here  # cached within a thread
    seen: list[object] = []
    worker = threading.Thread(target=lambda: seen.append(client._db()))
    worker.start()
    worker.join()
    assert seen and seen[0] is not here
