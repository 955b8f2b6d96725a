"""ComfyUI-format LoRA files of the flow families (chroma, flux, lumina_2, qwen_image), checked by an independent
replay of ComfyUI.

The ComfyUI side is replayed here from ComfyUI's own rules (comfyanonymous/ComfyUI, read, not imported):
- comfy/lora.py model_lora_keys_unet: every weight `diffusion_model.<k>.weight` of the loaded model answers to
  the LoRA key `diffusion_model.<k>` (other parameters to their full name); for Flux-derived models (Chroma
  subclasses Flux) comfy/utils.py flux_to_diffusers also maps `transformer.<diffusers module>` to the original
  weight plus an offset (dim, start, length) into a fused weight: q/k/v at 0, h, 2h; a single block's MLP
  input at 3h, length 4h (h = hidden size).
- load_lora / LoRAAdapter.load: up = `<x>.lora_up.weight` | `<x>_lora.up.weight` | `<x>.lora_B.weight` | ...,
  down = the matching down / lora_A name, alpha = `<x>.alpha` if present; a file key nothing took is
  logged "lora key not loaded".
- calculate_weight: weight.narrow(*offset) += strength * (alpha / down.shape[0]) * up @ down, with the factor
  1.0 when there is no alpha.
- model_lora_keys_unet's per-model branches, added after the generic map (a later entry wins): QwenImage maps
  `<k>` and `transformer.<k>` to `diffusion_model.<k>.weight`; Lumina2 maps the Z-Image diffusers names of
  comfy/utils.py z_image_to_diffusers (`layers.<i>.attention.to_q` etc., q/k/v at 0, h, 2h of qkv) under
  `diffusion_model.`, `transformer.` and no prefix.
- The original names: Qwen-Image's ComfyUI model (comfy/ldm/qwen_image/model.py) names its block Linears as
  diffusers does; Lumina 2's NextDiT (comfy/ldm/lumina/model.py) has attention.qkv (rows: heads x head_dim, then
  kv heads x head_dim twice), attention.out, feed_forward.w1/w2/w3 and adaLN_modulation.1 (not in the context
  refiner, built without modulation). Both are listed below as read there.

The original layout comes from diffusers' own single-file converters (convert_flux_ / convert_chroma_
transformer_checkpoint_to_diffusers, convert_lumina2_to_diffusers, fed ComfyUI's NextDiT key names). They hard-code width 3072, so they are run on a full-width checkpoint
whose tensors are one column of row tags: each converted tensor then says which original key and rows it came
from. The tiny model's original-layout weights are its diffusers weights stacked by that correspondence.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from engine.trainer.comfy_lora import COMFY_FILE, ComfyLoraError, comfy_state_dict, verify_comfy_file
from engine.trainer.lora_io import DIFFUSERS_FILE, LoraSaveError, add_lora, lora_state_dict, save_lora

FULL = 3072  # the width diffusers' converters assume
ROWS = 7 * FULL  # q, k, v (3 x 3072) + MLP (4 x 3072): splits as linear1, chunks by 3 (qkv) and 2
TINY = dict(
    patch_size=1,
    in_channels=64,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    axes_dims_rope=(4, 6, 6),
)
RANK = 4
LUMINA_ROWS = 2304 + 768 + 768  # convert_lumina2_to_diffusers splits qkv at the 2B model's q, k, v heights
# Sizes: heads 96 wide (RoPE axes), 3 heads over 1 kv head: q:k:v = 3:1:1 as in the 2B model (24 over 8).
TINY_LUMINA = dict(
    sample_size=16,
    patch_size=2,
    in_channels=16,
    hidden_size=288,
    num_layers=2,
    num_refiner_layers=2,
    num_attention_heads=3,
    num_kv_heads=1,
    multiple_of=16,
    axes_dim_rope=(32, 32, 32),
    axes_lens=(300, 512, 512),
    cap_feat_dim=32,
)
TINY_QWEN = dict(
    patch_size=2,
    in_channels=64,
    out_channels=16,
    num_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    axes_dims_rope=(4, 6, 6),
)
# ComfyUI's block Linears, as comfy/ldm/qwen_image/model.py and comfy/ldm/lumina/model.py name them.
COMFY_QWEN_BLOCK = (
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
COMFY_NEXTDIT_BLOCK = (
    "attention.qkv",
    "attention.out",
    "feed_forward.w1",
    "feed_forward.w2",
    "feed_forward.w3",
    "adaLN_modulation.1",
)


# ---- diffusers' converter, run backwards by row tags --------------------------------------------------------
class _TaggedCheckpoint(dict):  # type: ignore[type-arg]
    """Hands the converter a full-height tensor of row tags for whatever key it pops."""

    def __init__(self, seeds: list[str], rows: int) -> None:
        super().__init__({k: None for k in seeds})
        self.ids: dict[str, int] = {}
        self.rows = rows

    def pop(self, key: str, *default: Any) -> torch.Tensor:
        if key in self:
            super().pop(key)
        index = self.ids.setdefault(key, len(self.ids))
        return (index * self.rows + torch.arange(self.rows)).unsqueeze(1)


def converter_parts(
    convert: Callable[..., dict[str, torch.Tensor]], seeds: list[str], rows: int = ROWS
) -> dict[str, list[tuple[int, str]]]:
    """Original key -> [(first row, diffusers key)] as diffusers' converter splits it (row partitions only)."""
    checkpoint = _TaggedCheckpoint(seeds, rows)
    converted = convert(checkpoint)
    names = {i: k for k, i in checkpoint.ids.items()}
    parts: dict[str, list[tuple[int, str]]] = {k: [] for k in checkpoint.ids}
    for diffusers_key, tags in converted.items():
        tags = tags.flatten()
        source = {int(t) // rows for t in tags}
        assert len(source) == 1, diffusers_key
        first = tags % rows
        if torch.equal(first, torch.arange(int(first[0]), int(first[0]) + len(first))):
            parts[names[source.pop()]].append((int(first[0]), diffusers_key))
        else:  # a permuted weight (the final layer's scale/shift swap): not a LoRA target, left out
            parts.pop(names[source.pop()], None)
    return {k: sorted(v) for k, v in parts.items() if v}


def _flux_seeds(n_double: int, n_single: int) -> list[str]:
    # The converter counts blocks from these names before popping anything.
    return [f"double_blocks.{i}.x" for i in range(n_double)] + [
        f"single_blocks.{i}.x" for i in range(n_single)
    ]


def _nextdit_keys(n_layers: int, n_refiner: int) -> list[str]:
    """ComfyUI's NextDiT block Linear weights (the context refiner has no adaLN_modulation)."""
    keys = []
    for prefix, count in (("layers", n_layers), ("noise_refiner", n_refiner), ("context_refiner", n_refiner)):
        for i in range(count):
            for name in COMFY_NEXTDIT_BLOCK:
                if not (prefix == "context_refiner" and name.startswith("adaLN")):
                    keys.append(f"{prefix}.{i}.{name}.weight")
    return keys


def original_layout(
    diffusers_sd: dict[str, torch.Tensor], parts: dict[str, list[tuple[int, str]]]
) -> dict[str, torch.Tensor]:
    """The tiny model's weights under original keys: each key's diffusers parts stacked in the converter's order."""
    out = {}
    for key, pieces in parts.items():
        if all(d in diffusers_sd for _, d in pieces):
            out[key] = torch.cat([diffusers_sd[d] for _, d in pieces])
    return out


# ---- ComfyUI's LoRA loading, replayed ------------------------------------------------------------------------
# (up suffix, down suffix) in load_lora's order of preference.
COMFY_LORA_FORMATS = (
    (".lora_up.weight", ".lora_down.weight"),
    ("_lora.up.weight", "_lora.down.weight"),
    (".lora_B.weight", ".lora_A.weight"),
    (".lora.up.weight", ".lora.down.weight"),
    (".lora_B", ".lora_A"),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
)
Target = tuple[str, tuple[int, int, int] | None]  # (model weight key, offset)


def comfy_generic_key_map(original_keys: list[str]) -> dict[str, Target]:
    key_map: dict[str, Target] = {}
    for k in original_keys:
        full = f"diffusion_model.{k}"
        key_map[full.removesuffix(".weight") if k.endswith(".weight") else full] = (full, None)
    return key_map


def comfy_key_map(kind: str, original_keys: list[str], hidden: int = 0) -> dict[str, Target]:
    """model_lora_keys_unet for the model `kind` loads as: the generic map, then that model's own branch."""
    key_map = comfy_generic_key_map(original_keys)
    if kind == "qwen_image":
        for k in original_keys:
            stem = k.removesuffix(".weight")
            for lora_key in (stem, f"transformer.{stem}", f"lycoris_{stem.replace('.', '_')}"):
                key_map[lora_key] = (f"diffusion_model.{k}", None)
    if kind == "lumina_2":
        key_map.update(comfy_z_image_key_map(original_keys, hidden))
    return key_map


def comfy_z_image_key_map(original_keys: list[str], hidden: int) -> dict[str, Target]:
    """The Lumina2 branch: z_image_to_diffusers' Linear weights under its three LoRA prefixes (and none)."""
    blocks = sorted({m[1] for k in original_keys if (m := re.match(r"((?:layers|\w+_refiner)\.\d+)\.", k))})
    names: dict[str, Target] = {}
    for block in blocks:
        qkv = f"diffusion_model.{block}.attention.qkv.weight"
        for j, name in enumerate(("to_q", "to_k", "to_v")):
            names[f"{block}.attention.{name}"] = (qkv, (0, j * hidden, hidden))
        names[f"{block}.attention.to_out.0"] = (f"diffusion_model.{block}.attention.out.weight", None)
        for name in ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3", "adaLN_modulation.0"):
            names[f"{block}.{name}"] = (f"diffusion_model.{block}.{name}.weight", None)
    key_map: dict[str, Target] = {}
    for stem, target in names.items():
        for lora_key in (
            f"diffusion_model.{stem}",
            f"transformer.{stem}",
            f"lycoris_{stem.replace('.', '_')}",
            stem,
        ):
            key_map[lora_key] = target
    return key_map


def comfy_flux_diffusers_key_map(hidden: int, n_double: int, n_single: int) -> dict[str, Target]:
    """flux_to_diffusers' Linear weights, as `transformer.<module>` LoRA keys (biases and norms left out)."""
    key_map: dict[str, Target] = {}
    fused = {
        "img_attn.qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
        "txt_attn.qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
    }
    plain = {
        "attn.to_out.0": "img_attn.proj",
        "norm1.linear": "img_mod.lin",
        "norm1_context.linear": "txt_mod.lin",
        "attn.to_add_out": "txt_attn.proj",
        "ff.net.0.proj": "img_mlp.0",
        "ff.net.2": "img_mlp.2",
        "ff_context.net.0.proj": "txt_mlp.0",
        "ff_context.net.2": "txt_mlp.2",
    }
    for i in range(n_double):
        for original, names in fused.items():
            for j, name in enumerate(names):
                target = f"diffusion_model.double_blocks.{i}.{original}.weight"
                key_map[f"transformer.transformer_blocks.{i}.{name}"] = (target, (0, j * hidden, hidden))
        for name, original in plain.items():
            key_map[f"transformer.transformer_blocks.{i}.{name}"] = (
                f"diffusion_model.double_blocks.{i}.{original}.weight",
                None,
            )
    for i in range(n_single):
        linear1 = f"diffusion_model.single_blocks.{i}.linear1.weight"
        for j, name in enumerate(["attn.to_q", "attn.to_k", "attn.to_v"]):
            key_map[f"transformer.single_transformer_blocks.{i}.{name}"] = (linear1, (0, j * hidden, hidden))
        key_map[f"transformer.single_transformer_blocks.{i}.proj_mlp"] = (
            linear1,
            (0, 3 * hidden, 4 * hidden),
        )
        for name, original in {"norm.linear": "modulation.lin", "proj_out": "linear2"}.items():
            key_map[f"transformer.single_transformer_blocks.{i}.{name}"] = (
                f"diffusion_model.single_blocks.{i}.{original}.weight",
                None,
            )
    return key_map


def comfy_load_lora(
    lora: dict[str, torch.Tensor], key_map: dict[str, Target]
) -> tuple[list[tuple[Target, torch.Tensor, torch.Tensor, float | None]], set[str]]:
    """The patches load_lora builds, and the file keys it did not load."""
    patches = []
    loaded: set[str] = set()
    for x, target in key_map.items():
        alpha = None
        if f"{x}.alpha" in lora:
            alpha = float(lora[f"{x}.alpha"].item())
            loaded.add(f"{x}.alpha")
        for up, down in COMFY_LORA_FORMATS:
            if x + up in lora:
                patches.append((target, lora[x + up], lora[x + down], alpha))
                loaded |= {x + up, x + down}
                break
    return patches, set(lora) - loaded


def comfy_apply(
    weights: dict[str, torch.Tensor],
    patches: list[tuple[Target, torch.Tensor, torch.Tensor, float | None]],
    strength: float = 1.0,
) -> dict[str, torch.Tensor]:
    out = {k: v.clone().float() for k, v in weights.items()}
    for (key, offset), up, down, alpha in patches:
        weight = out[key.removeprefix("diffusion_model.")]
        view = weight.narrow(*offset) if offset is not None else weight
        scale = alpha / down.shape[0] if alpha is not None else 1.0
        view += (strength * scale) * (up.float() @ down.float()).reshape(view.shape)
    return out


# ---- tiny models with a LoRA ---------------------------------------------------------------------------------
def _family(kind: str, model: torch.nn.Module) -> Any:
    from engine.trainer.chroma import Chroma
    from engine.trainer.flux import Flux
    from engine.trainer.lumina2 import Lumina2
    from engine.trainer.qwen_image import QwenImage

    classes = {"flux": Flux, "chroma": Chroma, "lumina_2": Lumina2, "qwen_image": QwenImage}
    family = classes[kind]({}, torch.float32, torch.device("cpu"))
    family.transformer = family.unet = model
    return family


def _tiny(kind: str, seed: int) -> torch.nn.Module:
    from diffusers import (
        ChromaTransformer2DModel,
        FluxTransformer2DModel,
        Lumina2Transformer2DModel,
        QwenImageTransformer2DModel,
    )

    torch.manual_seed(seed)
    if kind == "lumina_2":
        return Lumina2Transformer2DModel(**TINY_LUMINA)
    if kind == "qwen_image":
        return QwenImageTransformer2DModel(**TINY_QWEN)
    if kind == "flux":
        return FluxTransformer2DModel(**TINY, pooled_projection_dim=32, guidance_embeds=True)
    return ChromaTransformer2DModel(
        **TINY, approximator_num_channels=16, approximator_hidden_dim=32, approximator_layers=1
    )


@functools.cache  # read-only once built; the converter runs once per family
def _converter(kind: str) -> dict[str, list[tuple[int, str]]]:
    from diffusers.loaders import single_file_utils as sfu

    if kind == "qwen_image":  # no converter: ComfyUI's names are diffusers' (checked against the model below)
        n = int(TINY_QWEN["num_layers"])  # type: ignore[call-overload]
        return {
            f"transformer_blocks.{i}.{name}.weight": [(0, f"transformer_blocks.{i}.{name}.weight")]
            for i in range(n)
            for name in COMFY_QWEN_BLOCK
        }
    if kind == "lumina_2":
        seeds = _nextdit_keys(TINY_LUMINA["num_layers"], TINY_LUMINA["num_refiner_layers"])  # type: ignore[arg-type]
        return converter_parts(sfu.convert_lumina2_to_diffusers, seeds, LUMINA_ROWS)
    seeds = _flux_seeds(TINY["num_layers"], TINY["num_single_layers"])  # type: ignore[arg-type]
    if kind == "flux":
        return converter_parts(
            sfu.convert_flux_transformer_checkpoint_to_diffusers, [*seeds, "guidance_in.x"]
        )
    seeds.append("distilled_guidance_layer.layers.0.x")
    return converter_parts(sfu.convert_chroma_transformer_checkpoint_to_diffusers, seeds)


def _merged(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """peft's own merge of every LoRA layer, as plain diffusers keys."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    return {
        k.replace(".base_layer", ""): v.detach().clone()
        for k, v in model.state_dict().items()
        if "lora_" not in k
    }


CASES = {
    # kind, lora_alpha (None: add_lora's alpha = rank), exclude_modules
    "flux": ("flux", None, None),
    "chroma-exclude": (
        "chroma",
        None,
        ["single_transformer_blocks.0.attn.to_k", "transformer_blocks.1.attn.add_v_proj"],
    ),
    "flux-alpha2x-exclude": ("flux", 2.0 * RANK, ["transformer_blocks.0.attn.to_q", "ff.net.2"]),
    "chroma-alpha-half": ("chroma", 0.5 * RANK, None),
    "qwen_image": ("qwen_image", None, None),
    "qwen_image-alpha2x-exclude": (
        "qwen_image",
        2.0 * RANK,
        ["transformer_blocks.0.attn.to_q", "img_mlp.net.2"],
    ),
    "lumina_2-exclude": ("lumina_2", None, ["layers.0.attn.to_k", "context_refiner.1.attn.to_v"]),
    "lumina_2-alpha-half": ("lumina_2", 0.5 * RANK, None),
}
ROWS_OF = {"flux": ROWS, "chroma": ROWS, "lumina_2": LUMINA_ROWS, "qwen_image": 1}
# A key fragment each kind's file must hold: its fused Linears where it has them.
EXPECTED_KEYS = {
    "flux": (".img_attn.qkv.lora_A.weight", ".linear1.lora_B.weight"),
    "chroma": (".img_attn.qkv.lora_A.weight", ".linear1.lora_B.weight"),
    "lumina_2": (".attention.qkv.lora_A.weight", "noise_refiner.1.adaLN_modulation.1.lora_B.weight"),
    "qwen_image": (".attn.add_k_proj.lora_A.weight", ".txt_mod.1.lora_B.weight"),
}
# An alpha whose scaling the writer's check must catch: a fused one where the layout has them.
ALPHA_TO_BREAK = {
    "flux": "linear1.alpha",
    "chroma": "linear1.alpha",
    "lumina_2": "qkv.alpha",
    "qwen_image": "to_v.alpha",
}


@pytest.fixture(scope="module", params=sorted(CASES))
def saved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    kind, alpha, exclude = CASES[request.param]
    model = _tiny(kind, seed=len(request.param))
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    family = _family(kind, model)
    if alpha is None:
        config = add_lora(model, family, RANK, 0.0, init_random_b=True, exclude_modules=exclude)
    else:  # alpha != rank (add_lora always sets alpha = rank): scaling must still come out right
        from peft import LoraConfig

        extra: dict[str, Any] = {"exclude_modules": exclude} if exclude else {}
        config = LoraConfig(
            r=RANK,
            lora_alpha=alpha,
            target_modules=family.lora_target_modules(),
            init_lora_weights=False,
            **extra,
        )
        model.add_adapter(config)
    out = tmp_path_factory.mktemp(request.param)
    written = save_lora(out, model, family, config, "float32")
    parts = _converter(kind)
    return {
        "case": request.param,
        "kind": kind,
        "written": written,
        "out": out,
        "parts": parts,
        "base": original_layout(base, parts),
        "merged": original_layout(_merged(model), parts),
        "exclude": exclude,
        "model": model,
        "alpha_is_rank": alpha is None,
        "key_map": comfy_key_map(kind, sorted(parts), int(TINY_LUMINA["hidden_size"])),  # type: ignore[call-overload]
    }


def test_comfy_file_is_written_beside_the_diffusers_file(saved: dict[str, Any]) -> None:
    assert sorted(p.name for p in saved["written"]) == sorted([DIFFUSERS_FILE, COMFY_FILE])
    assert sorted(p.name for p in saved["out"].iterdir()) == sorted([DIFFUSERS_FILE, COMFY_FILE])
    keys = load_file(str(saved["out"] / COMFY_FILE))
    assert all(k.startswith("diffusion_model.") for k in keys)
    for fragment in EXPECTED_KEYS[saved["kind"]]:
        assert any(fragment in k for k in keys), fragment


def test_every_key_maps_to_an_original_weight(saved: dict[str, Any]) -> None:
    lora = load_file(str(saved["out"] / COMFY_FILE))
    original_keys = sorted(saved["parts"])  # every key diffusers' converter reads from an original checkpoint
    patches, not_loaded = comfy_load_lora(lora, saved["key_map"])
    assert not not_loaded, f"ComfyUI would log 'lora key not loaded' for {sorted(not_loaded)[:4]}"
    assert patches and all(key.removeprefix("diffusion_model.") in original_keys for (key, _), *_ in patches)
    assert all(alpha is not None for *_, alpha in patches)  # a real .alpha per layer


def test_comfyui_patch_equals_the_merged_trained_model(saved: dict[str, Any]) -> None:
    lora = load_file(str(saved["out"] / COMFY_FILE))
    base, merged = saved["base"], saved["merged"]
    patches, _ = comfy_load_lora(lora, saved["key_map"])
    patched = comfy_apply(base, patches)
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    assert len(changed) >= 10  # random non-zero B: the LoRA moves every fused and plain target
    for key in base:
        torch.testing.assert_close(patched[key], merged[key], rtol=1e-5, atol=1e-5, msg=key)
    # ... and the comparison can fail: ComfyUI at strength 0.5 is not the trained model.
    half = comfy_apply(base, patches, strength=0.5)
    assert not all(torch.allclose(half[k], merged[k], rtol=1e-5, atol=1e-5) for k in changed)


def tiny_rows(
    parts: dict[str, list[tuple[int, str]]], base: dict[str, torch.Tensor], rows: int = ROWS
) -> dict[str, tuple[str, int, int]]:
    """diffusers key -> (original key, first row, end row) in the tiny model: the same share as at full width."""
    out = {}
    for original, pieces in parts.items():
        if original not in base:
            continue
        starts = [s for s, _ in pieces] + [rows]
        height = base[original].shape[0]
        for i, (_, key) in enumerate(pieces):
            out[key] = (original, starts[i] * height // rows, starts[i + 1] * height // rows)
    return out


def test_excluded_parts_of_a_fused_weight_stay_untouched(saved: dict[str, Any]) -> None:
    if not saved["exclude"]:
        pytest.skip("no exclude_modules in this case")
    lora = load_file(str(saved["out"] / COMFY_FILE))
    patches, _ = comfy_load_lora(lora, saved["key_map"])
    base = saved["base"]
    patched = comfy_apply(base, patches)
    checked = 0
    for key, (original, first, end) in tiny_rows(saved["parts"], base, ROWS_OF[saved["kind"]]).items():
        module = key.removesuffix(".weight")
        if key.endswith(".weight") and any(module == e or module.endswith(f".{e}") for e in saved["exclude"]):
            assert torch.equal(patched[original][first:end], base[original][first:end]), key
            checked += 1
    assert checked >= 2


def test_comfyui_reads_the_diffusers_file_the_same_way(saved: dict[str, Any]) -> None:
    """ComfyUI also loads the diffusers file (flux_to_diffusers offsets): same patch, when alpha = rank."""
    if saved["kind"] not in ("flux", "chroma"):
        pytest.skip("Flux-derived models only (flux_to_diffusers)")
    if not saved["alpha_is_rank"]:
        pytest.skip("the diffusers file keeps alpha in its metadata, which ComfyUI does not read")
    lora = load_file(str(saved["out"] / DIFFUSERS_FILE))
    hidden = TINY["num_attention_heads"] * TINY["attention_head_dim"]  # type: ignore[operator]
    key_map = comfy_flux_diffusers_key_map(hidden, TINY["num_layers"], TINY["num_single_layers"])  # type: ignore[arg-type]
    patches, not_loaded = comfy_load_lora(lora, key_map)
    assert not not_loaded, sorted(not_loaded)[:4]
    patched = comfy_apply(saved["base"], patches)
    for key in saved["base"]:
        torch.testing.assert_close(patched[key], saved["merged"][key], rtol=1e-5, atol=1e-5, msg=key)


def test_comfyui_reads_a_qwen_image_diffusers_file_but_not_a_lumina_2_one(saved: dict[str, Any]) -> None:
    """Why both get a ComfyUI file: Qwen-Image's diffusers keys load (same names; alpha only when alpha = rank),
    Lumina 2's do not (its branch knows Z-Image's diffusers names, `attention.to_q`, not `attn.to_q`)."""
    if saved["kind"] not in ("qwen_image", "lumina_2"):
        pytest.skip("flux kinds: test_comfyui_reads_the_diffusers_file_the_same_way")
    lora = load_file(str(saved["out"] / DIFFUSERS_FILE))
    patches, not_loaded = comfy_load_lora(lora, saved["key_map"])
    if saved["kind"] == "lumina_2":
        assert not patches and not_loaded == set(lora)
        return
    assert not not_loaded
    patched = comfy_apply(saved["base"], patches)
    same = all(torch.allclose(patched[k], saved["merged"][k], rtol=1e-5, atol=1e-5) for k in saved["base"])
    assert same == saved["alpha_is_rank"]  # the file's alpha lives in metadata ComfyUI does not read


def test_qwen_image_file_has_diffusion_pipes_key_names(saved: dict[str, Any]) -> None:
    """diffusion-pipe's models/qwen_image.py save hook writes `diffusion_model.` + the peft parameter's name
    without `.default` (utils/saver.py); the same LoRA gets the same names here, plus a real `.alpha`."""
    if saved["kind"] != "qwen_image":
        pytest.skip("Qwen-Image only: its names need no fusing")
    lora = load_file(str(saved["out"] / COMFY_FILE))
    upstream = {
        "diffusion_model." + name.replace(".default", "")
        for name, _ in saved["model"].named_parameters()
        if "lora_" in name
    }
    assert {k for k in lora if not k.endswith(".alpha")} == upstream


def test_comfyui_keys_cover_every_lora_target() -> None:
    """ComfyUI's block Linears, taken to diffusers names (identity for Qwen-Image, diffusers' converter for
    Lumina 2), are exactly the Linears the trainer puts LoRA on; the qkv rows split as ComfyUI's NextDiT does."""
    for kind in ("qwen_image", "lumina_2"):
        model = _tiny(kind, seed=0)
        targets = {f"{m}.weight" for m in _family(kind, model).lora_target_modules()}
        converted = {d for pieces in _converter(kind).values() for _, d in pieces}
        assert converted == targets, (kind, sorted(converted ^ targets)[:6])
    parts = _converter("lumina_2")["layers.1.attention.qkv.weight"]
    heads, kv_heads, head_dim = 24, 8, 96  # the 2B model: qkv = heads, kv heads, kv heads (x head_dim) rows
    assert parts == [
        (0, "layers.1.attn.to_q.weight"),
        (heads * head_dim, "layers.1.attn.to_k.weight"),
        ((heads + kv_heads) * head_dim, "layers.1.attn.to_v.weight"),
    ]


def test_converter_correspondence_matches_comfyui_offsets() -> None:
    """diffusers' converter and ComfyUI's flux_to_diffusers split each fused weight at the same shares."""
    parts = _converter("flux")
    comfy = comfy_flux_diffusers_key_map(FULL, 1, 1)
    heights: dict[str, int] = {}  # a fused weight's height in ComfyUI's terms: the end of its last part
    for target, offset in comfy.values():
        if offset is not None:
            heights[target] = max(heights.get(target, 0), offset[1] + offset[2])
    fused = 0
    for module, (target, offset) in comfy.items():
        original = target.removeprefix("diffusion_model.")
        key = module.removeprefix("transformer.") + ".weight"
        starts = [s for s, _ in parts[original]] + [ROWS]
        names = [d for _, d in parts[original]]
        assert key in names, (module, parts[original])
        i = names.index(key)
        if offset is None:
            assert len(names) == 1, module
            continue
        share = (starts[i] / ROWS, (starts[i + 1] - starts[i]) / ROWS)
        assert share == (offset[1] / heights[target], offset[2] / heights[target]), module
        fused += 1
    assert fused == 10  # img and txt q/k/v, a single block's q/k/v/mlp


def test_bfloat16_save_replays_within_bfloat16_rounding(tmp_path: Path) -> None:
    model = _tiny("flux", seed=5)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    family = _family("flux", model)
    config = add_lora(model, family, RANK, 0.0, init_random_b=True)
    save_lora(tmp_path, model, family, config, "bfloat16")
    lora = load_file(str(tmp_path / COMFY_FILE))
    assert {v.dtype for k, v in lora.items() if not k.endswith(".alpha")} == {torch.bfloat16}
    parts = _converter("flux")
    patches, not_loaded = comfy_load_lora(lora, comfy_generic_key_map(sorted(parts)))
    assert not not_loaded
    patched = comfy_apply(original_layout(base, parts), patches)
    merged = original_layout(_merged(model), parts)
    for key, weight in merged.items():
        torch.testing.assert_close(patched[key], weight, rtol=2e-2, atol=2e-2, msg=key)


def check_saved_comfy_file(
    save: Path, kind: str, original: dict[str, torch.Tensor], merged: dict[str, torch.Tensor], hidden: int
) -> None:
    """A trainer's saved lora_comfy.safetensors through the ComfyUI replay: every key loads onto `original` (the
    base model's weights under ComfyUI's names) and the patch gives `merged` (the trained model merged by peft,
    in the same names), weight by weight."""
    lora = load_file(str(save / COMFY_FILE))
    patches, not_loaded = comfy_load_lora(lora, comfy_key_map(kind, sorted(original), hidden))
    assert patches and not not_loaded, sorted(not_loaded)[:4]
    patched = comfy_apply(original, patches)
    moved = [k for k in merged if not torch.equal(original[k].float(), merged[k].float())]
    assert moved, "training moved no weight: the comparison would be vacuous"
    for key, weight in merged.items():
        torch.testing.assert_close(patched[key], weight.float(), rtol=1e-5, atol=1e-6, msg=key)


# ---- the writer's own checks refuse what ComfyUI would get wrong ------------------------------------------------
def test_verify_refuses_a_file_with_a_wrong_alpha(saved: dict[str, Any], tmp_path: Path) -> None:
    from safetensors.torch import save_file

    verify_comfy_file(saved["out"] / COMFY_FILE, saved["model"], saved["kind"])  # the real file passes
    lora = load_file(str(saved["out"] / COMFY_FILE))
    key = next(k for k in lora if k.endswith(ALPHA_TO_BREAK[saved["kind"]]))
    lora[key] = lora[key] / 4  # as if the fused rank were one part's rank
    save_file(lora, str(tmp_path / COMFY_FILE))
    with pytest.raises(ComfyLoraError, match="different output"):
        verify_comfy_file(tmp_path / COMFY_FILE, saved["model"], saved["kind"])


def test_a_layer_outside_the_table_is_a_clear_error() -> None:
    model = _tiny("chroma", seed=3)
    add_lora(model, _family("chroma", model), RANK, 0.0, init_random_b=True)
    sd = {
        re.sub(r"^transformer_blocks\.0\.attn\.to_q\.", "transformer_blocks.0.attn.to_mystery.", k): v
        for k, v in lora_state_dict(model).items()
    }
    with pytest.raises(
        ComfyLoraError, match=r"'transformer_blocks\.0\.attn\.to_mystery' has no key in the chroma"
    ):
        comfy_state_dict(sd, model, "chroma", 1.0, torch.float32)
    # A Flux-only Linear has no place in Chroma's pruned layout either.
    with pytest.raises(ComfyLoraError, match="norm1.linear"):
        comfy_state_dict(
            {"transformer_blocks.0.norm1.linear.lora_A.weight": torch.zeros(4, 32)},
            model,
            "chroma",
            1.0,
            torch.float32,
        )


# ---- end to end: the trainer under the real deepspeed launcher writes and verifies the file ------------------
@pytest.mark.slow
def test_chroma_run_saves_a_comfy_file_comfyui_applies_like_the_diffusers_file(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import tomlkit
    from diffusers import ChromaTransformer2DModel
    from peft.utils import set_peft_model_state_dict
    from tiny_models import build_tiny_chroma, launch_trainer, run_dir_of, write_profile

    from engine.demo import build_synthetic_dataset

    work = tmp_path_factory.mktemp("comfy_e2e")
    schnell, transformer = build_tiny_chroma(work / "model")
    config = write_profile(
        work / "run",
        model_type="chroma",
        model_dir=schnell,
        directories=[{"path": str(build_synthetic_dataset(work / "shapes", count=4))}],
        epochs=2,
        micro_batch_size_per_gpu=2,
        save_every_n_epochs=2,
        lr=2e-2,
    )
    doc = tomlkit.parse(config.read_text())
    doc["model"]["transformer_path"] = str(transformer)  # type: ignore[index]
    doc["adapter"]["exclude_modules"] = ["single_transformer_blocks.0.attn.to_k"]  # type: ignore[index]
    config.write_text(tomlkit.dumps(doc))
    code, out = launch_trainer(config)
    assert code == 0, out[-6000:]
    save = run_dir_of(out) / "epoch2"
    assert (save / COMFY_FILE).is_file() and not (save / "tmp").exists()  # written, verified, published

    model = ChromaTransformer2DModel.from_pretrained(transformer)
    parts = _converter("chroma")
    base = original_layout({k: v.detach().clone() for k, v in model.state_dict().items()}, parts)
    add_lora(model, _family("chroma", model), RANK, 0.0, False, ["single_transformer_blocks.0.attn.to_k"])
    trained = load_file(str(save / DIFFUSERS_FILE))
    set_peft_model_state_dict(model, {k.removeprefix("transformer."): v for k, v in trained.items()})
    merged = original_layout(_merged(model), parts)
    patches, not_loaded = comfy_load_lora(
        load_file(str(save / COMFY_FILE)), comfy_generic_key_map(sorted(parts))
    )
    assert not not_loaded and patches
    patched = comfy_apply(base, patches)
    assert any(not torch.equal(base[k], merged[k]) for k in base)  # training moved the weights
    for key in base:
        torch.testing.assert_close(patched[key], merged[key], rtol=1e-5, atol=1e-6, msg=key)


def test_a_linear_without_a_comfy_key_is_refused_when_the_lora_is_set_up() -> None:
    model = _tiny("flux", seed=4)
    model.transformer_blocks[0].attn.to_mystery = torch.nn.Linear(32, 32)  # a Linear the table does not know
    family = _family("flux", model)
    with pytest.raises(
        LoraSaveError, match=r"transformer_blocks\.0\.attn\.to_mystery' has no key in the flux"
    ):
        add_lora(model, family, RANK, 0.0, init_random_b=True)
    # ... and the same model trains once that Linear is excluded, as the message says.
    model = _tiny("flux", seed=4)
    model.transformer_blocks[0].attn.to_mystery = torch.nn.Linear(32, 32)
    family = _family("flux", model)
    add_lora(
        model, family, RANK, 0.0, init_random_b=True, exclude_modules=["transformer_blocks.0.attn.to_mystery"]
    )
