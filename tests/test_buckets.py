"""Bucketing and dataset scanning: diffusion-pipe's semantics, checked against the formula and real files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from engine.datasets.buckets import (
    DatasetConfigError,
    ar_bucket_list,
    bucket_size,
    closest_ar,
    plan_buckets,
)
from engine.datasets.items import scan_directory

# Computed by hand from w = sqrt(r*r*ar), h = r*r/w, rounded to multiples of 16, for
# min_ar 0.5, max_ar 2.0, 7 buckets (ars = round(geomspace(0.5, 2, 7), 3)).
GOLDEN_512 = {
    0.5: (368, 720),
    0.63: (400, 640),
    0.794: (464, 576),
    1.0: (512, 512),
    1.26: (576, 464),
    1.587: (640, 400),
    2.0: (720, 368),
}
GOLDEN_1024_AR = {0.5: (720, 1456), 1.0: (1024, 1024), 2.0: (1456, 720)}


def _np_ars(lo: float, hi: float, n: int) -> list[float]:
    return sorted(set(np.round(np.geomspace(lo, hi, n), 3).tolist()))


def _np_size(res: float, ar: float) -> tuple[int, int]:
    w = np.sqrt(res * res * ar)
    h = res * res / w
    return int(np.round(w / 16) * 16), int(np.round(h / 16) * 16)


def test_golden_table_512() -> None:
    ars = ar_bucket_list({"enable_ar_bucket": True, "min_ar": 0.5, "max_ar": 2.0, "num_ar_buckets": 7}, "t")
    assert ars == list(GOLDEN_512)
    assert {a: bucket_size(512, a) for a in ars} == GOLDEN_512


def test_golden_table_1024_explicit_buckets() -> None:
    ars = ar_bucket_list({"enable_ar_bucket": True, "ar_buckets": [2.0, [1, 2], 1.0, 1.0]}, "t")
    assert ars == [0.5, 1.0, 2.0]  # dedup + sorted, [w, h] pairs become w/h
    assert {a: bucket_size(1024, a) for a in ars} == GOLDEN_1024_AR


def test_ar_bucket_disabled_is_square() -> None:
    assert ar_bucket_list(
        {"enable_ar_bucket": False, "min_ar": 0.5, "max_ar": 2, "num_ar_buckets": 3}, "t"
    ) == [1.0]


@settings(max_examples=60, deadline=None)
@given(
    lo=st.floats(0.2, 1.0),
    span=st.floats(1.0, 5.0),
    n=st.integers(1, 12),
    res=st.integers(64, 2048),
    w=st.integers(1, 4000),
    h=st.integers(1, 4000),
)
def test_matches_numpy_formula(lo: float, span: float, n: int, res: int, w: int, h: int) -> None:
    hi = lo * span
    ars = ar_bucket_list({"enable_ar_bucket": True, "min_ar": lo, "max_ar": hi, "num_ar_buckets": n}, "t")
    assert ars == _np_ars(lo, hi, n)
    arr = np.array(ars)
    expected_ar = float(arr[np.argmin(np.abs(np.log(w / h) - np.log(arr)))])
    assert closest_ar(w, h, ars) == expected_ar
    assert bucket_size(res, expected_ar) == _np_size(res, expected_ar)


def _img(path: Path, w: int, h: int, caption: str | None = "a photo") -> None:
    Image.new("RGB", (w, h), (200, 10, 10)).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)


def test_scan_captions_and_bad_files(tmp_path: Path) -> None:
    _img(tmp_path / "a.png", 64, 32, "cat, dog")
    _img(tmp_path / "c.png", 32, 64, None)  # no caption at all
    _img(tmp_path / "e.png", 32, 32, "")  # an empty caption: trained with it, as diffusion-pipe does
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "broken.txt").write_text("caption of a broken image")
    sub = tmp_path / "sub"
    sub.mkdir()
    _img(sub / "deep.png", 32, 32)  # non-recursive: never seen
    result = scan_directory(tmp_path, caption_prefix="pfx ")
    got = sorted((i.path.name, i.width, i.height, i.caption) for i in result.items)
    assert got == [("a.png", 64, 32, "pfx cat, dog"), ("e.png", 32, 32, "pfx ")]
    assert result.skipped_no_caption == 1 and result.skipped_broken == 1
    assert any("broken.png" in w and "unreadable image" in w for w in result.warnings)
    assert any("c.png" in w and "no caption" in w for w in result.warnings)
    kept = scan_directory(tmp_path, skip_empty_caption=False)
    assert ("c.png", "") in {(i.path.name, i.caption) for i in kept.items}


def test_captions_json_takes_every_caption_and_txt_is_not_read(tmp_path: Path) -> None:
    """diffusion-pipe (8f83dbf): with captions.json in the folder, .txt captions are ignored; the lists are used
    as written (an empty string is an example, an empty list none)."""
    _img(tmp_path / "a.png", 64, 32, "from the txt")  # no json entry: skipped although its .txt exists
    _img(tmp_path / "b.jpg", 32, 32, "from the txt")
    _img(tmp_path / "d.png", 32, 32, None)
    _img(tmp_path / "z.png", 32, 32, None)
    (tmp_path / "captions.json").write_text(json.dumps({"b.jpg": ["one", " two "], "d.png": [""], "z.png": []}))
    result = scan_directory(tmp_path)
    got = sorted((i.path.name, i.caption) for i in result.items)
    assert got == [("b.jpg", " two "), ("b.jpg", "one"), ("d.png", "")]
    assert result.skipped_no_caption == 1
    assert any("a.png" in w and "captions.json" in w for w in result.warnings)


def test_plan_repeats_truncation_and_overrides(tmp_path: Path) -> None:
    wide, square = tmp_path / "wide", tmp_path / "square"
    wide.mkdir()
    square.mkdir()
    for i in range(3):
        _img(wide / f"w{i}.png", 96, 48)
    for i in range(2):
        _img(square / f"s{i}.png", 40, 40)
    data = {
        "resolutions": [64],
        "enable_ar_bucket": True,
        "min_ar": 0.5,
        "max_ar": 2.0,
        "num_ar_buckets": 3,
        "directory": [
            {"path": "wide", "num_repeats": 3},
            {"path": str(square), "resolutions": [32, 64]},
        ],
    }
    plan = plan_buckets(data, tmp_path, global_batch=4)
    sizes = {b.size: (b.count, b.dropped) for b in plan.buckets}
    w2, h2 = bucket_size(64, 2.0)
    # 3 files x 3 repeats = 9 -> 8 kept; squares: 2 at 32 px (dropped), 2 at 64 px (dropped).
    assert sizes == {(w2, h2, 1): (8, 1), (32, 32, 1): (0, 2), (64, 64, 1): (0, 2)}
    assert plan.steps_per_epoch == 2
    assert "dropped to make a multiple of the global batch 4" in plan.drop_report()
    assert math.isclose(next(b.ar for b in plan.buckets if b.size == (w2, h2, 1)), 2.0)


def test_plan_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(DatasetConfigError, match="resolutions: required"):
        plan_buckets({"directory": [{"path": str(tmp_path)}]}, tmp_path, 1)
    with pytest.raises(DatasetConfigError, match="num_ar_buckets"):
        plan_buckets(
            {
                "resolutions": [64],
                "enable_ar_bucket": True,
                "min_ar": 0.5,
                "max_ar": 2,
                "directory": [{"path": "."}],
            },
            tmp_path,
            1,
        )
    with pytest.raises(DatasetConfigError, match=r"directory\[0\]: path: .* is not a directory"):
        plan_buckets({"resolutions": [64], "directory": [{"path": "nope"}]}, tmp_path, 1)
    with pytest.raises(DatasetConfigError, match="at most 3"):
        plan_buckets({"resolutions": [64, 128, 256, 512], "directory": [{"path": "."}]}, tmp_path, 1)


def test_importable_without_torch() -> None:
    import subprocess
    import sys

    code = "import sys, engine.datasets; assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
