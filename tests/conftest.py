"""Every test gets its own DPDECK_HOME so tests (and the user's real state) never collide."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# The train extras (pyproject [project.optional-dependencies].train). Without them (the Python 3.10 CI lane:
# no torch wheel there) a test that imports one, at module level or inside the test, is skipped, not failed.
TRAIN_MODULES = frozenset({"torch", "diffusers", "deepspeed", "peft", "accelerate", "transformers", "safetensors"})


def _missing_train_module(exc: BaseException | None) -> str | None:
    """The absent train-extra package `exc` failed on, if that is why it was raised."""
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            top = exc.name.partition(".")[0]
            if top in TRAIN_MODULES and importlib.util.find_spec(top) is None:
                return top
        exc = exc.__cause__ or exc.__context__
    return None


class _TrainAwareModule(pytest.Module):
    def _getobj(self) -> object:
        try:
            return super()._getobj()
        except pytest.Collector.CollectError as exc:
            missing = _missing_train_module(exc.__cause__)
            if missing is None:
                raise
            raise pytest.skip.Exception(_needs(missing), allow_module_level=True) from None


def _needs(module: str) -> str:
    return f"needs {module}, a train extra (pip install -e '.[train]')"


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Module:
    return _TrainAwareModule.from_parent(parent, path=module_path)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    return (yield from _skip_if_train_missing())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    return (yield from _skip_if_train_missing())


def _skip_if_train_missing() -> Generator[None, None, None]:
    try:
        return (yield)
    except ImportError as exc:  # a lazy import inside a test or fixture
        missing = _missing_train_module(exc)
        if missing is None:
            raise
        pytest.skip(_needs(missing))


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
