"""Top-level keys of the main file: a save frequency, one checkpoint frequency, pipeline/GPU layout,
block swapping, manual partitioning, the learning-rate scheduler."""

from __future__ import annotations

from typing import Any

from profiles import lr_schedulers
from profiles.document import TomlFile
from profiles.rules.base import Ctx, num

SAVE_KEYS = ("save_every_n_epochs", "save_every_n_steps", "save_every_n_examples")
CHECKPOINT_KEYS = ("checkpoint_every_n_epochs", "checkpoint_every_n_minutes", "checkpoint_every_n_steps")


def check_frequencies(ctx: Ctx, toml: TomlFile, data: dict[str, Any]) -> None:
    if not any(k in data for k in SAVE_KEYS):
        ctx.add(
            "error",
            toml,
            "save_every_n_epochs",
            "no save frequency: diffusion-pipe refuses to start without one",
            expected="one of " + ", ".join(SAVE_KEYS),
            code="required",
            at="epochs",
        )
    checkpoints = [k for k in CHECKPOINT_KEYS if k in data]
    if len(checkpoints) > 1:
        ctx.add(
            "warning",
            toml,
            checkpoints[1],
            f"set only one checkpoint frequency (also set: {checkpoints[0]})",
            code="value",
        )


def check_training(ctx: Ctx, toml: TomlFile, data: dict[str, Any], num_gpus: int | None) -> None:
    stages = data.get("pipeline_stages", 1)
    if num_gpus is not None and isinstance(stages, int) and not isinstance(stages, bool) and stages >= 1:
        if num_gpus % stages != 0:
            ctx.add(
                "error",
                toml,
                "pipeline_stages",
                f"{num_gpus} GPU(s) cannot be split into pipelines of {stages} stage(s)",
                found=stages,
                expected=f"a divisor of the GPU count {num_gpus}",
                code="gpus",
            )
    swap = data.get("blocks_to_swap", 0)
    if num(swap) and swap > 0:
        if stages != 1:
            ctx.add(
                "error",
                toml,
                "blocks_to_swap",
                "block swapping needs pipeline_stages = 1",
                found=swap,
                expected="0 when pipeline_stages > 1",
                code="value",
            )
        if "adapter" not in data:
            ctx.add(
                "error",
                toml,
                "blocks_to_swap",
                "block swapping only works when training a LoRA ([adapter])",
                found=swap,
                expected="0 for a full fine-tune",
                code="value",
            )
    if data.get("partition_method") == "manual" and isinstance(stages, int) and not isinstance(stages, bool):
        split = data.get("partition_split")
        if not isinstance(split, list):
            ctx.add(
                "error",
                toml,
                "partition_split",
                "required with partition_method = 'manual'",
                expected=f"{max(stages - 1, 0)} layer index(es) where the model is split, e.g. [10]",
                code="required",
            )
        elif len(split) != stages - 1:
            ctx.add(
                "error",
                toml,
                "partition_split",
                f"{len(split)} split point(s) for {stages} pipeline stage(s)",
                found=split,
                expected=f"{stages - 1} entries (pipeline_stages - 1)",
                code="value",
            )
    sched = data.get("lr_scheduler")
    allowed = lr_schedulers.allowed(ctx.backend)
    if ctx.backend != "builtin":  # a checkout that knows more schedulers than 8f83dbf did
        allowed = (*allowed, *(v for v in ctx.keys.enums.get("main.lr_scheduler", ()) if v not in allowed))
    if isinstance(sched, str) and sched not in allowed:
        ctx.add(
            "error",
            toml,
            "lr_scheduler",
            "unknown learning-rate scheduler",
            found=sched,
            expected="one of " + ", ".join(allowed),
            code="value",
        )


def check_eval_datasets(ctx: Ctx, toml: TomlFile, data: dict[str, Any]) -> None:
    """A bare path entry: train.py reads it, then copies `eval_dataset['config']` into a new run folder,
    which fails on a string (8f83dbf): only the {name, config} table form runs."""
    evals = data.get("eval_datasets")
    if ctx.backend == "builtin" or not isinstance(evals, list):
        return
    for i, entry in enumerate(evals):
        if isinstance(entry, str):
            ctx.add(
                "error",
                toml,
                f"eval_datasets[{i}]",
                "a bare path: diffusion-pipe's train.py copies eval_dataset['config'] into the run folder, "
                "which fails on a string (a TypeError on a fresh run)",
                found=entry,
                expected=f"{{name = 'eval{i}', config = {entry!r}}}",
                code="value",
            )
