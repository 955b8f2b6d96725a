"""Turning a profile into a job: freeze its TOMLs into the job folder and build the launcher command."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from profiles.document import Profile, TomlFile
from statefiles import settings
from statefiles.atomic import atomic_write_text

BACKENDS = ("builtin", "diffusion-pipe")


class EnqueueError(Exception):
    """The job cannot be queued; the message says why (validation problems included)."""


def resolve_profile(name_or_path: str) -> Profile:
    from profiles import store

    return store.resolve(name_or_path)


def pick_backend(profile: Profile, requested: str) -> str:
    """The backend that runs this profile (profiles.backend_choice decides; it also tells validation)."""
    from profiles.backend_choice import choose_for_model

    try:
        chosen = choose_for_model(profile.main.data().get("model"), profile.model_type, requested)
    except ValueError as exc:
        raise EnqueueError(str(exc)) from None
    if chosen.backend is None:
        raise EnqueueError(chosen.reason)
    return chosen.backend


def validate_for_queue(profile: Profile, backend: str, num_gpus: int | None) -> list[str]:
    """Errors (as printable lines) that must stop the enqueue; warnings are returned prefixed 'warning:'."""
    from profiles.validate import validate_profile

    problems = validate_profile(profile, backend=backend, check_paths="error", num_gpus=num_gpus)
    return [("warning: " if p.severity == "warning" else "") + str(p) for p in problems]


def freeze(profile: Profile, job_dir: Path) -> Path:
    """Copy main + dataset (+ eval) TOMLs into the job folder, without their secrets.

    Only the frozen `dataset` / eval `config` keys are rewritten (to the frozen files), secret keys removed;
    the job gets the secrets it asks for in its environment at launch (see secrets_asked_by / record).
    """
    job_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    main = TomlFile.from_text(_stripped(profile.main.dumps(), "main.toml"), source=str(job_dir / "main.toml"))
    if profile.dataset is not None:
        frozen_ds = job_dir / "dataset.toml"
        atomic_write_text(frozen_ds, _stripped(profile.dataset.dumps(), "dataset.toml"))
        main.set("dataset", str(frozen_ds))
    evals = main.get("eval_datasets")
    if isinstance(evals, list):
        frozen = list(profile.eval_datasets.values())
        for i, entry in enumerate(evals):
            if i < len(frozen):
                target = job_dir / f"eval-{i}.toml"
                atomic_write_text(target, _stripped(frozen[i].dumps(), target.name))
                if isinstance(entry, dict):
                    main.set(f"eval_datasets[{i}].config", str(target))
    _blank_wandb_key(main)
    frozen_main = job_dir / "main.toml"
    atomic_write_text(frozen_main, main.dumps())
    return frozen_main


def _stripped(text: str, file: str) -> str:
    from profiles.secrets import strip_secrets

    return strip_secrets(text, file)[0]


def _blank_wandb_key(main: TomlFile) -> None:
    # diffusion-pipe reads config['monitoring']['wandb_api_key'] (a KeyError when absent) and passes it to
    # wandb.login, which falls back to WANDB_API_KEY (set at launch) for an empty key.
    if main.get("monitoring.enable_wandb") is True:
        main.set("monitoring.wandb_api_key", "")


def frozen_text(text: str, name: str) -> str:
    """A TOML's text as a job folder may hold it: secrets removed (and the W&B key blanked in main.toml)."""
    clean = _stripped(text, name)
    if name == "main.toml":
        doc = TomlFile.from_text(clean, source=name)
        if doc.get("monitoring.enable_wandb") is True and doc.get("monitoring.wandb_api_key") != "":
            _blank_wandb_key(doc)
            clean = doc.dumps()
    return clean


def secrets_asked_by(tomls: list[TomlFile | None]) -> dict[str, str | None]:
    """The secrets a profile (main TOML first) asks for, and the value it held; see profiles.secrets."""
    from profiles.secrets import secrets_asked

    return secrets_asked([t.data() for t in tomls if t is not None])


def profile_tomls(profile: Profile) -> list[TomlFile | None]:
    return [profile.main, profile.dataset, *profile.eval_datasets.values()]


def _deepspeed_exe(python: str, *, own_env: bool = False) -> list[str]:
    """The deepspeed runner that `python`'s environment would run: its bin folder's `deepspeed` script, else
    `python -m deepspeed.launcher.runner`. Only for dpdeck's own interpreter (`own_env` False) may a `deepspeed`
    found on PATH stand in: `diffusion_pipe.python` names the user's environment, and PATH's is another one."""
    candidate = Path(python).parent / "deepspeed"
    if candidate.exists():
        return [str(candidate)]
    found = None if own_env else shutil.which("deepspeed")
    if found:
        return [found]
    return [python, "-m", "deepspeed.launcher.runner"]


# Does the interpreter have deepspeed's runner? Found without importing deepspeed (seconds, a GPU probe).
_FIND_RUNNER = (
    "import importlib.util, pathlib, sys\n"
    "spec = importlib.util.find_spec('deepspeed')\n"
    "dirs = (spec.submodule_search_locations or []) if spec else []\n"
    "sys.exit(0 if any((pathlib.Path(d) / 'launcher' / 'runner.py').is_file() for d in dirs) else 3)\n"
)
_HAS_RUNNER: set[str] = set()  # interpreters that had it: an install stays; a missing one is asked again


def deepspeed_problem(python: str) -> str | None:
    """None when `python` can run `-m deepspeed.launcher.runner`; else what is wrong, and the fix."""
    if python in _HAS_RUNNER:
        return None
    if not Path(python).is_file() or not os.access(python, os.X_OK):
        return f"diffusion_pipe.python = {python}: not an executable file (dpdeck config set diffusion_pipe.python ...)"
    try:
        done = subprocess.run([python, "-c", _FIND_RUNNER], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"diffusion_pipe.python = {python}: cannot run it ({exc})"
    if done.returncode == 0:
        _HAS_RUNNER.add(python)
        return None
    if done.returncode == 3:
        return (f"diffusion_pipe.python = {python} has no deepspeed (deepspeed.launcher.runner): install it "
                f"there (`{python} -m pip install deepspeed`) or point diffusion_pipe.python at the environment "
                "that has diffusion-pipe's requirements")
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return f"diffusion_pipe.python = {python}: the deepspeed check failed (exit {done.returncode}): " + " / ".join(tail)


def dp_python() -> str | None:
    """`diffusion_pipe.python` as a path (a bare name is looked up on PATH), or None when not set."""
    python = settings.load().diffusion_pipe.python
    if not python:
        return None
    return python if os.sep in python else (shutil.which(python) or python)


def check_backend_python(backend: str) -> None:
    """Refuse a diffusion-pipe job whose configured interpreter cannot run deepspeed (enqueue and launch)."""
    if backend != "diffusion-pipe":
        return
    python = dp_python()
    problem = deepspeed_problem(python) if python else None
    if problem:
        raise EnqueueError(problem)


def gpu_args(gpus: list[int] | None, num_gpus: int | None, has_nvidia: bool) -> list[str]:
    # The runner rewrites CUDA_VISIBLE_DEVICES when --include/--num_gpus is given: pin with --include.
    if gpus:
        return ["--include", "localhost:" + ",".join(str(g) for g in gpus)]
    return ["--num_gpus", str(num_gpus or 1)]


def build_command(
    backend: str,
    frozen_main: Path,
    port: int,
    *,
    gpus: list[int] | None,
    num_gpus: int | None,
    has_nvidia: bool,
    rank_log_dir: Path,
    resume_from: str | None = None,
    extra_launcher_args: list[str] | None = None,
) -> tuple[list[str], str]:
    """(argv, cwd) for the job's launcher."""
    extra = list(extra_launcher_args or [])
    # A multi-node job names its hosts (hostfile / --include / --exclude): the GPU flags are the user's then.
    multi_node = any(a in extra for a in ("--hostfile", "-H", "--include", "-i", "--exclude", "-e"))
    launcher_common = [] if multi_node else gpu_args(gpus, num_gpus, has_nvidia)
    launcher_common += ["--master_port", str(port)]
    launcher_common += ["--enable_each_rank_log", str(rank_log_dir)]
    launcher_common += extra
    train_args = ["--deepspeed", "--config", str(frozen_main), "--master_port", str(port)]
    if resume_from is not None:
        train_args += ["--resume_from_checkpoint"] + ([resume_from] if resume_from else [])
    if backend == "builtin":
        argv = [*_deepspeed_exe(sys.executable), *launcher_common, "--module", "engine.trainer", *train_args]
        return argv, str(frozen_main.parent)
    dp = settings.load().diffusion_pipe
    checkout = dp.path
    if not checkout:
        raise EnqueueError("diffusion-pipe is not configured: dpdeck config set diffusion_pipe.path DIR")
    python = dp_python()
    check_backend_python(backend)
    train_py = Path(checkout) / "train.py"
    exe = _deepspeed_exe(python, own_env=True) if python else _deepspeed_exe(sys.executable)
    argv = [*exe, *launcher_common, str(train_py), *train_args]
    return argv, str(checkout)


def job_env(job_id: int, has_nvidia: bool, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """dpdeck's own variables for a job (its marker first); `base` is the job's captured environment."""
    from engine.jobs.procs import marker_env

    base = os.environ if base is None else base
    env = marker_env(job_id)
    env["PYTHONUNBUFFERED"] = "1"
    # The built-in trainer is imported by module name: make this checkout importable wherever it runs.
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, base.get("PYTHONPATH", "")) if p)
    if not has_nvidia:
        env["DS_ACCELERATOR"] = base.get("DS_ACCELERATOR", "cpu")
    return env


def capture_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What a job keeps of the enqueuing client's environment: everything but credentials and our markers."""
    from engine.jobs.procs import MARKER
    from profiles.secrets import scrub_env

    env = scrub_env(environ)
    env.pop(MARKER, None)  # a client running inside a job must not mark the new job as that one
    return env


def captured_env(job_dir: Path) -> dict[str, str]:
    """The job's base environment: the enqueuing client's (env.json), never the daemon's.

    A job queued before env.json existed falls back to the daemon's environment without its credentials.
    """
    from engine.jobs import record

    env = record.read_env(job_dir)
    return env if env is not None else capture_env(os.environ)


def shim_env(base: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """The shim's environment: the captured one plus dpdeck's variables (and a PATH to find the launcher)."""
    out = {**base, **env}
    out.setdefault("PATH", os.environ.get("PATH") or os.defpath)
    return out


def write_launch_spec(job_dir: Path, attempt_dir: Path, argv: list[str], cwd: str, env: dict[str, str],
                      log: Path) -> None:
    spec: dict[str, Any] = {
        "argv": argv,
        "cwd": cwd,
        "env": env,
        "log": str(log),
        "attempt_dir": str(attempt_dir),
        "command": shlex.join(argv),
    }
    atomic_write_text(job_dir / "launch.json", json.dumps(spec, indent=2))


def multi_node_args(hostfile: str | None, launcher: str | None, include: str | None, exclude: str | None,
                    num_nodes: int | None, master_addr: str | None) -> list[str]:
    """deepspeed runner flags for multi-node jobs, passed through unchanged (see docs/engine.md)."""
    args: list[str] = []
    if hostfile:
        args += ["--hostfile", hostfile]
    if launcher:
        if launcher not in ("pdsh", "slurm", "openmpi", "mpich", "impi", "mvapich"):
            raise EnqueueError(f"--launcher: expected pdsh, slurm or openmpi (or mpich/impi/mvapich), found {launcher!r}")
        args += ["--launcher", launcher]
    if include:
        args += ["--include", include]
    if exclude:
        args += ["--exclude", exclude]
    if num_nodes:
        args += ["--num_nodes", str(num_nodes)]
    if master_addr:
        args += ["--master_addr", master_addr]
    return args

