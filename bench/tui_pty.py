"""Run a command in a real pseudo-terminal of a given size and watch what it paints (for the TUI benches)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time

ANSI = re.compile(rb"\x1b\[[0-9;?<>=]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]|\x1b\][^\x07]*\x07")


class PtyProcess:
    def __init__(self, argv: list[str], env: dict[str, str], cols: int = 80, rows: int = 24) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True, close_fds=True
        )
        os.close(slave)
        self.raw = bytearray()
        self.text = ""  # painted text with escape codes removed (cursor moves become nothing)

    def read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.master, 1 << 16)
        except OSError:
            return False
        self.raw += chunk
        self.text += ANSI.sub(b"", chunk).decode("utf-8", "replace")
        # Answer the terminal queries Textual sends at start (device attributes), as a terminal would.
        if b"\x1b[c" in chunk:
            os.write(self.master, b"\x1b[?62;c")
        return True

    def wait_for(self, needle: str, timeout: float = 30.0) -> float:
        """Seconds since start when `needle` was first painted."""
        deadline = time.perf_counter() + timeout
        while needle not in self.text:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{needle!r} not painted in {timeout}s; tail: {self.text[-500:]!r}")
            self.read(0.05)
        return time.perf_counter() - self.started

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def drain(self, seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            self.read(max(0.0, min(0.05, end - time.perf_counter())))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(b"\x11")  # ctrl+q
                deadline = time.perf_counter() + 5
                while self.proc.poll() is None and time.perf_counter() < deadline:
                    self.read(0.05)
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self.master)
