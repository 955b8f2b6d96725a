"""SD3 / SD3.5 family: SD3Transformer2DModel (MMDiT / MMDiT-X) + 16-channel VAE + CLIP-L, CLIP-G and T5.

Profile keys as diffusion-pipe's models/sd3.py reads them: `diffusers_path` only (a StableDiffusion3Pipeline
folder; every component, the transformer included, comes from its subfolders; upstream has no single-file path),
plus the flow keys of engine.trainer.flow (`timestep_sample_method`, `sigmoid_scale`, `shift`, `flux_shift`).

Prompt embeddings are built as diffusion-pipe and StableDiffusion3Pipeline.encode_prompt build them: each CLIP's
penultimate hidden state and its projected pooled output; the two hidden states side by side, zero-padded to
T5's width, then T5's 256 tokens (run without a mask) after them in the sequence; the pooled outputs side by
side. The combined tensors are cached, so training reads one entry per caption.

The transformer works on (B, C, h, w) latents itself (it patchifies internally) and takes t on the 0..1000
scale: diffusion-pipe hands it t * 1000, as the pipeline's scheduler timesteps are sigma * 1000.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from engine.trainer.family import ModelLoadError, detect_folder_family, folder_identity
from engine.trainer.flow_family import FlowFamily

T5_LENGTH = 256  # diffusion-pipe calls _get_t5_prompt_embeds with its default, StableDiffusion3Pipeline's 256
BLOCK_PREFIX = "transformer_blocks."
# What each subfolder of the diffusers folder must hold: the component name and its config's class.
SUBFOLDERS: dict[str, str] = {
    "transformer": "SD3Transformer2DModel",
    "vae": "AutoencoderKL",
    "text_encoder": "CLIP-L (CLIPTextModelWithProjection)",
    "text_encoder_2": "CLIP-G (CLIPTextModelWithProjection)",
    "text_encoder_3": "T5 (T5EncoderModel)",
    "tokenizer": "CLIP-L tokenizer",
    "tokenizer_2": "CLIP-G tokenizer",
    "tokenizer_3": "T5 tokenizer",
}
TEXT_PARTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")


class SD3(FlowFamily):
    name = "sd3"
    pipeline_class_name = "StableDiffusion3Pipeline"
    # diffusion-pipe targets JointTransformerBlock: every Linear inside the joint blocks (attention, the dual
    # attention of SD3.5's MMDiT-X, both MLPs, the AdaLN modulations).
    block_prefixes = (BLOCK_PREFIX,)
    # transformer_dtype: diffusion-pipe's sd3.py KEEP_IN_HIGH_PRECISION (module-path regexes here).
    keep_in_high_precision = ("^pos_embed", "^time_text_embed", "^context_embedder", "^norm_out", "^proj_out")
    block_lists = ("transformer_blocks",)  # the MMDiT has no single-stream blocks

    def __init__(self, model_cfg: dict[str, Any], dtype: torch.dtype, device: torch.device) -> None:
        super().__init__(model_cfg, dtype, device)
        self.text_encoder: Any = None
        self.text_encoder_2: Any = None
        self.text_encoder_3: Any = None

    def _pipeline_cls(self) -> Any:
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline

    # ---- checks and loading ------------------------------------------------------------------------------
    def _root(self) -> Path:
        if not self.cfg.get("diffusers_path"):
            found = self.cfg.get("checkpoint_path")
            extra = f" (found checkpoint_path = {found!r}: single files are not supported)" if found else ""
            raise ModelLoadError(
                f"model.diffusers_path: required for sd3, a StableDiffusion3Pipeline diffusers folder{extra}"
            )
        return Path(self.cfg["diffusers_path"]).expanduser()

    def check_family(self) -> None:
        root = self._root()
        if not root.is_dir():
            raise ModelLoadError(f"model.diffusers_path: {root} is not a directory")
        found = detect_folder_family(root)
        if found != self.name:
            raise ModelLoadError(
                f"model.type = 'sd3' but model.diffusers_path {root} holds a {found} model; expected an SD3 / "
                "SD3.5 diffusers folder (StableDiffusion3Pipeline in model_index.json)"
            )
        for sub, what in SUBFOLDERS.items():
            if not (root / sub).is_dir():
                raise ModelLoadError(f"model.diffusers_path: {root} has no {sub}/ folder (the {what})")
        cls = _config_class(root / "transformer")
        if cls != SUBFOLDERS["transformer"]:
            raise ModelLoadError(
                f"model.diffusers_path: {root}/transformer holds a {cls}; sd3 needs an SD3Transformer2DModel"
            )

    def load(self) -> None:
        self.check_family()
        from diffusers import AutoencoderKL, SD3Transformer2DModel
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        root = self._root()
        self.vae = AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=torch.float32)
        self.tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer")
        self.tokenizer_2 = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer_2")
        self.tokenizer_3 = T5TokenizerFast.from_pretrained(root, subfolder="tokenizer_3")
        self.text_encoder = CLIPTextModelWithProjection.from_pretrained(
            root, subfolder="text_encoder", torch_dtype=self.dtype
        )
        self.text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
            root, subfolder="text_encoder_2", torch_dtype=self.dtype
        )
        self.text_encoder_3 = T5EncoderModel.from_pretrained(
            root, subfolder="text_encoder_3", torch_dtype=self.dtype
        )
        self.transformer = SD3Transformer2DModel.from_pretrained(
            root, subfolder="transformer", torch_dtype=self.dtype
        )
        self.unet = self.transformer  # the loop's name for the denoiser
        self.vae.requires_grad_(False).to(self.device)
        self.transformer.requires_grad_(False)
        for te in (self.text_encoder, self.text_encoder_2, self.text_encoder_3):
            te.requires_grad_(False)
            te.to(self.device, dtype=self.dtype)

    def text_encoders(self) -> list[torch.nn.Module]:
        return [self.text_encoder, self.text_encoder_2, self.text_encoder_3]

    def identity(self, part: str) -> str:
        root = self._root()
        subs = ("vae",) if part == "vae" else TEXT_PARTS
        extra = f"|{self.dtype}|{T5_LENGTH}" if part == "text" else ""
        return "|".join(folder_identity(root / s) for s in subs) + extra

    def free_encoders(self, *args: Any, **kwargs: Any) -> None:
        # The base decides what goes (its keep_* options); T5, a third encoder it does not know, follows the CLIPs.
        super().free_encoders(*args, **kwargs)
        if self.text_encoder is None:
            self.text_encoder_3 = None

    # ---- encoding ----------------------------------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 8

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        dist = self.vae.encode(pixels.to(self.device, torch.float32)).latent_dist
        shift = self.vae.config.shift_factor or 0.0
        # (z - shift_factor) * scaling_factor as the pipeline and diffusion-pipe; the mean keeps the cache
        # deterministic (as the other flow families here).
        return ((dist.mean - shift) * self.vae.config.scaling_factor).float().cpu()

    def _clip(self, encoder: Any, tokenizer: Any, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        # Both CLIPs are padded to the first tokenizer's length, as the pipeline does (77 for real SD3).
        ids = tokenizer(
            captions,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        out = encoder(ids, output_hidden_states=True)
        return out.hidden_states[-2], out.text_embeds  # penultimate layer; projected pooled output

    @torch.no_grad()
    def encode_prompts(self, captions: list[str]) -> list[dict[str, torch.Tensor]]:
        hidden_l, pooled_l = self._clip(self.text_encoder, self.tokenizer, captions)
        hidden_g, pooled_g = self._clip(self.text_encoder_2, self.tokenizer_2, captions)
        t5_ids = self.tokenizer_3(
            captions, padding="max_length", max_length=T5_LENGTH, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)
        t5 = self.text_encoder_3(t5_ids)[0]
        clip = torch.cat([hidden_l, hidden_g], dim=-1)
        if clip.shape[-1] > t5.shape[-1]:
            raise ModelLoadError(
                f"model.diffusers_path: CLIP-L + CLIP-G width {clip.shape[-1]} exceeds T5's {t5.shape[-1]}; "
                "these text encoders do not belong together"
            )
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        hidden = torch.cat([clip.to(t5.dtype), t5], dim=-2)
        pooled = torch.cat([pooled_l, pooled_g], dim=-1)
        return [
            {"encoder_hidden_states": h.cpu(), "pooled_projections": p.cpu()}
            for h, p in zip(hidden, pooled, strict=True)
        ]

    def unet_kwargs(
        self, text: dict[str, torch.Tensor], image_meta: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        return {
            "encoder_hidden_states": text["encoder_hidden_states"].to(self.device, self.dtype),
            "pooled_projections": text["pooled_projections"].to(self.device, self.dtype),
        }

    # ---- forward -----------------------------------------------------------------------------------------
    def denoise(
        self, model: Any, noisy: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any]
    ) -> torch.Tensor:
        # t in (0, 1) from the flow sampler; the transformer's timestep embedding expects sigma * 1000.
        return model(hidden_states=noisy, timestep=t.float() * 1000, **kwargs).sample


def _config_class(folder: Path) -> str:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return f"folder without config.json ({folder})"
    try:
        return str(json.loads(cfg.read_text()).get("_class_name", "config without _class_name"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{cfg}: unreadable ({exc})") from exc
