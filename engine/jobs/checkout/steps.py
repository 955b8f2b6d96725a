"""The install steps, a failure that names one, and running one command of a step.

Every step prints one line and writes the progress file; a failure says which step, the command, the end
of its output and the fix, so a rented box's user can act on it without reading a traceback.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# (number, name, what it does): the order `dpdeck backend install` runs them in.
STEPS: tuple[tuple[int, str, str], ...] = (
    (1, "clone", "clone the repository (or fetch into a partial clone left by an interrupted run)"),
    (2, "checkout", "check out the ref, then its submodules (git submodule update --init --recursive)"),
    (3, "venv", "create a venv over the system torch (--system-site-packages)"),
    (4, "requirements", "install requirements.txt (torch, torchvision left to the system)"),
    (5, "verify", "import what train.py imports, in that venv"),
    (6, "configure", "point diffusion_pipe.path and diffusion_pipe.python at it"),
)
STEP_NAMES: dict[int, str] = {n: name for n, name, _ in STEPS}
TAIL_LINES = 20


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


@dataclass
class StepError(Exception):
    """A step that failed: which one, the command it ran, that command's output tail and what to do."""

    step: int
    message: str
    fix: str
    command: str = ""
    output: str = ""

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def name(self) -> str:
        return STEP_NAMES.get(self.step, "?")

    def __str__(self) -> str:
        lines = [f"step {self.step} ({self.name}) failed: {self.message}"]
        if self.command:
            lines.append(f"  command: {self.command}")
        if self.output.strip():
            lines.append("  output (last lines):")
            lines += [f"    {line}" for line in tail(self.output).splitlines()]
        lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)


def quote(argv: Sequence[str]) -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in argv)


def run(
    step: int,
    argv: Sequence[str],
    *,
    fix: str,
    what: str,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 3600.0,
) -> str:
    """Run one command of `step`; its combined output, or StepError naming the step, command and tail."""
    full_env = dict(os.environ if env is None else env)
    # git must never stop to ask for a password on a headless box: fail and say so instead.
    full_env.setdefault("GIT_TERMINAL_PROMPT", "0")
    try:
        done = subprocess.run(
            list(argv), cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", timeout=timeout, stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise StepError(step, f"{what}: {argv[0]} not found", fix, quote(argv), str(exc)) from None
    except subprocess.TimeoutExpired as exc:
        out = exc.output if isinstance(exc.output, str) else ""
        raise StepError(step, f"{what}: timed out after {timeout:.0f} s", fix, quote(argv), out) from None
    if done.returncode != 0:
        raise StepError(step, f"{what} (exit {done.returncode})", fix, quote(argv), done.stdout)
    return done.stdout
