"""Torch's C++ extension build batons: find the ones no process is building behind, and clear them.

DeepSpeed JIT-builds its ops through torch.utils.cpp_extension, which guards each build folder with a
FileBaton: `<root>/<name>/lock`, created O_EXCL and kept open by the builder until it removes it. A builder
killed mid-build (SIGTERM/SIGKILL skip the release) leaves the file, and every later build of that op waits in
FileBaton.wait() until it is gone: forever, at step 0. The root is $TORCH_EXTENSIONS_DIR, else
`<XDG_CACHE_HOME or ~/.cache>/torch_extensions/py<XY><abiflags>_<cpu|cuXYZ|rocmXYZ>` (torch's
_get_build_directory).

A lock is stale when no live process has it open (/proc/*/fd) and none works in its build folder (ninja and
the compilers run with that cwd), checked twice a moment apart so a builder between its close() and its
remove() is never raced.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import importlib.util
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

BATON = "lock"
SHM_OP = "deepspeed_shm_comm"  # what deepspeed.comm builds at init on the CPU accelerator
RECHECK_S = 0.2


def _default_root() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(os.path.realpath(os.path.join(cache, "torch_extensions")))


def _torch_versions() -> dict[str, str | None]:
    """torch.version's cuda/hip, read from its file: importing torch costs seconds and memory."""
    spec = importlib.util.find_spec("torch")
    found: dict[str, str | None] = {"cuda": None, "hip": None}
    if spec is None or not spec.submodule_search_locations:
        return found
    try:
        text = (Path(spec.submodule_search_locations[0]) / "version.py").read_text()
    except OSError:
        return found
    for key in found:
        match = re.search(rf"^{key}\s*(?::[^=\n]*)?=\s*(.+)$", text, re.MULTILINE)
        if match:
            with contextlib.suppress(ValueError, SyntaxError):
                value = ast.literal_eval(match.group(1).strip())
                found[key] = value if isinstance(value, str) else None
    return found


def tag() -> str:
    """The folder torch puts this interpreter's builds in under the default root, e.g. py311_cpu."""
    versions = _torch_versions()
    if versions["hip"]:
        accel = f"rocm{versions['hip'].replace('.', '')}"
    elif versions["cuda"]:
        accel = f"cu{versions['cuda'].replace('.', '')}"
    else:
        accel = "cpu"
    return f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}_{accel}"


def root() -> Path:
    """Where this interpreter's torch builds extensions now."""
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(env) if env else _default_root() / tag()


def build_dir(name: str) -> Path:
    return root() / name


def baton_locks() -> list[Path]:
    """Every baton lock file under the extension roots: $TORCH_EXTENSIONS_DIR, and every python/torch tag of
    the default root (another interpreter's jobs use another tag)."""
    found: set[Path] = set()
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    patterns = [(Path(env), f"*/{BATON}")] if env else []
    patterns.append((_default_root(), f"*/*/{BATON}"))
    for base, pattern in patterns:
        with contextlib.suppress(OSError):
            found.update(p for p in base.glob(pattern) if p.is_file() and not p.is_symlink())
    return sorted(found)


def _pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def builders(lock: Path, pids: list[int] | None = None) -> list[int]:
    """Live processes that hold the lock open or work inside its build folder."""
    target = os.path.realpath(lock)
    folder = os.path.realpath(lock.parent)
    found: list[int] = []
    for pid in _pids() if pids is None else pids:
        if _works_on(pid, target, folder):
            found.append(pid)
    return found


def _works_on(pid: int, target: str, folder: str) -> bool:
    with contextlib.suppress(OSError):
        if os.readlink(f"/proc/{pid}/cwd") == folder:
            return True
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False  # gone, or not ours to read: a lock of ours is only held by processes of ours
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
    return False


def _identity(lock: Path) -> tuple[int, int] | None:
    try:
        st = lock.lstat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        return None  # not a file, or someone else's: never ours to remove
    return st.st_dev, st.st_ino


def stale_locks(locks: list[Path] | None = None) -> list[Path]:
    """The locks (of ours) no live process is building behind, seen so twice RECHECK_S apart."""
    candidates = {p: ident for p in (baton_locks() if locks is None else locks) if (ident := _identity(p))}
    candidates = {p: i for p, i in candidates.items() if not builders(p)}
    if not candidates:
        return []
    time.sleep(RECHECK_S)
    return sorted(p for p, ident in candidates.items() if _identity(p) == ident and not builders(p))


def clear_stale(locks: list[Path] | None = None) -> list[Path]:
    """Remove the stale locks; returns the ones removed."""
    cleared: list[Path] = []
    for lock in stale_locks(locks):
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
            cleared.append(lock)
    return cleared


def locks_held_by(pids: set[int]) -> list[Path]:
    """The baton locks these processes hold or build behind (so whoever kills them can clear them after)."""
    locks = baton_locks()
    return [lock for lock in locks if builders(lock, sorted(pids))] if locks and pids else []


def op_state(name: str = SHM_OP) -> dict[str, object]:
    """{"state": built | not built | building | stale lock, "dir": build folder, "lock": path or None}."""
    folder = build_dir(name)
    lock = folder / BATON
    out: dict[str, object] = {"state": "not built", "dir": str(folder), "lock": None}
    if lock.is_file():
        out["lock"] = str(lock)
        out["state"] = "building" if builders(lock) else "stale lock"
    elif any(folder.glob(f"{name}*.so")):
        out["state"] = "built"
    return out


def build_lock_path() -> Path:
    """dpdeck's own flock, so two `dpdeck doctor --fix` never build at once."""
    from engine.jobs.ports import runtime_dir

    return runtime_dir() / "op-build.lock"


BUILD_SCRIPT = """
import deepspeed.ops
from deepspeed.accelerator import get_accelerator
from deepspeed.comm.torch import build_shm_op
builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
    print(f"nothing to prebuild: the {get_accelerator()._name} accelerator builds no op at init")
else:
    build_shm_op()
"""


def prebuild(has_nvidia: bool, timeout_s: float = 900.0) -> tuple[bool, str]:
    """Build what deepspeed.comm builds at init (the shm comm op on the CPU accelerator), once, in a child.

    Runs deepspeed's own init-time builder (deepspeed.comm.torch.build_shm_op), so it builds exactly what a
    job would. Under dpdeck's flock; a stale baton is cleared first so the build cannot wait on it forever.
    """
    env = dict(os.environ)
    if not has_nvidia:
        env.setdefault("DS_ACCELERATOR", "cpu")
    fd = os.open(build_lock_path(), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        clear_stale()
        try:
            done = subprocess.run([sys.executable, "-c", BUILD_SCRIPT], env=env, capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False, f"the op build did not finish in {timeout_s:.0f}s"
    finally:
        os.close(fd)
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if done.returncode != 0:
        return False, f"the op build failed (exit {done.returncode}): {last}"
    return True, next((ln for ln in reversed(lines) if "built successfully" in ln or "nothing to" in ln), last)
