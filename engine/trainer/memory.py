"""Memory options for transformer denoisers: smaller weight storage (`transformer_dtype`) and block swapping.

`transformer_dtype = 'float8'` (diffusion-pipe's key): the frozen nn.Linear weights of the denoiser are stored
in float8 and upcast to the model dtype inside each call, so a 12B transformer takes ~12 GB instead of ~24.
Layers a family names in `keep_in_high_precision` (embedders, final layer: as diffusion-pipe keeps them) and
every 1-D parameter stay at the model dtype; LoRA weights are trainable and stay fp32. The upcast is explicit
rather than autocast's because CPU matmul has no float8 kernels, and it is a custom autograd function so that
backward keeps the float8 weight, not an upcast copy, alive between forward and backward.

`blocks_to_swap = N`: the frozen weights of N transformer blocks live in (pinned) CPU memory; each is copied to
the device just before its forward and dropped after it, again before its backward and dropped after that. The
next block is prefetched on a side CUDA stream while the current one computes. Between uses a swapped weight
is an empty placeholder, so any use outside the schedule fails loudly instead of running on the wrong copy;
on a CPU-only machine the "device" copy is a real copy of the home tensor, which keeps the tests honest.
Works with diffusers' non-reentrant per-block checkpointing (the recompute happens while the block is loaded).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

# diffusion-pipe's DTYPE_MAP names (utils/common.py): what transformer_dtype may say.
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float8": torch.float8_e4m3fn,
    "float8_e4m3fn": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2,
}


class MemoryConfigError(ValueError):
    """A memory option the model cannot honour; the message names the profile key."""


# ---- storage dtype -----------------------------------------------------------------------------------------
class _UpcastLinear(torch.autograd.Function):
    """y = x W^T + b with W kept in its storage dtype; backward upcasts W again instead of saving a copy."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return F.linear(x, weight.to(x.dtype), bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, torch.Tensor | None]:
        (weight,) = ctx.saved_tensors
        grad_x = grad @ weight.to(grad.dtype) if ctx.needs_input_grad[0] else None
        grad_b = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, None, grad_b


class StoredLinear(nn.Linear):
    """A frozen nn.Linear whose weight is stored in a smaller dtype and computed at `compute_dtype`.

    A subclass, so peft still recognises it as a Linear to wrap (its LoRA layer calls this as base_layer)."""

    compute_dtype: torch.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = _UpcastLinear.apply(  # type: ignore[no-untyped-call]
            x.to(self.compute_dtype), self.weight, self.bias
        )
        return out


def store_linears(
    model: nn.Module, storage: torch.dtype, compute: torch.dtype, keep: Sequence[str] = ()
) -> list[str]:
    """Store every frozen nn.Linear weight of `model` in `storage`, except modules whose path matches a `keep`
    regex (re.search). Returns the converted module paths. Biases (1-D) stay at `compute`."""
    if storage == compute:
        return []
    done = []
    for name, module in model.named_modules():
        if type(module) is not nn.Linear or module.weight.requires_grad:
            continue  # LoRA's own Linears are trainable: they stay fp32
        if any(re.search(pattern, name) for pattern in keep):
            continue
        module.weight.data = module.weight.data.to(storage)
        # Changing the class in place keeps the Parameter objects (no second copy of a 12B model in memory).
        module.__class__ = StoredLinear
        cast(StoredLinear, module).compute_dtype = compute
        done.append(name)
    return done


# ---- block swapping ----------------------------------------------------------------------------------------
class _Enter(torch.autograd.Function):
    """Identity on a block's outputs; in backward it fires before the block's own backward: load the block."""

    @staticmethod
    def forward(ctx: Any, swapper: BlockSwapper, index: int, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.swapper, ctx.index = swapper, index
        return tuple(x.view_as(x) for x in xs)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[Any, ...]:
        ctx.swapper._backward_enter(ctx.index)
        return (None, None, *grads)


class _Leave(torch.autograd.Function):
    """Identity on a block's inputs; in backward it fires once the block's backward is done: drop the block."""

    @staticmethod
    def forward(ctx: Any, swapper: BlockSwapper, index: int, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.swapper, ctx.index = swapper, index
        return tuple(x.view_as(x) for x in xs)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[Any, ...]:
        ctx.swapper._backward_leave(ctx.index)
        return (None, None, *grads)


def _wrap(
    fn: type[torch.autograd.Function], swapper: BlockSwapper, index: int, values: list[Any]
) -> list[Any]:
    """Pass every grad-requiring tensor among values (tensors, or tuples holding tensors) through one call of
    fn: one autograd node, so its backward runs once, after the gradients of all of them are complete."""
    items = [list(v) if isinstance(v, tuple) else [v] for v in values]
    slots = [
        (i, j)
        for i, group in enumerate(items)
        for j, v in enumerate(group)
        if isinstance(v, torch.Tensor) and v.requires_grad
    ]
    if not slots or not torch.is_grad_enabled():
        return values
    passed = fn.apply(swapper, index, *(items[i][j] for i, j in slots))  # type: ignore[no-untyped-call]
    for (i, j), y in zip(slots, passed, strict=True):
        items[i][j] = y
    return [
        tuple(group) if isinstance(v, tuple) else group[0] for v, group in zip(values, items, strict=True)
    ]


class BlockSwapper:
    """Keeps the frozen weights of `blocks` (given in forward order) off the device between their uses."""

    def __init__(self, model: nn.Module, blocks: Sequence[nn.Module], device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None  # type: ignore[no-untyped-call]
        self.params: list[list[tuple[nn.Parameter, torch.Tensor]]] = []
        for block in blocks:
            for module in block.modules():
                if type(module) is nn.Linear and not module.weight.requires_grad:
                    # Through the custom function, autograd keeps the weight Parameter itself for backward (a
                    # plain F.linear keeps a transposed view, which would pin the device copy until backward).
                    module.__class__ = StoredLinear
                    cast(StoredLinear, module).compute_dtype = module.weight.dtype
            homes = []
            for p in block.parameters():
                if p.requires_grad:
                    continue  # trained weights stay on the device for the optimizer
                home = p.data.detach().to("cpu")
                if self.cuda:
                    home = home.pin_memory()  # pinned: the copy to the GPU can overlap compute
                homes.append((p, home))
            self.params.append(homes)
        self.loaded = [True] * len(blocks)  # set False by the _unload below
        self.in_backward = [False] * len(blocks)
        self.pending: dict[int, tuple[list[torch.Tensor], torch.cuda.Event]] = {}
        self.handles: list[Any] = [model.register_forward_pre_hook(lambda *_: self.release_all())]
        for i, block in enumerate(blocks):
            self.handles.append(block.register_forward_pre_hook(self._pre_hook(i), with_kwargs=True))
            self.handles.append(block.register_forward_hook(self._post_hook(i), with_kwargs=True))
            self._unload(i)

    def swapped_bytes(self) -> int:
        return sum(home.numel() * home.element_size() for homes in self.params for _, home in homes)

    def remove(self) -> None:
        """Put every weight back on the device and remove the hooks."""
        for h in self.handles:
            h.remove()
        for i in range(len(self.params)):
            self._load(i)

    # ---- moves -------------------------------------------------------------------------------------------
    def _unload(self, i: int) -> None:
        self._finish(i)  # never drop a copy that is still being written
        for p, _ in self.params[i]:
            p.data = torch.empty(0, dtype=p.dtype, device=self.device)
        self.loaded[i] = False

    def _start(self, i: int) -> None:
        """Begin the copy of block i to the device (asynchronous on CUDA)."""
        if i < 0 or i >= len(self.params) or self.loaded[i] or i in self.pending:
            return
        if self.stream is None:
            # No device to move to: a real copy all the same, so no block ever computes on its home tensor.
            for p, home in self.params[i]:
                p.data = home.clone()
            self.loaded[i] = True
            return
        with torch.cuda.stream(self.stream):
            copies = [home.to(self.device, non_blocking=True) for _, home in self.params[i]]
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record(self.stream)
        self.pending[i] = (copies, event)

    def _finish(self, i: int) -> None:
        if i not in self.pending:
            return
        copies, event = self.pending.pop(i)
        current = torch.cuda.current_stream(self.device)
        current.wait_event(event)
        for (p, _), copy in zip(self.params[i], copies, strict=True):
            copy.record_stream(current)  # allocated on the side stream, used (and freed) on this one
            p.data = copy
        self.loaded[i] = True

    def _load(self, i: int) -> None:
        self._start(i)
        self._finish(i)

    def release_all(self) -> None:
        """A new forward begins: whatever the last backward left on the device goes; prefetch the first."""
        for i in range(len(self.params)):
            self.in_backward[i] = False
            if self.loaded[i] or i in self.pending:
                self._unload(i)
        self._start(0)

    # ---- schedule ----------------------------------------------------------------------------------------
    def _pre_hook(self, i: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            self._load(i)
            if self.in_backward[i]:
                return None  # a checkpoint recompute inside backward: the block stays for its backward
            self._start(i + 1)
            wrapped = _wrap(_Leave, self, i, [*args, *kwargs.values()])
            return tuple(wrapped[: len(args)]), dict(zip(kwargs, wrapped[len(args) :], strict=True))

        return hook

    def _post_hook(self, i: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
            if self.in_backward[i]:
                return None
            (output,) = _wrap(_Enter, self, i, [output])
            self._unload(i)
            return output

        return hook

    def _backward_enter(self, i: int) -> None:
        self.in_backward[i] = True
        self._load(i)
        self._start(i - 1)

    def _backward_leave(self, i: int) -> None:
        self.in_backward[i] = False
        self._unload(i)


def last_blocks(blocks: Sequence[nn.Module], n: int, key: str = "blocks_to_swap") -> list[nn.Module]:
    """The last n blocks of one list, refusing to swap all but two (diffusion-pipe's limit)."""
    if n > len(blocks) - 2:
        raise MemoryConfigError(
            f"{key}: {n} is too many for a list of {len(blocks)} blocks (at most {max(len(blocks) - 2, 0)})"
        )
    return list(blocks[len(blocks) - n :]) if n else []
