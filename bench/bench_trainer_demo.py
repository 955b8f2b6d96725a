"""Wall time of `dpdeck demo` on this machine, from a fresh state dir (model build + launcher + training).

    python bench/bench_trainer_demo.py [--runs N] [--direct]

Target: under 90 s including the deepspeed launcher start (issue 4).
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


def run_once(direct: bool) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory(prefix="dpdeck-demo-bench-") as home:
        env = dict(os.environ, DPDECK_HOME=home)
        cmd = [sys.executable, "-m", "tui.cli", "demo", "--json"] + (["--direct"] if direct else [])
        t0 = time.perf_counter()
        res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            raise SystemExit(
                f"dpdeck demo failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
            )
        return wall, json.loads(res.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--direct", action="store_true", help="launch directly instead of through the queue")
    args = ap.parse_args()
    walls = []
    for i in range(args.runs):
        wall, result = run_once(args.direct)
        walls.append(wall)
        print(
            f"run {i + 1}: {wall:.1f} s wall (via {result['via']}, {result['steps']} steps, "
            f"loss {result['first_loss']:.4f} -> {result['last_loss']:.4f})"
        )
    print(
        f"dpdeck demo wall time: best {min(walls):.1f} s, mean {sum(walls) / len(walls):.1f} s "
        f"(target < 90 s) on {os.cpu_count()} CPU(s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
