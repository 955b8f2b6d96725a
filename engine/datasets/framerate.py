"""The frame rate diffusion-pipe resamples training videos to, by model type: its pipeline's `framerate`.

diffusion-pipe counts a video's frames at this rate, not the file's own (frames = int(source frames * framerate /
source fps)), so the frame bucket a clip lands in depends on the model. Values from diffusion-pipe's models/*.py:
ltx-video 25; hunyuan-video, hunyuan_video_15, cosmos, ltx2 and minimax_h3 24; wan 16, except SkyReels-V2
checkpoints (folder name contains "skyreels") and Wan2.2 TI2V-5B (config.json model_type "ti2v"), which are 24.
Image-only model types have none: diffusion-pipe skips their videos.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

VIDEO_FRAMERATES: dict[str, int] = {
    "ltx-video": 25,
    "hunyuan-video": 24,
    "hunyuan_video_15": 24,
    "cosmos": 24,
    "ltx2": 24,
    "minimax_h3": 24,
    "wan": 16,
}
WAN_24FPS = 24


def model_framerate(model: Mapping[str, Any] | None, base_dir: Path | None = None) -> int | None:
    """Frames per second videos are trained at for a profile's `[model]` table; None for image-only types.

    Relative checkpoint paths resolve against base_dir (the main TOML's folder), as everywhere in dpdeck.
    """
    if not isinstance(model, Mapping):
        return None
    model_type = model.get("type")
    rate = VIDEO_FRAMERATES.get(model_type) if isinstance(model_type, str) else None
    if model_type == "wan":
        return _wan_framerate(model, base_dir)
    return rate


def _wan_framerate(model: Mapping[str, Any], base_dir: Path | None) -> int:
    ckpt = model.get("ckpt_path")
    if not isinstance(ckpt, str):
        return VIDEO_FRAMERATES["wan"]
    ckpt_dir = Path(ckpt).expanduser()
    if not ckpt_dir.is_absolute() and base_dir is not None:
        ckpt_dir = base_dir / ckpt_dir
    if "skyreels" in ckpt_dir.name.lower():
        return WAN_24FPS
    # Where diffusion-pipe reads the variant: beside the transformer when transformer_path is a folder, else in
    # the checkpoint folder (Wan2.2 keeps it in low_noise_model/).
    transformer = model.get("transformer_path")
    candidates = [ckpt_dir / "config.json", ckpt_dir / "low_noise_model" / "config.json"]
    if isinstance(transformer, str):
        tdir = Path(transformer).expanduser()
        tdir = tdir if tdir.is_absolute() or base_dir is None else base_dir / tdir
        if tdir.is_dir():
            candidates = [tdir / "config.json"]
    for path in candidates:
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and config.get("model_type") == "ti2v":
            return WAN_24FPS
        return VIDEO_FRAMERATES["wan"]
    return VIDEO_FRAMERATES["wan"]
