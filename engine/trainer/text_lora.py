"""LoRA on the CLIP text encoder(s) of SD1.5 / SDXL, trained when the profile sets a text encoder lr.

Targets are the attention projections and the MLP of every CLIP layer (q/k/v/out_proj, fc1, fc2), as sd-scripts
and diffusers' train_text_to_image_lora_sdxl train them. While they train, captions are not cached as
embeddings: the encoder runs in the training step (tokenizing on the fly is cheaper than a cache read).
Files: the diffusers save carries `text_encoder.` / `text_encoder_2.` keys beside `unet.`; the kohya save
`lora_te_` (SD1.5) or `lora_te1_` / `lora_te2_` (SDXL) keys, named after the encoder's module paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from engine.trainer.config import TrainConfigError

TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
# Per family, one row per text encoder: (model key of its lr, diffusers component, kohya key prefix).
# SDXL's keys are the ones diffusion-pipe's models/sdxl.py reads.
TEXT_ENCODER_ROWS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "sd15": (("text_encoder_lr", "text_encoder", "lora_te"),),
    "sdxl": (
        ("text_encoder_1_lr", "text_encoder", "lora_te1"),
        ("text_encoder_2_lr", "text_encoder_2", "lora_te2"),
    ),
}
ALL_LR_KEYS = ("text_encoder_lr", "text_encoder_1_lr", "text_encoder_2_lr")
KOHYA_TEXT_ROOT = "text_model."


@dataclass
class TextLora:
    component: str  # diffusers' name for the encoder: its key prefix in save/load_lora_weights
    kohya_prefix: str
    module: torch.nn.Module
    config: Any  # the peft LoraConfig
    lr: float

    def kohya_name(self, module_path: str) -> str:
        # sd-scripts, ComfyUI and A1111 name CLIP layers from the text_model level
        # (lora_te_text_model_encoder_layers_0_self_attn_q_proj); transformers 5's CLIPTextModel dropped that
        # level (CLIPTextModelWithProjection keeps it), so it is put back where missing.
        if not module_path.startswith(KOHYA_TEXT_ROOT):
            module_path = KOHYA_TEXT_ROOT + module_path
        return f"{self.kohya_prefix}_" + module_path.replace(".", "_")


def text_lr_plan(family_name: str, model_cfg: dict[str, Any]) -> tuple[list[tuple[int, float]], list[str]]:
    """(encoder index, lr) for each encoder to train, and warnings for lr keys this family does not read."""
    rows = TEXT_ENCODER_ROWS.get(family_name, ())
    own = {row[0] for row in rows}
    warnings = [
        f"model.{key}: {family_name} has no text encoder LoRA under this key"
        + (f" (it reads {', '.join(sorted(own))})" if own else "")
        + "; ignored"
        for key in ALL_LR_KEYS
        if model_cfg.get(key) is not None and key not in own
    ]
    plan = []
    for index, (key, _, _) in enumerate(rows):
        value = model_cfg.get(key)
        if value is None or value == 0:  # 0 = leave this encoder frozen
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise TrainConfigError(f"model.{key}: expected a number >= 0 (found {value!r})")
        plan.append((index, float(value)))
    return plan, warnings


def add_text_loras(
    family_name: str,
    encoders: list[torch.nn.Module],
    plan: list[tuple[int, float]],
    rank: int,
    dropout: float,
    init_random_b: bool,
) -> list[TextLora]:
    from peft import LoraConfig, inject_adapter_in_model

    out = []
    for index, lr in plan:
        _, component, prefix = TEXT_ENCODER_ROWS[family_name][index]
        config = LoraConfig(
            r=rank,
            lora_alpha=rank,
            lora_dropout=dropout,
            target_modules=list(TEXT_TARGETS),
            init_lora_weights=not init_random_b,
        )
        te = encoders[index]
        # peft directly: transformers' add_adapter demands a newer peft than diffusers does.
        inject_adapter_in_model(config, te, adapter_name="default")
        for name, p in te.named_parameters():
            p.requires_grad_("lora_" in name)
            if "lora_" in name:
                p.data = p.data.float()  # as the UNet LoRA: trainable weights stay fp32
        te.train()
        out.append(TextLora(component, prefix, te, config, lr))
    return out


class TrainedModules(torch.nn.Module):
    """The UNet plus the text encoders being trained, as one module for DeepSpeed (so their gradients are
    reduced, clipped and checkpointed with the UNet's); calling it runs the UNet."""

    def __init__(self, unet: torch.nn.Module, encoders: list[torch.nn.Module]) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoders = torch.nn.ModuleList(encoders)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.unet(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Code written for the bare UNet (its config, dtype, ...) keeps working on the wrapper.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("unet"), name)


def lora_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(module).items()}


def adapter_metadata(config: Any) -> dict[str, Any]:
    meta = config.to_dict()
    meta["target_modules"] = sorted(meta["target_modules"])
    return meta


def diffusers_parts(
    loras: list[TextLora], dtype: torch.dtype
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """save_lora_weights keyword arguments for the encoders, and the tensors the saved file must hold."""
    kwargs: dict[str, Any] = {}
    expected: dict[str, torch.Tensor] = {}
    for lora in loras:
        sd = {k: v.to(dtype).contiguous() for k, v in lora_tensors(lora.module).items()}
        kwargs[f"{lora.component}_lora_layers"] = sd
        kwargs[f"{lora.component}_lora_adapter_metadata"] = adapter_metadata(lora.config)
        expected.update({f"{lora.component}.{k}": v for k, v in sd.items()})
    return kwargs, expected


def kohya_parts(loras: list[TextLora], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for lora in loras:
        sd = lora_tensors(lora.module)
        for key, tensor in sd.items():
            if not key.endswith(".lora_A.weight"):
                continue
            module = key[: -len(".lora_A.weight")]
            stem = lora.kohya_name(module)
            out[f"{stem}.lora_down.weight"] = tensor.to(dtype).contiguous()
            out[f"{stem}.lora_up.weight"] = sd[f"{module}.lora_B.weight"].to(dtype).contiguous()
            out[f"{stem}.alpha"] = torch.tensor(float(lora.config.lora_alpha), dtype=torch.float32)
    return out
