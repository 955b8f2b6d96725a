"""The [model] table: a known type, that type's required keys, value sanity (dtypes, min_t < max_t)."""

from __future__ import annotations

from typing import Any

from profiles import model_types as mt
from profiles.document import TomlFile
from profiles.rules import dtypes, unknown_keys
from profiles.rules.base import Ctx, did_you_mean, num


def check(ctx: Ctx, toml: TomlFile, model: Any) -> str | None:
    """Type-specific checks; returns the type when it is a known one."""
    if not isinstance(model, dict):
        return None
    _check_values(ctx, toml, model)  # whatever the type: one typo must not hide another
    mtype = model.get("type")
    if not isinstance(mtype, str):
        return None
    spec = mt.get_spec(mtype)
    if spec is None:
        guess = did_you_mean(mtype, mt.ALL_TYPES)
        hint = f"did you mean {guess!r}?" if guess else "see `dpdeck profile templates` for examples"
        ctx.add(
            "error",
            toml,
            "model.type",
            f"unknown model type; {hint}",
            found=mtype,
            expected="one of " + ", ".join(mt.ALL_TYPES),
            code="model_type",
        )
        unknown_keys.check_table(ctx, toml, model, "model", ["model"])
        return None
    _check_required(ctx, toml, model, spec)
    unknown_keys.check_table(ctx, toml, model, "model", ["model"], model_type=mtype)
    return mtype


def _check_required(ctx: Ctx, toml: TomlFile, model: dict[str, Any], spec: mt.ModelTypeSpec) -> None:
    present = {k for k, v in model.items() if v is not None}
    lacking = spec.missing(present, ctx.backend)
    if not lacking:
        return
    if ctx.backend == "builtin":
        reader = "the built-in trainer reads it"
    else:
        reader = f"diffusion-pipe's {spec.source} stops without it ({spec.upstream})"
    # A profile made for the built-in trainer (sdxl from a diffusers folder) run through diffusion-pipe.
    only_builtin = ctx.backend != "builtin" and spec.needs_builtin(present)
    note = (
        "; the keys given are read by dpdeck's built-in trainer only (backend 'builtin')"
        if only_builtin
        else ""
    )
    for key in lacking:
        ctx.add(
            "error",
            toml,
            f"model.{key}",
            f"required for type {spec.name!r}: {reader}{note}",
            expected=f"{spec.requirement_text(ctx.backend)} (for {spec.label})",
            code="required",
        )


def _check_values(ctx: Ctx, toml: TomlFile, model: dict[str, Any]) -> None:
    for key in ("dtype", "transformer_dtype", "diffusion_model_dtype"):
        if isinstance(model.get(key), str):
            dtypes.check(ctx, toml, f"model.{key}", model[key])
    encoders = model.get("text_encoders")
    if isinstance(encoders, list):
        for i, entry in enumerate(encoders):
            if isinstance(entry, dict) and "path" not in entry and "paths" not in entry:
                ctx.add(
                    "error",
                    toml,
                    f"model.text_encoders[{i}]",
                    "text encoder entry without a path",
                    expected="path = '...' (or paths = [...])",
                    code="required",
                )
    low, high = model.get("min_t"), model.get("max_t")
    if num(low) and num(high) and low >= high:
        ctx.add(
            "error",
            toml,
            "model.min_t",
            f"must be below max_t ({high})",
            found=low,
            expected=f"a value < {high}",
            code="value",
        )
