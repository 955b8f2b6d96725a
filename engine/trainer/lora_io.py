"""LoRA setup and the two files each save writes, each checked after writing.

- diffusers: `<Pipeline>.save_lora_weights` -> pytorch_lora_weights.safetensors (keys `unet.<path>.lora_A/B`,
  peft config incl. lora_alpha in the header metadata) for `load_lora_weights`.
- kohya (ComfyUI / A1111): lora_kohya.safetensors with `lora_unet_<path>.lora_down.weight`,
  `.lora_up.weight` and a real `.alpha` tensor (alpha/rank is the scale); SDXL paths use SGM block names.
- ComfyUI (DiT families): lora_comfy.safetensors with `diffusion_model.<original key>.lora_A/B` + `.alpha`,
  written and checked by engine.trainer.comfy_lora.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from engine.trainer.comfy_lora import COMFY_FILE, ComfyLoraError, check_layout, write_comfy_file
from engine.trainer.family import Family
from engine.trainer.text_lora import TextLora, diffusers_parts, kohya_parts

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "lora_kohya.safetensors"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_KOHYA_BASE = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}
_MODELSPEC = {"sd15": "stable-diffusion-v1/lora", "sdxl": "stable-diffusion-xl-v1-base/lora"}


class LoraSaveError(RuntimeError):
    pass


def add_lora(
    unet: torch.nn.Module,
    family: Family,
    rank: int,
    dropout: float,
    init_random_b: bool,
    exclude_modules: list[str] | str | None = None,
) -> Any:
    from peft import LoraConfig

    extra: dict[str, Any] = {}
    if exclude_modules:  # diffusion-pipe's adapter.exclude_modules, handed to peft as it does
        extra["exclude_modules"] = exclude_modules
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,  # diffusion-pipe: alpha is always rank
        lora_dropout=dropout,
        target_modules=family.lora_target_modules(),
        init_lora_weights=not init_random_b,
        **extra,
    )
    unet.add_adapter(config)
    if family.comfy_layout:
        try:
            check_layout(unet, family.comfy_layout)
        except ComfyLoraError as exc:
            raise LoraSaveError(f"the ComfyUI file cannot hold this LoRA: {exc}") from exc
    for name, p in unet.named_parameters():
        p.requires_grad_("lora_" in name)
        if "lora_" in name:
            p.data = p.data.float()  # trainable LoRA weights stay fp32 whatever the base dtype
    return config


def lora_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(unet).items()}


def init_from_existing(unet: torch.nn.Module, path: Path, family_prefix: str = "unet") -> int:
    """Load a diffusers-format LoRA (file, or a folder with one) as the starting point."""
    from peft.utils import set_peft_model_state_dict

    if path.is_dir():
        for name in (DIFFUSERS_FILE, "adapter_model.safetensors"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise LoraSaveError(
                f"adapter.init_from_existing: {path} holds no {DIFFUSERS_FILE} or adapter_model.safetensors"
            )
    sd = load_file(str(path))
    sd = {k.removeprefix(f"{family_prefix}.").removeprefix("base_model.model."): v for k, v in sd.items()}
    own = lora_state_dict(unet)
    matched = {k: v for k, v in sd.items() if k in own}
    if not matched:
        raise LoraSaveError(
            f"adapter.init_from_existing: {path}: no key matches this model's LoRA layers "
            f"(found e.g. {next(iter(sd), 'nothing')!r}; expected diffusers names like {next(iter(own))!r})"
        )
    mismatched = [k for k, v in matched.items() if v.shape != own[k].shape]
    if mismatched:
        raise LoraSaveError(
            f"adapter.init_from_existing: {path}: shape differs for {mismatched[0]} (another rank?)"
        )
    set_peft_model_state_dict(unet, matched)
    return len(matched)


def kohya_state_dict(
    sd: dict[str, torch.Tensor], family: Family, alpha: float, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")]
        stem = family.kohya_name(module)
        out[f"{stem}.lora_down.weight"] = tensor.to(dtype).contiguous()
        out[f"{stem}.lora_up.weight"] = sd[f"{module}.lora_B.weight"].to(dtype).contiguous()
        out[f"{stem}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return out


def save_lora(
    save_dir: Path,
    unet: torch.nn.Module,
    family: Family,
    config: Any,
    save_dtype: str,
    text_loras: list[TextLora] | None = None,
) -> list[Path]:
    """Write both files into save_dir/tmp, verify them, then move them in; `tmp/` gone = save complete."""
    dtype = DTYPES[save_dtype]
    tmp = save_dir / "tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    sd = lora_state_dict(unet)
    cast = {k: v.to(dtype).contiguous() for k, v in sd.items()}
    metadata = config.to_dict()
    metadata["target_modules"] = sorted(metadata["target_modules"])
    if metadata.get("exclude_modules") is not None and not isinstance(metadata["exclude_modules"], str):
        metadata["exclude_modules"] = sorted(metadata["exclude_modules"])  # a set is not JSON
    prefix = family.lora_prefix  # "unet" for SD1.5/SDXL, "transformer" for the DiTs
    text_kwargs, text_expected = diffusers_parts(text_loras or [], dtype)
    family._pipeline_cls().save_lora_weights(
        str(tmp),
        weight_name=DIFFUSERS_FILE,
        **{f"{prefix}_lora_layers": cast, f"{prefix}_lora_adapter_metadata": metadata},
        **text_kwargs,
    )
    verify_diffusers_file(tmp / DIFFUSERS_FILE, cast, config.lora_alpha, prefix, text_expected)
    names = [DIFFUSERS_FILE]
    if family.has_kohya:
        _write_kohya(tmp, sd, unet, family, config, dtype, text_loras or [])
        names.append(KOHYA_FILE)
    if family.comfy_layout:  # DiT families: diffusion_model.<original key>, fused Linears fused here too
        try:
            write_comfy_file(tmp / COMFY_FILE, sd, unet, family.comfy_layout, config, dtype)
        except ComfyLoraError as exc:
            raise LoraSaveError(str(exc)) from exc
        names.append(COMFY_FILE)
    written = []
    for name in names:
        (tmp / name).chmod(0o644)  # shareable like any model file (the writers create 0600)
        (tmp / name).replace(save_dir / name)
        written.append(save_dir / name)
    shutil.rmtree(tmp)
    return written


def _write_kohya(
    tmp: Path,
    sd: dict[str, torch.Tensor],
    unet: torch.nn.Module,
    family: Family,
    config: Any,
    dtype: torch.dtype,
    text_loras: list[TextLora],
) -> None:
    kohya = {**kohya_state_dict(sd, family, config.lora_alpha, dtype), **kohya_parts(text_loras, dtype)}
    kohya_meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.r),
        "ss_network_alpha": str(config.lora_alpha),
        "ss_base_model_version": _KOHYA_BASE.get(family.name, family.name),
        "modelspec.architecture": _MODELSPEC.get(family.name, family.name),
        "dpdeck.format": "kohya",
    }
    save_file(kohya, str(tmp / KOHYA_FILE), metadata=kohya_meta)
    layers = [(unet, family.kohya_name), *((t.module, t.kohya_name) for t in text_loras)]
    verify_kohya_file(tmp / KOHYA_FILE, unet, family, layers)


def verify_diffusers_file(
    path: Path,
    expected: dict[str, torch.Tensor],
    alpha: float,
    prefix: str = "unet",
    extra: dict[str, torch.Tensor] | None = None,
) -> None:
    """`extra`: other components' tensors (text encoder LoRA), already named with their prefix."""
    from safetensors import safe_open

    loaded = load_file(str(path))
    want = {f"{prefix}.{k}": v for k, v in expected.items()} | (extra or {})
    if set(loaded) != set(want):
        raise LoraSaveError(
            f"{path}: saved keys differ from the trained LoRA (e.g. {sorted(set(loaded) ^ set(want))[:3]})"
        )
    for k, v in want.items():
        if not torch.equal(loaded[k], v):
            raise LoraSaveError(f"{path}: tensor {k} differs after reload")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    raw = meta.get("lora_adapter_metadata")
    if raw is None or json.loads(raw).get(f"{prefix}.lora_alpha", json.loads(raw).get("lora_alpha")) != alpha:
        raise LoraSaveError(f"{path}: adapter metadata with lora_alpha={alpha} missing after reload")


@torch.no_grad()
def verify_kohya_file(
    path: Path,
    unet: torch.nn.Module,
    family: Family,
    layers: list[tuple[torch.nn.Module, Callable[[str], str]]] | None = None,
) -> None:
    """Reload the kohya file and check each layer's LoRA output against the live peft layer.

    `layers`: (module tree, kohya key stem of a path in it) pairs; default the UNet with the family's names."""
    loaded = load_file(str(path))
    gen = torch.Generator().manual_seed(0)
    checked = 0
    trees = layers if layers is not None else [(unet, family.kohya_name)]
    named = [(kohya_name, name, m) for tree, kohya_name in trees for name, m in tree.named_modules()]
    for kohya_name, name, module in named:
        if not hasattr(module, "lora_A") or "default" not in getattr(module, "lora_A", {}):
            continue
        stem = kohya_name(name)
        try:
            down = loaded[f"{stem}.lora_down.weight"].float()
            up = loaded[f"{stem}.lora_up.weight"].float()
            alpha = float(loaded[f"{stem}.alpha"])
        except KeyError as exc:
            raise LoraSaveError(f"{path}: missing key {exc} for layer {name}") from exc
        a = module.lora_A["default"].weight.float().cpu()
        b = module.lora_B["default"].weight.float().cpu()
        x = torch.randn(3, a.shape[1], generator=gen)
        want = (x @ a.T @ b.T) * module.scaling["default"]
        got = (x @ down.T @ up.T) * (alpha / down.shape[0])
        tol = 1e-5 if loaded[f"{stem}.lora_down.weight"].dtype == torch.float32 else 3e-2
        if not torch.allclose(got, want, rtol=tol, atol=tol * (want.abs().max().item() + 1e-6)):
            raise LoraSaveError(
                f"{path}: layer {stem} gives a different output than the trained layer {name}"
            )
        checked += 1
    if checked * 3 != len(loaded):
        raise LoraSaveError(f"{path}: {len(loaded)} tensors for {checked} LoRA layers (expected 3 per layer)")
