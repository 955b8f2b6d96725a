"""SDXL family (also Pony / Illustrious / NoobAI single files): two text encoders + size/crop conditioning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.trainer.sd15 import SD15
from engine.trainer.sgm import diffusers_to_sgm


class SDXL(SD15):
    name = "sdxl"
    pipeline_class_name = "StableDiffusionXLPipeline"
    text_parts = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")

    def _pipeline_cls(self) -> Any:
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline

    def _load_text(self, root: Path) -> None:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        self.tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer")
        self.tokenizer_2 = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer_2")
        self.text_encoder = CLIPTextModel.from_pretrained(
            root, subfolder="text_encoder", torch_dtype=self.dtype
        )
        self.text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
            root, subfolder="text_encoder_2", torch_dtype=self.dtype
        )

    def _take_text(self, pipe: Any) -> None:
        self.tokenizer, self.tokenizer_2 = pipe.tokenizer, pipe.tokenizer_2
        self.text_encoder, self.text_encoder_2 = pipe.text_encoder, pipe.text_encoder_2

    def text_encoders(self) -> list[torch.nn.Module]:
        return [self.text_encoder, self.text_encoder_2]

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        # As the SDXL pipeline: penultimate hidden states of both encoders, pooled output of the second.
        out1 = self.text_encoder(self._tokens(self.tokenizer, captions), output_hidden_states=True)
        out2 = self.text_encoder_2(self._tokens(self.tokenizer_2, captions), output_hidden_states=True)
        hidden = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
        return {"encoder_hidden_states": hidden, "text_embeds": out2[0]}

    def image_meta(
        self, orig_hw: tuple[int, int], crop_tl: tuple[int, int], target_hw: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        return {"time_ids": torch.tensor([*orig_hw, *crop_tl, *target_hw], dtype=torch.float32)}

    def unet_kwargs(
        self, text: dict[str, torch.Tensor], image_meta: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        return {
            "encoder_hidden_states": text["encoder_hidden_states"].to(self.device, self.dtype),
            "added_cond_kwargs": {
                "text_embeds": text["text_embeds"].to(self.device, self.dtype),
                "time_ids": image_meta["time_ids"].to(self.device, self.dtype),
            },
        }

    def kohya_name(self, module_path: str) -> str:
        return "lora_unet_" + diffusers_to_sgm(module_path, self.unet.config).replace(".", "_")
