"""Startup cost of the CLI as whole processes: `dpdeck --version` and `dpdeck profile validate <template>`.

Usage: python bench/bench_startup.py [-n 20] [--importtime]
Runs in a throwaway DPDECK_HOME. Target: median under 250 ms for each command. With --importtime it also
prints the slowest imports (python -X importtime) of the validate command, to see what to make lazy.

Bytecode: a user's install caches compiled modules (.pyc), so by default the runs get a private
PYTHONPYCACHEPREFIX (filled by the warm-up run) even where PYTHONDONTWRITEBYTECODE=1 is set. Pass
--no-bytecode-cache to measure with every module recompiled on every run, as such an environment does.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_MS = 250.0


def dpdeck_command() -> list[str]:
    exe = shutil.which("dpdeck")
    return [exe] if exe else [sys.executable, "-m", "tui.cli"]


def default_template(env: dict[str, str]) -> str:
    import json

    out = subprocess.run(
        [*dpdeck_command(), "profile", "templates", "--json"], env=env, capture_output=True, text=True
    )
    templates = json.loads(out.stdout)
    return next((t["name"] for t in templates if t.get("default")), templates[0]["name"])


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_runs(cmd: list[str], env: dict[str, str], runs: int) -> tuple[list[float], list[float]]:
    """Wall ms and CPU ms (user + sys) per run. CPU time is the steadier figure on a shared, busy box."""
    subprocess.run(cmd, env=env, capture_output=True)  # warm the page cache and .pyc files
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(runs):
        cpu_start = _children_cpu_s()
        start = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True)
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((_children_cpu_s() - cpu_start) * 1000)
    return wall, cpu


def p90(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


def slowest_imports(args: list[str], env: dict[str, str], top: int = 15) -> list[tuple[int, str]]:
    """(cumulative microseconds, module) of the slowest top-level imports of one run."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tui.cli", *args], env=env, capture_output=True, text=True
    )
    rows: list[tuple[int, str]] = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|", 2))
        if cumulative.isdigit() and not name.startswith(" "):
            rows.append((int(cumulative), name.strip()))
    return sorted(rows, reverse=True)[:top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=20)
    parser.add_argument("--importtime", action="store_true", help="also show the slowest imports of validate")
    parser.add_argument(
        "--no-bytecode-cache", action="store_true", help="recompile every module on every run"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dpdeck-bench-") as home:
        env = {**os.environ, "DPDECK_HOME": home}
        if args.no_bytecode_cache:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
            env.pop("PYTHONPYCACHEPREFIX", None)
        else:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(Path(home) / "pycache")
        print(f"bytecode cache: {'off' if args.no_bytecode_cache else 'on (private PYTHONPYCACHEPREFIX)'}")
        template = default_template(env)
        cases = {
            "dpdeck --version": ["--version"],
            f"dpdeck profile validate {template}": ["profile", "validate", template],
        }
        print(
            f"{'command':45} {'median ms':>10} {'p90 ms':>10} {'min ms':>8} {'cpu ms':>8} {'runs':>5}  "
            f"target: median wall < {TARGET_MS:.0f} ms"
        )
        over = False
        for label, cmd_args in cases.items():
            samples, cpu = time_runs([*dpdeck_command(), *cmd_args], env, args.runs)
            median = statistics.median(samples)
            over |= median >= TARGET_MS
            flag = "ok" if median < TARGET_MS else "OVER"
            print(
                f"{label:45} {median:10.1f} {p90(samples):10.1f} {min(samples):8.1f} {statistics.median(cpu):8.1f} "
                f"{len(samples):5d}  {flag}"
            )
        if args.importtime:
            print(f"\nslowest imports of `profile validate {template}` (cumulative ms):")
            for micros, name in slowest_imports(["profile", "validate", template], env):
                print(f"{micros / 1000:8.1f}  {name}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
