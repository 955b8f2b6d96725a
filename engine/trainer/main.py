"""Entry point: `deepspeed [--num_gpus N] -m engine.trainer --deepspeed --config X.toml [...]`.

Order matters for multi-rank runs: everything that can fail on bad input (profile, dataset, model family)
runs before any collective call, so every rank fails the same way instead of one hanging in a barrier.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine import proctitle
from engine.datasets.buckets import DatasetConfigError, plan_buckets
from engine.trainer import report
from engine.trainer.cache import TrainingCache, caption_variants, load_latent, load_text
from engine.trainer.config import TrainConfig, TrainConfigError, load_train_config
from engine.trainer.data import GlobalBatch, drop_missing, epoch_batches, micro_slice, sample_seed
from engine.trainer.ddpm import Schedule, schedule_of
from engine.trainer.evaluate import (
    TIMESTEP_QUANTILES,
    due,
    eval_sets,
    eval_settings,
    plan_eval_sets,
    run_eval,
)
from engine.trainer.families import get_family
from engine.trainer.family import Family, ModelLoadError
from engine.trainer.flow import sample_t
from engine.trainer.lora_io import DTYPES, LoraSaveError, add_lora, init_from_existing, save_lora
from engine.trainer.loss import DdpmTerms, step_loss
from engine.trainer.optim import OptimizerError, build_optimizer, build_scheduler
from engine.trainer.prefetch import Prefetcher
from engine.trainer.rundir import (
    ResumeError,
    check_trainer_identity,
    copy_profile,
    explain_dataset_change,
    find_resume_dir,
    new_run_dir,
    write_manifest,
    write_trainer_identity,
)
from engine.trainer.sampling import Sampler, check_fits, load_sample_settings
from engine.trainer.speed import (
    Speed,
    choose,
    compile_options,
    eager_context,
    forward_context,
    sdpa_context,
    setup_backends,
    train_step,
)
from engine.trainer.text_lora import TextLora, TrainedModules, add_text_loras, text_lr_plan

EXPECTED_ERRORS = (
    TrainConfigError,
    DatasetConfigError,
    ModelLoadError,
    OptimizerError,
    LoraSaveError,
    ResumeError,
)
PROBE_ENV = "DPDECK_TRAINER_PROBE"  # tests: record the model's output on a fixed input at each save


@dataclass
class HostInputs:
    """A micro-batch's CPU side, made by the prefetch thread: no model, no global RNG."""

    latents: torch.Tensor
    noise: torch.Tensor
    t: torch.Tensor
    text: dict[str, torch.Tensor] | None  # collated cached text; None when the text encoders train
    captions: list[str]
    meta: dict[str, torch.Tensor]


@dataclass
class PendingStep:
    """A step whose loss and grad norm are still on the device, until the next logging read."""

    step: int
    epoch: int
    loss: torch.Tensor
    grad_norm: torch.Tensor | float | None
    lr: float


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="engine.trainer", description="dpdeck built-in LoRA trainer (SD1.5 / SDXL / Chroma / Flux)"
    )
    p.add_argument("--config", required=True, help="main profile TOML (diffusion-pipe format)")
    p.add_argument("--deepspeed", action="store_true", help="accepted for diffusion-pipe compatibility")
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)
    p.add_argument(
        "--resume_from_checkpoint",
        nargs="?",
        const=True,
        default=None,
        metavar="NAME",
        help="resume the newest run (or run folder / checkpoint tag NAME) from its DeepSpeed checkpoint",
    )
    p.add_argument("--regenerate_cache", action="store_true", help="encode every latent and caption again")
    p.add_argument("--cache_only", action="store_true", help="build the cache, then exit")
    p.add_argument("--master_port", type=int, default=None, help="torch.distributed port (as diffusion-pipe)")
    args, unknown = p.parse_known_args(argv)
    if unknown:
        print(f"WARNING: ignoring unknown arguments: {' '.join(unknown)}", file=sys.stderr)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return Trainer(args).run()
    except EXPECTED_ERRORS as exc:
        print(f"ERROR: {exc}", file=sys.stderr, flush=True)
        return 1


class Trainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", max(args.local_rank, 0)))
        self.is_main = self.rank == 0
        job = os.environ.get("DPDECK_JOB")  # engine.jobs.procs' marker: only a job's ranks carry it
        if job:  # nvidia-smi lists the ranks: "dpdeck train job 12 rank 0" says whose memory it is
            proctitle.set_title("train", job=job, rank=self.rank)

    def log(self, msg: str) -> None:
        if self.is_main:
            print(msg, flush=True)

    # ---- setup -------------------------------------------------------------------------------------------
    def run(self) -> int:
        cfg = load_train_config(self.args.config)
        self.cfg = cfg
        self.global_batch = cfg.micro_batch_size * cfg.grad_accum * self.world
        plan = plan_buckets(cfg.dataset, cfg.dataset_path.parent, self.global_batch)
        for w in [*cfg.warnings, *plan.warnings]:
            self.log(f"WARNING: {w}")
        self.plan = plan
        if plan.steps_per_epoch == 0:
            raise self._empty_error()
        self.eval_sets = eval_sets(cfg)
        self.eval_settings = eval_settings(cfg, self.world)
        plan_eval_sets(self.eval_sets, self.eval_settings, self.world)
        # text_encoder_*_lr set: LoRA on those CLIP encoders too; they then run in the step (captions uncached).
        self.text_plan, text_warnings = text_lr_plan(cfg.model_type, cfg.model)
        for w in text_warnings:
            self.log(f"WARNING: {w}")
        self.device = (
            torch.device(f"cuda:{self.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        )
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        family_cls = get_family(cfg.model_type)
        family = family_cls(cfg.model, DTYPES[cfg.dtype], self.device)
        family.check_family()  # before the collective setup: a wrong file fails every rank the same way
        # [sample] is checked before any GPU memory is taken: a hopeless size fails here, not mid-run.
        self.sample_settings = load_sample_settings(cfg.main, cfg.model_type, cfg.main_path, cfg.seed)
        if self.sample_settings is not None:
            cuda = self.device.type == "cuda"
            total = torch.cuda.get_device_properties(self.device).total_memory if cuda else None
            check_fits(self.sample_settings, cfg.main_path, total)

        import deepspeed

        if self.args.master_port is not None:
            os.environ["MASTER_PORT"] = str(self.args.master_port)
        if "RANK" not in os.environ:
            _single_process_env()  # started without the launcher: one rank, no MPI discovery
        # Long timeout: the other ranks wait in a barrier while rank 0 builds the cache of a large dataset.
        deepspeed.init_distributed(
            dist_backend="nccl" if self.device.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=3)
        )
        import torch.distributed as dist

        self.dist = dist
        run_dir, tag = (None, None) if self.args.cache_only else self._run_dir()
        self.log(f"loading {cfg.model_type} model")
        family.load()
        self.family = family
        cache = TrainingCache(family, cfg.dataset_path, int(cfg.dataset.get("cache_shuffle_num", 4)))
        self.cache = cache
        if self.is_main:
            stats = cache.build(
                plan,
                regenerate=self.args.regenerate_cache,
                batch_size=cfg.caching_batch_size,
                text=not self.text_plan,
            )
            self.log(
                f"cache: {stats.encoded_latents} latents encoded, {stats.reused_latents} reused; "
                f"{stats.encoded_text} captions encoded, {stats.reused_text} reused; {stats.removed} stale removed; "
                f"{len(stats.unreadable)} unreadable image(s) skipped"
            )
        self._eval_caches()
        dist.barrier()
        # Rank 0 renders the samples: it encodes their prompts now, while the text encoders are loaded, and keeps
        # the VAE; nothing else is kept for them.
        self.sampler: Sampler | None = None
        if self.sample_settings is not None and self.is_main and not self.args.cache_only:
            self.sampler = Sampler(family, self.sample_settings, reencode=bool(self.text_plan))
            self.sampler.encode()
        family.free_encoders(keep_text=bool(self.text_plan), keep_vae=self.sampler is not None)
        if self.args.cache_only:
            self.log("cache complete (--cache_only)")
            return 0
        keep = {
            bi.item.key
            for b in plan.buckets
            for bi in b.items
            if cache.latent_path(bi.item, b.width, b.height).is_file()
        }
        drop_missing(plan, keep)
        if plan.steps_per_epoch == 0:
            raise self._empty_error()
        for b in plan.buckets:
            self.log(f"bucket {b.width}x{b.height} (ar {b.ar}): {b.count} examples, {b.dropped} dropped")
        assert run_dir is not None
        self.run_dir = run_dir
        return self._train(run_dir, tag)

    def _empty_error(self) -> DatasetConfigError:
        cfg = self.cfg
        return DatasetConfigError(
            f"{cfg.dataset_path}: the dataset is empty after bucketing (global batch {self.global_batch} = "
            f"micro_batch_size_per_gpu {cfg.micro_batch_size} x gradient_accumulation_steps {cfg.grad_accum} x "
            f"{self.world} GPU(s)):\n" + self.plan.drop_report()
        )

    def _run_dir(self) -> tuple[Path, str | None]:
        cfg = self.cfg
        obj: list[Any] = [None, None, None]
        if self.is_main:
            try:
                if self.args.resume_from_checkpoint is not None:
                    name = (
                        self.args.resume_from_checkpoint
                        if isinstance(self.args.resume_from_checkpoint, str)
                        else None
                    )
                    run_dir, tag = find_resume_dir(cfg.output_dir, name)
                    check_trainer_identity(run_dir, self._identity())
                else:
                    run_dir, tag = new_run_dir(cfg.output_dir), None
                    for src in {cfg.main_path, cfg.dataset_path}:
                        copy_profile(src, run_dir)
                    write_manifest(run_dir, self.plan)
                    write_trainer_identity(run_dir, self._identity())
                obj = [str(run_dir), tag, None]
            except ResumeError as exc:
                obj = [None, None, str(exc)]
        self.dist.broadcast_object_list(obj, src=0)
        if obj[2] is not None:
            raise ResumeError(obj[2])
        run_dir = Path(obj[0])
        if self.is_main:
            report.emit("run_dir", path=str(run_dir.resolve()))
        return run_dir, obj[1]

    def _identity(self) -> dict[str, object]:
        """What a checkpoint's LoRA layers depend on; a resume with a different value is refused. A key
        missing from an older run folder reads as None, so None stands for what those runs did: no text
        encoder LoRA, and attention-only UNet targets for sd15/sdxl (their default before adapter.targets)."""
        ident: dict[str, object] = {"model_type": self.cfg.model_type, "rank": self.cfg.rank}
        if self.cfg.model_type in ("sd15", "sdxl"):
            ident["lora_targets"] = None if self.cfg.lora_targets == "attention" else self.cfg.lora_targets
        ident["text_encoder_lora"] = [index for index, _ in self.text_plan] or None
        return ident

    def _deepspeed_config(self) -> dict[str, Any]:
        cfg = self.cfg
        ds: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
            "gradient_accumulation_steps": cfg.grad_accum,
            "train_batch_size": self.global_batch,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
            "zero_optimization": {"stage": cfg.zero_stage},
        }
        # Under ZeRO 0 the fast step clips with foreach ops itself (engine/trainer/speed.py); DeepSpeed's own
        # clipping would take ~1,100 per-parameter norms and an all_reduce per step.
        if cfg.gradient_clipping > 0 and not self.speed.own_clipping:
            ds["gradient_clipping"] = cfg.gradient_clipping
        return ds

    # ---- training ----------------------------------------------------------------------------------------
    def _train(self, run_dir: Path, tag: str | None) -> int:
        import deepspeed

        cfg, family, plan = self.cfg, self.family, self.plan
        torch.manual_seed(cfg.seed)  # LoRA init is identical on every rank
        unet = family.unet
        init_b = bool(cfg.adapter.get("init_random_b", False))
        family.lora_targets = cfg.lora_targets
        lora_cfg = add_lora(
            unet, family, cfg.rank, cfg.lora_dropout, init_b, cfg.adapter.get("exclude_modules")
        )
        self.lora_cfg = lora_cfg
        self.text_loras: list[TextLora] = add_text_loras(
            family.name, family.text_encoders(), self.text_plan, cfg.rank, cfg.lora_dropout, init_b
        )
        for t in self.text_loras:
            self.log(f"text encoder LoRA: {t.component} (lr {t.lr})")
        existing = cfg.adapter.get("init_from_existing")
        if existing and self.args.resume_from_checkpoint is None:
            n = init_from_existing(unet, Path(existing).expanduser(), family.lora_prefix)
            self.log(f"adapter.init_from_existing: loaded {n} tensors from {existing}")
        # After LoRA (peft casts new LoRA weights to a float8 base's dtype), before DeepSpeed moves the model.
        for line in family.apply_memory_options(cfg.transformer_dtype, cfg.blocks_to_swap):
            self.log(line)
        if cfg.activation_checkpointing:
            unet.enable_gradient_checkpointing()  # diffusers: each transformer block, non-reentrant
        self.speed: Speed = choose(
            device=self.device,
            dtype=family.dtype,
            family=family.name,
            unet=family.schedule == "ddpm",
            zero_stage=cfg.zero_stage,
            blocks_to_swap=cfg.blocks_to_swap,
            compile_key=cfg.model.get("compile"),
            logging_steps=cfg.logging_steps,
            plain=cfg.plain_step,
        )
        setup_backends(self.device, self.speed)
        self.log(self.speed.describe())
        if self.speed.channels_last:
            unet.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # NHWC convolutions; 4-D weights only
        unet.train()
        params = [p for p in unet.parameters() if p.requires_grad]
        lr = float(cfg.model.get("unet_lr", cfg.optimizer["lr"]))
        opt_cfg = {**cfg.optimizer, "lr": lr}
        groups = [{"params": params, "lr": lr}] + [
            {"params": [p for p in t.module.parameters() if p.requires_grad], "lr": t.lr}
            for t in self.text_loras
        ]
        # One module for DeepSpeed when text encoders train, so their gradients are reduced and checkpointed too.
        model = TrainedModules(unet, [t.module for t in self.text_loras]) if self.text_loras else unet
        if self.speed.fused_adamw:
            model.to(
                self.device
            )  # fused AdamW wants its params on the device when built; DeepSpeed moves it anyway
        optimizer = build_optimizer(opt_cfg, groups, fused=self.speed.fused_adamw)
        steps_per_epoch = plan.steps_per_epoch
        total_steps = steps_per_epoch * cfg.epochs
        scheduler = build_scheduler(optimizer, cfg.lr_scheduler, cfg.warmup_steps, total_steps)
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self._deepspeed_config()
        )
        if self.speed.compile:
            if self.is_main:  # silent for minutes at the first steps: the deck names why (engine/jobs/activity.py)
                report.emit("phase", what="compiling the model (torch.compile, during the first steps)")
            shapes = {(b.width, b.height) for b in plan.buckets if b.count}
            engine.compile(compile_kwargs=compile_options(len(shapes)))
        self.engine = engine
        self.trained_params = [p for p in engine.module.parameters() if p.requires_grad]
        self.flow = family.schedule == "flow"
        if self.flow:
            for key in ("min_snr_gamma", "debiased_estimation_loss"):
                if cfg.model.get(key):
                    self.log(
                        f"WARNING: model.{key}: a DDPM loss weighting; {family.name} trains with flow matching"
                    )
        if not self.flow:  # the DDPM families' noise schedule; flow families draw t in (0, 1) instead
            self.schedule: Schedule = schedule_of(cfg.model).to(self.device)
            self.alphas_cumprod = self.schedule.alphas_cumprod
        self.ddpm = (
            None
            if self.flow
            else DdpmTerms(
                self.alphas_cumprod,
                v_pred=self.schedule.v_pred,
                snr=self.schedule.snr,
                min_snr_gamma=cfg.model.get("min_snr_gamma"),
                debiased=bool(cfg.model.get("debiased_estimation_loss")),
            )
        )
        step, start_epoch, skip = 0, 1, 0
        if self.args.resume_from_checkpoint is not None:
            load_path, state = engine.load_checkpoint(str(run_dir), tag=tag, load_module_strict=False)
            if load_path is None or state is None:
                raise ResumeError(f"{run_dir}: DeepSpeed checkpoint {tag or 'latest'} could not be loaded")
            step, start_epoch, skip = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
            changes = explain_dataset_change(run_dir, plan)
            if changes:
                self.log(
                    "WARNING: the dataset changed since this run started; the data order from here on differs:"
                )
                for line in changes:
                    self.log(f"WARNING:   {line}")
                if self.is_main:
                    write_manifest(run_dir, plan)
            self.log(f"resumed from {load_path} at step {step} (epoch {start_epoch}, batch {skip})")
        self.reporter = report.Reporter(run_dir, self.is_main, cfg.monitoring, run_dir.name)
        save_steps = cfg.save_every_n_steps or (
            max(1, cfg.save_every_n_examples // self.global_batch) if cfg.save_every_n_examples else None
        )
        last_ckpt = time.monotonic()
        quit_early = False
        samples = self.sample_settings
        if samples is not None and samples.before_first_step:
            self._sample(step, start_epoch)
        if (
            self.eval_sets
            and self.eval_settings.before_first_step
            and self.args.resume_from_checkpoint is None
        ):
            self._evaluate(step, start_epoch)
        pending: list[PendingStep] = []
        epoch_losses: list[float] = []
        self.interval_start = time.monotonic()
        for epoch in range(start_epoch, cfg.epochs + 1):
            batches = epoch_batches(plan, epoch, cfg.seed)
            first = skip if epoch == start_epoch else 0
            if first == 0:
                self.log(f"Started new epoch: {epoch}")
            epoch_losses = []
            first_step = step + 1

            def produce(
                index: int,
                batches: list[GlobalBatch] = batches,
                epoch: int = epoch,
                offset: int = first_step - first,
            ) -> list[HostInputs]:
                return self._host_batch(batches[index], offset + index, epoch)

            with Prefetcher(range(first, len(batches)), produce, self.speed.prefetch) as loader:
                for index, hosts in zip(range(first, len(batches)), loader, strict=True):
                    step += 1
                    pending.append(self._step(hosts, step, epoch))
                    epoch_done = epoch if index == len(batches) - 1 else None
                    eval_due = bool(self.eval_sets) and due(self.eval_settings, step, epoch_done)
                    save_due = bool(save_steps and step % save_steps == 0)
                    ckpt_due = bool(cfg.checkpoint_every_n_steps and step % cfg.checkpoint_every_n_steps == 0)
                    sample_due = samples is not None and samples.due_after_step(step)
                    # The device is read (one sync) every logging_steps and before anything that reports or saves.
                    if not (
                        step % self.speed.logging_steps == 0
                        or epoch_done is not None
                        or eval_due
                        or save_due
                        or ckpt_due
                        or sample_due
                    ):
                        continue
                    flags = self._flush(pending, total_steps, last_ckpt, epoch_losses)
                    pending = []
                    if eval_due:
                        self._evaluate(step, epoch)
                    state = {"step": step, "epoch": epoch, "batch_in_epoch": index + 1}
                    want_save, want_quit, minutes_due = flags
                    if save_due or want_save or want_quit:
                        self._save(run_dir / f"step{step}", "step")
                    if ckpt_due or minutes_due or want_save or want_quit:
                        self._checkpoint(run_dir, state)
                        last_ckpt = time.monotonic()
                    if sample_due and not want_quit:
                        self._sample(step, epoch)
                    self.interval_start = time.monotonic()  # saves and evals do not count as step time
                    if want_quit:
                        quit_early = True
                        break
            if quit_early:
                break
            if epoch_losses:
                self.reporter.epoch_loss(epoch, sum(epoch_losses) / len(epoch_losses))
            if epoch == cfg.epochs or (cfg.save_every_n_epochs and epoch % cfg.save_every_n_epochs == 0):
                self._save(run_dir / f"epoch{epoch}", "epoch")
            if samples is not None and samples.due_after_epoch(epoch) and not samples.due_after_step(step):
                self._sample(step, epoch)  # (unless this step's samples were just rendered)
            if (
                cfg.checkpoint_every_n_epochs
                and epoch % cfg.checkpoint_every_n_epochs == 0
                and epoch < cfg.epochs
            ):
                self._checkpoint(run_dir, {"step": step, "epoch": epoch + 1, "batch_in_epoch": 0})
                last_ckpt = time.monotonic()
            self.interval_start = time.monotonic()
        self.reporter.close()
        self.dist.barrier()
        if quit_early:
            self.log("save_quit: checkpoint written, exiting")
            return 0
        if self.is_main:
            report.emit("complete")
            print("TRAINING COMPLETE!", flush=True)
        return 0

    def _control_flags(self, last_ckpt: float) -> list[float]:
        """save / save_quit control files and the minutes timer, decided on rank 0 only."""
        if not self.is_main:
            return [0.0, 0.0, 0.0]
        out = []
        for name in ("save", "save_quit"):
            path = self.run_dir / name
            present = path.exists()
            if present:
                path.unlink(missing_ok=True)
            out.append(1.0 if present else 0.0)
        minutes = self.cfg.checkpoint_every_n_minutes
        out.append(1.0 if minutes and time.monotonic() - last_ckpt >= minutes * 60 else 0.0)
        return out

    def _host_batch(self, batch: GlobalBatch, step: int, epoch: int) -> list[HostInputs]:
        """The step's micro-batches for this rank, host side (runs in the prefetch thread)."""
        cfg = self.cfg
        if self.speed.pin_memory:
            torch.cuda.set_device(self.device)  # the current device is per thread; pinning allocates on it
        return [
            self._host_inputs(
                batch, micro_slice(batch, micro, self.rank, self.world, cfg.micro_batch_size), step, epoch
            )
            for micro in range(cfg.grad_accum)
        ]

    def _step(self, hosts: list[HostInputs], step: int, epoch: int) -> PendingStep:
        cfg, engine = self.cfg, self.engine
        lr_used = float(engine.optimizer.param_groups[0]["lr"])

        def micro_loss(micro: int, host: HostInputs) -> Any:
            def run() -> torch.Tensor:
                # LoRA dropout draws from the global RNG: seed it per (step, micro, rank) for reproducibility.
                torch.manual_seed(sample_seed(cfg.seed, step, 10_000 + micro * self.world + self.rank))
                return self._loss_of(self._device_inputs(host))

            return run

        loss, norm = train_step(
            [micro_loss(micro, host) for micro, host in enumerate(hosts)],
            backward=engine.backward,
            optimizer_step=engine.step,
            speed=self.speed,
            device=self.device,
            # Under ZeRO 0 the averaged grads are in .grad at the boundary; ZeRO 1/2 partition them and
            # DeepSpeed measures the norm itself.
            norm_params=self.trained_params if cfg.zero_stage == 0 else None,
            clip=cfg.gradient_clipping,
        )
        grad_norm: torch.Tensor | float | None = norm
        if cfg.zero_stage != 0:
            grad_norm = engine.get_global_grad_norm()
        return PendingStep(step, epoch, loss, grad_norm, lr_used)

    def _flush(
        self, pending: list[PendingStep], total_steps: int, last_ckpt: float, epoch_losses: list[float]
    ) -> tuple[bool, bool, bool]:
        """Read the pending steps' losses and grad norms in one transfer, with the control flags in the same
        all_reduce, report each step, and return (save, save_quit, minutes due)."""
        n = len(pending)
        # On the training device: NCCL reduces only CUDA tensors.
        local = torch.stack([p.loss.to(self.device, torch.float64) for p in pending])
        extra = torch.tensor([1.0, *self._control_flags(last_ckpt)], dtype=torch.float64, device=self.device)
        summed = torch.cat([local, extra])
        self.dist.all_reduce(summed)
        norms = [p.grad_norm for p in pending]
        on_device = [g for g in norms if isinstance(g, torch.Tensor)]
        read = (
            iter(torch.stack([g.float().to(self.device) for g in on_device]).cpu().tolist())
            if on_device
            else iter(())
        )
        values = summed.cpu().tolist()  # the one host sync of the interval
        losses = [v / values[n] for v in values[:n]]
        iter_time = (time.monotonic() - self.interval_start) / n
        for p, loss, norm in zip(pending, losses, norms, strict=True):
            grad = next(read) if isinstance(norm, torch.Tensor) else norm
            epoch_losses.append(loss)
            self.reporter.progress(
                step=p.step,
                total_steps=total_steps,
                epoch=p.epoch,
                total_epochs=self.cfg.epochs,
                loss=loss,
                lr=p.lr,
                grad_norm=float(grad) if grad is not None else None,
                iter_time=iter_time,
                samples_per_s=self.global_batch / max(iter_time, 1e-9),
            )
        flags = values[n + 1 :]
        return bool(flags[0]), bool(flags[1]), bool(flags[2])

    def _host_inputs(
        self,
        batch: GlobalBatch,
        samples: list[tuple[int, Any]],
        step: int,
        epoch: int,
        quantile: float | None = None,
        cache: TrainingCache | None = None,
    ) -> HostInputs:
        """quantile: an eval's fixed timestep quantile (no caption dropout then); cache: an eval set's. Uses
        only per-sample generators, so it may run in the prefetch thread."""
        cfg, family, b = self.cfg, self.family, batch.bucket
        cache = cache or self.cache
        dropout = cfg.uncond_fraction
        noise_offset = float(cfg.model.get("noise_offset", 0.0) or 0.0)
        lat, noise, ts, texts, metas = [], [], [], [], []
        captions: list[str] = []
        for g, bi in samples:
            gen = torch.Generator().manual_seed(sample_seed(cfg.seed, step, g))
            entry = load_latent(cache.latent_path(bi.item, b.width, b.height))
            z = entry["latents"]
            n = torch.randn(z.shape, generator=gen)
            if noise_offset:
                n = n + noise_offset * torch.randn((z.shape[0], 1, 1), generator=gen)
            if self.flow:
                ts.append(float(sample_t(cfg.model, 1, tuple(z.shape[-2:]), gen, quantile)[0]))
            elif quantile is not None:  # diffusion-pipe: int(quantile * num_train_timesteps)
                ts.append(int(quantile * len(self.alphas_cumprod)))
            else:
                ts.append(int(torch.randint(0, len(self.alphas_cumprod), (1,), generator=gen)))
            variants = caption_variants(bi.item, bi.shuffle_tags, cache.n_variants)
            caption = variants[(epoch - 1) % len(variants)]
            if dropout and quantile is None and float(torch.rand((), generator=gen)) < dropout:
                caption = ""
            captions.append(caption)
            if not self.text_loras:
                texts.append(load_text(cache.text_path(caption)))
            metas.append(
                family.image_meta(
                    tuple(entry["orig_hw"].tolist()), tuple(entry["crop_tl"].tolist()), (b.height, b.width)
                )
            )
            lat.append(z)
            noise.append(n)
        host = HostInputs(
            latents=torch.stack(lat),
            noise=torch.stack(noise),
            t=torch.tensor(ts),
            text=None if self.text_loras else family.collate_text(texts),
            captions=captions,
            meta={k: torch.stack([m[k] for m in metas]) for k in metas[0]} if metas[0] else {},
        )
        return _pinned(host) if self.speed.pin_memory else host

    def _device_inputs(self, host: HostInputs) -> dict[str, Any]:
        """The micro-batch on the device; copies from pinned memory do not wait for the running step."""
        nb = self.speed.pin_memory

        def dev(x: torch.Tensor) -> torch.Tensor:
            return x.to(self.device, non_blocking=nb)

        if host.text is None:  # the encoders being trained run here, with grad
            text = self.family.encode_text(host.captions)
        else:
            text = {k: dev(v) for k, v in host.text.items()}
        return {
            "latents": dev(host.latents),
            "noise": dev(host.noise),
            "t": dev(host.t),
            "kwargs": self.family.unet_kwargs(text, {k: dev(v) for k, v in host.meta.items()}),
        }

    def _loss(
        self,
        batch: GlobalBatch,
        samples: list[tuple[int, Any]],
        step: int,
        epoch: int,
        quantile: float | None = None,
        cache: TrainingCache | None = None,
    ) -> torch.Tensor:
        """One micro-batch's loss outside the training step (evals): the step's context, run eagerly."""
        x = self._device_inputs(self._host_inputs(batch, samples, step, epoch, quantile, cache))
        with forward_context(self.speed, self.device), eager_context():
            return self._loss_of(x)

    def _loss_of(self, x: dict[str, Any]) -> torch.Tensor:
        return step_loss(self.family, self.engine, x, self.ddpm)

    # ---- outputs -----------------------------------------------------------------------------------------
    def _save(self, save_dir: Path, kind: str) -> None:
        if self.is_main:
            print(f"Saving model to directory {save_dir}", flush=True)
            save_dir.mkdir(parents=True, exist_ok=True)
            save_lora(
                save_dir, self.family.unet, self.family, self.lora_cfg, self.cfg.save_dtype, self.text_loras
            )
            if os.environ.get(PROBE_ENV) == "1":
                self._write_probe(save_dir)
            report.emit("save", kind=kind, path=str(save_dir.resolve()))
        self.dist.barrier()

    def _eval_caches(self) -> None:
        """Each eval set gets its own cache (latents, and captions unless the text encoders train); rank 0 fills it."""
        for s in self.eval_sets:
            s.cache = TrainingCache(self.family, s.path, int(s.dataset.get("cache_shuffle_num", 4)))
            if self.is_main:
                assert s.plan is not None
                s.cache.build(
                    s.plan,
                    regenerate=self.args.regenerate_cache,
                    batch_size=self.cfg.caching_batch_size,
                    text=not self.text_plan,
                )

    def _evaluate(self, step: int, epoch: int) -> None:
        """Every eval set's loss at diffusion-pipe's timestep quantiles, with the weights as they are now."""
        module = self.engine.module
        was_training = module.training
        module.eval()  # LoRA dropout off
        for s in self.eval_sets:
            if s.plan is not None and s.cache is not None:  # unreadable images have no latents: left out
                keep = {
                    bi.item.key
                    for b in s.plan.buckets
                    for bi in b.items
                    if s.cache.latent_path(bi.item, b.width, b.height).is_file()
                }
                drop_missing(s.plan, keep)

        def reduce(total: torch.Tensor) -> torch.Tensor:
            total = total.to(self.device)
            self.dist.all_reduce(total)
            return total.cpu()

        # Noise from (seed, step 0, sample): training steps count from 1, so eval noise is its own and the same
        # at every eval.
        losses, seconds = run_eval(
            self.eval_sets,
            self.eval_settings,
            lambda batch, samples, q, cache: self._loss(batch, samples, 0, 1, q, cache),
            rank=self.rank,
            world=self.world,
            seed=self.cfg.seed,
            reduce=reduce,
        )
        module.train(was_training)
        self.reporter.eval(
            step=step, epoch=epoch, losses=losses, quantiles=TIMESTEP_QUANTILES, seconds=seconds
        )

    def _sample(self, step: int, epoch: int) -> None:
        """Rank 0 renders the [sample] prompts with the weights as they are now; the other ranks wait."""
        if self.sampler is not None:
            self.log(f"sampling {len(self.sampler.settings.prompts)} prompt(s) at step {step}")
            with sdpa_context(self.device), eager_context():
                # The peft-wrapped denoiser DeepSpeed trains in place (engine.module may wrap text encoders too).
                self.sampler.render(self.family.unet, step, epoch, self.run_dir)
        self.dist.barrier()

    def _checkpoint(self, run_dir: Path, state: dict[str, int]) -> None:
        tag = f"global_step{state['step']}"
        self.engine.save_checkpoint(str(run_dir), tag=tag, client_state=state, exclude_frozen_parameters=True)
        if self.is_main:
            report.emit("save", kind="checkpoint", path=str((run_dir / tag).resolve()))

    @torch.no_grad()
    def _write_probe(self, save_dir: Path) -> None:
        """The trained model's output on a fixed input, for tests that reload the saved files."""
        from safetensors.torch import save_file

        b = next(b for b in self.plan.buckets if b.count)
        bi = b.items[0]
        entry = load_latent(self.cache.latent_path(bi.item, b.width, b.height))
        gen = torch.Generator().manual_seed(1234)
        caption = caption_variants(bi.item, bi.shuffle_tags, self.cache.n_variants)[0]
        sample = torch.randn((1, *entry["latents"].shape), generator=gen)
        if self.text_loras:  # the trained encoders' embedding, which a reload must reproduce
            was_training = self.engine.module.training
            self.engine.module.eval()
            text = {k: v.float().cpu() for k, v in self.family.encode_text([caption]).items()}
            self.engine.module.train(was_training)
        else:
            text = self.family.collate_text([load_text(self.cache.text_path(caption))])
        meta = self.family.image_meta(
            tuple(entry["orig_hw"].tolist()), tuple(entry["crop_tl"].tolist()), (b.height, b.width)
        )
        meta = {k: v.unsqueeze(0) for k, v in meta.items()}
        module = self.engine.module
        was_training = module.training
        module.eval()
        t = self.family.probe_timestep().to(self.device)
        with eager_context():
            out = self.family.denoise(
                module, sample.to(self.device, self.family.dtype), t, self.family.unet_kwargs(text, meta)
            )
        module.train(was_training)
        tensors = {"sample": sample, "timestep": t.cpu(), "output": out.float().cpu()}
        tensors.update({f"text.{k}": v for k, v in text.items()})
        tensors.update({f"meta.{k}": v for k, v in meta.items()})
        save_file(
            {k: v.contiguous() for k, v in tensors.items()},
            str(save_dir / "probe.safetensors"),
            metadata={"caption": caption},
        )


def _single_process_env() -> None:
    from engine.jobs.ports import pick_port

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_SIZE="1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(pick_port(set()))


def _pinned(host: HostInputs) -> HostInputs:
    """Page-locked copies, so the step's copies to the GPU are asynchronous."""
    return HostInputs(
        latents=host.latents.pin_memory(),
        noise=host.noise.pin_memory(),
        t=host.t.pin_memory(),
        text=None if host.text is None else {k: v.pin_memory() for k, v in host.text.items()},
        captions=host.captions,
        meta={k: v.pin_memory() for k, v in host.meta.items()},
    )


__all__ = ["main", "TrainConfig", "Family"]
