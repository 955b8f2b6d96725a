"""Log flood: a writer emits 10,000 lines/s for 10 s into a log file that the deck's LogPane follows, while a
key is pressed every 100 ms; measures key-to-screen latency in a real pseudo-terminal (80x24) and checks that
no line is lost from the file.

Usage: python bench/bench_tui_logflood.py [--rate 10000] [--seconds 10] [--wrap] [--events]
Targets: worst key-to-screen latency <= 150 ms; the file holds every line written.
The host app is the LogPane widget plus a key counter (the Run screen uses the same widget).
--wrap: the pane wraps long lines and every line is ~200 characters (3 rows at 80 columns);
--events: every other line is a `[dpdeck] {"event": ...}` line, which the pane leaves out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def child(log: str, wrap: bool) -> None:
    from textual.app import App, ComposeResult
    from textual.widgets import Static

    from tui.widgets.log_pane import LogPane

    class FloodApp(App[None]):
        BINDINGS = [("x", "count", "count"), ("ctrl+q", "quit", "quit")]
        count = 0

        def compose(self) -> ComposeResult:
            yield Static("keys: 0000|", id="counter")
            yield LogPane(max_lines=5000)

        def on_mount(self) -> None:
            pane = self.query_one(LogPane)
            pane.wrap = wrap
            pane.follow(Path(log))

        def action_count(self) -> None:
            self.count += 1
            self.query_one("#counter", Static).update(f"keys: {self.count:04d}|")

    FloodApp().run()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--wrap", action="store_true", help="wrap mode, with ~200-character lines")
    ap.add_argument("--events", action="store_true", help="every other line a dpdeck event line")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.wrap)
        return 0
    from tui_pty import PtyProcess

    tmp = Path(tempfile.mkdtemp(prefix="dpdeck-flood-"))
    log = tmp / "job.log"
    log.touch()
    env = {**os.environ, "TERM": "xterm-256color"}
    deck = PtyProcess(
        [sys.executable, __file__, "--child", str(log), *(["--wrap"] if args.wrap else [])], env
    )
    deck.wait_for("keys: 0000|")
    total = int(args.rate * args.seconds)
    stop = threading.Event()
    pad = " " + "x" * 140 if args.wrap else ""

    def line(i: int) -> str:
        if args.events and i % 2:
            return f'[dpdeck] {{"event": "progress", "step": {i}, "loss": 0.{i % 997:03d}}}{pad}\n'
        return f"steps: {i} loss: 0.{i % 997:03d} iter time (s): 0.1 samples/sec: 9.9{pad}\n"

    def writer() -> None:
        start = time.perf_counter()
        written = 0
        with log.open("a") as f:
            while written < total:
                due = min(total, int((time.perf_counter() - start) * args.rate))
                if due > written:
                    f.writelines(line(i) for i in range(written, due))
                    f.flush()
                    written = due
                time.sleep(0.005)
        stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    latencies: list[float] = []
    n = 0
    while not stop.is_set():
        n += 1
        sent = time.perf_counter()
        deck.send(b"x")
        deck.wait_for(f"keys: {n:04d}|", timeout=10)
        latencies.append((time.perf_counter() - sent) * 1000)
        rest = 0.1 - (time.perf_counter() - sent)
        if rest > 0:
            deck.drain(rest)
    thread.join()
    deck.close()
    lines = sum(1 for _ in log.open())
    os.unlink(log)
    os.rmdir(tmp)
    mode = " (wrapped)" if args.wrap else ""
    mode += " (half of them dpdeck events)" if args.events else ""
    print(
        f"log flood {args.rate} lines/s{mode} for {args.seconds:.0f} s, key every 100 ms"
        f" ({len(latencies)} keys):"
    )
    print(
        f"key-to-screen latency: median {statistics.median(latencies):.0f} ms, "
        f"p95 {sorted(latencies)[int(0.95 * (len(latencies) - 1))]:.0f} ms, worst {max(latencies):.0f} ms "
        "(target worst <= 150 ms)"
    )
    print(
        f"lines in the log file: {lines} of {total} written ({'none lost' if lines == total else 'LOST LINES'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
