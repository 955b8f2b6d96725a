"""Caption batch ops: dry run changes nothing, apply changes exactly the expected files, undo is byte-exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from engine.datasets import captions as c
from engine.datasets.undo import UndoError, list_ops, undo

REPO = Path(__file__).resolve().parent.parent


def _dataset(root: Path) -> Path:
    d = root / "set ä"
    d.mkdir()
    caps = {
        "a": b"cat, Dog, cat\n",
        "b": b"  sky ,  Sun  ",
        "c": b"ohwx, tree",
        "d": "caf\u00e9, dog".encode("cp1252"),  # not UTF-8: decoded with a warning
        "e": b"\xef\xbb\xbfbom, dog",
    }
    for stem, data in caps.items():
        Image.new("RGB", (8, 8)).save(d / f"{stem}.png")
        (d / f"{stem}.txt").write_bytes(data)
    Image.new("RGB", (8, 8)).save(d / "nocap.png")
    (d / "stray.txt").write_bytes(b"no image beside me, dog")  # not a caption: never touched
    return d


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


OPS: list[tuple[Callable[[], Callable[[str], str]], dict[str, bytes]]] = [
    (
        lambda: c.add_trigger("ohwx"),
        {
            "a.txt": b"ohwx, cat, Dog, cat\n",
            "b.txt": b"ohwx, sky ,  Sun",
            "d.txt": "ohwx, caf\u00e9, dog".encode(),
            "e.txt": b"ohwx, bom, dog",
        },
    ),
    (lambda: c.remove_tag("dog"), {"d.txt": "caf\u00e9".encode(), "e.txt": b"bom"}),
    (lambda: c.remove_tag("[cC]a.*", regex=True), {"a.txt": b"Dog\n", "d.txt": b"dog"}),
    (lambda: c.replace_tag("Dog", "dog"), {"a.txt": b"cat, dog, cat\n"}),
    (c.dedupe, {"a.txt": b"cat, Dog\n"}),
    (c.sort_tags, {"a.txt": b"Dog, cat, cat\n", "b.txt": b"Sun, sky"}),
    (c.strip, {"b.txt": b"sky, Sun"}),
    (c.lowercase, {"a.txt": b"cat, dog, cat\n", "b.txt": b"  sky ,  sun  "}),
]


@pytest.mark.parametrize("make_op,expected", OPS)
def test_op_dry_run_apply_undo(tmp_path: Path, make_op: Callable, expected: dict[str, bytes]) -> None:
    d = _dataset(tmp_path)
    before = _snapshot(d)
    changes = c.plan(d, make_op())
    text = c.diff(changes)
    assert _snapshot(d) == before  # planning + diff is a dry run
    assert {ch.path.name for ch in changes} == set(expected)
    for name in expected:
        assert f"+++ {d / name}" in text
    op_id = c.apply(changes, "test op")
    after = _snapshot(d)
    for name, data in before.items():
        assert after[name] == expected.get(name, data), name  # exactly the expected files changed
    assert list_ops()[0]["id"] == op_id
    undo()
    assert _snapshot(d) == before
    with pytest.raises(UndoError):
        undo()


def test_trigger_not_twice_and_decode_warning(tmp_path: Path) -> None:
    d = _dataset(tmp_path)
    c.apply(c.plan(d, c.add_trigger("ohwx")), "t")
    assert c.plan(d, c.add_trigger("ohwx")) == []
    text, warning = c.decode_caption("caf\u00e9".encode("cp1252"))
    assert text == "caf\u00e9" and warning and "cp1252" in warning
    assert c.decode_caption("x".encode("utf-16"))[0] == "x"


def test_create_missing_and_undo_removes_created(tmp_path: Path) -> None:
    d = _dataset(tmp_path)
    (d / "captions.json").write_text(json.dumps({"listed.png": "x"}), encoding="utf-8")
    Image.new("RGB", (8, 8)).save(d / "listed.png")
    before = _snapshot(d)
    changes = c.plan_create_missing(d)
    assert [ch.path.name for ch in changes] == ["nocap.txt"]
    assert "nocap.txt" in c.diff(changes)
    op_id = c.apply(changes, "create")
    assert (d / "nocap.txt").read_bytes() == b""
    undo(op_id)
    assert _snapshot(d) == before


def test_bad_regex_names_pattern() -> None:
    with pytest.raises(c.CaptionError, match=r"bad regex '\[unclosed'"):
        c.remove_tag("[unclosed", regex=True)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", "dataset", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ,
    )


def test_cli_caption_and_undo(tmp_path: Path) -> None:
    d = _dataset(tmp_path)
    before = _snapshot(d)
    dry = _cli("caption", str(d), "--add-trigger", "ohwx", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "+ohwx, cat, Dog, cat" in dry.stdout and _snapshot(d) == before
    bad = _cli("caption", str(d), "--remove-tag", "(", "--regex")
    assert bad.returncode == 1 and "bad regex '('" in bad.stderr
    done = _cli("caption", str(d), "--dedupe", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["changed"] == [str(d / "a.txt")]
    assert (d / "a.txt").read_bytes() == b"cat, Dog\n"
    listed = _cli("undo", "--list", "--json")
    assert json.loads(listed.stdout)[0]["files"] == 1
    assert _cli("undo").returncode == 0
    assert _snapshot(d) == before
    assert _cli("undo").returncode == 1  # nothing left to undo
    assert _cli("caption", str(d)).returncode == 2  # no operation chosen: usage error


def test_kill_9_mid_apply_leaves_old_or_new_and_undo_restores(tmp_path: Path) -> None:
    d = tmp_path / "big"
    d.mkdir()
    png = tmp_path / "tiny.png"
    Image.new("RGB", (2, 2)).save(png)
    # Enough files that the rename phase (after all temp files are written and synced) lasts well beyond one poll.
    n = 4000
    for i in range(n):
        (d / f"{i:04d}.png").write_bytes(png.read_bytes())
        (d / f"{i:04d}.txt").write_bytes(f"tag{i}".encode())
    before = _snapshot(d)
    code = (
        "import sys; from pathlib import Path; from engine.datasets import captions as c;"
        "c.apply(c.plan(Path(sys.argv[1]), c.add_trigger('ohwx')), 'trigger')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(d)], cwd=REPO, env=os.environ)
    try:
        # Kill as soon as the op has started writing, so some files are new and some old.
        deadline = time.monotonic() + 20
        while not (d / "0000.txt").read_bytes().startswith(b"ohwx") and time.monotonic() < deadline:
            time.sleep(0.0005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    new = 0
    for i in range(n):
        data = (d / f"{i:04d}.txt").read_bytes()
        assert data in (f"tag{i}".encode(), f"ohwx, tag{i}".encode())
        new += data.startswith(b"ohwx")
    assert 0 < new < n, "the kill did not land mid-operation"
    undo()
    # A kill between the temp files' creation and their rename may leave the hidden staging folder with temp files
    # in it; they are neither captions nor images, and the next operation in this folder removes them.
    staging = d / ".dpdeck-staging"
    after = {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p != staging}
    assert after == before
    if staging.exists():
        c.apply(c.plan(d, c.add_trigger("again")), "second op")
        assert not staging.exists(), "the next op clears temp files a killed op left"
