"""Step 5: the venv's python can import everything train.py imports at its top.

train.py itself is never run (it calls torch.cuda.set_device on start). Its module-level imports are read
with ast and each is tried in a fresh interpreter inside the checkout (so `utils.*` and the submodules
resolve as they do for a real run); the missing ones are named. On a box with an NVIDIA GPU the venv's
torch must also see it.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path

from engine.jobs.checkout.steps import StepError, quote

# Tried one by one in the venv; prints {"module": "error"} for every import that fails.
_CHECK = r"""
import importlib, json, sys, traceback
sys.path.insert(0, '.')
failed = {}
for spec in json.loads(sys.argv[1]):
    module, names = spec[0], spec[1]
    try:
        mod = importlib.import_module(module)
        for name in names:
            if not hasattr(mod, name):
                importlib.import_module(module + '.' + name)
    except BaseException as exc:
        failed[module] = f"{type(exc).__name__}: {exc}"
print(json.dumps(failed))
"""

# Where the NVIDIA kernel driver shows itself: its presence means the venv's torch must see a GPU.
NVIDIA_DRIVER = Path("/proc/driver/nvidia")
_CUDA = "import torch, json; print(json.dumps([torch.__version__, torch.cuda.is_available(), torch.version.cuda]))"


def top_imports(train_py: Path) -> list[tuple[str, list[str]]]:
    """(module, names imported from it) for each module-level import of `train_py`, in file order."""
    tree = ast.parse(train_py.read_text(encoding="utf-8"), filename=str(train_py))
    out: list[tuple[str, list[str]]] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.module, [a.name for a in node.names if a.name != "*"]))
    return out


def imports(python: Path, checkout: Path) -> str:
    """A one-line summary, or StepError listing every module the venv cannot import."""
    train_py = checkout / "train.py"
    if not train_py.is_file():
        raise StepError(
            5, f"no train.py in {checkout}: this is not a diffusion-pipe checkout",
            "check --url (it must be a diffusion-pipe repository, e.g. https://github.com/tdrussell/diffusion-pipe)",
        )
    try:
        wanted = top_imports(train_py)
    except SyntaxError as exc:
        raise StepError(5, f"train.py does not parse with this python: {exc}",
                        "use a python that upstream supports (see its README) with --python") from None
    argv = [str(python), "-c", _CHECK, json.dumps(wanted)]
    shown = quote([str(python), "-c", "<import each of train.py's imports>"])
    # No __pycache__ left in the checkout: it would show as untracked files in `backend status`.
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        done = subprocess.run(argv, cwd=checkout, capture_output=True, text=True, timeout=900,
                              stdin=subprocess.DEVNULL, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StepError(5, "the import check did not finish", "run the command by hand to see why",
                        shown, str(exc)) from None
    try:
        failed: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise StepError(5, f"the import check crashed (exit {done.returncode})",
                        "run the command by hand to see why", shown, done.stdout + done.stderr) from None
    if failed:
        missing = "\n".join(f"{m}: {e}" for m, e in failed.items())
        raise StepError(
            5, f"{len(failed)} of train.py's {len(wanted)} imports fail in the venv: {', '.join(failed)}",
            "a missing submodule: `git submodule update --init --recursive` in the checkout; a missing "
            f"package: `{python} -m pip install NAME`; then run the command again",
            shown, missing,
        )
    return f"all {len(wanted)} top-level imports of train.py load"


def gpu(python: Path) -> str:
    """On a box with an NVIDIA driver the venv's torch must see a GPU; elsewhere there is nothing to check."""
    if not NVIDIA_DRIVER.exists():
        return "no NVIDIA driver on this machine: GPU check skipped"
    try:
        done = subprocess.run([str(python), "-c", _CUDA], capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
        version, available, cuda = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return "torch could not be imported for the GPU check"
    if not available:
        raise StepError(
            5, f"the venv's torch {version} (CUDA {cuda}) cannot see the GPU",
            "install a CUDA build of torch that matches the driver into the system python "
            "(https://pytorch.org/get-started/locally/), then run again",
            quote([str(python), "-c", _CUDA]), done.stdout + done.stderr,
        )
    return f"torch {version} sees the GPU (CUDA {cuda})"
