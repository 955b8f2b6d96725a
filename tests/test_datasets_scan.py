"""Dataset scan report and bucket preview on fixtures generated here (real PNGs, broken files, odd names)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from engine.datasets.buckets import plan_buckets
from engine.datasets.scan import scan
from profiles.document import TomlFile
from tui.cli.cmd_dataset import bucket_preview

REPO = Path(__file__).resolve().parent.parent


def _png(path: Path, w: int, h: int) -> None:
    Image.new("RGB", (w, h), (10, 20, 30)).save(path)


def _fixture(root: Path) -> Path:
    d = root / "my data ü"
    d.mkdir()
    _png(d / "a.png", 64, 64)
    (d / "a.txt").write_text("cat, cute, cat\n", encoding="utf-8")
    _png(d / "bild ö 1.png", 96, 64)
    (d / "bild ö 1.txt").write_text("dog", encoding="utf-8")
    _png(d / "from_json.png", 64, 96)
    # A folder with captions.json reads no .txt (diffusion-pipe 8f83dbf), so this folder's third caption is a
    # .txt too; tests/test_buckets_rules.py covers captions.json.
    (d / "from_json.txt").write_text("cat, sky", encoding="utf-8")
    _png(d / "nocap.png", 64, 64)
    _png(d / "emptycap.png", 64, 64)
    (d / "emptycap.txt").write_text("  \n", encoding="utf-8")
    (d / "corrupt.png").write_bytes(b"\x89PNG not really an image")
    (d / "corrupt.txt").write_text("broken", encoding="utf-8")
    (d / "zero.jpg").write_bytes(b"")
    _png(d / "latin.png", 64, 64)
    (d / "latin.txt").write_bytes("caf\u00e9".encode("cp1252"))
    (d / "notes.md").write_text("not an image", encoding="utf-8")
    sub = d / "nested"
    sub.mkdir()
    _png(sub / "deep.png", 64, 64)  # non-recursive: must not be counted
    return d


def test_scan_folder(tmp_path: Path) -> None:
    d = _fixture(tmp_path)
    report = scan(d)
    t = report.totals
    assert t["images"] == 8
    assert t["captioned"] == 4  # a, bild, from_json, corrupt (its caption is fine; the image is not)
    rep = report.directories[0]
    assert sorted(rep.missing_captions) == ["nocap.png", "zero.jpg"]
    assert rep.empty_captions == ["emptycap.png"]
    assert rep.unreadable == ["corrupt.png"]
    assert rep.zero_byte == ["zero.jpg"]
    assert rep.bad_encoding == ["latin.txt"]
    assert report.resolutions == {"64x64": 4, "96x64": 1, "64x96": 1}
    assert report.aspects == {"0.67": 1, "1.00": 4, "1.50": 1}
    assert report.tags["cat"] == 3 and report.tags["dog"] == 1 and report.tags["sky"] == 1
    assert report.caption_length["max"] == len("cat, cute, cat")
    assert json.loads(json.dumps(report.to_dict()))["totals"]["images"] == 8


def test_scan_toml_and_cli(tmp_path: Path) -> None:
    d = _fixture(tmp_path)
    toml = tmp_path / "dataset.toml"
    toml.write_text(f'resolutions = [64]\n[[directory]]\npath = "{d.name}"\n', encoding="utf-8")
    assert scan(toml).totals["images"] == 8
    out = subprocess.run(
        [sys.executable, "-m", "tui.cli", "dataset", "scan", str(toml), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["totals"]["zero_byte"] == 1
    bad = subprocess.run(
        [sys.executable, "-m", "tui.cli", "dataset", "scan", str(tmp_path / "nope")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert bad.returncode == 2 and "nope: no such file or folder" in bad.stderr


def test_bucket_preview_equals_plan_buckets(tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    d.mkdir()
    sizes = [(64, 64)] * 5 + [(128, 64)] * 3 + [(64, 128)] * 2
    for i, (w, h) in enumerate(sizes):
        _png(d / f"{i}.png", w, h)
        (d / f"{i}.txt").write_text(f"tag{i}", encoding="utf-8")
    toml = tmp_path / "dataset.toml"
    toml.write_text(
        "resolutions = [64]\nenable_ar_bucket = true\nmin_ar = 0.5\nmax_ar = 2.0\nnum_ar_buckets = 3\n"
        '[[directory]]\npath = "imgs"\nnum_repeats = 2\n',
        encoding="utf-8",
    )
    main = tmp_path / "main.toml"
    main.write_text(
        'output_dir = "/tmp/o"\ndataset = "dataset.toml"\nepochs = 1\nmicro_batch_size_per_gpu = 2\n'
        "gradient_accumulation_steps = 2\n",
        encoding="utf-8",
    )
    preview = bucket_preview(toml, str(main), 1)
    plan = plan_buckets(TomlFile.load(toml).data(), tmp_path, 4)
    assert preview["global_batch"] == 4
    assert [(b["width"], b["height"], b["items"], b["dropped"]) for b in preview["buckets"]] == [
        (b.width, b.height, b.count, b.dropped) for b in plan.buckets
    ]
    assert preview["steps_per_epoch"] == plan.steps_per_epoch
    # 10 ars x 2 repeats: 10 square -> 8 kept, 6 wide -> 4, 4 tall -> 4
    assert preview["items"] == 16 and preview["dropped"] == 4 and preview["steps_per_epoch"] == 4
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tui.cli",
            "dataset",
            "buckets",
            str(toml),
            "--profile",
            str(main),
            "--num-gpus",
            "2",
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["global_batch"] == 8
    assert data["steps_per_epoch"] == plan_buckets(TomlFile.load(toml).data(), tmp_path, 8).steps_per_epoch
