"""Wall time of `dpdeck demo --family F` on this machine, from a fresh state dir (model build + launcher +
training), per family, and each family's ratio to the sd15 demo measured in the same run.

    python bench/bench_trainer_demo.py [--families sd15,chroma,flux] [--runs N] [--direct]

Targets: sd15 under 90 s including the deepspeed launcher start (issue 4); chroma under 120 s on a 2-core
machine (issue 15).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGETS_S: dict[str, float] = {"sd15": 90.0, "chroma": 120.0}
BASELINE = "sd15"


def run_once(family: str, direct: bool) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory(prefix="dpdeck-demo-bench-") as home:
        env = dict(os.environ, DPDECK_HOME=home)
        cmd = [sys.executable, "-m", "tui.cli", "demo", "--json", "--family", family]
        cmd += ["--direct"] if direct else []
        t0 = time.perf_counter()
        try:
            res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
            wall = time.perf_counter() - t0
        finally:
            if not direct:  # the demo started a daemon for this state dir; it must not outlive the bench
                subprocess.run(
                    [sys.executable, "-m", "tui.cli", "daemon", "stop"],
                    cwd=REPO,
                    env=env,
                    capture_output=True,
                    timeout=60,
                )
        if res.returncode != 0:
            raise SystemExit(
                f"dpdeck demo --family {family} failed ({res.returncode}):\n"
                f"{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
            )
        return wall, json.loads(res.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default="sd15,chroma", help="comma-separated (default sd15,chroma)")
    ap.add_argument("--runs", type=int, default=1, help="runs per family; the best counts")
    ap.add_argument("--direct", action="store_true", help="launch directly instead of through the queue")
    args = ap.parse_args()
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    if BASELINE not in families:
        families.insert(0, BASELINE)  # the ratio needs its baseline from this run, on this machine's load
    walls: dict[str, list[float]] = {family: [] for family in families}
    # Runs interleave the families, so that a machine whose load drifts skews every family alike.
    for i in range(args.runs):
        for family in families:
            wall, result = run_once(family, args.direct)
            walls[family].append(wall)
            print(
                f"{family} run {i + 1}: {wall:.1f} s wall (via {result['via']}, {result['steps']} steps, "
                f"loss {result['first_loss']:.4f} -> {result['last_loss']:.4f})",
                flush=True,
            )
    best = {family: min(w) for family, w in walls.items()}
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\ndpdeck demo wall time on {os.cpu_count()} CPU(s) (load average now {load}), best of {args.runs}:"
    )
    for family, wall in best.items():
        target = TARGETS_S.get(family)
        verdict = f", target < {target:.0f} s: {'met' if wall < target else 'MISSED'}" if target else ""
        print(f"  {family:7s} {wall:6.1f} s  ({wall / best[BASELINE]:.2f}x {BASELINE}){verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
