"""Bucket sizes are rounded to the multiple of the backend and model type that will train the profile."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from PIL import Image

from engine.datasets.buckets import plan_buckets
from engine.datasets.framerate import pixel_multiple
from statefiles import settings
from tui.cli.cmd_dataset import bucket_preview

REPO = Path(__file__).resolve().parent.parent
RESOLUTION = 400  # odd enough that 16 and 32 give different sizes at every aspect ratio below
ARS = [0.5, 0.75, 1.0, 1.5]
DATASET = (
    f"resolutions = [{RESOLUTION}]\nenable_ar_bucket = true\nar_buckets = {ARS}\n"
    '[[directory]]\npath = "imgs"\n'
)


def _upstream_size(ar: float, multiple: int) -> tuple[int, int]:
    # diffusion-pipe ARBucketDataset: w = sqrt(area * ar), h = area / w, then round(x / m) * m each.
    w = math.sqrt(RESOLUTION**2 * ar)
    h = RESOLUTION**2 / w
    return int(round(w / multiple) * multiple), int(round(h / multiple) * multiple)


def _dataset(tmp_path: Path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    for i, ar in enumerate(ARS):
        Image.new("RGB", (int(300 * ar), 300)).save(d / f"{i}.png")
        (d / f"{i}.txt").write_text("a caption", encoding="utf-8")
    toml = tmp_path / "dataset.toml"
    toml.write_text(DATASET, encoding="utf-8")
    return toml


def _main(tmp_path: Path, model: str) -> Path:
    main = tmp_path / "main.toml"
    main.write_text(
        'output_dir = "/tmp/o"\ndataset = "dataset.toml"\nepochs = 1\nmicro_batch_size_per_gpu = 1\n'
        f"[model]\n{model}",
        encoding="utf-8",
    )
    return main


def _wan(tmp_path: Path, variant: str) -> str:
    ckpt = tmp_path / f"wan-{variant}"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": variant, "dim": 3072}), encoding="utf-8")
    return f'type = "wan"\nckpt_path = "{ckpt.name}"\ndtype = "bfloat16"\n'


def _sizes(preview: dict) -> dict[float, tuple[int, int]]:
    return {b["ar"]: (b["width"], b["height"]) for b in preview["buckets"]}


def test_wan_ti2v_rounds_to_32_like_diffusion_pipe(tmp_path: Path) -> None:
    toml = _dataset(tmp_path)
    preview = bucket_preview(toml, str(_main(tmp_path, _wan(tmp_path, "ti2v"))), 1)
    assert preview["round_to"] == 32
    assert _sizes(preview) == {ar: _upstream_size(ar, 32) for ar in ARS}
    assert all(w % 32 == 0 and h % 32 == 0 for w, h in _sizes(preview).values())
    # 16 would give other sizes here, so the test tells the two apart.
    assert _sizes(preview) != {ar: _upstream_size(ar, 16) for ar in ARS}


def test_diffusion_pipe_default_multiple_is_16(tmp_path: Path) -> None:
    toml = _dataset(tmp_path)
    for model in ('type = "chroma"\ndiffusion_model = "x.safetensors"\n', _wan(tmp_path, "t2v")):
        preview = bucket_preview(toml, str(_main(tmp_path, model)), 1)
        assert preview["round_to"] == 16
        assert _sizes(preview) == {ar: _upstream_size(ar, 16) for ar in ARS}


def test_builtin_backend_keeps_16(tmp_path: Path) -> None:
    assert pixel_multiple({"type": "sd15"}, "builtin") == 16
    ti2v = {"type": "wan", "ckpt_path": _wan(tmp_path, "ti2v").split('"')[3]}
    assert pixel_multiple(ti2v, "builtin", tmp_path) == 16
    assert pixel_multiple(ti2v, "diffusion-pipe", tmp_path) == 32
    toml = _dataset(tmp_path)
    sd15 = 'type = "sd15"\ncheckpoint_path = "x.safetensors"\ndtype = "float16"\n'
    preview = bucket_preview(toml, str(_main(tmp_path, sd15)), 1)
    assert preview["round_to"] == 16
    assert _sizes(preview) == {ar: _upstream_size(ar, 16) for ar in ARS}


def test_sdxl_follows_the_backend_auto_would_pick(tmp_path: Path) -> None:
    toml = _dataset(tmp_path)
    main = _main(tmp_path, 'type = "sdxl"\ncheckpoint_path = "x.safetensors"\ndtype = "bfloat16"\n')
    assert bucket_preview(toml, str(main), 1)["round_to"] == 16
    settings.set_value("diffusion_pipe.path", str(tmp_path))
    assert bucket_preview(toml, str(main), 1)["round_to"] == 16


def test_ars_that_round_to_one_size_are_separate_buckets(tmp_path: Path) -> None:
    # diffusion-pipe groups by (ar, width, height, frames), so each is truncated to the global batch on its own.
    d = tmp_path / "imgs"
    d.mkdir()
    for name, size in (("a", (100, 100)), ("b", (102, 100))):
        Image.new("RGB", size).save(d / f"{name}.png")
        (d / f"{name}.txt").write_text("x", encoding="utf-8")
    data = {"resolutions": [64], "enable_ar_bucket": True, "ar_buckets": [1.0, 1.02], "directory": [{"path": "imgs"}]}
    plan = plan_buckets(data, tmp_path, 2)
    assert [(b.ar, b.width, b.height, b.count, b.dropped) for b in plan.buckets] == [
        (1.0, 64, 64, 0, 1),
        (1.02, 64, 64, 0, 1),
    ]
    assert plan_buckets(data, tmp_path, 1).steps_per_epoch == 2


def test_cli_json_and_text_show_the_multiple(tmp_path: Path) -> None:
    toml = _dataset(tmp_path)
    main = _main(tmp_path, _wan(tmp_path, "ti2v"))
    cmd = [sys.executable, "-m", "tui.cli", "dataset", "buckets", str(toml), "--profile", str(main)]
    out = subprocess.run([*cmd, "--json"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["round_to"] == 32
    text = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert text.returncode == 0 and "multiples of 32" in text.stdout
