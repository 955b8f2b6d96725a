"""Header sizes vs PIL, masks / videos / outside symlinks in the scan, single-caption edit, selections, --keep."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from engine.datasets import captions as c
from engine.datasets.headers import EmptyImageError, read_image_size
from engine.datasets.scan import scan
from engine.datasets.undo import list_ops, undo

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "fmt,kwargs",
    [
        ("PNG", {}),
        ("JPEG", {"quality": 80}),
        ("JPEG", {"progressive": True}),
        ("GIF", {}),
        ("BMP", {}),
        ("TIFF", {}),
        ("WEBP", {"lossless": True}),
        ("WEBP", {"quality": 70}),
    ],
)
def test_header_size_equals_pil(tmp_path: Path, fmt: str, kwargs: dict) -> None:
    for mode, size in (("RGB", (37, 53)), ("RGBA", (301, 7))):
        if fmt == "JPEG" and mode == "RGBA":
            continue
        path = tmp_path / f"x.{fmt.lower()}"
        Image.new(mode, size, (1, 2, 3)).save(path, format=fmt, **kwargs)
        with Image.open(path) as img:
            assert read_image_size(path) == img.size == size


def test_header_jpeg_with_big_exif_and_broken(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x010E] = "x" * 20000  # ImageDescription: pushes the frame header past the first read
    path = tmp_path / "big_exif.jpg"
    Image.new("RGB", (321, 123)).save(path, exif=exif.tobytes())
    assert read_image_size(path) == (321, 123)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(EmptyImageError):
        read_image_size(tmp_path / "empty.png")
    buf = io.BytesIO()
    Image.new("RGB", (50, 50)).save(buf, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[:20])  # header cut before the frame
    with pytest.raises((OSError, ValueError)):
        read_image_size(tmp_path / "cut.jpg")


def _masked(root: Path) -> Path:
    d = root / "imgs"
    m = root / "masks ü"
    d.mkdir()
    m.mkdir()
    for name, size in (("a", (64, 64)), ("b", (96, 64)), ("c", (64, 64))):
        Image.new("RGB", size).save(d / f"{name}.png")
        (d / f"{name}.txt").write_text(f"{name} tag", encoding="utf-8")
    Image.new("L", (64, 64)).save(m / "a.png")
    Image.new("L", (32, 32)).save(m / "b.jpg")  # any extension; wrong size
    Image.new("L", (8, 8)).save(m / "orphan.png")
    (d / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    (d / "clip.txt").write_text("a video", encoding="utf-8")
    (d / "model.safetensors").write_bytes(b"x")
    outside = root / "elsewhere.png"
    Image.new("RGB", (10, 10)).save(outside)
    os.symlink(outside, d / "linked.png")
    os.symlink(root / "elsewhere.txt", d / "linked.txt")
    (root / "elsewhere.txt").write_text("outside caption", encoding="utf-8")
    (root / "ds.toml").write_text('[[directory]]\npath = "imgs"\nmask_path = "masks ü"\n', encoding="utf-8")
    return d


def test_scan_masks_videos_links(tmp_path: Path) -> None:
    _masked(tmp_path)
    report = scan(tmp_path / "ds.toml")
    rep = report.directories[0]
    t = report.totals
    assert t["images"] == 4 and t["videos"] == 1 and rep.video_files == ["clip.mp4"]
    assert t["captioned"] == 5  # a, b, c, linked (its caption is readable) and the video
    assert rep.mask_path == str(tmp_path / "masks ü")
    assert sorted(rep.missing_masks) == ["c.png", "clip.mp4", "linked.png"]
    assert rep.orphan_masks == ["orphan.png"]
    assert rep.mask_size_mismatch == ["b.png: image 96x64, mask 32x32"]
    assert sorted(rep.links_outside) == ["linked.png", "linked.txt"]
    assert rep.other_files == ["model.safetensors"]
    assert json.loads(json.dumps(report.to_dict()))["totals"]["orphan_masks"] == 1


def test_batch_ops_skip_outside_symlinks(tmp_path: Path) -> None:
    d = _masked(tmp_path)
    skipped: list[str] = []
    changes = c.plan(d, c.add_trigger("ohwx"), skipped)
    assert {ch.path.name for ch in changes} == {"a.txt", "b.txt", "c.txt"}
    assert any("linked.txt" in s and "outside" in s for s in skipped)
    c.apply(changes, "t")
    assert (tmp_path / "elsewhere.txt").read_text(encoding="utf-8") == "outside caption"
    assert (d / "linked.txt").is_symlink()
    with pytest.raises(c.CaptionError, match="outside the dataset"):
        c.plan_set(d / "linked.png", "new")


def test_set_single_caption_and_undo(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    Image.new("RGB", (8, 8)).save(d / "a.png")
    Image.new("RGB", (8, 8)).save(d / "new.png")
    (d / "a.txt").write_bytes(b"old caption\n")
    assert c.plan_set(d / "a.png", "old caption") == []  # unchanged (trailing newline kept)
    changes = c.plan_set(d / "a.png", "edited, tags")
    assert changes[0].new == "edited, tags\n" and "+edited, tags" in c.diff(changes)
    op1 = c.apply(changes, "set a")
    created = c.plan_set(d / "new.png", "fresh")
    assert created[0].old is None
    op2 = c.apply(created, "set new")
    assert (d / "a.txt").read_bytes() == b"edited, tags\n" and (d / "new.txt").read_bytes() == b"fresh"
    assert [o["id"] for o in list_ops()[:2]] == [op2, op1]
    undo()
    assert not (d / "new.txt").exists()
    undo()
    assert (d / "a.txt").read_bytes() == b"old caption\n"


def test_apply_refuses_stale_plan(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    Image.new("RGB", (8, 8)).save(d / "a.png")
    (d / "a.txt").write_text("x", encoding="utf-8")
    changes = c.plan_set(d / "a.png", "y")
    (d / "a.txt").write_text("edited elsewhere", encoding="utf-8")
    with pytest.raises(c.CaptionError, match="changed on disk"):
        c.apply(changes, "stale")
    assert (d / "a.txt").read_text(encoding="utf-8") == "edited elsewhere" and list_ops() == []


def test_selection_keep_prefix(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    for stem, text in (("a", "ohwx, zebra, apple"), ("b", "ohwx, moon, cat"), ("c", "zz, aa")):
        Image.new("RGB", (8, 8)).save(d / f"{stem}.png")
        (d / f"{stem}.txt").write_text(text, encoding="utf-8")
    # a selection mixes image and caption paths; c is not selected
    changes = c.plan([d / "a.png", d / "b.txt"], c.sort_tags(keep=1))
    assert {ch.path.name: ch.new for ch in changes} == {
        "a.txt": "ohwx, apple, zebra",
        "b.txt": "ohwx, cat, moon",
    }
    assert c.plan([d / "c.png"], c.sort_tags())[0].new == "aa, zz"
    assert c.plan(d, c.add_prefix("photo of "))[0].new == "photo of ohwx, zebra, apple"
    assert c.plan([d / "a.png"], c.add_prefix("ohwx")) == []  # already starts with it
    assert c.plan_create_missing([d / "a.png", d / "x.png"]) == []  # a has a caption; x.png does not exist
    Image.new("RGB", (8, 8)).save(d / "x.png")
    assert [ch.path.name for ch in c.plan_create_missing([d / "x.png", d / "a.png"])] == ["x.txt"]
    with pytest.raises(c.CaptionError, match="--keep"):
        c.sort_tags(keep=-1)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", "dataset", "caption", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ,
    )


def test_cli_set_selection_keep(tmp_path: Path) -> None:
    d = tmp_path / "sel ü"
    d.mkdir()
    for stem in ("a", "b", "c"):
        Image.new("RGB", (8, 8)).save(d / f"{stem}.png")
        (d / f"{stem}.txt").write_text("t, s, r", encoding="utf-8")
    out = _cli(str(d / "a.png"), "--set", "hand written", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["op_id"] and (d / "a.txt").read_text(encoding="utf-8") == "hand written"
    out = _cli(str(d / "b.png"), str(d / "c.txt"), "--sort", "--keep", "1")
    assert out.returncode == 0, out.stderr
    assert (d / "b.txt").read_text(encoding="utf-8") == "t, r, s" == (d / "c.txt").read_text(encoding="utf-8")
    assert (d / "a.txt").read_text(encoding="utf-8") == "hand written"
    assert _cli(str(d / "a.png"), str(d / "b.png"), "--set", "x").returncode == 1  # --set takes one file
    assert _cli(str(d), "--dedupe", "--keep", "2").returncode == 2  # --keep only with --sort
    bad = _cli(str(d), "--remove-tag", "[", "--regex")
    assert bad.returncode == 1 and "bad regex '['" in bad.stderr
    assert _cli(str(d / "missing.png"), "--dedupe").returncode == 2  # names nothing: usage
    undo()
    undo()
    assert all((d / f"{s}.txt").read_text(encoding="utf-8") == "t, s, r" for s in "abc")


def test_undo_journal_without_hardlinks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dpdeck_home: Path
) -> None:
    """Where linking fails (another filesystem, protected_hardlinks) the old bytes are packed instead."""
    d = tmp_path / "d"
    d.mkdir()
    for i in range(5):
        Image.new("RGB", (8, 8)).save(d / f"{i}.png")
        (d / f"{i}.txt").write_bytes(f"tag{i}, x\r\n".encode())
    os.chmod(d / "3.txt", 0o600)
    before = {p.name: (p.read_bytes(), p.stat().st_mode) for p in d.iterdir()}

    def no_link(*args: object, **kwargs: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    from engine.datasets import swap

    with monkeypatch.context() as m:
        m.setattr(os, "link", no_link)
        m.setattr(swap, "supported", lambda folder: False)  # as on a filesystem without RENAME_EXCHANGE
        op_id = c.apply(c.plan(d, c.add_trigger("ohwx")), "t")
    assert (d / "0.txt").read_bytes() == b"ohwx, tag0, x\r\n"
    manifest = json.loads((dpdeck_home / "datasets" / "undo" / str(op_id) / "manifest.json").read_text())
    assert all("link" not in f for f in manifest["files"])  # the packed-bytes path really ran
    undo(op_id)
    assert {p.name: (p.read_bytes(), p.stat().st_mode) for p in d.iterdir()} == before


def test_apply_refuses_same_size_edit_after_batch_plan(tmp_path: Path) -> None:
    # A batch plan keeps each file's (inode, size, mtime) instead of re-reading it at apply: an edit that keeps
    # the size, or a save-by-rename, must still be caught.
    d = tmp_path / "d"
    d.mkdir()
    for stem in ("a", "b"):
        Image.new("RGB", (8, 8)).save(d / f"{stem}.png")
        (d / f"{stem}.txt").write_text("cat, dog", encoding="utf-8")
    changes = c.plan(d, c.add_trigger("ohwx"))
    assert all(ch.stamp is not None for ch in changes)
    time.sleep(0.01)
    (d / "b.txt").write_text("cow, dog", encoding="utf-8")  # same size, new text
    with pytest.raises(c.CaptionError, match=f"{d / 'b.txt'}: changed on disk"):
        c.apply(changes, "stale")
    assert (d / "a.txt").read_text(encoding="utf-8") == "cat, dog" and list_ops() == []
    # same text rewritten (new mtime, same bytes) is not a conflict
    changes = c.plan(d, c.add_trigger("ohwx"))
    (d / "a.txt").write_text("cat, dog", encoding="utf-8")
    assert c.apply(changes, "ok") is not None
    assert (d / "a.txt").read_text(encoding="utf-8") == "ohwx, cat, dog"


def test_failure_before_renames_changes_nothing_and_leaves_no_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fallback path (no RENAME_EXCHANGE, or the journal on another filesystem) writes all temp files before the
    # first rename: when one folder cannot stage (here its staging name is taken by a file), no caption anywhere
    # changes, no temp file stays behind and there is nothing to undo.
    from engine.datasets import swap

    monkeypatch.setattr(swap, "supported", lambda folder: False)
    good, bad = tmp_path / "good", tmp_path / "bad"
    for d in (good, bad):
        d.mkdir()
        for i in range(300):
            Image.new("RGB", (2, 2)).save(d / f"{i:03d}.png")
            (d / f"{i:03d}.txt").write_text(f"tag{i}", encoding="utf-8")
    (bad / ".dpdeck-staging").write_text("in the way", encoding="utf-8")
    before = {p: p.read_bytes() for d in (good, bad) for p in sorted(d.glob("*.txt"))}
    changes = c.plan(good, c.add_trigger("ohwx")) + c.plan(bad, c.add_trigger("ohwx"))
    with pytest.raises(OSError):
        c.apply(changes, "fails")
    assert {p: p.read_bytes() for p in before} == before
    assert list_ops() == []
    assert not (good / ".dpdeck-staging").exists()


def test_prune_keeps_newest_records_and_cli_prunes_after_an_op(tmp_path: Path) -> None:
    from engine.datasets.undo import prune
    from statefiles.settings import set_value

    d = tmp_path / "d"
    d.mkdir()
    Image.new("RGB", (8, 8)).save(d / "a.png")
    (d / "a.txt").write_text("v0", encoding="utf-8")
    ids = [c.apply(c.plan_set(d / "a.png", f"v{i}"), f"edit {i}") for i in range(1, 5)]
    assert [o["id"] for o in list_ops()] == ids[::-1]
    assert prune(0) == [] and len(list_ops()) == 4  # 0 keeps every record
    assert prune(3) == [ids[0]]
    assert [o["id"] for o in list_ops()] == ids[:0:-1]
    undo()  # the newest records still restore
    assert (d / "a.txt").read_text(encoding="utf-8") == "v3"
    set_value("datasets.undo_keep", "2")
    r = subprocess.run(
        [sys.executable, "-m", "tui.cli", "dataset", "caption", "--add-trigger", "ohwx", str(d)],
        cwd=REPO, env=os.environ, capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr
    ops = list_ops()
    assert len(ops) == 2 and ops[0]["description"].startswith("add trigger"), ops



def _captioned(d: Path, n: int) -> dict[str, bytes]:
    d.mkdir()
    for i in range(n):
        Image.new("RGB", (2, 2)).save(d / f"{i:03d}.png")
        (d / f"{i:03d}.txt").write_bytes(f"tag{i}, x".encode())
    os.chmod(d / "001.txt", 0o600)
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_swap_path_journal_holds_old_inodes_and_undo_is_exact(tmp_path: Path, dpdeck_home: Path) -> None:
    d = tmp_path / "d"
    before = _captioned(d, 300)
    inode_before = (d / "000.txt").stat().st_ino
    mode_before = (d / "001.txt").stat().st_mode
    op_id = c.apply(c.plan(d, c.add_trigger("ohwx")), "t")
    manifest = json.loads((dpdeck_home / "datasets" / "undo" / str(op_id) / "manifest.json").read_text())
    assert all("swap" in f for f in manifest["files"]), "this filesystem supports RENAME_EXCHANGE: the swap path"
    assert (d / "000.txt").read_bytes() == b"ohwx, tag0, x" and (d / "000.txt").stat().st_ino != inode_before
    assert (d / "001.txt").stat().st_mode == mode_before  # the new file keeps the old mode
    assert not (d / ".dpdeck-staging").exists()
    undo(op_id)
    assert {p.name: p.read_bytes() for p in sorted(d.iterdir())} == before
    assert (d / "000.txt").stat().st_ino == inode_before and (d / "001.txt").stat().st_mode == mode_before


def test_swap_path_failure_mid_exchange_is_named_and_undo_restores_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Exchanges 0..99 happen, the 101st fails: the error names the record, and undo must tell exchanged entries
    # (record holds the old file) from the rest (record holds the unused new one) by inode.
    from engine.datasets import swap

    d = tmp_path / "d"
    before = _captioned(d, 300)
    real = swap.exchange
    calls = {"n": 0}

    def flaky(a: str, b: str) -> None:
        calls["n"] += b.startswith(str(d))  # not the support probe
        if calls["n"] > 100:
            raise OSError(5, "Input/output error", b)
        real(a, b)

    monkeypatch.setattr(swap, "exchange", flaky)
    changes = c.plan(d, c.add_trigger("ohwx"))
    with pytest.raises(c.CaptionError, match=r"100\.txt: Input/output error; .*dpdeck dataset undo"):
        c.apply(changes, "t")
    now = {p.name: p.read_bytes() for p in sorted(d.iterdir())}
    assert sum(v.startswith(b"ohwx") for v in now.values()) == 100
    undo()
    assert {p.name: p.read_bytes() for p in sorted(d.iterdir())} == before


def test_swap_path_failure_while_writing_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.datasets import swap

    d = tmp_path / "d"
    before = _captioned(d, 300)
    real = swap.write_temp
    calls = {"n": 0}

    def disk_full(*args: object, **kwargs: object) -> str:
        calls["n"] += 1
        if calls["n"] > 150:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(swap, "write_temp", disk_full)
    with pytest.raises(OSError, match="No space left"):
        c.apply(c.plan(d, c.add_trigger("ohwx")), "t")
    assert {p.name: p.read_bytes() for p in sorted(d.iterdir())} == before
    assert list_ops() == []


def test_bind_mount_of_the_same_filesystem_takes_the_safe_path(tmp_path: Path, dpdeck_home: Path) -> None:
    # Same st_dev, but renames across a bind mount fail with EXDEV: the op must notice before changing anything
    # and take the staged-rename path instead of failing part way.
    real, bound = tmp_path / "real", tmp_path / "bound"
    before = _captioned(real, 300)
    bound.mkdir()
    import shutil

    if (
        shutil.which("mount") is None
        or subprocess.run(["mount", "--bind", str(real), str(bound)], capture_output=True).returncode != 0
    ):
        pytest.skip("cannot bind-mount here (needs root in a mount namespace)")
    try:
        assert os.stat(bound).st_dev == os.stat(dpdeck_home).st_dev
        op_id = c.apply(c.plan(bound, c.add_trigger("ohwx")), "t")
        assert (real / "000.txt").read_bytes() == b"ohwx, tag0, x"
        manifest = json.loads((dpdeck_home / "datasets" / "undo" / str(op_id) / "manifest.json").read_text())
        assert not any("swap" in f for f in manifest["files"])
        undo(op_id)
        assert {p.name: p.read_bytes() for p in sorted(real.iterdir())} == before
    finally:
        subprocess.run(["umount", str(bound)], check=False)
