"""docs/dependencies.md stays true: every package pyproject.toml names is in its tables, and every third-party
module the code imports is named there (as `module`)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "dependencies.md"
OWN = {"statefiles", "profiles", "engine", "tui", "tests"}


def _doc_names() -> set[str]:
    """Every `name` in backticks inside a table row, normalised as pip does (case, - and _)."""
    names: set[str] = set()
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("|"):
            names.update(_norm(n) for n in re.findall(r"`([A-Za-z0-9_.\-]+)`", line))
    return names


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    match = re.match(r"[A-Za-z0-9_.\-]+", req.strip())
    assert match is not None, req
    return _norm(match[0])


def test_every_pyproject_package_is_in_the_table() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = {_requirement_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted.update(_requirement_name(r) for r in extra)
    missing = sorted(wanted - _doc_names())
    assert not missing, f"pyproject.toml packages missing from docs/dependencies.md: {missing}"


def _imported_modules() -> set[str]:
    found: set[str] = set()
    for package in ("statefiles", "profiles", "engine", "tui"):
        for path in (REPO / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in OWN and m != "__future__"}


def test_every_imported_third_party_module_is_named() -> None:
    modules = _imported_modules()
    assert {"textual", "PIL", "psutil"} <= modules  # the walk sees the code
    missing = sorted(m for m in modules if _norm(m) not in _doc_names())
    assert not missing, f"modules imported by dpdeck but not named in docs/dependencies.md: {missing}"


def test_the_check_can_fail(tmp_path: Path) -> None:
    assert _norm("Textual_Plotext") == _norm("textual-plotext")
    assert "no-such-package" not in _doc_names()
