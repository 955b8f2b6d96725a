"""What the chosen backend can train: a type it supports and, for the built-in trainer, its narrower limits
(LoRA only, data-parallel only, float8 only as transformer_dtype, an explicit learning rate)."""

from __future__ import annotations

from typing import Any

from profiles import model_types as mt
from profiles.document import TomlFile
from profiles.rules.base import Ctx, num
from profiles.rules.dtypes import BUILTIN_TRAINER_DTYPES, DTYPES

# Built-in families whose denoiser is a UNet: weights stay at model.dtype and no blocks are swapped (diffusion-pipe's
# sdxl reads neither transformer_dtype nor blocks_to_swap). Every transformer family has both
# (engine/trainer/memory.py), so a new one gets them by default.
BUILTIN_UNET_TYPES: frozenset[str] = frozenset({"sd15", "sdxl"})


def check(ctx: Ctx, toml: TomlFile, data: dict[str, Any], mtype: str | None) -> None:
    if mtype is None:
        return
    if not mt.backend_supports(ctx.backend, mtype):
        if ctx.backend == "builtin":
            message = f"the built-in trainer cannot train {mtype!r}; use the diffusion-pipe backend"
            expected = "one of " + ", ".join(sorted(mt.BUILTIN_TYPES))
        else:
            message = (
                f"{mtype!r} is dpdeck's own type: diffusion-pipe cannot train it; use the built-in backend"
            )
            expected = "one of diffusion-pipe's types, e.g. sdxl"
        ctx.add("error", toml, "model.type", message, found=mtype, expected=expected, code="backend")
        return
    if ctx.backend != "builtin":
        return
    raw_model = data.get("model")
    model = raw_model if isinstance(raw_model, dict) else {}
    dtype = model.get("dtype")
    if isinstance(dtype, str) and dtype in DTYPES and dtype not in BUILTIN_TRAINER_DTYPES:
        ctx.add(
            "error",
            toml,
            "model.dtype",
            "the built-in trainer computes in this dtype; float8 is for weight storage: transformer_dtype",
            found=dtype,
            expected="one of " + ", ".join(BUILTIN_TRAINER_DTYPES) + " (with transformer_dtype = 'float8')",
            code="backend",
        )
    _check_memory(ctx, toml, data, model, mtype)
    if not isinstance(data.get("adapter"), dict):
        ctx.add(
            "error",
            toml,
            "adapter",
            "the built-in trainer trains LoRAs only: an [adapter] table is required",
            expected="[adapter] with type = 'lora' and rank",
            code="backend",
        )
    stages = data.get("pipeline_stages", 1)
    if stages != 1:
        ctx.add(
            "error",
            toml,
            "pipeline_stages",
            "the built-in trainer is data-parallel only",
            found=stages,
            expected="1",
            code="backend",
        )
    optimizer = data.get("optimizer")
    if isinstance(optimizer, dict) and "type" in optimizer and not num(optimizer.get("lr")):
        ctx.add(
            "error",
            toml,
            "optimizer.lr",
            "the built-in trainer needs a learning rate",
            found=optimizer.get("lr"),
            expected="a number like 1e-4",
            code="required",
        )


def _check_memory(ctx: Ctx, toml: TomlFile, data: dict[str, Any], model: dict[str, Any], mtype: str) -> None:
    """The built-in trainer's limits on diffusion-pipe's memory keys (engine/trainer/config.py holds the same)."""
    storage = model.get("transformer_dtype")
    if mtype in BUILTIN_UNET_TYPES and isinstance(storage, str) and storage != model.get("dtype", "bfloat16"):
        ctx.add(
            "error",
            toml,
            "model.transformer_dtype",
            f"the built-in trainer keeps {mtype}'s UNet at model.dtype (diffusion-pipe's {mtype} ignores it)",
            found=storage,
            expected="no transformer_dtype (or the same as dtype)",
            code="backend",
        )
    swap = data.get("blocks_to_swap", 0)
    if mtype in BUILTIN_UNET_TYPES and num(swap) and swap > 0:
        ctx.add(
            "error",
            toml,
            "blocks_to_swap",
            f"the built-in trainer swaps transformer blocks only; {mtype} has a UNet",
            found=swap,
            expected="0",
            code="backend",
        )
    checkpointing = data.get("activation_checkpointing")
    if checkpointing == "unsloth":
        ctx.add(
            "error",
            toml,
            "activation_checkpointing",
            "'unsloth' (activations offloaded to the CPU) is not built into the built-in trainer",
            found=checkpointing,
            expected="true (each transformer block checkpointed) or false",
            code="backend",
        )
    if data.get("reentrant_activation_checkpointing") is True:
        ctx.add(
            "error",
            toml,
            "reentrant_activation_checkpointing",
            "the built-in trainer checkpoints non-reentrantly (diffusers' default)",
            found=True,
            expected="false",
            code="backend",
        )
