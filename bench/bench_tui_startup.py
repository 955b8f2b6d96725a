"""Deck startup, memory and idle CPU, measured on the real `dpdeck` in a pseudo-terminal at 80x24.

Usage: python bench/bench_tui_startup.py [-n 10] [--idle 10] [--job]
- cold start: spawn -> the Profiles screen's title painted (first paint), and -> template list painted.
  Target: median first paint <= 500 ms.
- RSS of the deck after it settled (target < 200 MB).
- idle CPU over --idle seconds on the Profiles screen and on the Queue screen (which polls every second).
  Target < 3% of one core. With --job, also while the Run screen follows a live demo job (the real engine,
  daemon and trainer on CPU), over a window in which the job emits steps (it is cancelled afterwards).
Runs in a throwaway DPDECK_HOME; bytecode cached by a warm-up run, as an installed copy would be.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tui_pty import PtyProcess  # noqa: E402


def deck_argv() -> list[str]:
    exe = shutil.which("dpdeck")
    return [exe] if exe else [sys.executable, "-m", "tui.cli"]


def tree_cpu(proc: psutil.Process) -> float:
    """CPU seconds of the deck process itself (all its threads), not of the daemon it may have started."""
    t = proc.cpu_times()
    return t.user + t.system


def run_view_cpu(env: dict[str, str], home: Path, seconds: float) -> tuple[float, float, str, int, int]:
    """CPU and RSS of the deck showing a demo job in the Run screen while it trains (log, curve, stats live).

    The window starts once the job reports steps, and the demo runs enough epochs (not its usual 16) to
    keep emitting steps through the whole window: the figure is the deck following a job at work.
    """
    os.environ["DPDECK_HOME"] = str(home)
    from engine.demo import prepare
    from engine.jobs import client
    from engine.jobs.protocol import Action, Request
    from profiles.document import TomlFile

    main_toml = prepare(home / "demo")
    doc = TomlFile.load(main_toml)
    doc.set("epochs", 400)
    doc.set("save_every_n_epochs", 400)
    main_toml.write_text(doc.dumps())
    client.ensure_daemon()
    job_id = client.enqueue(str(main_toml), name="bench-demo")
    deck = PtyProcess(deck_argv(), env)
    try:
        deck.wait_for("Templates")
        deck.send(b"2")
        deadline = time.monotonic() + 180
        while client.get_job(job_id).state != "running" and time.monotonic() < deadline:
            deck.drain(0.5)
        deck.wait_for("running", timeout=60)  # the row is in the deck's table
        deck.send(b"\r")
        deck.wait_for(f"job {job_id}")
        deadline = time.monotonic() + 180
        while not client.get_job(job_id).step and time.monotonic() < deadline:
            deck.drain(0.5)  # model load and DeepSpeed start: no steps yet
        deck.drain(2.0)
        proc = psutil.Process(deck.proc.pid)
        step0 = client.get_job(job_id).step or 0
        c0 = tree_cpu(proc)
        deck.drain(seconds)
        cpu = 100 * (tree_cpu(proc) - c0) / seconds
        job = client.get_job(job_id)
        rss = proc.memory_info().rss / 2**20
    finally:
        deck.close()
        client.send(Request(Action.CANCEL, job_id))  # refused when it already ended: fine
        client.wait(job_id, timeout=300)
        client.stop_daemon()
    return cpu, rss, str(job.state), step0, int(job.step or 0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument(
        "--job", action="store_true", help="also measure the Run screen following a live demo job"
    )
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="dpdeck-bench-"))
    env = {**os.environ, "DPDECK_HOME": str(home), "TERM": "xterm-256color", "COLORTERM": "truecolor"}
    env.pop("TEXTUAL", None)
    first, loaded = [], []
    try:
        for i in range(args.n + 1):
            deck = PtyProcess(deck_argv(), env)
            try:
                t_first = deck.wait_for("dpdeck · Profiles")
                t_loaded = deck.wait_for("Templates")
            finally:
                if i < args.n:
                    deck.close()
            if i == 0:
                continue  # warm-up: page cache and .pyc files
            first.append(t_first * 1000)
            loaded.append(t_loaded * 1000)
        # `deck` is the last run, still open: measure it at rest.
        proc = psutil.Process(deck.proc.pid)
        deck.drain(2.0)
        rss = proc.memory_info().rss / 2**20
        c0 = tree_cpu(proc)
        deck.drain(args.idle)
        idle_profiles = 100 * (tree_cpu(proc) - c0) / args.idle
        deck.send(b"2")
        deck.wait_for("exit reason")
        deck.drain(2.0)
        c0 = tree_cpu(proc)
        deck.drain(args.idle)
        idle_queue = 100 * (tree_cpu(proc) - c0) / args.idle
        rss_after = proc.memory_info().rss / 2**20
        deck.close()
        job_figures = run_view_cpu(env, home, args.idle) if args.job else None
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(
        f"cold start to first paint: median {statistics.median(first):.0f} ms, max {max(first):.0f} ms "
        f"(n={len(first)}; target <= 500 ms)"
    )
    print(f"cold start to template list painted: median {statistics.median(loaded):.0f} ms")
    print(f"RSS after start: {rss:.0f} MB; after visiting Queue: {rss_after:.0f} MB (target < 200 MB)")
    print(
        f"idle CPU: Profiles {idle_profiles:.2f}% of a core, Queue (polling 1 Hz) {idle_queue:.2f}% "
        f"over {args.idle:.0f} s each (target < 3%)"
    )
    if job_figures is not None:
        cpu, rss_job, state, step0, step1 = job_figures
        print(
            f"Run screen following a live demo job (steps {step0} -> {step1} in the window, state {state}): "
            f"CPU {cpu:.2f}% of a core over {args.idle:.0f} s, RSS {rss_job:.0f} MB"
        )
    ok = statistics.median(first) <= 500 and rss_after < 200 and max(idle_profiles, idle_queue) < 3
    if job_figures is not None:
        ok = ok and job_figures[0] < 3 and job_figures[1] < 200
    print("PASS" if ok else "MISS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
