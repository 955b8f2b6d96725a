"""Training-step throughput of the built-in trainer vs a diffusers-example-style step, same run, same model.

    python bench/bench_trainer_gpu.py                  # H100: SDXL-size UNet, 1024 px, batch 4, LoRA r32
    python bench/bench_trainer_gpu.py --tiny --device cpu --steps 2 --warmup 1   # smoke test anywhere

Both steps use cached latents / text embeddings (random tensors of the right shapes, as the cache would
give), a random-init UNet built from the SDXL config, LoRA rank 32 on attention (to_q/k/v/out.0), AdamW.
- reference ("diffusers example"): bf16 base weights, fp32 LoRA params, eager, torch.autocast(bf16).
- ours (engine.trainer): bf16 base weights, fp32 LoRA params, no autocast, SDPA restricted to flash +
  memory-efficient, fused AdamW, eager and torch.compile'd; the loss is engine.trainer.loss.denoise_loss,
  the trainer's own (the trainer compiles with `[model] compile = true`).
Prints samples/s, peak memory, and MFU against a measured bf16 matmul peak (FLOPs counted with
torch.utils.flop_counter on one eager step). Needs torch + diffusers + peft; no deepspeed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine.trainer.loss import denoise_loss  # noqa: E402

SDXL_UNET = dict(
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
TINY_UNET = dict(
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


def build_unet(tiny: bool, device: torch.device, rank: int) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    torch.manual_seed(0)
    with torch.device(device):  # random init straight on the GPU: 2.6B params initialise in seconds there
        unet = UNet2DConditionModel(**(TINY_UNET if tiny else SDXL_UNET)).to(torch.bfloat16)
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=rank,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            init_lora_weights=False,
        )
    )
    for name, p in unet.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()
            p.requires_grad_(True)
    unet.train()
    return unet


def make_batch(tiny: bool, batch: int, res: int, device: torch.device) -> dict[str, Any]:
    cfg = TINY_UNET if tiny else SDXL_UNET
    side = res // 8
    g = torch.Generator(device="cpu").manual_seed(1)
    pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device)

    return {
        "latents": r(batch, 4, side, side),
        "noise": r(batch, 4, side, side),
        "t": torch.randint(0, 1000, (batch,), generator=g).to(device),
        "kwargs": {
            "encoder_hidden_states": r(batch, 77, cfg["cross_attention_dim"]).to(torch.bfloat16),
            "added_cond_kwargs": {
                "text_embeds": r(batch, pooled).to(torch.bfloat16),
                "time_ids": torch.tensor(
                    [[res, res, 0, 0, res, res]] * batch, dtype=torch.bfloat16, device=device
                ),
            },
        },
    }


def alphas_cumprod(device: torch.device) -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float().to(device)


def sdpa_flash_mem(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])


def make_step(
    unet: torch.nn.Module,
    model: Any,
    opt: torch.optim.Optimizer,
    batch: dict[str, Any],
    ac: torch.Tensor,
    device: torch.device,
    reference: bool,
) -> Any:
    def step() -> float:
        if reference:
            ctx: contextlib.AbstractContextManager[Any] = torch.autocast(device.type, dtype=torch.bfloat16)
        else:
            ctx = sdpa_flash_mem(device)
        with ctx:
            loss = denoise_loss(
                model, batch["latents"], batch["noise"], batch["t"], ac, batch["kwargs"], dtype=torch.bfloat16
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in unet.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step: Any, warmup: int, steps: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def matmul_peak(device: torch.device, n: int) -> float:
    """The device's matmul peak: bf16 on a GPU; on a CPU the faster of bf16 and fp32 (a CPU without bf16
    instructions emulates bf16 at a fraction of its fp32 speed, which made MFU come out above 1)."""
    dtypes = (torch.bfloat16,) if device.type == "cuda" else (torch.bfloat16, torch.float32)
    return max(_matmul_rate(device, n, dtype) for dtype in dtypes)


def _matmul_rate(device: torch.device, n: int, dtype: torch.dtype) -> float:
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
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def count_flops(step: Any) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny UNet (smoke test)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--res", type=int, default=1024)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps (torch.compile compiles here)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    res = 64 if args.tiny and args.res == 1024 else args.res
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    unet = build_unet(args.tiny, device, args.rank)
    batch = make_batch(args.tiny, args.batch, res, device)
    ac = alphas_cumprod(device)
    params = [p for p in unet.parameters() if p.requires_grad]
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "unet": "tiny" if args.tiny else "sdxl",
        "res": res,
        "batch": args.batch,
        "lora_rank": args.rank,
        "torch": torch.__version__,
    }

    ref_opt = torch.optim.AdamW(params, lr=1e-4)
    ref_step = make_step(unet, unet, ref_opt, batch, ac, device, reference=True)
    flops_per_step = count_flops(ref_step)
    variants = [("reference (eager, autocast, fp32 LoRA)", unet, ref_opt, True)]
    fused = {"fused": True} if device.type == "cuda" else {}
    ours_opt = torch.optim.AdamW(params, lr=1e-4, **fused)
    variants.append(("ours eager (bf16 base, flash/mem-eff SDPA)", unet, ours_opt, False))
    if not args.no_compile:
        variants.append(
            ("ours compiled (bf16 base, flash/mem-eff SDPA)", torch.compile(unet), ours_opt, False)
        )
    peak = matmul_peak(device, 8192 if device.type == "cuda" else 1024)
    results["matmul_peak_tflops"] = peak / 1e12
    results["tflop_per_sample"] = flops_per_step / args.batch / 1e12
    rows = []
    for label, model, opt, reference in variants:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        step = make_step(unet, model, opt, batch, ac, device, reference)
        t0 = time.perf_counter()
        sec = time_steps(step, args.warmup, args.steps, device)
        warm_s = time.perf_counter() - t0 - sec * args.steps
        sps = args.batch / sec
        row = {
            "variant": label,
            "samples_per_s": sps,
            "step_ms": sec * 1000,
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30
            if device.type == "cuda"
            else None,
            "mfu": flops_per_step / sec / peak,
            "warmup_s": warm_s,
        }
        rows.append(row)
    results["variants"] = rows
    results["speedup"] = max(r["samples_per_s"] for r in rows[1:]) / rows[0]["samples_per_s"]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"device {results['device']}  unet {results['unet']}  {res}px  batch {args.batch}  LoRA r{args.rank}  "
        f"torch {torch.__version__}"
    )
    print(
        f"bf16 matmul peak {results['matmul_peak_tflops']:.1f} TFLOP/s; {results['tflop_per_sample']:.3f} TFLOP/sample "
        f"(FLOP ceiling {results['matmul_peak_tflops'] / max(results['tflop_per_sample'], 1e-12):.1f} samples/s)"
    )
    for row in rows:
        mem = f"{row['peak_mem_gib']:.1f} GiB" if row["peak_mem_gib"] is not None else "n/a"
        print(
            f"{row['variant']:<52} {row['samples_per_s']:8.2f} samples/s  {row['step_ms']:8.1f} ms/step  "
            f"peak {mem:>9}  MFU {row['mfu'] * 100:5.1f}%  (warmup {row['warmup_s']:.0f} s)"
        )
    print(f"speedup best ours / reference: {results['speedup']:.2f}x (target >= 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
