"""`dpdeck doctor`: what on this box would stop or slow a training run, and what to do about it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from engine.jobs import gpus
from profiles.model_types import BUILTIN_TYPES
from statefiles import paths, settings


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail | info
    detail: str
    fix: str = ""


def _module_version(name: str) -> str | None:
    if importlib.util.find_spec(name) is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "installed"


def run_checks() -> list[Check]:
    checks: list[Check] = [Check("python", "ok", f"{sys.version.split()[0]} at {sys.executable}")]
    for mod, extra in (("torch", "train"), ("diffusers", "train"), ("peft", "train"), ("deepspeed", "train")):
        ver = _module_version(mod)
        checks.append(
            Check(mod, "ok", ver)
            if ver
            else Check(mod, "warn", "not installed: the built-in trainer cannot run",
                       f"pip install -e '.[{extra}]' (install your CUDA torch first)")
        )
    report = gpus.gpu_report()
    if report:
        names = ", ".join(f"{g['index']}: {g['name']}" for g in report)
        checks.append(Check("gpus", "ok", names))
        consumer = [g for g in report if any(k in str(g["name"]) for k in ("RTX", "GeForce", "TITAN"))]
        if consumer and len(report) > 1 and not os.environ.get("NCCL_P2P_DISABLE"):
            checks.append(Check("nccl", "warn", "consumer GPUs without NCCL_P2P_DISABLE",
                                "export NCCL_P2P_DISABLE=1 NCCL_IB_DISABLE=1 (multi-GPU hangs otherwise)"))
        foreign = [p for g in report for p in g["processes"] if not p["ours"]]
        if foreign:
            checks.append(Check("gpu processes", "warn", f"{len(foreign)} foreign compute process(es) on the GPUs",
                                "jobs wait for those GPUs; `dpdeck gpus` lists them"))
    else:
        checks.append(Check("gpus", "info", "no NVIDIA GPU visible (NVML): jobs run on the CPU with DS_ACCELERATOR=cpu"))
    if _module_version("torch"):
        probe = subprocess.run(
            [sys.executable, "-c", _TORCH_PROBE],
            capture_output=True, text=True, timeout=120,
        )
        checks.append(Check("torch runtime", "ok" if probe.returncode == 0 else "fail", torch_runtime_text(probe)))
    ds = shutil.which("deepspeed") or (Path(sys.executable).parent / "deepspeed").exists()
    checks.append(Check("deepspeed launcher", "ok" if ds else "warn", "found" if ds else "`deepspeed` not on PATH",
                        "" if ds else "pip install deepspeed"))
    checks += tracking_checks()
    report = settings.load_report()
    for problem in report.problems:
        known = problem.key in settings.KEYS
        fix = f"dpdeck config set {problem.key} VALUE (or unset it)" if known else f"edit {problem.source}"
        checks.append(Check("settings", "warn", str(problem), fix))
    dp = report.settings.diffusion_pipe.path
    if dp:
        checks += diffusion_pipe_checks(dp)
    else:
        checks.append(Check("diffusion-pipe", "info", "not configured: the built-in trainer trains "
                            f"{', '.join(sorted(BUILTIN_TYPES))}; other model types need a checkout",
                            "dpdeck backend install diffusion-pipe, or dpdeck config set diffusion_pipe.path DIR "
                            "for a checkout of your own"))
    usage = shutil.disk_usage(paths.state_dir())
    free_gb = usage.free / 2**30
    checks.append(Check("disk", "ok" if free_gb > 20 else "warn", f"{free_gb:.1f} GiB free at {paths.state_dir()}",
                        "" if free_gb > 20 else "checkpoints of large models need tens of GB"))
    linger = Path("/var/lib/systemd/linger") / os.environ.get("USER", "root")
    if Path("/var/lib/systemd/linger").exists():
        checks.append(Check("lingering", "ok" if linger.exists() else "warn",
                            "enabled" if linger.exists() else "disabled: logind may kill the daemon at logout",
                            "" if linger.exists() else "loginctl enable-linger $USER (see docs/daemon.md)"))
    return checks


def diffusion_pipe_checks(dp: str) -> list[Check]:
    """The configured checkout: is it one, at which commit, and which keys its code reads that dpdeck's
    built-in knowledge lacks (validation follows the checkout's own scan either way)."""
    from profiles import dp_keys, dp_scan

    root = Path(dp).expanduser()
    if not (root / "train.py").is_file():
        return [Check("diffusion-pipe", "fail", f"{dp}: no train.py there",
                      "dpdeck config set diffusion_pipe.path /path/to/diffusion-pipe (the folder with train.py)")]
    commit = dp_scan.git_commit(root)
    if commit is None:
        state = "not a git checkout (commit unknown)"
    else:
        state = f"commit {commit[:12]}"
        dirty = _git_dirty(root)
        if dirty is not None:
            state += ", local changes" if dirty else ", clean"
    checks = [Check("diffusion-pipe", "ok", f"{root} ({state})")]
    own = dp_keys.scan_checkout(root)
    base = dp_keys.builtin()
    new = dp_keys.lacking(own, base)
    pin = base.commit or dp_keys.BUILTIN_COMMIT
    if new:
        listed = ", ".join(f"{name} ({where})" for name, where in new)
        checks.append(Check("diffusion-pipe keys", "info",
                            f"keys this checkout reads that dpdeck's built-in knowledge ({pin}) lacks: {listed} "
                            "(validation follows this checkout, so they are known)"))
    else:
        checks.append(Check("diffusion-pipe keys", "ok",
                            f"none: dpdeck's built-in knowledge ({pin}) knows every key this checkout reads"))
    if own.problem:
        checks.append(Check("diffusion-pipe scan", "warn", own.problem, "check those files of the checkout"))
    return checks


def _git_dirty(root: Path) -> bool | None:
    """Tracked files changed (cheap: no untracked walk); None when git cannot tell."""
    try:
        proc = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(proc.stdout.strip()) if proc.returncode == 0 else None


def tracking_checks() -> list[Check]:
    """How job processes are tracked, the private runtime dir, and the state of deepspeed's op build cache."""
    from engine.jobs import cgroup, ports

    base, why = cgroup.status()
    checks = [
        Check("process tracking", "ok", f"cgroup at {base} (one per job: no descendant escapes)")
        if base is not None
        else Check("process tracking", "info", f"env markers only: {why}",
                   "" if cgroup.ENV in os.environ else "a process that clears its environment and setsid()s can "
                   "escape the sweep; cgroup v2 with a writable subtree (e.g. systemd --user) closes that")
    ]
    runtime = ports.runtime_dir()
    problems = ports.runtime_problems()
    checks.append(Check("runtime dir", "warn" if problems else "ok",
                        f"{runtime} (port reservations, build lock)" + (f"; {'; '.join(problems)}" if problems else ""),
                        "remove the refused folder(s) named above" if problems else ""))
    checks.append(_op_cache_check())
    return checks


def _op_cache_check() -> Check:
    from engine.jobs import oplock as ol

    state = ol.op_state()
    stale = ol.stale_locks()
    others = [p for p in ol.baton_locks() if p not in stale and str(p) != state["lock"]]
    detail = f"{ol.SHM_OP} {state['state']} in {state['dir']}"
    if stale:
        detail += "; stale lock(s), every job that builds the op would wait on them forever: " + \
            ", ".join(str(p) for p in stale)
    elif others:
        detail += f"; being built now: {', '.join(str(p) for p in others)}"
    if stale:
        return Check("deepspeed ops cache", "fail", detail, "dpdeck doctor --fix (clears them and builds the op once)")
    if state["state"] == "not built" and not gpus.gpu_report():
        return Check("deepspeed ops cache", "info", detail + ": the first launch compiles it (1-2 min)",
                     "dpdeck doctor --fix (builds it now)")
    return Check("deepspeed ops cache", "ok" if state["state"] == "built" else "info", detail)


# One line a person reads: the version and what it can run on (the bare `print(..., is_available())` showed
# "2.13.0+cpu False").
_TORCH_PROBE = (
    "import torch\n"
    "n = torch.cuda.device_count() if torch.cuda.is_available() else 0\n"
    "cuda = f'CUDA {torch.version.cuda}, {n} GPU(s) usable' if n else 'CUDA not available (CPU only)'\n"
    "print(f'{torch.__version__}, {cuda}')"
)


def torch_runtime_text(probe: subprocess.CompletedProcess[str]) -> str:
    """The probe's line, or the last line of its error (the exception, not the traceback's first frame)."""
    out = (probe.stdout if probe.returncode == 0 else probe.stderr or probe.stdout).strip()
    return out.splitlines()[-1] if out else f"the torch probe exited with status {probe.returncode} and said nothing"


def fix(build: bool = True) -> list[str]:
    """`dpdeck doctor --fix`: clear stale torch extension build locks, then build deepspeed's init-time op once
    (under dpdeck's own flock, in a child). Returns what was done, one line each."""
    from engine.jobs import oplock

    done = [f"cleared the stale torch extension build lock {p} (no process was building)"
            for p in oplock.clear_stale()]
    if build:
        ok, message = oplock.prebuild(has_nvidia=bool(gpus.gpu_report()))
        done.append(("built: " if ok else "op build FAILED: ") + message)
    return done
