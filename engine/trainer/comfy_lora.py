"""ComfyUI-format LoRA files for the DiT families: original-checkpoint key names, checked after writing.

ComfyUI loads a model under its original (BFL) key names and maps a LoRA key `diffusion_model.<original module>`
onto the weight `diffusion_model.<original module>.weight`; the file holds `.lora_A.weight` (down),
`.lora_B.weight` (up) and a real `.alpha` (ComfyUI scales by alpha / rank, and by 1.0 when alpha is absent).

The trainer's LoRA sits on diffusers' separate Linears, but the original layout fuses some of them (Flux: the
image and text q/k/v into `img_attn.qkv` / `txt_attn.qkv`; a single block's q/k/v and MLP input into
`linear1`). A LoRA on the parts is written as one exactly equivalent LoRA on the fused Linear: A = the parts' A
stacked (fused rank = the sum of their ranks), B = block diagonal, each part's B at that part's output rows
(zero rows for a part without LoRA, e.g. one left out by exclude_modules), and alpha = scale * fused rank, so
alpha / rank is training's scale. The per-family key tables below are data; a family names its table in
`Family.comfy_layout`. The correspondence is the one in diffusers' single-file converters
(convert_flux_transformer_checkpoint_to_diffusers / convert_chroma_... / convert_lumina2_to_diffusers, rows of
a fused weight in the order listed) and ComfyUI's comfy/utils.py flux_to_diffusers; Lumina 2's fused Linear is
the attention's qkv. Qwen-Image needs no renaming (its original names are diffusers'), but still gets the file:
ComfyUI reads `diffusion_model.<key>` with a real alpha the same way for every model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

COMFY_FILE = "lora_comfy.safetensors"
COMFY_PREFIX = "diffusion_model."


class ComfyLoraError(RuntimeError):
    """A LoRA layer has no place in the family's original layout, or the written file does not reproduce it."""


@dataclass(frozen=True)
class BlockLayout:
    """One kind of repeated block: `<diffusers>.<i>.<part>` Linears live in `<original>.<i>.<linear>`."""

    diffusers: str
    original: str
    # original Linear -> the diffusers Linears whose outputs it stacks, in row order.
    linears: Mapping[str, tuple[str, ...]]


_FLUX_DOUBLE: dict[str, tuple[str, ...]] = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn.proj": ("attn.to_out.0",),
    "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
    "img_mod.lin": ("norm1.linear",),
    "txt_mod.lin": ("norm1_context.linear",),
}
_FLUX_SINGLE: dict[str, tuple[str, ...]] = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.lin": ("norm.linear",),
}
# Chroma is Flux with the per-block modulation Linears pruned (one distilled_guidance_layer feeds every block).
_PRUNED = ("img_mod.lin", "txt_mod.lin", "modulation.lin")
# Qwen-Image's original checkpoint is in diffusers' names, and ComfyUI's QwenImageTransformerBlock
# (comfy/ldm/qwen_image/model.py) names its Linears the same way: nothing is fused, every key is the identity.
_QWEN_IMAGE_BLOCK: dict[str, tuple[str, ...]] = {
    name: (name,)
    for name in (
        "attn.to_q",
        "attn.to_k",
        "attn.to_v",
        "attn.add_q_proj",
        "attn.add_k_proj",
        "attn.add_v_proj",
        "attn.to_out.0",
        "attn.to_add_out",
        "img_mod.1",
        "txt_mod.1",
        "img_mlp.net.0.proj",
        "img_mlp.net.2",
        "txt_mlp.net.0.proj",
        "txt_mlp.net.2",
    )
}
# Lumina 2's NextDiT JointTransformerBlock (ComfyUI comfy/ldm/lumina/model.py, diffusers'
# convert_lumina2_to_diffusers): q/k/v fused into attention.qkv, rows q (heads x head_dim) then k and v
# (kv heads x head_dim each, GQA); w1/w2/w3 are diffusers' linear_1/2/3; adaLN_modulation.1 is norm1.linear.
_LUMINA2_BLOCK: dict[str, tuple[str, ...]] = {
    "attention.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "attention.out": ("attn.to_out.0",),
    "feed_forward.w1": ("feed_forward.linear_1",),
    "feed_forward.w2": ("feed_forward.linear_2",),
    "feed_forward.w3": ("feed_forward.linear_3",),
    "adaLN_modulation.1": ("norm1.linear",),
}

LAYOUTS: dict[str, tuple[BlockLayout, ...]] = {
    "flux": (
        BlockLayout("transformer_blocks", "double_blocks", _FLUX_DOUBLE),
        BlockLayout("single_transformer_blocks", "single_blocks", _FLUX_SINGLE),
    ),
    "chroma": (
        BlockLayout(
            "transformer_blocks",
            "double_blocks",
            {k: v for k, v in _FLUX_DOUBLE.items() if k not in _PRUNED},
        ),
        BlockLayout(
            "single_transformer_blocks",
            "single_blocks",
            {k: v for k, v in _FLUX_SINGLE.items() if k not in _PRUNED},
        ),
    ),
    "qwen_image": (BlockLayout("transformer_blocks", "transformer_blocks", _QWEN_IMAGE_BLOCK),),
    "lumina_2": (
        BlockLayout("layers", "layers", _LUMINA2_BLOCK),
        BlockLayout("noise_refiner", "noise_refiner", _LUMINA2_BLOCK),
        # The context refiner is built without modulation: no adaLN_modulation Linear there.
        BlockLayout(
            "context_refiner",
            "context_refiner",
            {k: v for k, v in _LUMINA2_BLOCK.items() if k != "adaLN_modulation.1"},
        ),
    ),
}


@dataclass(frozen=True)
class FusedTarget:
    """One Linear of the original layout and the diffusers module paths of its parts, in row order."""

    original: str
    parts: tuple[str, ...]


def layout(name: str) -> tuple[BlockLayout, ...]:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ComfyLoraError(f"no ComfyUI key table {name!r}; known: {', '.join(sorted(LAYOUTS))}") from None


def targets_for(modules: list[str], layout_name: str) -> list[FusedTarget]:
    """The original-layout Linears that the LoRA'd diffusers `modules` fall into, each with all its parts."""
    blocks = layout(layout_name)
    found: dict[str, FusedTarget] = {}
    for module in modules:
        target = _target_of(module, blocks, layout_name)
        found.setdefault(target.original, target)
    return [found[k] for k in sorted(found)]


def lora_modules(unet: torch.nn.Module) -> list[str]:
    """Paths of the modules that carry the trained ('default') peft LoRA."""
    return sorted(
        name
        for name, module in unet.named_modules()
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {})
    )


def check_layout(unet: torch.nn.Module, layout_name: str) -> None:
    """Every LoRA layer has a key in the original layout: refused when the LoRA is set up, not at the first save."""
    for target in targets_for(lora_modules(unet), layout_name):
        for part in target.parts:
            _out_features(unet, part)


def _target_of(module: str, blocks: tuple[BlockLayout, ...], layout_name: str) -> FusedTarget:
    for block in blocks:
        m = re.fullmatch(rf"{re.escape(block.diffusers)}\.(\d+)\.(.+)", module)
        if not m:
            continue
        index, part = m.groups()
        for linear, parts in block.linears.items():
            if part in parts:
                return FusedTarget(
                    original=f"{block.original}.{index}.{linear}",
                    parts=tuple(f"{block.diffusers}.{index}.{p}" for p in parts),
                )
    raise ComfyLoraError(
        f"LoRA layer {module!r} has no key in the {layout_name} original layout "
        f"(engine/trainer/comfy_lora.py LAYOUTS[{layout_name!r}]); exclude it with adapter.exclude_modules "
        "or add it to the table"
    )


def _out_features(unet: torch.nn.Module, path: str) -> int:
    try:
        module = unet.get_submodule(path)
    except AttributeError:
        raise ComfyLoraError(f"the model has no module {path!r}, which its original layout fuses") from None
    base = getattr(module, "base_layer", module)  # a peft LoRA layer wraps the Linear
    if not isinstance(base, torch.nn.Linear):
        raise ComfyLoraError(f"{path!r} is a {type(base).__name__}, expected a Linear")
    return int(base.out_features)


def comfy_state_dict(
    sd: dict[str, torch.Tensor],
    unet: torch.nn.Module,
    layout_name: str,
    scale: float,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """peft LoRA tensors (`<module>.lora_A.weight` / `.lora_B.weight`) -> ComfyUI keys on original Linears.

    `scale` is training's alpha / rank, the same for every layer (one LoraConfig, no rank pattern).
    """
    modules = sorted(k[: -len(".lora_A.weight")] for k in sd if k.endswith(".lora_A.weight"))
    out: dict[str, torch.Tensor] = {}
    for target in targets_for(modules, layout_name):
        downs: list[torch.Tensor] = []
        ups: list[tuple[int, torch.Tensor]] = []  # (first output row, B)
        row = 0
        for part in target.parts:
            a = sd.get(f"{part}.lora_A.weight")
            if a is not None:
                downs.append(a.float())
                ups.append((row, sd[f"{part}.lora_B.weight"].float()))
            row += _out_features(unet, part)
        rank = sum(a.shape[0] for a in downs)
        up = torch.zeros(row, rank)
        col = 0
        for first, b in ups:
            up[first : first + b.shape[0], col : col + b.shape[1]] = b
            col += b.shape[1]
        stem = f"{COMFY_PREFIX}{target.original}"
        out[f"{stem}.lora_A.weight"] = torch.cat(downs).to(dtype).contiguous()
        out[f"{stem}.lora_B.weight"] = up.to(dtype).contiguous()
        out[f"{stem}.alpha"] = torch.tensor(scale * rank, dtype=torch.float32)
    return out


def write_comfy_file(
    path: Path,
    sd: dict[str, torch.Tensor],
    unet: torch.nn.Module,
    layout_name: str,
    config: Any,
    dtype: torch.dtype,
) -> None:
    scale = float(config.lora_alpha) / float(config.r)
    tensors = comfy_state_dict(sd, unet, layout_name, scale, dtype)
    metadata = {
        "dpdeck.format": "comfyui",
        "dpdeck.layout": layout_name,
        "dpdeck.lora_rank": str(config.r),
        "dpdeck.lora_alpha": str(config.lora_alpha),
    }
    save_file(tensors, str(path), metadata=metadata)
    verify_comfy_file(path, unet, layout_name)


@torch.no_grad()
def verify_comfy_file(path: Path, unet: torch.nn.Module, layout_name: str) -> None:
    """Reload the file; each trained layer's output must equal its rows of the fused LoRA's output.

    Parts without LoRA must get exact zeros, and every tensor must belong to a target (3 per target).
    """
    loaded = load_file(str(path))
    live = {name: unet.get_submodule(name) for name in lora_modules(unet)}
    gen = torch.Generator().manual_seed(0)
    targets = targets_for(sorted(live), layout_name)
    for target in targets:
        stem = f"{COMFY_PREFIX}{target.original}"
        try:
            down = loaded[f"{stem}.lora_A.weight"].float()
            up = loaded[f"{stem}.lora_B.weight"].float()
            alpha = float(loaded[f"{stem}.alpha"])
        except KeyError as exc:
            raise ComfyLoraError(f"{path}: missing key {exc} for {target.original}") from exc
        x = torch.randn(3, down.shape[1], generator=gen)
        fused = (x @ down.T @ up.T) * (alpha / down.shape[0])
        row = 0
        for part in target.parts:
            size = _out_features(unet, part)
            got = fused[:, row : row + size]
            row += size
            module = live.get(part)
            if module is None:
                if torch.count_nonzero(got):
                    raise ComfyLoraError(f"{path}: {target.original} changes {part}, which has no LoRA")
                continue
            a = module.lora_A["default"].weight.float().cpu()
            b = module.lora_B["default"].weight.float().cpu()
            want = (x @ a.T @ b.T) * module.scaling["default"]
            tol = 1e-5 if loaded[f"{stem}.lora_A.weight"].dtype == torch.float32 else 3e-2
            if not torch.allclose(got, want, rtol=tol, atol=tol * (want.abs().max().item() + 1e-6)):
                raise ComfyLoraError(
                    f"{path}: {target.original} gives {part} a different output than the trained layer"
                )
        if row != up.shape[0]:
            raise ComfyLoraError(f"{path}: {target.original} has {up.shape[0]} output rows, expected {row}")
    if len(loaded) != 3 * len(targets):
        raise ComfyLoraError(
            f"{path}: {len(loaded)} tensors for {len(targets)} fused LoRA layers (expected 3 per layer)"
        )
