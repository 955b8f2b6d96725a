"""Every test gets its own DPDECK_HOME so tests (and the user's real state) never collide."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def dpdeck_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("dpdeck_home")
    monkeypatch.setenv("DPDECK_HOME", str(home))
    # Subprocesses of tests must never read the developer's secrets or write W&B runs.
    for var in ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    yield home
    _stop_daemon_of(home)


def _stop_daemon_of(home: Path) -> None:
    """A test that started a daemon (directly or through the CLI) must not leave it running."""
    pid_file = home / "daemon.pid"
    if not pid_file.exists():
        return
    import signal

    import psutil

    try:
        pid = int(pid_file.read_text().strip())
        proc = psutil.Process(pid)
        if proc.environ().get("DPDECK_HOME") != str(home):
            return
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    except (ValueError, OSError, psutil.Error):
        return


@pytest.fixture
def repo_root() -> Path:
    return REPO


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a `dpdeck` subprocess: the current one (with the test's DPDECK_HOME) plus extras."""
    env = dict(os.environ)
    env.update(extra)
    return env


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The chaos matrix's phase x target table (tests/test_chaos_matrix.py), when any of its cells ran."""
    import sys

    matrix = sys.modules.get("test_chaos_matrix")
    lines = matrix.matrix_table() if matrix is not None and hasattr(matrix, "matrix_table") else []
    if lines:
        terminalreporter.section("chaos matrix (phase x SIGKILL target)")
        for line in lines:
            terminalreporter.write_line(line)
