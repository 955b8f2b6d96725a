"""The small interface a model family implements; the training loop knows nothing else about models.

A family loads its components, encodes images and prompts for the cache, runs the denoiser forward, and
names its LoRA targets and their ComfyUI/A1111 (kohya) key names. `schedule` tells the loop which training
objective applies: "ddpm" (noise / v prediction, engine.trainer.ddpm) or "flow" (rectified flow,
engine.trainer.flow); `denoise` runs the model on latents shaped (B, C, h, w) either way, so a family that packs
latents into tokens (Flux, Chroma) hides that from the loop.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

ATTENTION_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# diffusion-pipe's UNet LoRA (models/sdxl.py configure_adapter): every Linear inside these containers.
UNET_BLOCKS = ("down_blocks.", "mid_block.", "up_blocks.")


def linear_modules(root: torch.nn.Module, prefixes: tuple[str, ...] = ("",)) -> list[str]:
    """Full paths of the nn.Linear modules under `root` whose path starts with one of `prefixes`."""
    return sorted(
        name
        for name, module in root.named_modules()
        if name.startswith(prefixes) and isinstance(module, torch.nn.Linear)
    )


class ModelLoadError(RuntimeError):
    """The model path is missing, unreadable, or holds a different family than the profile says."""


def file_identity(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def folder_identity(folder: Path) -> str:
    """Identity of a diffusers component folder: its weight/config files' paths, sizes and mtimes."""
    parts = [file_identity(p) for p in sorted(folder.rglob("*")) if p.is_file()]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()


def detect_single_file_family(path: Path) -> str:
    """Best guess at what a single-file checkpoint holds, from its tensor names (no weights loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not a usable safetensors file"
        raise ModelLoadError(f"{path}: cannot read as safetensors ({exc})") from exc
    joined = set(k.split(".")[0] for k in keys)
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd15"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    # Qwen-Image's text-input RMSNorm; ComfyUI's file may carry the checkpoint prefix.
    if any(k.startswith(("txt_norm.", "model.diffusion_model.txt_norm.")) for k in keys):
        return "qwen_image"
    # Chroma is a pruned Flux: both layouts (original and diffusers) carry its distilled_guidance_layer.
    if any(
        k.startswith(("distilled_guidance_layer.", "model.diffusion_model.distilled_guidance_layer."))
        for k in keys
    ):
        return "chroma"
    if any("double_blocks." in k for k in keys):
        return "flux"
    if any(k.startswith("single_transformer_blocks.") for k in keys) and any(
        k.startswith("time_text_embed.") for k in keys
    ):
        return "flux"  # a diffusers-layout FluxTransformer2DModel file
    if any("joint_blocks." in k for k in keys):
        return "sd3"
    # NextDiTs, bare or under ComfyUI's prefix: Z-Image names its patch embedder all_x_embedder; Lumina 2 has
    # x_embedder with cap_embedder (original names) or time_caption_embed (diffusers').
    bare = {k.removeprefix("model.diffusion_model.") for k in keys}
    if any(k.startswith("all_x_embedder.") for k in bare):
        return "z_image"
    if "x_embedder.weight" in bare and any(
        k.startswith(("cap_embedder.", "time_caption_embed.caption_embedder.")) for k in bare
    ):
        return "lumina_2"
    return "unknown (top-level prefixes: " + ", ".join(sorted(joined)[:8]) + ")"


def detect_folder_family(folder: Path) -> str:
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(f"{folder}: no model_index.json; expected a diffusers pipeline folder")
    try:
        cls = json.loads(index.read_text()).get("_class_name", "")
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{index}: unreadable ({exc})") from exc
    if cls == "FluxPipeline":
        return "flux"
    if cls == "ChromaPipeline":
        return "chroma"
    if cls.startswith("QwenImage"):  # QwenImagePipeline and its Edit / img2img variants share the parts
        return "qwen_image"
    if cls.startswith("StableDiffusion3"):  # StableDiffusion3Pipeline and its img2img / inpaint variants
        return "sd3"
    if "XL" in cls:
        return "sdxl"
    if cls.startswith("StableDiffusion") and "3" not in cls:
        return "sd15"
    return f"unknown ({cls})"


class Family(ABC):
    name: str
    pipeline_class_name: str
    # The denoiser being trained (a diffusers UNet2DConditionModel, or a DiT transformer for flow families).
    unet: torch.nn.Module
    # "ddpm" or "flow": which objective the loop trains (see the module docstring).
    schedule: str = "ddpm"
    # The component name diffusers' save_lora_weights / load_lora_weights use for the denoiser's LoRA.
    lora_prefix: str = "unet"
    # Whether the family defines kohya (ComfyUI/A1111) key names (the UNet families).
    has_kohya: bool = True
    # The DiT families' ComfyUI key table (engine.trainer.comfy_lora.LAYOUTS), written as lora_comfy.safetensors.
    comfy_layout: str | None = None
    # adapter.targets: "all_linear" (diffusion-pipe's default) or "attention" (to_q/k/v/out.0 only).
    lora_targets: str = "all_linear"
    # transformer_dtype: regexes (re.search on module paths) of the denoiser's Linears kept at model.dtype, as
    # diffusion-pipe's KEEP_IN_HIGH_PRECISION lists (embedders, final layer); a family names its own.
    keep_in_high_precision: tuple[str, ...] = (
        "embed",
        "^norm_out",
        "^proj_out",
        "^img_in",
        "^txt_in",
        "^time_",
        "final_layer",
    )
    # blocks_to_swap: the denoiser's lists of transformer blocks, in forward order.
    block_lists: tuple[str, ...] = ("transformer_blocks", "single_transformer_blocks")
    swapper: Any = None  # engine.trainer.memory.BlockSwapper once apply_memory_options swaps blocks

    def __init__(self, model_cfg: dict[str, Any], dtype: torch.dtype, device: torch.device) -> None:
        self.cfg = model_cfg
        self.dtype = dtype
        self.device = device
        self.v_pred = bool(model_cfg.get("v_pred", False))

    def check_family(self) -> None:
        """Refuse a checkpoint of another family before spending minutes loading it."""
        if self.cfg.get("diffusers_path"):
            path = Path(self.cfg["diffusers_path"]).expanduser()
            if not path.is_dir():
                raise ModelLoadError(f"model.diffusers_path: {path} is not a directory")
            found = detect_folder_family(path)
        else:
            path = Path(self.cfg["checkpoint_path"]).expanduser()
            if not path.is_file():
                raise ModelLoadError(f"model.checkpoint_path: {path} is not a file")
            found = detect_single_file_family(path)
        if found != self.name:
            raise ModelLoadError(
                f"model.type = '{self.name}' but {path} holds a {found} model; fix model.type or the path"
            )

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def identity(self, part: str) -> str:
        """Stable identity of a component ('vae' or 'text') for cache fingerprints."""

    @property
    @abstractmethod
    def vae_scale_factor(self) -> int: ...

    @abstractmethod
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B,3,H,W) in [-1,1] -> scaled latents (B,C,h,w), float32."""

    @abstractmethod
    def encode_prompts(self, captions: list[str]) -> list[dict[str, torch.Tensor]]:
        """One dict of tensors per caption (cached on disk as is)."""

    @abstractmethod
    def unet_kwargs(
        self, text: dict[str, torch.Tensor], image_meta: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        """Keyword arguments for the denoiser forward from stacked cached text + per-image metadata."""

    def image_meta(
        self, orig_hw: tuple[int, int], crop_tl: tuple[int, int], target_hw: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        return {}

    def collate_text(self, texts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """One batch from cached text entries; a family whose entries vary in length (Qwen-Image) pads here."""
        return {k: torch.stack([t[k] for t in texts]) for k in texts[0]}

    def lora_target_modules(self) -> list[str]:
        return list(ATTENTION_TARGETS)

    def swap_blocks(self, n: int) -> list[torch.nn.Module]:
        """The blocks whose frozen weights blocks_to_swap = n keeps on the CPU: the last n, over all lists."""
        from engine.trainer.memory import last_blocks

        blocks = [b for attr in self.block_lists for b in getattr(self.unet, attr, None) or ()]
        if not blocks:
            raise ModelLoadError(f"blocks_to_swap: {self.name} has no transformer blocks to swap")
        try:
            return last_blocks(blocks, n)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None

    def apply_memory_options(self, transformer_dtype: str | None, blocks_to_swap: int) -> list[str]:
        """transformer_dtype storage for the frozen Linears, then block swapping (kept as self.swapper); returns
        what was done, for the log. Called after LoRA is added: peft casts new LoRA weights to their base
        weight's dtype."""
        from engine.trainer import memory

        done = []
        if transformer_dtype:
            storage = memory.STORAGE_DTYPES[transformer_dtype]
            names = memory.store_linears(self.unet, storage, self.dtype, self.keep_in_high_precision)
            done.append(
                f"transformer_dtype: {len(names)} Linear weights stored as {storage}, computed in {self.dtype}"
            )
        self.swapper = None
        if blocks_to_swap:
            blocks = self.swap_blocks(blocks_to_swap)
            self.swapper = memory.BlockSwapper(self.unet, blocks, self.device)
            mib = self.swapper.swapped_bytes() / 2**20
            done.append(f"blocks_to_swap: {len(blocks)} blocks ({mib:.1f} MiB) kept on the CPU between uses")
        return done

    def denoise(
        self, model: Any, noisy: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any]
    ) -> torch.Tensor:
        """The model's prediction for noisy latents (B, C, h, w) at timesteps t, shaped like `noisy`."""
        return model(noisy, t, **kwargs).sample

    def probe_timestep(self) -> torch.Tensor:
        """The fixed timestep of the save probe: mid-schedule in the family's own timestep scale."""
        return torch.tensor([500])

    @abstractmethod
    def kohya_name(self, module_path: str) -> str:
        """ComfyUI/A1111 kohya key stem for a diffusers UNet module path."""

    def free_encoders(self, keep_text: bool = False, keep_vae: bool = False) -> None:
        """Drop VAE and text encoders once everything is cached (keep_text: the text encoders train;
        keep_vae: samples while training decode with it, engine/trainer/sampling.py)."""
        drop = ("vae",) if keep_text else ("vae", "text_encoder", "text_encoder_2")
        for attr in drop:
            if attr == "vae" and keep_vae:
                continue
            if hasattr(self, attr):
                setattr(self, attr, None)
