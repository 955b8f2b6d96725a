"""dtype names: the set diffusion-pipe maps to torch dtypes (utils/common.py DTYPE_MAP, 8f83dbf)."""

from __future__ import annotations

from profiles.document import TomlFile
from profiles.rules.base import Ctx, did_you_mean

# train.py's set_config_defaults looks model.dtype, transformer_dtype, diffusion_model_dtype, adapter.dtype and
# save_dtype up in DTYPE_MAP before any model code runs: a name outside it is a KeyError at start-up.
DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16", "float8", "float8_e4m3fn", "float8_e5m2")
# The built-in trainer's model.dtype (the compute dtype); float8 is a storage dtype there, for transformer_dtype.
BUILTIN_TRAINER_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
# Shorthands people carry over from other trainers, spelled out before the close-match guess.
_SHORTHANDS: tuple[tuple[str, str], ...] = (("bf16", "bfloat16"), ("fp16", "float16"), ("fp32", "float32"))
# Values some upstream code compares against but that the DTYPE_MAP lookup refuses first (train.py:110).
_NOTES: dict[str, str] = {
    "nf4": "diffusion-pipe's train.py maps it through DTYPE_MAP, which has no 'nf4' (KeyError at start-up, "
    "before hidream's nf4 branch is reached; 8f83dbf)",
}


def check(ctx: Ctx, toml: TomlFile, key: str, value: str) -> None:
    if value in DTYPES:
        return
    note = _NOTES.get(value)
    if note is None:
        spelled = value
        for short, full in _SHORTHANDS:
            spelled = spelled.replace(short, full)
        guess = did_you_mean(spelled, DTYPES)
        message = f"unknown dtype; did you mean {guess!r}?" if guess else "unknown dtype"
    else:
        message = f"not a dtype diffusion-pipe accepts: {note}"
    ctx.add("error", toml, key, message, found=value, expected="one of " + ", ".join(DTYPES), code="dtype")
