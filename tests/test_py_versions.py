"""The tree runs on the oldest Python pyproject promises: vermin finds no newer stdlib or syntax in it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from statefiles import toml

REPO = Path(__file__).resolve().parent.parent
# every folder whose code runs on the user's Python (tests too: the 3.10 CI lane runs them)
SCANNED = ("statefiles", "profiles", "engine", "tui", "bench", "tests")

pytestmark = pytest.mark.skipif(shutil.which("vermin") is None, reason="vermin not installed (test extras)")


def minimum_python() -> str:
    """The lower bound of requires-python (">=3.10" -> "3.10"), so raising it in pyproject raises the check."""
    spec = toml.load_file(REPO / "pyproject.toml")["project"]["requires-python"]
    match = re.search(r">=\s*(\d+\.\d+)", spec)
    assert match, f"requires-python {spec!r} has no >= bound"
    return match.group(1)


def vermin(*paths: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    vermin_exe = shutil.which("vermin")
    assert vermin_exe is not None
    cmd = [vermin_exe, "--no-config-file", "-q", "--no-tips", "--violations", "--no-make-paths-absolute"]
    cmd += [f"--target={minimum_python()}-", *map(str, paths)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_minimum_python_is_read_from_pyproject() -> None:
    assert re.fullmatch(r"3\.\d+", minimum_python())


def test_tools_target_the_same_floor() -> None:
    """ruff and mypy name the floor in their own syntax; raising requires-python must raise them too."""
    tool = toml.load_file(REPO / "pyproject.toml")["tool"]
    floor = minimum_python()
    assert tool["mypy"]["python_version"] == floor
    assert tool["ruff"]["target-version"] == "py" + floor.replace(".", "")


def test_tree_has_no_newer_python_than_declared() -> None:
    folders = [name for name in SCANNED if (REPO / name).is_dir()]
    result = vermin(*folders)
    assert result.returncode == 0, f"vermin found code newer than Python {minimum_python()}:\n{result.stdout}"


@pytest.mark.parametrize(
    ("source", "feature"),
    [
        ("import tomllib\n", "tomllib"),
        ("import hashlib\nhashlib.file_digest\n", "file_digest"),
        ("from enum import StrEnum\n", "StrEnum"),
        ("from typing import Self\n", "Self"),
    ],
)
def test_vermin_reports_newer_stdlib(tmp_path: Path, source: str, feature: str) -> None:
    """The check above can fail: the very 3.11-only names dpdeck once used unguarded are reported."""
    (tmp_path / "newer.py").write_text(source)
    result = vermin("newer.py", cwd=tmp_path)
    assert result.returncode == 1
    assert feature in result.stdout


@pytest.mark.skipif(sys.version_info < (3, 11), reason="parsing except* needs a 3.11+ interpreter")
def test_vermin_reports_newer_syntax(tmp_path: Path) -> None:
    (tmp_path / "groups.py").write_text("try:\n    pass\nexcept* ValueError:\n    pass\n")
    result = vermin("groups.py", cwd=tmp_path)
    assert result.returncode == 1
    assert "except*" in result.stdout or "exception group" in result.stdout.lower()
