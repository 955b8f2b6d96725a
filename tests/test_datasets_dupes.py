"""Duplicate detection on generated images: exact copies, re-encoded/resized copies (near), unrelated images."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from PIL import Image

from engine.datasets.dupes import dhash, duplicates_in, find_duplicates
from engine.datasets.scan import scan

REPO = Path(__file__).resolve().parent.parent


def photo(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A smooth random picture (blurred noise), so dHash has real structure to see."""
    rnd = random.Random(seed)
    small = Image.new("RGB", (12, 9))
    small.putdata([(rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)) for _ in range(12 * 9)])
    return small.resize(size, Image.Resampling.BICUBIC)


def _set(root: Path) -> Path:
    d = root / "dupe set ü"
    d.mkdir()
    photo(1).save(d / "a.png")
    (d / "a_copy.png").write_bytes((d / "a.png").read_bytes())  # exact
    photo(1).resize((160, 120), Image.Resampling.LANCZOS).save(d / "a_small.jpg", quality=85)  # near
    photo(2).save(d / "b.png")  # unrelated
    photo(3).save(d / "c.webp")  # unrelated
    (d / "broken.png").write_bytes(b"\x89PNG garbage")
    (d / "empty.jpg").write_bytes(b"")
    (d / "empty2.jpg").write_bytes(b"")
    return d


def test_exact_and_near(tmp_path: Path) -> None:
    d = _set(tmp_path)
    groups = duplicates_in(d)
    exact = [g for g in groups if g.kind == "exact"]
    near = [g for g in groups if g.kind == "near"]
    assert [sorted(p.name for p in g.paths) for g in exact] == [["a.png", "a_copy.png"]]
    assert exact[0].distance == 0
    assert len(near) == 1
    assert sorted(p.name for p in near[0].paths) == ["a.png", "a_copy.png", "a_small.jpg"]
    assert 0 <= near[0].distance <= 6
    # the unrelated pictures are far apart, so the threshold is meaningful
    assert (dhash(d / "a.png") ^ dhash(d / "b.png")).bit_count() > 12
    only_exact = find_duplicates(sorted(d.iterdir()), near=False)
    assert [g.kind for g in only_exact] == ["exact"]
    strict = duplicates_in(d, max_distance=0)
    assert all(g.kind == "exact" or g.distance == 0 for g in strict)


def test_near_group_needs_two_contents(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    photo(5).save(d / "x.png")
    (d / "y.png").write_bytes((d / "x.png").read_bytes())
    groups = duplicates_in(d)
    assert [g.kind for g in groups] == ["exact"]  # exact copies are not reported again as near


def test_cache_reused_and_invalidated(tmp_path: Path, dpdeck_home: Path) -> None:
    d = _set(tmp_path)
    first = duplicates_in(d)
    cache = next((dpdeck_home / "cache" / "datasets").glob("dhash-*.json"))
    data = json.loads(cache.read_text())
    assert str(d / "a.png") in data
    # A poisoned cache entry with the right size/mtime is trusted (proves the cache is read) ...
    key = str(d / "b.png")
    data[key][2] = data[str(d / "a.png")][2]
    cache.write_text(json.dumps(data))
    assert any(d / "b.png" in g.paths for g in duplicates_in(d))
    # ... and a changed file (new mtime) is hashed again.
    st = (d / "b.png").stat()
    os.utime(d / "b.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert [(g.kind, g.paths) for g in duplicates_in(d)] == [(g.kind, g.paths) for g in first]


def test_scan_dupes_flag_and_cli(tmp_path: Path) -> None:
    d = _set(tmp_path)
    assert scan(d).duplicates is None  # default scan stays header-only
    report = scan(d, dupes=True)
    assert report.totals["duplicate_groups"] == 2
    toml = tmp_path / "ds.toml"
    toml.write_text(f'resolutions = [64]\n[[directory]]\npath = "{d.name}"\n', encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "tui.cli", "dataset", "dupes", str(toml), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert out.returncode == 0, out.stderr
    kinds = sorted(g["kind"] for g in json.loads(out.stdout))
    assert kinds == ["exact", "near"]
    out = subprocess.run(
        [sys.executable, "-m", "tui.cli", "dataset", "dupes", str(d), "--exact-only"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert out.returncode == 0 and "exact duplicates" in out.stdout and "near" not in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "tui.cli", "dataset", "dupes", str(d), "--max-distance", "99"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert bad.returncode == 1 and "max_distance" in bad.stderr
