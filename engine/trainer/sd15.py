"""Stable Diffusion 1.x family: one CLIP text encoder, eps (or v) prediction, 8x VAE in real models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.trainer.family import (
    ATTENTION_TARGETS,
    UNET_BLOCKS,
    Family,
    ModelLoadError,
    file_identity,
    folder_identity,
    linear_modules,
)


class SD15(Family):
    name = "sd15"
    pipeline_class_name = "StableDiffusionPipeline"
    text_parts = ("text_encoder", "tokenizer")

    def _pipeline_cls(self) -> Any:
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline

    def load(self) -> None:
        self.check_family()
        from diffusers import AutoencoderKL, UNet2DConditionModel

        if self.cfg.get("diffusers_path"):
            root = Path(self.cfg["diffusers_path"]).expanduser()
            self.unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", torch_dtype=self.dtype)
            self.vae = AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=torch.float32)
            self._load_text(root)
        else:
            path = Path(self.cfg["checkpoint_path"]).expanduser()
            kwargs: dict[str, Any] = {"torch_dtype": self.dtype}
            if self.cfg.get("diffusers_config"):  # offline: a local diffusers folder supplies the configs
                kwargs["config"] = str(Path(self.cfg["diffusers_config"]).expanduser())
            try:
                pipe = self._pipeline_cls().from_single_file(str(path), **kwargs)
            except Exception as exc:  # noqa: BLE001 - surface the path and the offline hint
                raise ModelLoadError(
                    f"model.checkpoint_path: {path}: from_single_file failed ({exc}). Offline, set "
                    "model.diffusers_config to a local diffusers folder of the same architecture."
                ) from exc
            self.unet = pipe.unet
            self.vae = pipe.vae.to(torch.float32)
            self._take_text(pipe)
        self.vae.requires_grad_(False)
        self.unet.requires_grad_(False)
        self.vae.to(self.device)
        for te in self.text_encoders():
            te.requires_grad_(False)
            te.to(self.device, dtype=self.dtype)

    def _load_text(self, root: Path) -> None:
        from transformers import CLIPTextModel, CLIPTokenizer

        self.tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer")
        self.text_encoder = CLIPTextModel.from_pretrained(
            root, subfolder="text_encoder", torch_dtype=self.dtype
        )

    def _take_text(self, pipe: Any) -> None:
        self.tokenizer = pipe.tokenizer
        self.text_encoder = pipe.text_encoder

    def text_encoders(self) -> list[torch.nn.Module]:
        return [self.text_encoder]

    def identity(self, part: str) -> str:
        if self.cfg.get("diffusers_path"):
            root = Path(self.cfg["diffusers_path"]).expanduser()
            subs = ("vae",) if part == "vae" else self.text_parts
            return (
                "|".join(folder_identity(root / s) for s in subs) + f"|{self.dtype if part == 'text' else ''}"
            )
        return file_identity(Path(self.cfg["checkpoint_path"]).expanduser()) + f"|{part}|{self.dtype}"

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 8

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        dist = self.vae.encode(pixels.to(self.device, torch.float32)).latent_dist
        # The mean (no sampling) keeps cached latents deterministic, like kohya's cache.
        return (dist.mean * self.vae.config.scaling_factor).float().cpu()

    def _tokens(self, tokenizer: Any, captions: list[str]) -> torch.Tensor:
        return tokenizer(
            captions,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """Batched text conditioning, with grad (text encoder LoRA trains through it)."""
        return {"encoder_hidden_states": self.text_encoder(self._tokens(self.tokenizer, captions))[0]}

    @torch.no_grad()
    def encode_prompts(self, captions: list[str]) -> list[dict[str, torch.Tensor]]:
        batch = {k: v.cpu() for k, v in self.encode_text(captions).items()}
        return [{k: v[i] for k, v in batch.items()} for i in range(len(captions))]

    def unet_kwargs(
        self, text: dict[str, torch.Tensor], image_meta: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        return {"encoder_hidden_states": text["encoder_hidden_states"].to(self.device, self.dtype)}

    def lora_target_modules(self) -> list[str]:
        if self.lora_targets == "attention":
            return list(ATTENTION_TARGETS)
        # diffusion-pipe: every Linear of the UNet's blocks (attention, feed-forward, resnets' time_emb_proj,
        # and proj_in/proj_out where they are Linear, as in SDXL); adapter.exclude_modules is applied by peft.
        return linear_modules(self.unet, UNET_BLOCKS)

    def kohya_name(self, module_path: str) -> str:
        # kohya's SD1.x convention (which ComfyUI and A1111 map) keeps diffusers block names.
        return "lora_unet_" + module_path.replace(".", "_")
