"""The frame rate diffusion-pipe resamples training videos to, by model type: its pipeline's `framerate`.

diffusion-pipe counts a video's frames at this rate, not the file's own (frames = int(source frames * framerate /
source fps)), so the frame bucket a clip lands in depends on the model. Values from diffusion-pipe's models/*.py:
ltx-video 25; hunyuan-video, hunyuan_video_15, cosmos, ltx2 and minimax_h3 24; cosmos_predict2 and anima (one
pipeline class) 16; wan 16, except SkyReels-V2
checkpoints (folder name contains "skyreels") and Wan2.2 TI2V-5B (config.json model_type "ti2v"), which are 24.
Image-only model types have none: diffusion-pipe skips their videos.

The pixel multiple bucket sizes are rounded to is the pipeline's `pixels_round_to_multiple` (models/base.py
CommonPipeline: 16; utils/dataset.py passes it to DirectoryDataset, whose own default of 32 is then unused).
ltx-video and hunyuan_image set 32 on their class, and Wan2.2 TI2V-5B (config.json model_type "ti2v") raises it
to 32 (models/wan/wan.py). All of it read from diffusion-pipe commit 8f83dbf. Old diffusion-pipe versions,
before the attribute existed, used IMAGE_SIZE_ROUND_TO_MULTIPLE = 32 for every model. dpdeck's built-in trainer
uses 16 (engine.datasets.buckets.SIZE_ROUND_TO).
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
    "cosmos_predict2": 16,
    "anima": 16,
}
WAN_24FPS = 24
DEFAULT_PIXEL_MULTIPLE = 16
# Model types whose pipeline class sets its own pixels_round_to_multiple.
PIXEL_MULTIPLES: dict[str, int] = {"ltx-video": 32, "hunyuan_image": 32}
# Variants whose pipeline sets its own pixels_round_to_multiple, by wan config.json model_type.
WAN_PIXEL_MULTIPLES: dict[str, int] = {"ti2v": 32}
BUILTIN_BACKEND = "builtin"


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
    ckpt_dir = _wan_ckpt_dir(model, base_dir)
    if ckpt_dir is None:
        return VIDEO_FRAMERATES["wan"]
    if "skyreels" in ckpt_dir.name.lower():
        return WAN_24FPS
    return WAN_24FPS if _wan_config_type(model, base_dir) == "ti2v" else VIDEO_FRAMERATES["wan"]


def _wan_ckpt_dir(model: Mapping[str, Any], base_dir: Path | None) -> Path | None:
    ckpt = model.get("ckpt_path")
    if not isinstance(ckpt, str):
        return None
    ckpt_dir = Path(ckpt).expanduser()
    if not ckpt_dir.is_absolute() and base_dir is not None:
        ckpt_dir = base_dir / ckpt_dir
    return ckpt_dir


def _wan_config_type(model: Mapping[str, Any], base_dir: Path | None) -> str | None:
    """The model_type of the config.json diffusion-pipe reads the Wan variant from; None when unreadable."""
    ckpt_dir = _wan_ckpt_dir(model, base_dir)
    if ckpt_dir is None:
        return None
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
        # The first readable file decides, as diffusion-pipe opens exactly one.
        model_type = config.get("model_type") if isinstance(config, dict) else None
        return model_type if isinstance(model_type, str) else None
    return None


def pixel_multiple(model: Mapping[str, Any] | None, backend: str, base_dir: Path | None = None) -> int:
    """The multiple bucket widths and heights are rounded to when `backend` trains this `[model]` table."""
    if backend == BUILTIN_BACKEND or not isinstance(model, Mapping):
        return DEFAULT_PIXEL_MULTIPLE
    if model.get("type") == "wan":
        variant = _wan_config_type(model, base_dir)
        return WAN_PIXEL_MULTIPLES.get(variant or "", DEFAULT_PIXEL_MULTIPLE)
    model_type = model.get("type")
    return PIXEL_MULTIPLES.get(model_type, DEFAULT_PIXEL_MULTIPLE) if isinstance(model_type, str) else DEFAULT_PIXEL_MULTIPLE


def preview_backend(profile: Any) -> str:
    """The backend `dpdeck queue` (backend auto) would pick; diffusion-pipe when auto cannot pick one yet."""
    from engine.jobs.launch import EnqueueError, pick_backend

    try:
        return pick_backend(profile, "auto")
    except EnqueueError:
        return "diffusion-pipe"


def bucket_rules(profile: Any) -> tuple[int | None, int]:
    """(frame rate, pixel multiple) a profile's training buckets use; shared by the CLI and the TUI previews."""
    main = profile.main.data()
    base = profile.main.path.parent if profile.main.path is not None else None
    model = main.get("model")
    return model_framerate(model, base), pixel_multiple(model, preview_backend(profile), base)
