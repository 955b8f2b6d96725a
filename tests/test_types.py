"""mypy (strict, pyproject's [tool.mypy]) holds on the typed parts of the tree; more paths join as they get clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("mypy") is None, reason="mypy not installed (test extras)")


def mypy(*paths: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"), *paths]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("paths", [("statefiles", "profiles"), ("engine/jobs",)], ids=["bottom", "engine-jobs"])
def test_typed_paths_are_clean(paths: tuple[str, ...]) -> None:
    result = mypy(*paths)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_mypy_reports_a_type_error(tmp_path: Path) -> None:
    """The check above can fail, under the same config (strict: an untyped def is an error too)."""
    (tmp_path / "wrong.py").write_text("def half(n: int) -> int:\n    return n / 2\n\n\ndef untyped(x):\n    return x\n")
    result = mypy("wrong.py", cwd=tmp_path)
    assert result.returncode == 1
    assert "wrong.py:2: error" in result.stdout and "wrong.py:5: error" in result.stdout
