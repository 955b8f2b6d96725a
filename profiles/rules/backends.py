"""What the chosen backend can train: a type it supports and, for the built-in trainer, its narrower limits
(LoRA only, data-parallel only, no float8, an explicit learning rate)."""

from __future__ import annotations

from typing import Any

from profiles import model_types as mt
from profiles.document import TomlFile
from profiles.rules.base import Ctx, num
from profiles.rules.dtypes import BUILTIN_TRAINER_DTYPES, DTYPES


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
            "the built-in trainer does not train in float8",
            found=dtype,
            expected="one of " + ", ".join(BUILTIN_TRAINER_DTYPES),
            code="backend",
        )
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
