"""Chroma family: a pruned Flux (ChromaTransformer2DModel) with Flux's VAE and T5 only, flow matching.

Profile keys as diffusion-pipe's and seed 004's profiles: `diffusers_path` (a Flux-schnell diffusers folder: its
vae/, text_encoder_2/ and tokenizer_2/ are used) and `transformer_path` (the Chroma transformer), plus the flow
keys of engine.trainer.flow. Guidance is not an input of Chroma (diffusion-pipe feeds 0 to its approximator;
diffusers' ChromaTransformer2DModel has no guidance argument).

`transformer_path` may be a diffusers transformer folder (config.json + weights), a diffusers-layout file with a
config.json beside it, or an original-layout file (as Chroma is distributed), loaded with from_single_file and
CHROMA_CONFIG below as its config (diffusers' converter assumes the full 3072 width anyway).

T5 runs with the tokenizer's attention mask, and the transformer sees every real text token plus the first
padding token (ChromaPipeline._get_t5_prompt_embeds; diffusion-pipe's modify_mask_to_attend_padding).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.trainer.family import ModelLoadError
from engine.trainer.flux import Flux, write_config_folder

# lodestones/Chroma1-HD transformer/config.json (diffusers 0.42 ChromaTransformer2DModel): data, not code, so a
# real original-layout file loads offline.
CHROMA_CONFIG: dict[str, Any] = {
    "_class_name": "ChromaTransformer2DModel",
    "patch_size": 1,
    "in_channels": 64,
    "out_channels": None,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "axes_dims_rope": [16, 56, 56],
    "approximator_num_channels": 64,
    "approximator_hidden_dim": 5120,
    "approximator_layers": 5,
}


class Chroma(Flux):
    name = "chroma"
    pipeline_class_name = "ChromaPipeline"
    transformer_class_name = "ChromaTransformer2DModel"
    comfy_layout = "chroma"
    text_parts = ("text_encoder_2", "tokenizer_2")
    # diffusion-pipe's chroma KEEP_IN_HIGH_PRECISION in diffusers names: img_in = x_embedder, txt_in =
    # context_embedder, final_layer = norm_out + proj_out.
    keep_in_high_precision = (
        "norm",
        "x_embedder",
        "context_embedder",
        "distilled_guidance_layer",
        "^proj_out",
    )

    def _pipeline_cls(self) -> Any:
        from diffusers import ChromaPipeline

        return ChromaPipeline

    def _transformer_cls(self) -> Any:
        from diffusers import ChromaTransformer2DModel

        return ChromaTransformer2DModel

    def _required_subfolders(self) -> tuple[str, ...]:
        return ("vae", "text_encoder_2", "tokenizer_2")

    def _load_text(self, root: Path) -> None:
        from transformers import T5EncoderModel, T5TokenizerFast

        self.text_encoder = None
        self.tokenizer_2 = T5TokenizerFast.from_pretrained(root, subfolder="tokenizer_2")
        self.text_encoder_2 = T5EncoderModel.from_pretrained(
            root, subfolder="text_encoder_2", torch_dtype=self.dtype
        )

    def text_encoders(self) -> list[torch.nn.Module]:
        return [self.text_encoder_2]

    def _known_config(self, root: Path) -> Path:
        return write_config_folder(CHROMA_CONFIG)

    def _bypass_guidance(self) -> None:
        raise ModelLoadError("model.bypass_guidance_embedding: Chroma has no guidance embedding")

    @torch.no_grad()
    def encode_prompts(self, captions: list[str]) -> list[dict[str, torch.Tensor]]:
        tokens = self._t5_tokens(captions)
        mask = tokens.attention_mask.to(self.device)
        hidden = self.text_encoder_2(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        # Every real token and the first padding token stay visible to the transformer.
        lengths = mask.sum(dim=1, keepdim=True)
        keep = (torch.arange(mask.shape[1], device=self.device)[None, :] <= lengths).float()
        return [
            {"encoder_hidden_states": h.cpu(), "attention_mask": m.cpu()}
            for h, m in zip(hidden, keep, strict=True)
        ]

    def unet_kwargs(
        self, text: dict[str, torch.Tensor], image_meta: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        return {
            "encoder_hidden_states": text["encoder_hidden_states"].to(self.device, self.dtype),
            "attention_mask": text["attention_mask"].to(self.device, self.dtype),
        }
