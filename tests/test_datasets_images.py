"""Image ops on generated files: dry run, apply, byte-identical undo, EXIF orientation, no upscaling, refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.datasets import images as im
from engine.datasets.undo import undo

REPO = Path(__file__).resolve().parent.parent


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def _exif_jpeg(path: Path, size: tuple[int, int], orientation: int) -> None:
    """A JPEG stored `size` wide with an EXIF orientation tag (6 = display rotated 90 degrees clockwise)."""
    img = Image.new("RGB", size, (200, 30, 30))
    img.paste((30, 30, 200), (0, 0, size[0] // 4, size[1]))  # a blue band on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "TestCam"  # Make: camera metadata that strip-exif must remove
    img.save(path, quality=95, exif=exif.tobytes())


def _set(root: Path) -> Path:
    d = root / "imgs ä"
    d.mkdir()
    Image.new("RGB", (400, 200), (10, 120, 30)).save(d / "wide.png")
    (d / "wide.txt").write_text("wide, green", encoding="utf-8")
    Image.new("RGBA", (100, 300), (10, 20, 30, 128)).save(d / "tall.webp")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(d / "small.jpg")
    _exif_jpeg(d / "rot.jpg", (300, 100), 6)
    return d


def test_resize_dry_run_apply_undo(tmp_path: Path) -> None:
    d = _set(tmp_path)
    before = _snapshot(d)
    plan = im.plan_resize(d, 150)
    assert _snapshot(d) == before  # planning is a dry run
    by_name = {c.source.name: c for c in plan.changes}
    assert set(by_name) == {"wide.png", "tall.webp", "rot.jpg"}
    assert by_name["wide.png"].new_size == (150, 75)
    assert by_name["tall.webp"].new_size == (50, 150)
    # rot.jpg is stored 300x100 but displayed 100x300 (orientation 6): the displayed shape is resized
    assert by_name["rot.jpg"].old_size == (100, 300) and by_name["rot.jpg"].new_size == (50, 150)
    assert any("small.jpg" in s and "not upscaled" in s for s in plan.skipped)
    op_id = im.apply(plan.changes, "resize")
    with Image.open(d / "wide.png") as img:
        assert img.size == (150, 75)
    with Image.open(d / "rot.jpg") as img:
        assert img.size == (50, 150)
        assert img.getexif().get(0x0112) in (None, 1)  # pixels upright, no orientation left to apply
        # stored left edge (blue) is at the top after a 90-degree clockwise turn
        top, bottom = img.convert("RGB").getpixel((25, 5)), img.convert("RGB").getpixel((25, 145))
        assert top[2] > 150 and bottom[0] > 150
    assert (d / "small.jpg").read_bytes() == before["small.jpg"]  # skipped: untouched
    assert op_id
    undo(op_id)
    assert _snapshot(d) == before


def test_never_upscale_everything_small(tmp_path: Path) -> None:
    d = _set(tmp_path)
    plan = im.plan_resize(d, 5000)
    assert plan.changes == [] and len(plan.skipped) == 4
    assert im.apply(plan.changes, "noop") is None
    with pytest.raises(im.ImageOpError, match="--max-side"):
        im.plan_resize(d, 0)


def test_convert_renames_keeps_caption_and_undo(tmp_path: Path) -> None:
    d = _set(tmp_path)
    (d / "captions.json").write_text(json.dumps({"tall.webp": "from json"}), encoding="utf-8")
    before = _snapshot(d)
    plan = im.plan_convert(d, "jpeg", quality=90)
    names = {c.source.name: c.target.name for c in plan.changes}
    assert names == {"wide.png": "wide.jpg", "tall.webp": "tall.jpg", "rot.jpg": "rot.jpg"}
    assert any("small.jpg" in s and "already JPEG" in s for s in plan.skipped)
    op_id = im.apply(plan.changes, "convert")
    assert not (d / "wide.png").exists() and not (d / "tall.webp").exists()
    with Image.open(d / "wide.jpg") as img:
        assert img.format == "JPEG" and img.size == (400, 200)
    with Image.open(d / "tall.jpg") as img:
        assert img.mode == "RGB"  # alpha flattened
    assert (d / "wide.txt").exists()  # caption keeps its stem
    assert json.loads((d / "captions.json").read_text(encoding="utf-8")) == {"tall.jpg": "from json"}
    undo(op_id)
    assert _snapshot(d) == before


def test_convert_refuses_existing_target(tmp_path: Path) -> None:
    d = _set(tmp_path)
    (d / "wide.jpg").write_bytes(b"someone else's file")
    before = _snapshot(d)
    with pytest.raises(im.ImageOpError, match=r"wide\.jpg: already exists"):
        im.plan_convert(d, "jpeg")
    assert _snapshot(d) == before
    with pytest.raises(im.ImageOpError, match="expected one of"):
        im.plan_convert(d, "gif")


def test_strip_exif_lossless_and_oriented(tmp_path: Path) -> None:
    d = tmp_path / "e"
    d.mkdir()
    _exif_jpeg(d / "upright.jpg", (120, 80), 1)
    _exif_jpeg(d / "turned.jpg", (120, 80), 8)
    Image.new("RGB", (8, 8)).save(d / "plain.png")
    before = _snapshot(d)
    plan = im.plan_strip_exif(d)
    assert {c.source.name for c in plan.changes} == {"upright.jpg", "turned.jpg"}
    assert any("plain.png" in s and "no EXIF" in s for s in plan.skipped)
    op_id = im.apply(plan.changes, "strip")
    for name in ("upright.jpg", "turned.jpg"):
        with Image.open(d / name) as img:
            assert len(img.getexif()) == 0
    # orientation 1: only the EXIF segment is gone, the compressed image data is byte-identical
    stripped = (d / "upright.jpg").read_bytes()
    assert before["upright.jpg"].endswith(stripped[stripped.index(b"\xff\xdb") :])
    with Image.open(d / "turned.jpg") as img:
        assert img.size == (80, 120)  # orientation 8 applied to the pixels
    undo(op_id)
    assert _snapshot(d) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_refused(tmp_path: Path) -> None:
    d = _set(tmp_path)
    before = _snapshot(d)
    plan = im.plan_resize(d, 100)
    d.chmod(0o555)
    try:
        with pytest.raises(im.ImageOpError, match="not writable; nothing was changed"):
            im.apply(plan.changes, "resize")
    finally:
        d.chmod(0o755)
    assert _snapshot(d) == before


def test_writability_checked_before_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same refusal where the test runs as root: the second folder is refused before the first is touched."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        Image.new("RGB", (300, 300), (9, 9, 9)).save(folder / "x.png")
    before = {**_snapshot(a), **{f"b/{k}": v for k, v in _snapshot(b).items()}}
    plan = im.plan_resize([a / "x.png", b / "x.png"], 100)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == b else real_access(p, m))
    with pytest.raises(im.ImageOpError, match=f"{b}: folder is not writable"):
        im.apply(plan.changes, "resize")
    assert {**_snapshot(a), **{f"b/{k}": v for k, v in _snapshot(b).items()}} == before


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", "dataset", "image", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ,
    )


def test_cli_image(tmp_path: Path) -> None:
    d = _set(tmp_path)
    before = _snapshot(d)
    dry = _cli(str(d), "--max-side", "150", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "400x200 PNG -> 150x75 PNG" in dry.stdout and "not upscaled" in dry.stdout
    assert _snapshot(d) == before
    done = _cli(str(d / "wide.png"), "--convert", "webp", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["changes"][0]["target"] == str(d / "wide.webp") and data["op_id"]
    assert (d / "wide.webp").exists() and not (d / "wide.png").exists()
    again = _cli(str(d / "tall.webp"), "--convert", "png")
    assert again.returncode == 0
    (d / "small.png").write_bytes(b"x")
    clash = _cli(str(d / "small.jpg"), "--convert", "png")
    assert clash.returncode == 1 and "small.png: already exists" in clash.stderr
    assert _cli(str(d / "nope.png"), "--strip-exif").returncode == 2  # a path that names nothing: usage
    assert _cli(str(d), "--max-side", "10", "--quality", "0").returncode == 2
