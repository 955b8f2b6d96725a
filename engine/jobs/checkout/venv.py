"""A venv for diffusion-pipe that sees the system's torch (`--system-site-packages`), never a new one.

A rented GPU box ships a CUDA torch matched to its driver; pip replacing it with a wheel from PyPI is the
classic way to lose the GPU. So the venv inherits the base interpreter's packages, and `torch_identity`
lets step 4 check afterwards that the torch the venv imports is still that one (same version, same file).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from engine.jobs.checkout.steps import StepError, run

# Read without importing torch (an import takes seconds and, on some boxes, initialises CUDA).
_TORCH_PROBE = (
    "import importlib.util, importlib.metadata, json\n"
    "spec = importlib.util.find_spec('torch')\n"
    "version = None\n"
    "if spec is not None:\n"
    "    try: version = importlib.metadata.version('torch')\n"
    "    except importlib.metadata.PackageNotFoundError: pass\n"
    "print(json.dumps({'version': version, 'origin': spec.origin if spec else None}))\n"
)


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def torch_identity(python: str | Path) -> dict[str, str | None]:
    """{'version', 'origin'} of the torch `python` would import; both None when it has none."""
    try:
        done = subprocess.run(
            [str(python), "-c", _TORCH_PROBE], capture_output=True, text=True, timeout=120,
            stdin=subprocess.DEVNULL,
        )
        data = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return {"version": None, "origin": None}
    return {"version": data.get("version"), "origin": data.get("origin")}


def works(python: Path) -> bool:
    try:
        return subprocess.run(
            [str(python), "-c", "import sys"], capture_output=True, timeout=60, stdin=subprocess.DEVNULL
        ).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure(venv: Path, base_python: str) -> str:
    """Create the venv (or keep a working one); a half-made one from a killed run is made again."""
    python = python_of(venv)
    if works(python):
        return "exists"
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    # Without its own pip: the system pip is visible through the system site-packages, and skipping
    # ensurepip saves most of the venv's creation time. ensurepip runs only where the system has no pip.
    run(3, [base_python, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        what="create the venv", fix=f"check that {base_python} has the venv module (Debian/Ubuntu: "
        "apt install python3-venv) and that the disk has room")
    inherited = _link_base_venv(base_python, python)
    if not has_pip(python):
        run(3, [str(python), "-m", "ensurepip", "--default-pip"], what="bootstrap pip in the venv",
            fix="install pip for the system python (apt install python3-pip) and run again")
    return "created" + (f", seeing {base_python}'s venv packages too" if inherited else "")


_SITE = "import json, site, sys; print(json.dumps([sys.prefix != sys.base_prefix, site.getsitepackages()]))"
_PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
BASE_PTH = "dpdeck-base-venv.pth"


def _link_base_venv(base_python: str, python: Path) -> bool:
    """When the base python is itself a venv's (images ship torch in /opt/.../.venv), make its packages
    visible too: `--system-site-packages` reaches only the interpreter under that venv, without its torch.
    A .pth line per site dir appends them after the new venv's own, so requirements still win; addsitedir,
    not a bare path, so that venv's own .pth files (editable installs, namespace packages) count too."""
    base = run(3, [base_python, "-c", _SITE], what="read the base python's site dirs",
               fix=f"check that {base_python} runs")
    in_venv, dirs = json.loads(base.strip().splitlines()[-1])
    if not in_venv:
        return False
    purelib = run(3, [str(python), "-c", _PURELIB], what="read the venv's site dir", fix="remove the venv and run again")
    lines = "".join(f"import site; site.addsitedir({d!r})\n" for d in dirs)
    (Path(purelib.strip()) / BASE_PTH).write_text(lines, encoding="utf-8")
    return True


def has_pip(python: Path) -> bool:
    try:
        return subprocess.run(
            [str(python), "-m", "pip", "--version"], capture_output=True, timeout=120, stdin=subprocess.DEVNULL
        ).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def check_torch_kept(python: Path, system: dict[str, str | None], command: str) -> None:
    """Step 4's guard: the venv's torch must be the system's, byte for byte the same install."""
    now = torch_identity(python)
    if now == system:
        return
    raise StepError(
        4, f"the venv's torch changed: system {system['version']} at {system['origin']}, "
        f"venv now {now['version']} at {now['origin']}",
        "a requirement pulled in another torch: remove the venv, pin that requirement to a version that "
        "accepts the system torch, and run again", command,
    )
