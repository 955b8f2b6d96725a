"""Optimizers and LR schedules named as diffusion-pipe names them."""

from __future__ import annotations

import importlib
import math
from typing import Any

import torch

# Keys of [optimizer] that are ours, not constructor arguments.
_RESERVED = {"type"}


class OptimizerError(ValueError):
    pass


def build_optimizer(
    cfg: dict[str, Any], param_groups: list[dict[str, Any]], fused: bool = False
) -> torch.optim.Optimizer:
    """fused: torch's fused AdamW kernel (one launch per step instead of a loop over the LoRA tensors) for
    `adamw`, unless the profile sets fused / foreach itself; the caller asks only where the params' device has
    the kernel (CUDA)."""
    name = cfg["type"]
    kwargs = {k: v for k, v in cfg.items() if k not in _RESERVED}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    lowered = name.lower()
    if lowered == "adamw":
        if fused and "fused" not in kwargs and "foreach" not in kwargs:
            kwargs["fused"] = True
        return torch.optim.AdamW(param_groups, **kwargs)
    if lowered == "adamw_optimi":
        module = _import("optimi", name, "pip install torch-optimi")
        return module.AdamW(param_groups, **kwargs)
    if lowered == "adamw8bit":
        module = _import("bitsandbytes.optim", name, "pip install bitsandbytes (needs a CUDA GPU)")
        return module.AdamW8bit(param_groups, **kwargs)
    # Anything else is a pytorch_optimizer class, case-sensitive as in diffusion-pipe (e.g. Prodigy).
    module = _import("pytorch_optimizer", name, "pip install pytorch_optimizer")
    cls = getattr(module, name, None)
    if cls is None:
        raise OptimizerError(
            f"optimizer.type: {name!r} is not adamw, adamw_optimi, adamw8bit or a pytorch_optimizer class "
            "(names are case-sensitive, e.g. 'Prodigy')"
        )
    return cls(param_groups, **kwargs)


def _import(module: str, name: str, hint: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise OptimizerError(
            f"optimizer.type = {name!r} needs the {module.split('.')[0]} package: {hint}"
        ) from exc


def lr_lambda(kind: str, warmup: int, total: int) -> Any:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, kind: str, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(kind, warmup, total))
