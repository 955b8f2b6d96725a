"""The import contracts in pyproject's [tool.importlinter] hold, and each of them can fail.

The contracts: tui -> engine -> profiles -> statefiles; profiles imports neither engine nor tui; engine never
imports tui or textual; heavy ML libraries only in engine.trainer, which nothing else imports; no import
circles between the modules of any package. Lazy imports inside functions count.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from statefiles import toml

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("statefiles", "profiles", "engine", "tui")

pytestmark = pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter not installed")


def lint_imports(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports")
    assert exe is not None
    # The tree under cwd, not the editable install, is what gets analysed.
    env = dict(os.environ, PYTHONPATH=str(cwd))
    return subprocess.run([exe, "--no-cache", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def contract_ids() -> list[str]:
    config = toml.load_file(REPO / "pyproject.toml")["tool"]["importlinter"]
    return [contract["id"] for contract in config["contracts"]]


def test_import_contracts_hold() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_every_promised_contract_is_configured() -> None:
    assert set(contract_ids()) == {
        "layers",
        "profiles-alone",
        "engine-headless",
        "heavy-only-in-trainer",
        "trainer-apart",
        "acyclic",
    }


# contract id -> files that break it when added to a copy of the tree (path -> source)
VIOLATIONS: dict[str, dict[str, str]] = {
    "layers": {"statefiles/_breach.py": "import profiles\n"},
    "profiles-alone": {"profiles/_breach.py": "def late() -> None:\n    import tui.app\n"},
    "engine-headless": {"engine/_breach.py": "def late() -> None:\n    import textual\n"},
    "heavy-only-in-trainer": {"tui/_breach.py": "def late() -> None:\n    import torch\n"},
    "trainer-apart": {"engine/jobs/_breach.py": "from engine.trainer import config\n"},
    "acyclic": {
        "statefiles/_breach.py": "from statefiles import _breach_back\n",
        "statefiles/_breach_back.py": "def late() -> None:\n    from statefiles import _breach\n",
    },
}


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for name in PACKAGES:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


@pytest.mark.parametrize("contract", sorted(VIOLATIONS))
def test_each_contract_can_fail(tree_copy: Path, contract: str) -> None:
    added = [tree_copy / rel for rel in VIOLATIONS[contract]]
    try:
        for rel, source in VIOLATIONS[contract].items():
            (tree_copy / rel).write_text(source)
        result = lint_imports(tree_copy, "--contract", contract)
    finally:
        for path in added:
            path.unlink(missing_ok=True)
    assert result.returncode == 1, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" in result.stdout
    assert "_breach" in result.stdout, "the copy, not the installed tree, must be what was analysed"
