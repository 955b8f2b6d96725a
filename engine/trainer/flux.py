"""Flux family (dev / schnell): FluxTransformer2DModel + 16-channel VAE + CLIP (pooled) and T5, flow matching.

Profile keys (diffusion-pipe's): `diffusers_path` (a FluxPipeline folder), optional `transformer_path`,
`guidance` (the distilled-guidance value a guidance-embedding model is trained at; default 1.0),
`bypass_guidance_embedding` (skip the guidance embedder in the forward, as diffusion-pipe does for de-distilled
training), and the flow keys of engine.trainer.flow.

`transformer_path` may be:
- a folder holding a diffusers transformer (config.json + weights), loaded with from_pretrained;
- a diffusers-layout .safetensors file with a config.json in the same folder;
- an original (BFL / ComfyUI) layout file, loaded with from_single_file, its config taken from
  `diffusers_path`'s `transformer/` folder (offline; diffusers' converter assumes the full 3072 width).
"""

from __future__ import annotations

import json
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import torch

from engine.trainer import flow
from engine.trainer.family import ModelLoadError, file_identity, folder_identity
from engine.trainer.flow_family import FlowFamily

T5_MAX_LENGTH = 512  # diffusion-pipe's and the Flux-dev / Chroma pipelines' T5 length
BLOCK_PREFIXES = ("transformer_blocks.", "single_transformer_blocks.")


def _transformer_class_of(folder: Path) -> str:
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise ModelLoadError(f"{folder}: no config.json; expected a diffusers transformer folder")
    try:
        return str(json.loads(cfg.read_text()).get("_class_name", "unknown"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{cfg}: unreadable ({exc})") from exc


def _guidance_bypass_forward(
    self: Any, timestep: torch.Tensor, guidance: torch.Tensor, pooled_projection: torch.Tensor
) -> torch.Tensor:
    # diffusion-pipe's bypass: the time + pooled-text embedding without the guidance embedder's term.
    timesteps_emb = self.timestep_embedder(self.time_proj(timestep).to(dtype=pooled_projection.dtype))
    return timesteps_emb + self.text_embedder(pooled_projection)


class Flux(FlowFamily):
    name = "flux"
    pipeline_class_name = "FluxPipeline"
    comfy_layout = "flux"
    block_prefixes = BLOCK_PREFIXES
    transformer_class_name = "FluxTransformer2DModel"
    text_parts: tuple[str, ...] = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    # diffusion-pipe's flux KEEP_IN_HIGH_PRECISION, plus the top-level proj_out / norm_out it also keeps.
    keep_in_high_precision: tuple[str, ...] = (
        "time_text_embed",
        "context_embedder",
        "x_embedder",
        "^proj_out",
        "^norm_out",
    )

    def _pipeline_cls(self) -> Any:
        from diffusers import FluxPipeline

        return FluxPipeline

    def _transformer_cls(self) -> Any:
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel

    # ---- checks and loading ------------------------------------------------------------------------------
    def _root(self) -> Path:
        if not self.cfg.get("diffusers_path"):
            raise ModelLoadError(f"model.diffusers_path: required for {self.name} (a Flux diffusers folder)")
        return Path(self.cfg["diffusers_path"]).expanduser()

    def _transformer_path(self) -> Path | None:
        raw = self.cfg.get("transformer_path")
        return Path(raw).expanduser() if raw else None

    def check_family(self) -> None:
        root = self._root()
        if not root.is_dir():
            raise ModelLoadError(f"model.diffusers_path: {root} is not a directory")
        found = _folder_family(root)
        if found not in ("flux", "chroma"):
            raise ModelLoadError(
                f"model.type = '{self.name}' but model.diffusers_path {root} holds a {found} model; "
                "expected a Flux diffusers folder (FluxPipeline in model_index.json)"
            )
        for sub in self._required_subfolders():
            if not (root / sub).is_dir():
                raise ModelLoadError(f"model.diffusers_path: {root} has no {sub}/ folder")
        path = self._transformer_path()
        if path is None:
            if self.name != "flux":
                raise ModelLoadError(f"model.transformer_path: required for {self.name}")
            return
        self._check_transformer(path)

    def _required_subfolders(self) -> tuple[str, ...]:
        subs = ("vae", "text_encoder_2", "tokenizer_2", "text_encoder", "tokenizer")
        return subs if self._transformer_path() else (*subs, "transformer")

    def _check_transformer(self, path: Path) -> None:
        if path.is_dir():
            cls = _transformer_class_of(path)
            if cls != self.transformer_class_name:
                raise ModelLoadError(
                    f"model.transformer_path: {path} holds a {cls}; model.type = '{self.name}' "
                    f"needs a {self.transformer_class_name}"
                )
            return
        if not path.is_file():
            raise ModelLoadError(f"model.transformer_path: {path} is not a file or folder")
        from engine.trainer.family import detect_single_file_family

        found = detect_single_file_family(path)
        if found != self.name:
            raise ModelLoadError(
                f"model.type = '{self.name}' but model.transformer_path {path} holds a {found} transformer; "
                "fix model.type or the path"
            )

    def load(self) -> None:
        self.check_family()
        from diffusers import AutoencoderKL

        root = self._root()
        self.vae = AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=torch.float32)
        self._load_text(root)
        self.transformer = self._load_transformer(root)
        self.unet = self.transformer  # the loop's name for the denoiser
        if self.cfg.get("bypass_guidance_embedding"):
            self._bypass_guidance()
        self.vae.requires_grad_(False).to(self.device)
        self.transformer.requires_grad_(False)
        for te in self.text_encoders():
            te.requires_grad_(False)
            te.to(self.device, dtype=self.dtype)

    def _load_text(self, root: Path) -> None:
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        self.tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer")
        self.text_encoder = CLIPTextModel.from_pretrained(
            root, subfolder="text_encoder", torch_dtype=self.dtype
        )
        self.tokenizer_2 = T5TokenizerFast.from_pretrained(root, subfolder="tokenizer_2")
        self.text_encoder_2 = T5EncoderModel.from_pretrained(
            root, subfolder="text_encoder_2", torch_dtype=self.dtype
        )

    def text_encoders(self) -> list[torch.nn.Module]:
        return [self.text_encoder, self.text_encoder_2]

    def _known_config(self, root: Path) -> Path:
        """Folder with the config.json for an original-layout file: the pipeline's own transformer config."""
        sub = root / "transformer"
        if not (sub / "config.json").is_file():
            raise ModelLoadError(
                f"model.transformer_path is an original-layout file; its config comes from {sub}/config.json, "
                "which is missing"
            )
        return sub

    def _load_transformer(self, root: Path) -> torch.nn.Module:
        cls = self._transformer_cls()
        path = self._transformer_path()
        if path is None:
            return cls.from_pretrained(root, subfolder="transformer", torch_dtype=self.dtype)
        if path.is_dir():
            return cls.from_pretrained(path, torch_dtype=self.dtype)
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
        if any(k.startswith(BLOCK_PREFIXES) for k in keys):  # already diffusers layout
            if not (path.parent / "config.json").is_file():
                raise ModelLoadError(
                    f"model.transformer_path: {path} is a diffusers-layout file; put its config.json beside "
                    "it (or give the folder)"
                )
            from safetensors.torch import load_file

            model = cls.from_config(cls.load_config(str(path.parent)))
            missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
            if missing or unexpected:
                raise ModelLoadError(
                    f"model.transformer_path: {path} does not match its config.json (missing e.g. "
                    f"{missing[:2]}, unexpected e.g. {unexpected[:2]})"
                )
            return model.to(self.dtype)
        config = self._known_config(root)
        try:
            return cls.from_single_file(str(path), config=str(config), torch_dtype=self.dtype)
        except Exception as exc:  # noqa: BLE001 - surface the path with the converter's reason
            raise ModelLoadError(f"model.transformer_path: {path}: from_single_file failed ({exc})") from exc

    def _bypass_guidance(self) -> None:
        embed = self.transformer.time_text_embed
        if hasattr(embed, "guidance_embedder"):  # schnell has none: nothing to bypass
            embed.forward = partial(_guidance_bypass_forward, embed)

    def identity(self, part: str) -> str:
        root = self._root()
        subs = ("vae",) if part == "vae" else self.text_parts
        extra = f"|{self.dtype}|{self._t5_length()}" if part == "text" else ""
        return "|".join(folder_identity(root / s) for s in subs) + extra

    # ---- encoding ----------------------------------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 8

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        dist = self.vae.encode(pixels.to(self.device, torch.float32)).latent_dist
        shift = self.vae.config.shift_factor or 0.0
        # Flux's VAE: (z - shift_factor) * scaling_factor, as FluxPipeline and diffusion-pipe; the mean keeps
        # the cache deterministic.
        return ((dist.mean - shift) * self.vae.config.scaling_factor).float().cpu()

    def _t5_length(self) -> int:
        if self.cfg.get("max_sequence_length"):
            return int(self.cfg["max_sequence_length"])
        tok = getattr(self, "tokenizer_2", None)
        return min(T5_MAX_LENGTH, int(tok.model_max_length)) if tok is not None else T5_MAX_LENGTH

    def _t5_tokens(self, captions: list[str]) -> Any:
        return self.tokenizer_2(
            captions, padding="max_length", max_length=self._t5_length(), truncation=True, return_tensors="pt"
        )

    @torch.no_grad()
    def encode_prompts(self, captions: list[str]) -> list[dict[str, torch.Tensor]]:
        # As FluxPipeline: CLIP's pooled output and T5's last hidden state (T5 run without a mask).
        clip_ids = self.tokenizer(
            captions,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        pooled = self.text_encoder(clip_ids, output_hidden_states=False).pooler_output
        t5 = self.text_encoder_2(self._t5_tokens(captions).input_ids.to(self.device))[0]
        return [
            {"encoder_hidden_states": h.cpu(), "pooled_projections": p.cpu()}
            for h, p in zip(t5, pooled, strict=True)
        ]

    def guidance_value(self) -> float:
        return float(self.cfg.get("guidance", 1.0))

    def unet_kwargs(
        self, text: dict[str, torch.Tensor], image_meta: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        hidden = text["encoder_hidden_states"].to(self.device, self.dtype)
        out: dict[str, Any] = {
            "encoder_hidden_states": hidden,
            "pooled_projections": text["pooled_projections"].to(self.device, self.dtype),
        }
        if self.transformer.config.guidance_embeds:
            # The transformer multiplies guidance by 1000 itself, as it does the timestep.
            out["guidance"] = torch.full((hidden.shape[0],), self.guidance_value(), device=self.device)
        return out

    # ---- forward -----------------------------------------------------------------------------------------
    def denoise(
        self, model: Any, noisy: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any]
    ) -> torch.Tensor:
        _, _, h, w = noisy.shape
        tokens = flow.pack_latents(noisy)
        text = kwargs["encoder_hidden_states"]
        extra = {k: v for k, v in kwargs.items() if k != "encoder_hidden_states"}
        if (
            "attention_mask" in extra
        ):  # text mask + every image token, as ChromaPipeline._prepare_attention_mask
            mask = extra["attention_mask"]
            extra["attention_mask"] = torch.cat(
                [mask, torch.ones(mask.shape[0], tokens.shape[1], device=mask.device, dtype=mask.dtype)],
                dim=1,
            )
        out = model(
            hidden_states=tokens,
            timestep=t.to(tokens.dtype),
            encoder_hidden_states=text,
            img_ids=flow.latent_image_ids(h, w, tokens.device, tokens.dtype),
            txt_ids=torch.zeros(text.shape[1], 3, device=tokens.device, dtype=tokens.dtype),
            **extra,
        ).sample
        return flow.unpack_latents(out, h, w)

    def swap_blocks(self, n: int) -> list[torch.nn.Module]:
        # diffusion-pipe's split (after Musubi Tuner): n // 2 double blocks and (n - n // 2) * 2 + 1 single ones,
        # the last of each list, so a profile's blocks_to_swap frees what it frees there.
        from engine.trainer.memory import last_blocks

        double = n // 2
        single = (n - double) * 2 + 1 if n else 0
        key = f"blocks_to_swap = {n}"
        try:
            return [
                *last_blocks(self.transformer.transformer_blocks, double, f"{key}: double blocks"),
                *last_blocks(self.transformer.single_transformer_blocks, single, f"{key}: single blocks"),
            ]
        except ValueError as exc:
            split = "n // 2 double blocks, (n - n // 2) * 2 + 1 single blocks"
            raise ModelLoadError(f"{exc} (diffusion-pipe's split: {split})") from None


def _folder_family(root: Path) -> str:
    from engine.trainer.family import detect_folder_family

    return detect_folder_family(root)


def write_config_folder(config: dict[str, Any]) -> Path:
    """A temporary folder holding config.json, for from_single_file(config=...) offline."""
    folder = Path(tempfile.mkdtemp(prefix="dpdeck-transformer-config-"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


__all__ = ["Flux", "file_identity", "write_config_folder"]
