"""Eval datasets as diffusion-pipe's train.py runs them: each set's loss at fixed timestep quantiles, no grad.

Upstream (train.py at 8f83dbf): `eval_datasets` is a list of dataset TOML paths (named eval0, eval1, ...) or of
tables {name, config}; an eval runs before the first step (`eval_before_first_step`, default true, not on
resume), every `eval_every_n_steps` (or `eval_every_n_examples` // global batch) and after every
`eval_every_n_epochs`-th epoch. Each set is evaluated at each quantile of TIMESTEP_QUANTILES (DDPM: t =
int(q * num_train_timesteps); flow: the timestep distribution's inverse CDF at q) and the mean is its loss.
TensorBoard tags are upstream's (`NAME/loss`, `NAME/loss_quantile_0.10`, ..., `eval/eval_time_sec`; x = step),
so engine/jobs/tb_events.py and the Run screen show them as they show diffusion-pipe's.

Here the noise of every eval sample is drawn from (seed, sample index), the same at every eval, so two evals
differ only by the weights (upstream reseeds its RNG with the rank before each eval, to the same end).
`disable_block_swap_for_eval` has nothing to act on (no block swap in this trainer).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.datasets.buckets import BucketPlan, plan_buckets
from engine.trainer.cache import TrainingCache
from engine.trainer.config import TrainConfig, TrainConfigError
from engine.trainer.data import GlobalBatch, epoch_batches, micro_slice
from profiles.document import TomlFile, resolve_ref

TIMESTEP_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # train.py TIMESTEP_QUANTILES_FOR_EVAL
EVAL_EPOCH = 0  # the batch order of an eval set: one fixed shuffle (training epochs count from 1)


@dataclass
class EvalSettings:
    every_n_steps: int | None
    every_n_epochs: int | None
    before_first_step: bool
    micro_batch_size: int
    grad_accum: int


@dataclass
class EvalSet:
    name: str
    path: Path
    dataset: dict[str, Any]
    plan: BucketPlan | None = None
    cache: TrainingCache | None = None


def _positive_int(main: dict[str, Any], key: str, file: Path, default: int | None) -> int | None:
    value = main.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TrainConfigError(f"{file}: {key}: expected an integer >= 1 (found {value!r})")
    return value


def eval_settings(cfg: TrainConfig, world: int) -> EvalSettings:
    main, f = cfg.main, cfg.main_path
    micro = _positive_int(main, "eval_micro_batch_size_per_gpu", f, cfg.micro_batch_size) or 1
    accum = _positive_int(main, "eval_gradient_accumulation_steps", f, 1) or 1
    steps = _positive_int(main, "eval_every_n_steps", f, None)
    examples = _positive_int(main, "eval_every_n_examples", f, None)
    if examples is not None:  # as train.py: examples // the training global batch, computed once
        steps = max(1, examples // (cfg.micro_batch_size * cfg.grad_accum * world))
    before = main.get("eval_before_first_step", True)
    if not isinstance(before, bool):
        raise TrainConfigError(f"{f}: eval_before_first_step: expected true or false (found {before!r})")
    return EvalSettings(steps, _positive_int(main, "eval_every_n_epochs", f, None), before, micro, accum)


def eval_sets(cfg: TrainConfig) -> list[EvalSet]:
    """The profile's eval_datasets, each TOML loaded; paths resolve as `dataset` does (beside the main TOML)."""
    raw = cfg.main.get("eval_datasets") or []
    f = cfg.main_path
    if not isinstance(raw, list):
        raise TrainConfigError(f"{f}: eval_datasets: expected a list (found {raw!r})")
    out: list[EvalSet] = []
    for i, entry in enumerate(raw):
        if isinstance(entry, str):
            name, ref = f"eval{i}", entry
        elif (
            isinstance(entry, dict)
            and isinstance(entry.get("name"), str)
            and isinstance(entry.get("config"), str)
        ):
            name, ref = entry["name"], entry["config"]
        else:
            raise TrainConfigError(
                f"{f}: eval_datasets[{i}]: expected a dataset TOML path or a table with name and config "
                f"(found {entry!r})"
            )
        path = resolve_ref(ref, f)
        if path is None or not path.is_file():
            raise TrainConfigError(f"{f}: eval_datasets[{i}] ({name}): file not found: {ref}")
        if name in {s.name for s in out}:
            raise TrainConfigError(f"{f}: eval_datasets[{i}]: the name {name!r} is used twice")
        out.append(EvalSet(name, path.resolve(), TomlFile.load(path).data()))
    return out


def plan_eval_sets(sets: list[EvalSet], settings: EvalSettings, world: int) -> None:
    global_batch = settings.micro_batch_size * settings.grad_accum * world
    for s in sets:
        s.plan = plan_buckets(s.dataset, s.path.parent, global_batch)
        if s.plan.steps_per_epoch == 0:
            raise TrainConfigError(
                f"{s.path}: eval set {s.name!r} is empty after bucketing (eval global batch {global_batch}):\n"
                + s.plan.drop_report()
            )


def due(settings: EvalSettings, step: int, epoch_done: int | None) -> bool:
    """After `step` (epoch_done: the epoch that step finished, if any), as train.py decides."""
    if settings.every_n_steps and step % settings.every_n_steps == 0:
        return True
    return bool(epoch_done and settings.every_n_epochs and epoch_done % settings.every_n_epochs == 0)


# loss_of(batch, samples, quantile, cache) -> the mean loss of those samples at that timestep quantile
LossFn = Callable[[GlobalBatch, list[tuple[int, Any]], float, TrainingCache], torch.Tensor]


@torch.no_grad()
def run_eval(
    sets: list[EvalSet],
    settings: EvalSettings,
    loss_of: LossFn,
    *,
    rank: int,
    world: int,
    seed: int,
    reduce: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[dict[str, list[float]], float]:
    """Every set's mean loss at each quantile (same on every rank), and the seconds it took."""
    start = time.monotonic()
    out: dict[str, list[float]] = {}
    for s in sets:
        assert s.plan is not None and s.cache is not None
        batches = epoch_batches(s.plan, EVAL_EPOCH, seed)
        losses = []
        for q in TIMESTEP_QUANTILES:
            total = torch.zeros(2, dtype=torch.float64)
            for batch in batches:
                for micro in range(settings.grad_accum):
                    samples = micro_slice(batch, micro, rank, world, settings.micro_batch_size)
                    total += torch.tensor(
                        [float(loss_of(batch, samples, q, s.cache)) * len(samples), len(samples)]
                    )
            total = reduce(total)
            losses.append(float(total[0] / total[1]))
        out[s.name] = losses
    return out, time.monotonic() - start
