"""The [adapter] table: a type, no alpha (diffusion-pipe uses alpha = rank), a whole rank, known keys, dtype."""

from __future__ import annotations

from typing import Any

from profiles.document import TomlFile
from profiles.rules import dtypes, unknown_keys
from profiles.rules.base import Ctx


def check(ctx: Ctx, toml: TomlFile, adapter: Any) -> None:
    if not isinstance(adapter, dict):
        return
    if "alpha" in adapter:
        ctx.add(
            "error",
            toml,
            "adapter.alpha",
            "not allowed: diffusion-pipe always uses alpha = rank (remove the line)",
            found=adapter["alpha"],
            expected="no alpha key",
            code="alpha",
        )
    rank = adapter.get("rank")
    if adapter.get("type", "lora") == "lora" and isinstance(rank, float):
        ctx.add(
            "error",
            toml,
            "adapter.rank",
            "LoRA rank must be a whole number",
            found=rank,
            expected="a positive integer like 32",
            code="type",
        )
    if "type" not in adapter and ctx.backend != "builtin":
        ctx.add(
            "error",
            toml,
            "adapter.type",
            "required: diffusion-pipe's train.py reads adapter['type'] (KeyError when absent; 8f83dbf)",
            expected="'lora' or 'lokr' (remove [adapter] entirely for a full fine-tune)",
            code="required",
            at="adapter",
        )
    unknown_keys.check_table(ctx, toml, adapter, "adapter", ["adapter"], skip=frozenset({"alpha"}))
    if isinstance(adapter.get("dtype"), str):
        dtypes.check(ctx, toml, "adapter.dtype", adapter["dtype"])
