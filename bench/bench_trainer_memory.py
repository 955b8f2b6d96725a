"""What the built-in trainer's memory options buy on a Flux-shaped transformer (engine/trainer/memory.py).

    python bench/bench_trainer_memory.py                       # small, CPU-fast defaults
    python bench/bench_trainer_memory.py --device cuda --layers 19 --single-layers 38 --heads 24 \\
        --head-dim 128 --tokens 4096 --swap 20 --rank 32         # Flux-dev size on a GPU

Prints the frozen base's parameter bytes at bf16 and with transformer_dtype = 'float8' (and their ratio), then
one LoRA training step (flow loss forward + backward, as the trainer runs it) per variant: bf16, float8,
float8 + activation checkpointing, and that plus blocks_to_swap. On CUDA each variant also reports its peak
memory (torch.cuda.max_memory_allocated); on the CPU there is no device memory to save, so only the step time
and the bytes kept off the device are shown. Random weights from the config: no download.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine.trainer import flow  # noqa: E402
from engine.trainer.flux import Flux  # noqa: E402
from engine.trainer.lora_io import add_lora  # noqa: E402

VARIANTS: list[tuple[str, str | None, bool, bool]] = [
    # name, transformer_dtype, activation checkpointing, block swap
    ("bf16", None, False, False),
    ("float8", "float8", False, False),
    ("float8 + checkpointing", "float8", True, False),
    ("float8 + checkpointing + blocks_to_swap", "float8", True, True),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--layers", type=int, default=3, help="double blocks (Flux: 19)")
    p.add_argument("--single-layers", type=int, default=5, help="single blocks (Flux: 38)")
    p.add_argument("--heads", type=int, default=2, help="attention heads (Flux: 24)")
    p.add_argument("--head-dim", type=int, default=32, help="per-head width (Flux: 128)")
    p.add_argument("--text-dim", type=int, default=64, help="T5 width (Flux: 4096)")
    p.add_argument("--tokens", type=int, default=64, help="image tokens per sample (1024 px: 4096)")
    p.add_argument("--text-tokens", type=int, default=16, help="T5 tokens per sample (Flux: 512)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--swap", type=int, default=2, help="blocks_to_swap for the swap variant")
    p.add_argument("--steps", type=int, default=1, help="timed steps per variant (after one warm-up)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p.parse_args(argv)


def build(args: argparse.Namespace, transformer_dtype: str | None, ckpt: bool, swap: bool) -> Flux:
    from diffusers import FluxTransformer2DModel

    device = torch.device(args.device)
    torch.manual_seed(0)
    rope = args.head_dim // 8 * 2  # axes_dims_rope must add up to head_dim: (a, b, b)
    model = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=args.layers,
        num_single_layers=args.single_layers,
        attention_head_dim=args.head_dim,
        num_attention_heads=args.heads,
        joint_attention_dim=args.text_dim,
        pooled_projection_dim=args.text_dim,
        axes_dims_rope=(args.head_dim - 2 * rope, rope, rope),
        guidance_embeds=False,
    ).to(torch.bfloat16)
    model.requires_grad_(False)
    fam = Flux({}, torch.bfloat16, device)
    fam.transformer = fam.unet = model
    add_lora(model, fam, args.rank, 0.0, True)
    # The trainer's order (engine/trainer/main.py): memory options, checkpointing, then onto the device.
    fam.apply_memory_options(transformer_dtype, args.swap if swap else 0)
    if ckpt:
        model.enable_gradient_checkpointing()
    model.to(device).train()
    return fam


def frozen_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)


def step(fam: Flux, args: argparse.Namespace) -> None:
    device = fam.device
    side = int(args.tokens**0.5) * 2  # latents (B, 16, h, w) pack into (h/2) * (w/2) tokens
    latents = torch.randn(args.batch, 16, side, side, device=device)
    noise = torch.randn_like(latents)
    t = torch.rand(args.batch, device=device)
    text = {
        "encoder_hidden_states": torch.randn(
            args.batch, args.text_tokens, args.text_dim, device=device, dtype=torch.bfloat16
        ),
        "pooled_projections": torch.randn(args.batch, args.text_dim, device=device, dtype=torch.bfloat16),
    }
    loss = flow.flow_loss(
        lambda x, tt, kw: fam.denoise(fam.unet, x, tt, kw), latents, noise, t, text, dtype=torch.bfloat16
    )
    loss.backward()
    for p in fam.unet.parameters():
        p.grad = None


def run_variant(
    args: argparse.Namespace, name: str, storage: str | None, ckpt: bool, swap: bool
) -> dict[str, Any]:
    cuda = args.device.startswith("cuda")
    fam = build(args, storage, ckpt, swap)
    step(fam, args)  # warm-up
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(fam, args)
    if cuda:
        torch.cuda.synchronize()
    out: dict[str, Any] = {
        "variant": name,
        "step_s": (time.perf_counter() - t0) / args.steps,
        "frozen_bytes_on_device": frozen_bytes(fam.unet),
        "swapped_bytes": fam.swapper.swapped_bytes() if fam.swapper is not None else 0,
    }
    if cuda:
        out["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    del fam
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bf16 = build(args, None, False, False)
    base = frozen_bytes(bf16.unet)
    del bf16
    fp8 = build(args, "float8", False, False)
    small = frozen_bytes(fp8.unet)
    del fp8
    results = [run_variant(args, *v) for v in VARIANTS]
    report = {
        "device": args.device,
        "frozen_base_bytes_bf16": base,
        "frozen_base_bytes_float8": small,
        "ratio": small / base,
        "variants": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    mib = 2**20
    print(f"frozen base: bf16 {base / mib:.1f} MiB, float8 {small / mib:.1f} MiB (ratio {small / base:.3f})")
    peak = "peak MiB" if args.device.startswith("cuda") else "(no device memory on cpu)"
    print(f"{'variant':42} {'step s':>8} {'frozen on device MiB':>21} {'swapped MiB':>12}  {peak}")
    for r in results:
        line = f"{r['variant']:42} {r['step_s']:8.3f} {r['frozen_bytes_on_device'] / mib:21.1f}"
        line += f" {r['swapped_bytes'] / mib:12.1f}"
        if "peak_mib" in r:
            line += f"  {r['peak_mib']:.1f}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
