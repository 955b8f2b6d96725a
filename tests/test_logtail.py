"""statefiles.logtail: the one tail reader behind the daemon's progress parsing and the deck's log pane."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from statefiles.logtail import LogFollower, last_lines, read_regular


def test_a_truncated_log_is_read_again_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_bytes(b"one\ntwo\nthree\n")
    follower = LogFollower(log)
    assert follower.read_lines() == ["one", "two", "three"]
    log.write_bytes(b"new\n")  # truncated and rewritten: shorter than what was read
    assert follower.read_lines() == ["new"]
    assert follower.restarts == 1


def test_a_replaced_log_is_followed_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_bytes(b"old 1\nold 2\nold 3 and a long line\n")
    follower = LogFollower(log)
    assert len(follower.read_lines()) == 3
    rotated = tmp_path / "output.log.new"
    rotated.write_bytes(b"a much longer first line of the new log than anything before it\nb\n")
    os.replace(rotated, log)  # a new file (inode), longer than the old offset: size alone would miss it
    assert follower.read_lines() == ["a much longer first line of the new log than anything before it", "b"]
    assert follower.restarts == 1


def test_display_mode_keeps_a_redrawn_line_whole(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_bytes(b"10%\r 50%\r100%\r\nwindows line\r\nplain\n")
    assert LogFollower(log).read_lines() == ["10%", " 50%", "100%", "windows line", "plain"]
    assert LogFollower(log, cr_ends_line=False).read_lines() == ["10%\r 50%\r100%", "windows line", "plain"]


def test_jump_to_tail_skips_a_huge_old_log(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    line = b"x" * 99 + b"\n"
    with open(log, "wb") as fh:
        for _ in range(LogFollower.END_TAIL // len(line) + 1000):
            fh.write(line)
        fh.write(b"the end\n")
    follower = LogFollower(log, jump_to_tail=True)
    lines: list[str] = []
    while chunk := follower.read_lines():
        lines += chunk
    assert lines[-1] == "the end"
    assert all(x == "x" * 99 for x in lines[:-1])  # the cut first line was dropped, not shown half
    assert follower.skipped > 0 and len(lines) < LogFollower.END_TAIL // len(line) + 1
    with open(log, "ab") as fh:
        fh.write(b"later\n")
    assert follower.read_lines() == ["later"]  # the jump happens once; growth is followed line by line


def test_a_log_that_appears_late_and_fifos_read_as_nothing(tmp_path: Path) -> None:
    log = tmp_path / "late.log"
    follower = LogFollower(log)
    assert follower.read_lines() == [] and list(follower.read_to_end()) == []
    log.write_bytes(b"here\n")
    assert follower.read_lines() == ["here"]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert read_regular(fifo) is None and last_lines(fifo, 5) == []
    link = tmp_path / "link.log"
    link.symlink_to(log)
    assert read_regular(link) is None  # never followed: a planted link could point anywhere


def test_last_lines_reads_only_the_tail(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(100_000)) + b"bar 10%\rbar 100%")
    tail = last_lines(log, 3)
    assert tail == ["line 99998", "line 99999", "bar 10%", "bar 100%"][-3:]


def test_the_reader_imports_no_textual() -> None:
    code = "import sys, statefiles.logtail; assert not [m for m in sys.modules if m.startswith(('textual', 'rich'))]"
    subprocess.run([sys.executable, "-c", code], check=True)
