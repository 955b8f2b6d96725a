"""diffusers UNet2DConditionModel names -> original (SGM / LDM) UNet names.

ComfyUI and A1111 name SDXL LoRA keys after the original model's modules (input_blocks / middle_block /
output_blocks), so kohya-style SDXL files must use these. The layout follows from the config: each down
block holds layers_per_block (resnet, attention) pairs then a downsampler; each up block one more pair
then an upsampler.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _resnet_inner(rest: list[str]) -> list[str]:
    if rest and rest[0] in _RESNET:
        return _RESNET[rest[0]].split(".") + rest[1:]
    return rest


def diffusers_to_sgm(path: str, config: Mapping[str, Any]) -> str:
    """Map a module or parameter path; raises KeyError for names outside the UNet layout."""
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise KeyError(f"per-block layers_per_block {layers!r} is not supported")
    for src, dst in _TOP.items():
        if path == src or path.startswith(src + "."):
            return dst + path[len(src) :]
    parts = path.split(".")
    head = parts[0]
    if head == "down_blocks":
        i, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":  # down_blocks.i.downsamplers.0.conv -> input_blocks.N.0.op
            rest = parts[5:]
            return ".".join(["input_blocks", str(1 + i * (layers + 1) + layers), "0", "op", *rest])
        j, rest = int(parts[3]), parts[4:]
        index = 1 + i * (layers + 1) + j
        if kind == "resnets":
            return ".".join(["input_blocks", str(index), "0", *_resnet_inner(rest)])
        if kind == "attentions":
            return ".".join(["input_blocks", str(index), "1", *rest])
    elif head == "mid_block":
        kind, j, rest = parts[1], int(parts[2]), parts[3:]
        if kind == "attentions":
            return ".".join(["middle_block", "1", *rest])
        if kind == "resnets":
            return ".".join(["middle_block", "0" if j == 0 else "2", *_resnet_inner(rest)])
    elif head == "up_blocks":
        i, kind = int(parts[1]), parts[2]
        has_attn = "CrossAttn" in config["up_block_types"][i]
        if kind == "upsamplers":  # up_blocks.i.upsamplers.0.conv -> output_blocks.N.(1|2).conv
            rest = parts[4:]
            return ".".join(
                ["output_blocks", str(i * (layers + 1) + layers), "2" if has_attn else "1", *rest]
            )
        j, rest = int(parts[3]), parts[4:]
        index = i * (layers + 1) + j
        if kind == "resnets":
            return ".".join(["output_blocks", str(index), "0", *_resnet_inner(rest)])
        if kind == "attentions":
            return ".".join(["output_blocks", str(index), "1", *rest])
    raise KeyError(f"no SGM name for diffusers UNet path {path!r}")
