"""Training-step throughput of the built-in trainer vs a diffusers-example-style step, same run, same model.

    python bench/bench_trainer_gpu.py                                 # GPU: every case below
    python bench/bench_trainer_gpu.py --models sdxl --json out.json   # one model; results also as JSON
    python bench/bench_trainer_gpu.py --tiny --cpu                    # the same code on tiny models, seconds

Cases (full size, random init, cached latents and text embeddings as random tensors of the cache's shapes):
  sdxl    SDXL UNet, LoRA r32 on attention (to_q/k/v/out.0, as diffusers' SDXL LoRA example), 1024 px, batch 4
  flux    Flux-dev-size transformer (19 double + 38 single blocks, 3072 wide), LoRA r32 on every block Linear
          (the trainer's targets), 1024 px, batch 1 and batch 4 (batch 4 with activation checkpointing in both
          steps: without it the activations do not fit 80 GB)
  chroma  the same for Chroma's transformer (not in the default list: Flux's size and step, plus a text mask)

Each case runs two steps on one model:
- reference: diffusers' example training loop: bf16 base, fp32 LoRA params, eager, torch.autocast(bf16),
  loss.backward(), clip_grad_norm_, torch AdamW (foreach), zero_grad, loss.item() every step; SDPA limited
  to flash / memory-efficient as ours (cuDNN attention crashed a Flux-size backward on torch 2.11);
- ours: engine.trainer.speed.train_step, the function the trainer's loop calls for every step, with the loss
  of engine.trainer.loss.step_loss through the family's own forward (engine.trainer.families), the settings
  engine.trainer.speed.choose gives this device (autocast, TF32, fused AdamW, torch.compile with one graph per
  shape, channels_last for the UNet, foreach grad norm and clipping), the loss read every logging_steps.
  DeepSpeed and the data loader are not in it: both steps get their batch on the device.
Printed per row as soon as measured: samples/s, ms/step, peak memory, MFU against a bf16 matmul peak measured
in this run (model FLOPs counted with torch.utils.flop_counter on one eager batch-1 step, times the batch),
compile / warm-up seconds; then the ratio ours / reference against the target (SDXL >= 2.5x, Flux / Chroma
>= 1.5x). --json PATH writes the results (rewritten after each row). Needs torch + diffusers + peft.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine.trainer import speed as speed_mod  # noqa: E402
from engine.trainer.families import get_family  # noqa: E402
from engine.trainer.family import Family  # noqa: E402
from engine.trainer.flow import sample_t  # noqa: E402
from engine.trainer.lora_io import add_lora  # noqa: E402
from engine.trainer.loss import DdpmTerms, step_loss  # noqa: E402
from engine.trainer.optim import build_optimizer  # noqa: E402

TARGETS: dict[str, float] = {"sdxl": 2.5, "flux": 1.5, "chroma": 1.5}
DEFAULT_MODELS = "sdxl,flux"
LORA_RANK = 32
# model -> batches at full size; --batches overrides.
BATCHES: dict[str, tuple[int, ...]] = {"sdxl": (4,), "flux": (1, 4), "chroma": (1, 4)}
FULL_RES = 1024
TINY_RES = 64
# Full-size DiT batches above this train with activation checkpointing (both steps): Flux at 1024 px and batch
# 4 keeps ~4x the activations of batch 1, past an 80 GB card.
CHECKPOINT_ABOVE_BATCH = 1

SDXL_UNET: dict[str, Any] = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    use_linear_projection=True,
    cross_attention_dim=2048,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)
TINY_UNET: dict[str, Any] = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    cross_attention_dim=64,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=80,
    norm_num_groups=32,
)
FLUX_DEV: dict[str, Any] = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
T5_TOKENS = {False: 512, True: 16}  # text length of the flow families: full (T5 at 512) / tiny


@dataclass
class Case:
    model: str
    res: int
    batch: int
    checkpointing: bool


@dataclass
class Run:
    device: torch.device
    tiny: bool
    steps: int
    warmup: int
    compile: bool
    channels_last: bool = True
    results: dict[str, Any] = field(default_factory=dict)
    json_path: Path | None = None

    def write(self) -> None:
        if self.json_path is not None:
            from statefiles.atomic import atomic_write_text

            atomic_write_text(self.json_path, json.dumps(self.results, indent=2) + "\n")


# ---- models --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build straight in bf16: a Flux-size model built in fp32 first would take 48 GB."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def model_config(model: str, tiny: bool) -> dict[str, Any]:
    if model == "sdxl":
        return TINY_UNET if tiny else SDXL_UNET
    if tiny:
        from engine.demo_models import tiny_flow_transformer_kwargs

        base = dict(tiny_flow_transformer_kwargs())
        if model == "chroma":
            return {
                **base,
                "approximator_num_channels": 16,
                "approximator_hidden_dim": 32,
                "approximator_layers": 1,
            }
        return {**base, "pooled_projection_dim": 32, "guidance_embeds": True}
    if model == "chroma":
        from engine.trainer.chroma import CHROMA_CONFIG

        return {k: v for k, v in CHROMA_CONFIG.items() if not k.startswith("_")}
    return FLUX_DEV


def build(model: str, tiny: bool, device: torch.device) -> Family:
    """The trainer's family object around a random-init denoiser, with LoRA added as the trainer adds it."""
    import diffusers

    family = get_family(model)({"type": model}, torch.bfloat16, device)
    cls_name = {"sdxl": "UNet2DConditionModel", "flux": "FluxTransformer2DModel"}.get(
        model, "ChromaTransformer2DModel"
    )
    torch.manual_seed(0)
    with torch.device(device), default_dtype(torch.bfloat16):  # random init on the GPU: seconds for 12B
        net = getattr(diffusers, cls_name)(**model_config(model, tiny))
    net.requires_grad_(False)
    family.unet = net
    if family.schedule == "flow":
        family.transformer = net  # type: ignore[attr-defined]
    # SDXL: attention targets, as diffusers' SDXL LoRA example trains; the DiTs: the trainer's (every Linear).
    family.lora_targets = "attention" if model == "sdxl" else "all_linear"
    add_lora(net, family, LORA_RANK, 0.0, init_random_b=True)  # B != 0: every LoRA weight gets a gradient
    net.train()
    return family


def make_batch(family: Family, model: str, tiny: bool, case: Case) -> dict[str, Any]:
    """A micro-batch as the trainer's loader hands it to the step: cached latents and text, noise, t."""
    device, b, side = family.device, case.batch, case.res // 8
    g = torch.Generator().manual_seed(1)
    cfg = model_config(model, tiny)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    if model == "sdxl":
        pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
        latents = r(b, 4, side, side)
        t = torch.randint(0, 1000, (b,), generator=g)
        text = {"encoder_hidden_states": r(b, 77, cfg["cross_attention_dim"]), "text_embeds": r(b, pooled)}
        meta = {"time_ids": torch.tensor([[case.res, case.res, 0, 0, case.res, case.res]] * b).float()}
    else:
        latents = r(b, 16, side, side)
        t = sample_t({}, b, (side, side), g)
        tokens = T5_TOKENS[tiny]
        text = {"encoder_hidden_states": r(b, tokens, cfg["joint_attention_dim"])}
        if model == "chroma":
            text["attention_mask"] = (torch.arange(tokens)[None, :] <= tokens // 4).float().expand(b, -1)
        else:
            text["pooled_projections"] = r(b, cfg["pooled_projection_dim"])
        meta = {}
    return {
        "latents": latents.to(device),
        "noise": torch.randn(latents.shape, generator=g).to(device),
        "t": t.to(device),
        "kwargs": family.unet_kwargs(
            {k: v.to(device) for k, v in text.items()}, {k: v.to(device) for k, v in meta.items()}
        ),
    }


def ddpm_terms(family: Family) -> DdpmTerms | None:
    if family.schedule == "flow":
        return None
    from engine.trainer.ddpm import schedule_of

    return DdpmTerms(schedule_of({}).to(family.device).alphas_cumprod)


# ---- the two steps -------------------------------------------------------------------------------------------
def reference_step(family: Family, batch: dict[str, Any], ddpm: DdpmTerms | None) -> Callable[[], None]:
    """diffusers' example loop: autocast, eager, per-parameter clipping, foreach AdamW, loss.item() per step."""
    params = [p for p in family.unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    device = family.device

    def step() -> None:
        with speed_mod.sdpa_context(device), torch.autocast(device.type, dtype=torch.bfloat16):
            loss = step_loss(family, family.unet, batch, ddpm)
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.detach().item()  # the example logs the loss every step

    return step


def our_speed(family: Family, device: torch.device, compile_on: bool, channels_last: bool) -> speed_mod.Speed:
    chosen = speed_mod.choose(
        device=device,
        dtype=family.dtype,
        family=family.name,
        unet=family.schedule == "ddpm",
        zero_stage=0,
        blocks_to_swap=0,
        compile_key=None if compile_on else False,
        logging_steps=None,
        plain=False,
    )
    return chosen if channels_last else dataclasses.replace(chosen, channels_last=False)


def our_step(
    family: Family, batch: dict[str, Any], ddpm: DdpmTerms | None, speed: speed_mod.Speed
) -> Callable[[], None]:
    """The trainer's step: speed.train_step with the trainer's loss, its optimizer builder and settings."""
    params = [p for p in family.unet.parameters() if p.requires_grad]
    opt = build_optimizer({"type": "adamw", "lr": 1e-4}, [{"params": params}], fused=speed.fused_adamw)
    device = family.device
    count = 0

    def optimizer_step() -> None:
        opt.step()
        opt.zero_grad(set_to_none=True)  # DeepSpeed's engine.step does this in the trainer

    def step() -> None:
        nonlocal count
        loss, _ = speed_mod.train_step(
            [lambda: step_loss(family, family.unet, batch, ddpm)],
            backward=torch.autograd.backward,
            optimizer_step=optimizer_step,
            speed=speed,
            device=device,
            norm_params=params,
            clip=1.0,
        )
        count += 1
        if count % speed.logging_steps == 0:
            loss.item()  # the trainer's one read per logging interval

    return step


# ---- measuring -----------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device) -> float:
    """The device's matmul peak: bf16 on a GPU; on a CPU the faster of bf16 and fp32 (a CPU without bf16
    instructions emulates bf16 at a fraction of its fp32 speed, which made MFU come out above 1)."""
    n = 8192 if device.type == "cuda" else 1024
    dtypes = (torch.bfloat16,) if device.type == "cuda" else (torch.bfloat16, torch.float32)
    best = 0.0
    for dtype in dtypes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        sync(device)
        reps = 20 if device.type == "cuda" else 3
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def count_flops(step: Callable[[], None]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def time_step(step: Callable[[], None], run: Run) -> tuple[float, float]:
    """(seconds per step, seconds of the first step beyond a steady one: compile + warm-up)."""
    device = run.device
    sync(device)
    t0 = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(max(run.warmup - 1, 0)):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(run.steps):
        step()
    sync(device)
    sec = (time.perf_counter() - t0) / run.steps
    return sec, max(first - sec, 0.0)


def set_checkpointing(family: Family, on: bool) -> None:
    net: Any = family.unet  # a diffusers model: its checkpointing switches are not in nn.Module's type
    if on:
        net.enable_gradient_checkpointing()
    elif getattr(net, "is_gradient_checkpointing", False):
        net.disable_gradient_checkpointing()


def measure(
    run: Run, label: str, family: Family, case: Case, make: Callable[[], Callable[[], None]], flops: float
) -> dict[str, Any]:
    device = run.device
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    row: dict[str, Any] = {"model": case.model, "res": case.res, "batch": case.batch, "variant": label}
    row["checkpointing"] = case.checkpointing
    try:
        sec, warm = time_step(make(), run)
    except torch.cuda.OutOfMemoryError as exc:  # (torch.OutOfMemoryError only from torch 2.5)
        row["error"] = f"out of memory: {str(exc).splitlines()[0]}"
        print(f"  {label:<10} OOM ({row['error'][:120]})", flush=True)
        return row
    row.update(
        samples_per_s=case.batch / sec,
        step_ms=sec * 1000,
        peak_mem_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        mfu=flops / sec / run.results["matmul_peak_flops"],
        warmup_s=warm,
    )
    mem = f"{row['peak_mem_gib']:.1f} GiB" if row["peak_mem_gib"] is not None else "n/a"
    print(
        f"  {label:<10} {row['samples_per_s']:8.2f} samples/s  {row['step_ms']:9.1f} ms/step  peak {mem:>9}  "
        f"MFU {row['mfu'] * 100:5.1f}%  compile+warm-up {warm:6.1f} s",
        flush=True,
    )
    return row


def run_case(run: Run, family: Family, case: Case) -> list[dict[str, Any]]:
    device = run.device
    net: Any = family.unet  # nn.Module.to's stubs lack memory_format; compile() gets a marker attribute
    ddpm = ddpm_terms(family)
    speed = our_speed(family, device, run.compile, run.channels_last)
    ck = " activation checkpointing" if case.checkpointing else ""
    print(f"{case.model} {case.res}px batch {case.batch}{ck}:", flush=True)
    # Model FLOPs: one eager batch-1 step without checkpointing (no recompute counted), times the batch.
    one = Case(case.model, case.res, 1, False)
    set_checkpointing(family, False)
    with speed_mod.eager_context():  # compiled in place by an earlier case: count the eager ops
        flops_one = count_flops(reference_step(family, make_batch(family, case.model, run.tiny, one), ddpm))
    flops = flops_one * case.batch
    set_checkpointing(family, case.checkpointing)
    batch = make_batch(family, case.model, run.tiny, case)
    rows = []

    def reference() -> Callable[[], None]:
        speed_mod.setup_backends(device, speed_mod.Speed(tf32=False))  # the example leaves TF32 off
        net.to(memory_format=torch.contiguous_format)
        step = reference_step(family, batch, ddpm)

        def eager() -> None:
            with speed_mod.eager_context():  # the model may be compiled in place by an earlier case
                step()

        return eager

    def ours() -> Callable[[], None]:
        speed_mod.setup_backends(device, speed)
        if speed.channels_last:
            net.to(memory_format=torch.channels_last)
        if speed.compile and not getattr(net, "_dpdeck_compiled", False):
            net.compile(**speed_mod.compile_options(len(run.results["cases"])))
            net._dpdeck_compiled = True
        return our_step(family, batch, ddpm, speed)

    rows.append(measure(run, "reference", family, case, reference, flops))
    rows.append(measure(run, "ours", family, case, ours, flops))
    ref, us = rows
    target = TARGETS[case.model]
    if "samples_per_s" in ref and "samples_per_s" in us:
        ratio = us["samples_per_s"] / ref["samples_per_s"]
        us["ratio"] = ratio
        us["target"] = target
        us["target_met"] = ratio >= target
        ceiling = run.results["matmul_peak_flops"] / (flops / case.batch)
        print(
            f"  ratio ours / reference {ratio:.2f}x (target >= {target}x: {'met' if ratio >= target else 'MISSED'});"
            f" {flops / case.batch / 1e12:.3g} TFLOP/sample, FLOP ceiling {ceiling:.1f} samples/s; "
            f"ours: {speed.describe().removeprefix('speed: ')}",
            flush=True,
        )
    return rows


def cases_for(models: list[str], tiny: bool, res: int | None, batches: list[int] | None) -> list[Case]:
    out = []
    for model in models:
        for b in batches or BATCHES[model]:
            r = res or (TINY_RES if tiny else FULL_RES)
            ck = model != "sdxl" and not tiny and b > CHECKPOINT_ABOVE_BATCH
            out.append(Case(model, r, b, ck))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated of {', '.join(TARGETS)}")
    ap.add_argument("--tiny", action="store_true", help="tiny configs of the same models (smoke test)")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (same as --device cpu)")
    ap.add_argument("--device", default=None, help="torch device (default cuda, or cpu with --cpu)")
    ap.add_argument(
        "--res", type=int, default=None, help=f"pixels (default {FULL_RES}; {TINY_RES} with --tiny)"
    )
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes for every model")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per row (default 10; 2 with --tiny)")
    ap.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first, compile included (default 3)"
    )
    ap.add_argument("--no-compile", action="store_true", help="ours without torch.compile")
    ap.add_argument("--no-channels-last", action="store_true", help="ours without channels_last (UNet)")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in TARGETS]
    if unknown or not models:
        ap.error(
            f"--models: unknown {', '.join(unknown) or '(none given)'}; expected some of {', '.join(TARGETS)}"
        )
    try:
        batches = [int(b) for b in args.batches.split(",")] if args.batches else None
    except ValueError:
        ap.error(f"--batches: expected comma-separated integers, got {args.batches!r}")
    device = torch.device(args.device or ("cpu" if args.cpu else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu (and --tiny for seconds)", file=sys.stderr)
        return 2
    run = Run(
        device=device,
        tiny=args.tiny,
        steps=args.steps or (2 if args.tiny else 10),
        warmup=args.warmup if args.warmup is not None else (1 if args.tiny else 3),
        compile=not args.no_compile,
        channels_last=not args.no_channels_last,
        json_path=args.json,
    )
    cases = cases_for(models, args.tiny, args.res, batches)
    run.results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "tiny": args.tiny,
        "compile": run.compile,
        "channels_last": run.channels_last,
        "lora_rank": LORA_RANK,
        "targets": TARGETS,
        "cases": [c.__dict__ for c in cases],
        "rows": [],
    }
    print(
        f"device {run.results['device']}  torch {torch.__version__}  LoRA r{LORA_RANK}  "
        f"{'tiny models' if args.tiny else 'full-size models'}; targets: SDXL >= 2.5x the reference, "
        "Flux / Chroma >= 1.5x",
        flush=True,
    )
    peak = matmul_peak(device)
    run.results["matmul_peak_flops"] = peak
    print(f"bf16 matmul peak measured: {peak / 1e12:.3g} TFLOP/s", flush=True)
    run.write()
    for model in models:
        family = build(model, args.tiny, device)
        for case in (c for c in cases if c.model == model):
            run.results["rows"].extend(run_case(run, family, case))
            run.write()
        del family
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
