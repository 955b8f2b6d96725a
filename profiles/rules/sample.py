"""The optional [sample] table: images rendered while training by dpdeck's built-in trainer.

One checker, two users: `dpdeck profile validate` (as `Problem`s, through `check`) and the trainer's config
reader (engine/trainer/sampling.py raises the first issue), so the two can never disagree. Plain data: the
per-family facts are tables, and nothing here needs torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeGuard

from profiles.document import TomlFile
from profiles.model_types import BUILTIN_TYPES
from profiles.rules import unknown_keys
from profiles.rules.base import Ctx, num

TABLE = "sample"
# Width and height must be whole latent cells: the VAE's 8x, times the 2x2 latent patches flow families pack.
SIZE_MULTIPLE: dict[str, int] = {
    "sd15": 8,
    "sdxl": 8,
    "sd3": 16,
    "flux": 16,
    "chroma": 16,
    "qwen_image": 16,
    "lumina_2": 16,
}
# Families whose pipeline runs classifier-free guidance with a negative prompt (Flux-dev's guidance is a
# distilled input of the transformer: there is no negative branch).
USES_NEGATIVE: dict[str, bool] = {
    "sd15": True,
    "sdxl": True,
    "sd3": True,
    "flux": False,
    "chroma": True,
    "qwen_image": True,
    "lumina_2": True,
}
# What `guidance` means per family, for messages and docs.
GUIDANCE_MEANING: dict[str, str] = {
    "sd15": "classifier-free guidance (cfg) scale",
    "sdxl": "classifier-free guidance (cfg) scale",
    "sd3": "classifier-free guidance (cfg) scale",
    "flux": "the distilled guidance value fed to the transformer",
    "chroma": "classifier-free guidance (cfg) scale",
    "qwen_image": "classifier-free guidance (QwenImagePipeline's true_cfg_scale; 1 or less: no cfg)",
    "lumina_2": "classifier-free guidance (cfg) scale, norm-rescaled as Lumina2Pipeline does",
}
# Defaults near each pipeline's own: (width = height, steps, guidance).
DEFAULTS: dict[str, tuple[int, int, float]] = {
    "sd15": (512, 25, 7.0),
    "sdxl": (1024, 25, 6.0),
    "sd3": (1024, 28, 7.0),
    "flux": (1024, 20, 3.5),
    "chroma": (1024, 26, 4.0),
    "qwen_image": (1024, 30, 4.0),
    "lumina_2": (1024, 30, 4.0),
}
MIN_SIDE = 16  # one latent patch of the flow families; tiny tests sample at 32-64 px
MAX_SIDE = 4096
MAX_PROMPTS = 64
MAX_STEPS = 500
# key -> what it holds (the expectation in messages; docs/trainer.md lists the same).
KEYS: dict[str, str] = {
    "prompts": "a non-empty array of non-empty strings",
    "negative_prompt": "a string",
    "width": f"an integer from {MIN_SIDE} to {MAX_SIDE}",
    "height": f"an integer from {MIN_SIDE} to {MAX_SIDE}",
    "steps": f"an integer from 1 to {MAX_STEPS}",
    "guidance": "a number >= 0",
    "seed": "an integer >= 0",
    "every_n_steps": "an integer >= 1",
    "every_n_epochs": "an integer >= 1",
    "before_first_step": "true or false",
}


@dataclass(frozen=True)
class Issue:
    key: str  # the key path, e.g. sample.width
    message: str
    found: Any = None
    expected: str | None = None


def _int(value: Any, low: int, high: int | None = None) -> TypeGuard[int]:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    return ok and (high is None or value <= high)


def issues(table: Any, model_type: str | None) -> list[Issue]:
    """Everything wrong with a [sample] table for `model_type` (None: a type the built-in trainer lacks)."""
    if not isinstance(table, dict):
        return [Issue(TABLE, "must be a table", table, "a [sample] table")]
    out: list[Issue] = []
    prompts = table.get("prompts")
    if not isinstance(prompts, list) or not prompts:
        out.append(
            Issue(f"{TABLE}.prompts", "at least one prompt is needed to sample", prompts, KEYS["prompts"])
        )
    elif len(prompts) > MAX_PROMPTS:
        out.append(Issue(f"{TABLE}.prompts", f"at most {MAX_PROMPTS} prompts", len(prompts), KEYS["prompts"]))
    else:
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                out.append(
                    Issue(f"{TABLE}.prompts[{i}]", "each prompt must be non-empty text", p, "a string")
                )
    limits = {
        "width": (MIN_SIDE, MAX_SIDE),
        "height": (MIN_SIDE, MAX_SIDE),
        "steps": (1, MAX_STEPS),
        "seed": (0, None),
    }
    limits |= {"every_n_steps": (1, None), "every_n_epochs": (1, None)}
    for key, (low, high) in limits.items():
        if key in table and not _int(table[key], low, high):
            out.append(Issue(f"{TABLE}.{key}", "out of range or not an integer", table[key], KEYS[key]))
    multiple = SIZE_MULTIPLE.get(model_type or "")
    for key in ("width", "height"):
        value = table.get(key)
        if multiple and _int(value, MIN_SIDE, MAX_SIDE) and value % multiple:
            out.append(
                Issue(
                    f"{TABLE}.{key}",
                    f"{model_type} samples need a multiple of {multiple} (whole latent cells)",
                    value,
                    f"e.g. {value - value % multiple} or {value - value % multiple + multiple}",
                )
            )
    if "guidance" in table and not (num(table["guidance"]) and table["guidance"] >= 0):
        out.append(Issue(f"{TABLE}.guidance", "not a number >= 0", table["guidance"], KEYS["guidance"]))
    if "before_first_step" in table and not isinstance(table["before_first_step"], bool):
        out.append(
            Issue(f"{TABLE}.before_first_step", "not a boolean", table["before_first_step"], "true or false")
        )
    negative = table.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        out.append(Issue(f"{TABLE}.negative_prompt", "not a string", negative, "a string"))
    elif negative and model_type in USES_NEGATIVE and not USES_NEGATIVE[model_type]:
        out.append(
            Issue(
                f"{TABLE}.negative_prompt",
                f"{model_type} samples use no negative prompt (guidance is {GUIDANCE_MEANING[model_type]})",
                negative,
                "no negative_prompt",
            )
        )
    if "every_n_steps" not in table and "every_n_epochs" not in table:
        out.append(
            Issue(
                f"{TABLE}.every_n_steps",
                "no sampling frequency: set every_n_steps or every_n_epochs",
                None,
                "every_n_steps or every_n_epochs",
            )
        )
    return out


def check(ctx: Ctx, toml: TomlFile, data: dict[str, Any], model_type: str | None) -> None:
    """[sample] in a main file: unknown keys warned, bad values errors (the built-in trainer refuses them)."""
    table = data.get(TABLE)
    if table is None:
        return
    if ctx.backend != "builtin":
        return  # diffusion-pipe does not read [sample]: unknown_keys warns about the table itself
    unknown_keys.check_table(ctx, toml, table, TABLE, [TABLE])
    if model_type in BUILTIN_TYPES and model_type not in SIZE_MULTIPLE:
        ctx.add(
            "error",
            toml,
            TABLE,
            f"samples while training are not built in for model.type {model_type!r} yet",
            expected=f"no [sample] table (sampling exists for {', '.join(SIZE_MULTIPLE)})",
            code="sample",
        )
        return
    builtin = model_type if model_type in SIZE_MULTIPLE else None
    for issue in issues(table, builtin):
        ctx.add(
            "error",
            toml,
            issue.key,
            issue.message,
            found=issue.found,
            expected=issue.expected,
            code="sample",
            at=TABLE,
        )
