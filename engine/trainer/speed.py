"""How fast the training step runs, and the step itself.

`train_step` is what engine/trainer/main.py runs for every optimizer step and what bench/bench_trainer_gpu.py
times, so the benchmark measures the trainer's own code. What it does beyond the plain step, each gated on the
device where the feature only exists or only pays there:

- bf16 autocast over the forward when the frozen base is bf16 (fp16 on CUDA): peft's LoRA layers keep fp32
  master weights, which without autocast turn every LoRA matmul into an fp32 one;
- TF32 matmuls on CUDA (the fp32 matmuls autocast leaves, and fp32 models);
- SDPA limited to flash + memory-efficient on CUDA (cuDNN attention crashed a Flux-size backward, torch 2.11);
- no host sync per step: the loss and grad norm stay on the device (`torch._foreach_norm`, one kernel per
  dtype instead of one norm per LoRA tensor) and the caller reads them once per `logging_steps`;
- gradient clipping done here with foreach ops under ZeRO 0, instead of DeepSpeed's per-parameter loop;
- fused AdamW, torch.compile (one graph per bucket shape, see `compile_options`) and channels_last for UNets on
  CUDA; a background thread prefetches the next batches (engine/trainer/prefetch.py).

`plain_step = true` (main TOML) turns all of it off: the step as it was, for debugging.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# Autocast dtype for a frozen base of this dtype, by device type: bf16 autocast runs on CPUs too (the tests
# check it there); fp16 autocast without a loss scaler is left to CUDA, where fp16 bases are trained at all.
AUTOCAST: dict[str, dict[torch.dtype, torch.dtype]] = {
    "cuda": {torch.bfloat16: torch.bfloat16, torch.float16: torch.float16},
    "cpu": {torch.bfloat16: torch.bfloat16},
}
# Steps between host reads of the loss / grad norm (and the save / save_quit check) when logging_steps is unset:
# a GPU step is short and a read stalls its queue; on a CPU the read costs nothing, so every step shows.
DEFAULT_LOGGING_STEPS = {"cuda": 10, "cpu": 1}
PREFETCH_DEPTH = 2  # batches a background thread loads ahead (disk reads, noise, pinned copies)
# Families whose denoiser sees shapes that vary within one bucket (Qwen-Image pads text to each batch's longest
# caption): a graph per shape would recompile all the time, so torch.compile is not on by default for them.
VARIABLE_SHAPE_FAMILIES = frozenset({"qwen_image"})
# torch.compile's graphs per code object before it gives up and runs eager; one per bucket shape is needed,
# and eval / sampling run eager (`eager_context`), so the bucket count plus slack is enough.
RECOMPILE_SLACK = 4


@dataclass(frozen=True)
class Speed:
    """What the step does; `choose` decides it from the profile and the device."""

    plain: bool = False
    autocast: torch.dtype | None = None
    tf32: bool = False
    compile: bool = False
    fused_adamw: bool = False
    own_clipping: bool = False  # ZeRO 0: clip with foreach ops here, DeepSpeed's gradient_clipping unset
    prefetch: int = 0
    logging_steps: int = 1
    channels_last: bool = False
    pin_memory: bool = False

    def describe(self) -> str:
        if self.plain:
            return "speed: plain_step (no autocast, compile, prefetch or fused AdamW; a host sync per step)"
        parts = [
            f"autocast {str(self.autocast).removeprefix('torch.')}" if self.autocast else "no autocast",
            "TF32" if self.tf32 else "",
            "torch.compile" if self.compile else "eager",
            "fused AdamW" if self.fused_adamw else "",
            "channels_last" if self.channels_last else "",
            f"prefetch {self.prefetch}" if self.prefetch else "",
            f"loss read every {self.logging_steps} step(s)",
        ]
        return "speed: " + ", ".join(p for p in parts if p) + " (plain_step = true turns these off)"


PLAIN = Speed(plain=True)


def choose(
    *,
    device: torch.device,
    dtype: torch.dtype,
    family: str,
    unet: bool,
    zero_stage: int,
    blocks_to_swap: int,
    compile_key: bool | None,
    logging_steps: int | None,
    plain: bool,
) -> Speed:
    """The step's settings. compile_key: `[model] compile` (None = unset: on where it wins); logging_steps: the
    main TOML's (None = unset)."""
    if plain:
        return Speed(plain=True, logging_steps=logging_steps or 1)
    cuda = device.type == "cuda"
    # Block swapping copies weights in forward hooks on a side stream: not something to trace into a graph.
    compile_default = cuda and family not in VARIABLE_SHAPE_FAMILIES and not blocks_to_swap
    return Speed(
        autocast=AUTOCAST.get(device.type, {}).get(dtype),
        tf32=cuda,
        compile=compile_default if compile_key is None else bool(compile_key),
        fused_adamw=cuda,
        own_clipping=zero_stage == 0,
        prefetch=PREFETCH_DEPTH,
        logging_steps=logging_steps or DEFAULT_LOGGING_STEPS.get(device.type, 1),
        channels_last=cuda and unet,
        pin_memory=cuda,
    )


def setup_backends(device: torch.device, speed: Speed) -> None:
    """Process-wide switches. cuDNN attention is off whatever the speed settings: it is a crash, not a speed."""
    if device.type != "cuda":
        return
    torch.backends.cuda.enable_cudnn_sdp(False)
    torch.backends.cuda.matmul.allow_tf32 = speed.tf32
    torch.backends.cudnn.allow_tf32 = speed.tf32


def sdpa_context(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """On CUDA only flash / memory-efficient SDPA: cuDNN SDPA crashed in backward on torch 2.11."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])


def forward_context(speed: Speed, device: torch.device) -> contextlib.ExitStack:
    """The context the loss is computed in: the SDPA backends, and autocast when the speed settings have it."""
    stack = contextlib.ExitStack()
    stack.enter_context(sdpa_context(device))
    if speed.autocast is not None:
        stack.enter_context(torch.autocast(device.type, dtype=speed.autocast))
    return stack


def eager_context() -> contextlib.AbstractContextManager[Any]:
    """Run a compiled module eagerly (evals and samples: other shapes and modes, not worth graphs of their own)."""
    set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def compile_options(n_shapes: int) -> dict[str, Any]:
    """torch.compile keyword arguments for a denoiser trained on `n_shapes` bucket shapes.

    dynamic=False: one static graph per bucket shape, compiled the first time the bucket comes up (so during
    the first epoch) and reused after; automatic dynamic shapes would instead recompile into a symbolic graph on
    the second shape, slower and still recompiling. The recompile limit is raised to fit every bucket.
    """
    config = torch._dynamo.config
    needed = n_shapes + RECOMPILE_SLACK
    for name in ("recompile_limit", "cache_size_limit"):  # renamed in torch 2.6; set whichever exists
        if hasattr(config, name):
            setattr(config, name, max(int(getattr(config, name)), needed))
    return {"dynamic": False}


def grad_norm(params: Iterable[torch.nn.Parameter]) -> torch.Tensor | None:
    """The 2-norm of all gradients, on the device: one foreach kernel per (device, dtype) group, no host sync."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad.detach())
    if not groups:
        return None
    # dtype=float32: each tensor's norm accumulated in fp32 (a bf16 result would round the norm itself)
    partial = [
        torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32)))
        for grads in groups.values()
    ]
    first = partial[0].device
    total: torch.Tensor = torch.linalg.vector_norm(torch.stack([n.to(first) for n in partial]))
    return total


def clip_(params: Iterable[torch.nn.Parameter], max_norm: float, total: torch.Tensor) -> None:
    """Scale the gradients by min(1, max_norm / (total + 1e-6)) on the device, as clip_grad_norm_ does."""
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    groups: dict[torch.device, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault(p.grad.device, []).append(p.grad.detach())
    for dev, grads in groups.items():
        torch._foreach_mul_(grads, coef.to(dev))


def train_step(
    micro_losses: Sequence[Callable[[], torch.Tensor]],
    *,
    backward: Callable[[torch.Tensor], Any],
    optimizer_step: Callable[[], Any],
    speed: Speed,
    device: torch.device,
    norm_params: Sequence[torch.nn.Parameter] | None,
    clip: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer step over gradient-accumulation micro-batches: each loss computed in `forward_context`,
    `backward` on it, `optimizer_step` after each (DeepSpeed's engine.step counts micro-steps itself).

    norm_params: whose gradient norm to measure before the last optimizer_step (None: the caller's optimizer
    measures it, as DeepSpeed's ZeRO 1/2 do); with `speed.own_clipping` and clip > 0 they are also clipped here.
    Returns the mean loss and the grad norm as device tensors: reading them is the caller's (one sync, when it
    logs).
    """
    total: torch.Tensor | None = None
    norm: torch.Tensor | None = None
    last = len(micro_losses) - 1
    for index, loss_fn in enumerate(micro_losses):
        with forward_context(speed, device):
            loss = loss_fn()
        backward(loss)
        if index == last and norm_params is not None:
            norm = grad_norm(norm_params)
            if norm is not None and speed.own_clipping and clip > 0:
                clip_(norm_params, clip, norm)
        optimizer_step()
        total = loss.detach().float() if total is None else total + loss.detach().float()
    assert total is not None, "train_step needs at least one micro-batch"
    return total / len(micro_losses), norm


__all__ = [
    "PLAIN",
    "Speed",
    "choose",
    "clip_",
    "compile_options",
    "eager_context",
    "forward_context",
    "grad_norm",
    "sdpa_context",
    "setup_backends",
    "train_step",
]
