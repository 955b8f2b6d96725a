"""diffusion-pipe's (8f83dbf) example rules in plan_buckets, without the upstream checkout: rounding and
deduplication, size_buckets, per-size batches, caption variants, fractional repeats, subsample_ratio, .tar
archives and the mask / control checks. tests/test_upstream_buckets.py compares the same against upstream's code."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from engine.datasets.archives import add_archives
from engine.datasets.buckets import (
    DatasetConfigError,
    ar_bucket_list,
    batch_table,
    plan_buckets,
    resolution_list,
    scale_batch,
)
from engine.datasets.items import scan_directory

REPO = Path(__file__).resolve().parent.parent
DP = "diffusion-pipe"


def _img(path: Path, w: int, h: int, caption: str | None = "a, b, c") -> None:
    Image.new("RGB", (w, h), (1, 2, 3)).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")


def _folder(tmp_path: Path, sizes: list[tuple[int, int]], name: str = "imgs") -> Path:
    d = tmp_path / name
    d.mkdir()
    for i, (w, h) in enumerate(sizes):
        _img(d / f"{i}.png", w, h)
    return d


def _counts(plan) -> dict[tuple[int, int], int]:  # type: ignore[no-untyped-def]
    return {(b.width, b.height): b.count for b in plan.buckets if b.count}


def test_resolutions_and_ars_are_rounded_and_deduplicated() -> None:
    assert resolution_list({"resolutions": [512, 512.0001, [512, 512]]}, "t") == [512.0]
    ars = ar_bucket_list({"enable_ar_bucket": True, "ar_buckets": [[16, 9], 1.7777, 0.5, [1, 2]]}, "t")
    assert ars == [0.5, 1.778]
    with pytest.raises(DatasetConfigError, match="at most 3"):
        resolution_list({"resolutions": [512, 512, 512, 512]}, "t")  # counted as written, as upstream


def test_duplicate_resolutions_do_not_double_the_examples(tmp_path: Path) -> None:
    d = _folder(tmp_path, [(512, 512)] * 2)
    plan = plan_buckets({"resolutions": [512, 512], "directory": [{"path": str(d)}]}, tmp_path, 1, backend=DP)
    assert _counts(plan) == {(512, 512): 2}


def test_cache_shuffle_num_counts_variants_for_diffusion_pipe_only(tmp_path: Path) -> None:
    d = _folder(tmp_path, [(512, 512)] * 3)
    data = {"resolutions": [512], "cache_shuffle_num": 3, "directory": [{"path": str(d)}]}
    assert plan_buckets(data, tmp_path, 1, backend=DP).num_examples == 9
    assert plan_buckets(data, tmp_path, 1).num_examples == 3  # the built-in trainer cycles variants per epoch
    data = {"resolutions": [512], "shuffle_tags": True, "directory": [{"path": str(d)}]}
    assert plan_buckets(data, tmp_path, 1, backend=DP).num_examples == 3


def test_fractional_repeats_and_subsample_ratio(tmp_path: Path) -> None:
    d = _folder(tmp_path, [(512, 512)] * 3)
    data = {"resolutions": [512], "subsample_ratio": 0.5, "directory": [{"path": str(d), "num_repeats": 1.5}]}
    plan = plan_buckets(data, tmp_path, 1, backend=DP)
    assert plan.num_examples == 4  # int(3 * 1.5)
    assert plan.steps_per_epoch == 2  # int(4 * 0.5)


def test_size_buckets_need_no_resolutions_and_videos_skip_image_buckets(tmp_path: Path) -> None:
    d = _folder(tmp_path, [(800, 600), (600, 800), (500, 500)])
    data = {
        "size_buckets": [[512, 512, 1], [768, 512, 1], [512, 768, 1], [512, 512, 33]],
        "directory": [{"path": str(d)}],
    }
    plan = plan_buckets(data, tmp_path, 1, backend=DP)
    # Sorted ratios [0.667, 1.0, 1.5]; entries by frames desc: [512x512x33, 512x512, 768x512, 512x768]. Upstream
    # takes entry i for the i-th nearest ratio: a 0.75 image -> index 0 (0.667) -> 512x512x33, skipped (an
    # image never goes to a video bucket), then index 1 -> 512x512.
    assert _counts(plan) == {(512, 512): 2, (768, 512): 1}
    assert any("size_buckets" in w for w in plan.warnings)
    ordered = {"size_buckets": [[512, 768, 1], [512, 512, 1], [768, 512, 1]], "directory": [{"path": str(d)}]}
    plan = plan_buckets(ordered, tmp_path, 1, backend=DP)
    assert _counts(plan) == {(768, 512): 1, (512, 768): 1, (512, 512): 1}
    assert not any("size_buckets" in w for w in plan.warnings)


def test_top_level_keys_upstream_reads_eagerly(tmp_path: Path) -> None:
    d = _folder(tmp_path, [(512, 512)])
    with pytest.raises(DatasetConfigError, match="resolutions: required at the top"):
        plan_buckets({"directory": [{"path": str(d), "resolutions": [512]}]}, tmp_path, 1)
    entry = {"path": str(d), "enable_ar_bucket": True, "min_ar": 0.5, "max_ar": 2.0, "num_ar_buckets": 3}
    with pytest.raises(DatasetConfigError, match="min_ar: required at the top"):
        plan_buckets({"resolutions": [512], "directory": [entry]}, tmp_path, 1)


def test_per_size_batch_table(tmp_path: Path) -> None:
    table = batch_table([[512, 4], [768, 1]], "micro_batch_size_per_gpu")
    assert table == {512: 4, 768: 1}
    assert scale_batch(table, 2) == {512: 8, 768: 2}
    with pytest.raises(DatasetConfigError, match="micro_batch_size_per_gpu"):
        batch_table([[512]], "micro_batch_size_per_gpu")
    d = _folder(tmp_path, [(512, 512)] * 5)
    plan = plan_buckets(
        {"resolutions": [512, 768], "directory": [{"path": str(d)}]}, tmp_path, {512: 4, 768: 1}
    )
    assert [(b.width, b.count, plan.batch_for(b)) for b in plan.buckets] == [(512, 4, 4), (768, 5, 1)]
    assert plan.steps_per_epoch == 1 + 5


def test_cli_per_resolution_micro_batch_no_longer_crashes(tmp_path: Path) -> None:
    d = _folder(tmp_path, [(512, 512)] * 5)
    toml = tmp_path / "dataset.toml"
    toml.write_text(f'resolutions = [512, 768]\n[[directory]]\npath = "{d}"\n', encoding="utf-8")
    main = tmp_path / "main.toml"
    main.write_text(
        'output_dir = "/tmp/o"\ndataset = "dataset.toml"\nepochs = 1\nmicro_batch_size_per_gpu = [[512, 4], [768, 1]]\n'
        '[model]\ntype = "flux"\n',
        encoding="utf-8",
    )
    cmd = [sys.executable, "-m", "tui.cli", "dataset", "buckets", str(toml), "--profile", str(main)]
    out = subprocess.run([*cmd, "--json"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [(b["width"], b["batch"], b["steps"]) for b in data["buckets"]] == [(512, 4, 1), (768, 1, 5)]
    text = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "(by size: 512: 4, 768: 1)" in text.stdout, text.stderr


def _tar(path: Path, members: dict[str, tuple[int, int] | bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, content in members.items():
            if isinstance(content, tuple):
                buf = io.BytesIO()
                Image.new("RGB", content).save(buf, format="PNG")
                content = buf.getvalue()
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


def test_tar_members_are_read_in_place_with_captions_json(tmp_path: Path) -> None:
    d = tmp_path / "tars"
    d.mkdir()
    _tar(d / "a.tar", {"x.png": (640, 480), "sub/y.png": (480, 640), "z.png": (64, 64), "x.txt": b"not read"})
    (d / "captions.json").write_text(json.dumps({"x.png": ["one", "two"], "sub/y.png": ["three"]}))
    result = add_archives(scan_directory(d))
    assert sorted((i.member, i.width, i.height, i.caption) for i in result.items) == [
        ("sub/y.png", 480, 640, "three"),
        ("x.png", 640, 480, "one"),
        ("x.png", 640, 480, "two"),
    ]
    assert result.skipped_no_caption == 1 and any(
        "z.png" in w or "1 image(s) skipped" in w for w in result.warnings
    )
    assert scan_directory(d).items == []  # the built-in trainer reads no archives
    assert sorted(p.name for p in d.iterdir()) == ["a.tar", "captions.json"]  # nothing extracted
    plan = plan_buckets({"resolutions": [512], "directory": [{"path": str(d)}]}, tmp_path, 1, backend=DP)
    assert plan.num_examples == 3


def test_tar_without_captions_json_is_skipped_with_the_reason(tmp_path: Path) -> None:
    d = tmp_path / "tars"
    d.mkdir()
    _tar(d / "a.tar", {"x.png": (64, 64)})
    result = add_archives(scan_directory(d))
    assert result.items == [] and any("captions.json" in w for w in result.warnings)
    kept = add_archives(scan_directory(d, skip_empty_caption=False), skip_empty_caption=False)
    assert [(i.member, i.caption) for i in kept.items] == [("x.png", "")]
    (d / "b.tar").write_bytes(b"garbage, not a tar")
    assert any("b.tar" in w and "plain .tar" in w for w in add_archives(scan_directory(d)).warnings)


def test_mask_and_control_paths_checked_as_upstream_stops_on_them(tmp_path: Path) -> None:
    d = _folder(tmp_path, [(512, 512)] * 2)
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.new("L", (512, 512)).save(masks / "0.jpg")  # any extension, same stem
    base = {"resolutions": [512]}
    plan = plan_buckets(
        {**base, "directory": [{"path": str(d), "mask_path": str(masks)}]}, tmp_path, 1, backend=DP
    )
    assert any("1 image(s) without a mask" in w for w in plan.warnings)
    for entry, match in [
        ({"mask_path": str(tmp_path / "nope")}, "mask_path: .* is not a folder"),
        ({"default_mask_file": str(masks)}, "default_mask_file: .* is not a file"),
        ({"control_path": str(masks)}, "control_path: no control file for 1 image"),
        ({"online_captions": True}, "online_captions = true needs"),
    ]:
        with pytest.raises(DatasetConfigError, match=match):
            plan_buckets({**base, "directory": [{"path": str(d), **entry}]}, tmp_path, 1, backend=DP)


def test_dataset_scan_reports_archives(tmp_path: Path) -> None:
    d = tmp_path / "tars"
    d.mkdir()
    _tar(d / "a.tar", {"x.png": (64, 64), "y.png": (32, 32)})
    (d / "captions.json").write_text(json.dumps({"x.png": ["one"]}))
    cmd = [sys.executable, "-m", "tui.cli", "dataset", "scan", str(d)]
    out = subprocess.run([*cmd, "--json"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    arc = data["directories"][0]["archives"]
    assert arc == [{"name": "a.tar", "images": 2, "captioned": 1, "uncaptioned": 1, "unreadable": 0}]
    assert data["totals"]["archive_images"] == 2 and data["directories"][0]["other_files"] == []
    text = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "a.tar: 2 image(s), 1 captioned" in text.stdout


def _validate(tmp_path: Path, dataset: str) -> list:  # type: ignore[type-arg]
    from profiles.document import load_profile
    from profiles.validate import validate_profile

    (tmp_path / "dataset.toml").write_text(dataset, encoding="utf-8")
    main = tmp_path / "main.toml"
    main.write_text(
        f'output_dir = "{tmp_path}"\ndataset = "dataset.toml"\nepochs = 1\n[model]\ntype = "flux"\n'
        'transformer_path = "t"\ndiffusers_path = "d"\ndtype = "bfloat16"\n[adapter]\ntype = "lora"\nrank = 16\n'
        'dtype = "bfloat16"\n[optimizer]\ntype = "adamw_optimi"\nlr = 1e-4\n',
        encoding="utf-8",
    )
    return [
        p
        for p in validate_profile(load_profile(main), check_paths="off", checkout=None)
        if p.file.endswith("dataset.toml")
    ]


def test_validation_of_the_dataset_keys_upstream_reads(tmp_path: Path) -> None:
    problems = _validate(
        tmp_path,
        "resolutions = [512]\nsubsample_ratio = 0.5\nshuffle_metadata = false\nonline_captions = false\n"
        '[[directory]]\npath = "imgs"\nnum_repeats = 1.5\ndefault_mask_file = "m.png"\nmask_path = "masks"\n',
    )
    assert [(p.severity, p.key) for p in problems] == []
    # Every directory on size_buckets: no top-level resolutions needed (examples/cosmos_dataset.toml style).
    sized = '[[directory]]\npath = "imgs"\nsize_buckets = [[512, 512, 1]]\n'
    assert not [p for p in _validate(tmp_path, sized) if p.severity == "error"]
    # A directory-only min_ar is a KeyError upstream.
    eager = (
        'resolutions = [512]\n[[directory]]\npath = "imgs"\nenable_ar_bucket = true\nmin_ar = 0.5\nmax_ar = 2.0\n'
        "num_ar_buckets = 3\n"
    )
    keys = {p.key for p in _validate(tmp_path, eager) if p.severity == "error"}
    assert {"directory[0].min_ar", "directory[0].max_ar", "directory[0].num_ar_buckets"} <= keys


def test_dataset_scan_follows_captions_json_precedence(tmp_path: Path) -> None:
    from engine.datasets.scan import scan

    d = _folder(tmp_path, [(64, 64), (64, 64)])  # 0.png, 1.png with .txt captions
    (d / "captions.json").write_text(json.dumps({"1.png": ["one", "two"]}))
    rep = scan(d).directories[0]
    assert rep.captioned == 1 and rep.missing_captions == ["0.png"]  # its .txt is not read


def test_global_batch_uses_the_data_parallel_world_as_train_py_does() -> None:
    """train.py: micro x accumulation x data-parallel world size, which is GPUs / pipeline_stages."""
    from engine.datasets.buckets import DatasetConfigError, global_batches

    plain = global_batches({"micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 3}, num_gpus=4)
    assert plain.by_size == {None: 24} and plain.image_by_size is None and plain.data_parallel == 4
    staged = global_batches({"micro_batch_size_per_gpu": 2, "pipeline_stages": 2}, num_gpus=4)
    assert staged.by_size == {None: 4} and staged.data_parallel == 2
    sized = global_batches(
        {"micro_batch_size_per_gpu": [[512, 4], [768, 1]], "image_micro_batch_size_per_gpu": 8}, num_gpus=2
    )
    assert sized.by_size == {512: 8, 768: 2} and sized.image_by_size == {None: 16}
    with pytest.raises(DatasetConfigError, match="gradient_accumulation_steps: expected a whole number"):
        global_batches({"gradient_accumulation_steps": "2"})
