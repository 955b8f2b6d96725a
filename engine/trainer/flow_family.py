"""What every rectified-flow DiT family shares (flux, chroma, sd3, lumina_2, qwen_image).

The flow keys are checked at construction (engine.trainer.flow), the LoRA goes on every Linear inside the
transformer's blocks as diffusion-pipe puts it (adapter.exclude_modules is applied by peft), and the save probe
runs at mid-schedule. A family names its blocks in `block_prefixes` and implements loading, encoding and the
forward; none of them has kohya names (their ComfyUI files, where built in, come from engine.trainer.comfy_lora).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from engine.trainer import flow
from engine.trainer.family import Family, ModelLoadError


class FlowFamily(Family):
    schedule = "flow"
    lora_prefix = "transformer"
    has_kohya = False
    # Module-name prefixes of the transformer blocks whose Linears get LoRA.
    block_prefixes: tuple[str, ...] = ()
    # FlowMatchEulerDiscreteScheduler settings for [sample] renders when the model comes without a diffusers
    # folder holding scheduler/scheduler_config.json (engine/trainer/sampling.py); {} = diffusers' defaults.
    sample_scheduler: ClassVar[dict[str, Any]] = {}
    transformer: torch.nn.Module

    def __init__(self, model_cfg: dict[str, Any], dtype: torch.dtype, device: torch.device) -> None:
        super().__init__(model_cfg, dtype, device)
        try:
            flow.check_flow_config(model_cfg)
        except flow.FlowConfigError as exc:
            raise ModelLoadError(str(exc)) from exc
        self.vae: Any = None

    def probe_timestep(self) -> torch.Tensor:
        return torch.tensor([0.5])  # flow time runs 0 (image) .. 1 (noise)

    def lora_target_modules(self) -> list[str]:
        return sorted(
            name
            for name, module in self.transformer.named_modules()
            if name.startswith(self.block_prefixes) and isinstance(module, torch.nn.Linear)
        )

    def kohya_name(self, module_path: str) -> str:
        raise NotImplementedError(
            f"{self.name}: no kohya names (a DiT family; see engine.trainer.comfy_lora)"
        )
