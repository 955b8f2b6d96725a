"""The [optimizer] table: an optimizer type the backend has, or a pytorch_optimizer class spelled exactly."""

from __future__ import annotations

import difflib
from typing import Any

from profiles.document import TomlFile
from profiles.rules.base import Ctx, did_you_mean

# diffusion-pipe train.py get_optimizer (8f83dbf): matched case-insensitively; any other name is looked up in
# pytorch_optimizer. tests/test_upstream_configs.py compares this with upstream's chain.
DP_OPTIMIZERS: tuple[str, ...] = (
    "adamw",
    "adamw8bit",
    "adamw_optimi",
    "stableadamw",
    "sgd",
    "adamw8bitkahan",
    "offload",
    "automagic",
    "genericoptim",
)
BUILTIN_TRAINER_OPTIMIZERS: tuple[str, ...] = ("adamw", "adamw_optimi", "adamw8bit")
# pytorch_optimizer classes people use for LoRAs; anything else is looked up by exact name at run time.
KNOWN_PYTORCH_OPTIMIZERS: tuple[str, ...] = (
    "Prodigy",
    "DAdaptAdam",
    "DAdaptAdan",
    "DAdaptAdaGrad",
    "DAdaptLion",
    "DAdaptSGD",
    "Lion",
    "CAME",
    "AdaFactor",
    "AdaBelief",
    "AdaBound",
    "AdamP",
    "Adan",
    "ADOPT",
    "AdEMAMix",
    "Lamb",
    "LaProp",
    "MADGRAD",
    "Muon",
    "NovoGrad",
    "Ranger",
    "Ranger21",
    "ScheduleFreeAdamW",
    "ScheduleFreeRAdam",
    "ScheduleFreeSGD",
    "SOAP",
    "SophiaH",
    "StableAdamW",
    "Tiger",
)


def check(ctx: Ctx, toml: TomlFile, optimizer: Any) -> None:
    if not isinstance(optimizer, dict):
        return
    if "beta2_half_life" in optimizer and "betas" not in optimizer:
        # train.py computes beta2 from the half-life into optimizer['betas'][1]: a KeyError without betas.
        ctx.add(
            "error",
            toml,
            "optimizer.betas",
            "required with beta2_half_life (diffusion-pipe overwrites betas[1] from it; 8f83dbf)",
            expected="betas = [0.9, 0.99] (the second value is then computed)",
            code="required",
            at="optimizer.beta2_half_life",
        )
    if isinstance(optimizer.get("type"), str):
        _check_type(ctx, toml, optimizer["type"])


def _check_type(ctx: Ctx, toml: TomlFile, name: str) -> None:
    builtin = BUILTIN_TRAINER_OPTIMIZERS if ctx.backend == "builtin" else DP_OPTIMIZERS
    trainer = "the built-in trainer" if ctx.backend == "builtin" else "diffusion-pipe"
    if name.lower() in builtin:
        return
    if name.lower() in DP_OPTIMIZERS:  # a diffusion-pipe optimizer the built-in trainer lacks
        ctx.add(
            "error",
            toml,
            "optimizer.type",
            f"{trainer} has no {name!r} optimizer",
            found=name,
            expected="one of " + ", ".join(builtin) + " or a pytorch_optimizer class like 'Prodigy'",
            code="optimizer",
        )
        return
    if name in KNOWN_PYTORCH_OPTIMIZERS:
        return
    by_lower = {n.lower(): n for n in KNOWN_PYTORCH_OPTIMIZERS}
    if name.lower() in by_lower:
        right = by_lower[name.lower()]
        ctx.add(
            "error",
            toml,
            "optimizer.type",
            f"pytorch_optimizer class names are case-sensitive: write {right!r}",
            found=name,
            expected=repr(right),
            code="optimizer",
        )
        return
    if not name.isidentifier():
        guess = did_you_mean(name, (*builtin, *KNOWN_PYTORCH_OPTIMIZERS))
        hint = f"; did you mean {guess!r}?" if guess else ""
        ctx.add(
            "error",
            toml,
            "optimizer.type",
            f"not an optimizer name{hint}",
            found=name,
            expected="one of " + ", ".join(builtin) + " (any case) or a pytorch_optimizer class name",
            code="optimizer",
        )
        return
    close = difflib.get_close_matches(name, [*builtin, *KNOWN_PYTORCH_OPTIMIZERS], n=1, cutoff=0.75)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    ctx.add(
        "warning",
        toml,
        "optimizer.type",
        f"not a built-in optimizer: {trainer} will look up pytorch_optimizer.{name} (exact, case-sensitive){hint}",
        found=name,
        code="optimizer",
    )
