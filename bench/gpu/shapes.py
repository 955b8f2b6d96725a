"""The models and profiles the GPU checks train, as data: tiny ones for the CPU dry run, real-shaped ones
(the real models' widths, head sizes and latent channels, a few layers deep) for the GPU.

Everything is built locally from configs (no hub): the tiny pipelines come from dpdeck's own builders
(engine.demo_models, tests/tiny_models.py); on the GPU their UNet / transformer, text encoders and VAE are
replaced by random real-shaped ones, so the kernels the trainer runs see real SDXL and Chroma shapes while
the folders stay a few GB at most. torch/diffusers/transformers are imported inside the builders only.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from profiles.document import TomlFile  # noqa: E402
from statefiles.atomic import atomic_write_text  # noqa: E402


@dataclass(frozen=True)
class TrainSize:
    """How a train check trains: enough steps that a stop lands mid-run, few enough to finish in its slice."""

    images: int
    px: int
    batch: int
    epochs: int
    rank: int
    dtype: str  # the base weights' (model.dtype); LoRA weights stay float32 (the master copy)


TRAIN_SIZES: dict[tuple[str, str], TrainSize] = {
    ("sdxl", "cpu"): TrainSize(images=8, px=32, batch=2, epochs=12, rank=4, dtype="float32"),
    ("sdxl", "cuda"): TrainSize(images=4, px=1024, batch=1, epochs=60, rank=32, dtype="bfloat16"),
    ("chroma", "cpu"): TrainSize(images=8, px=32, batch=2, epochs=24, rank=4, dtype="float32"),
    ("chroma", "cuda"): TrainSize(images=4, px=512, batch=1, epochs=100, rank=32, dtype="bfloat16"),
}

# SDXL's own widths: CLIP-L (768) + OpenCLIP-bigG (1280) = cross-attention 2048; pooled 1280 + 6 x 256 time
# ids = 2816. Depth cut: 2 text-encoder layers, (1, 2, 2) transformer layers where SDXL has (1, 2, 10).
SDXL_UNET: dict[str, Any] = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 2),
    attention_head_dim=(5, 10, 20),
    use_linear_projection=True,
    cross_attention_dim=2048,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)
SDXL_TE1: dict[str, Any] = dict(
    hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=2, projection_dim=768
)
SDXL_TE2: dict[str, Any] = dict(
    hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=2, projection_dim=1280
)
_VAE_BLOCKS: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    norm_num_groups=32,
)
SDXL_VAE: dict[str, Any] = dict(_VAE_BLOCKS, latent_channels=4, sample_size=1024, scaling_factor=0.13025)
FLUX_VAE: dict[str, Any] = dict(
    _VAE_BLOCKS,
    latent_channels=16,
    sample_size=1024,
    use_quant_conv=False,
    use_post_quant_conv=False,
    shift_factor=0.1159,
    scaling_factor=0.3611,
)
# Chroma's widths (24 heads x 128 = 3072, T5-XXL's 4096 text width, rope axes 16 + 56 + 56, its 5-layer
# 5120-wide modulation approximator); 1 double and 2 single blocks where it has 19 and 38.
CHROMA_TRANSFORMER: dict[str, Any] = dict(
    patch_size=1,
    in_channels=64,
    num_layers=1,
    num_single_layers=2,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    axes_dims_rope=(16, 56, 56),
    approximator_num_channels=64,
    approximator_hidden_dim=5120,
    approximator_layers=5,
)
# T5-XXL's widths, one layer; the vocabulary is the tiny character tokenizer's.
T5_XXL: dict[str, Any] = dict(
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=1,
    num_heads=64,
    vocab_size=128,
    relative_attention_num_buckets=32,
    feed_forward_proj="gated-gelu",
)


def real_shaped_modules(family: str, device: str = "cuda") -> dict[str, Any]:
    """{subfolder of the model folder: a random real-shaped module} in bfloat16 (random init on the GPU takes
    seconds; device "meta" builds the shapes without memory, for the tests)."""
    import torch
    from diffusers import AutoencoderKL, ChromaTransformer2DModel, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    from engine.demo_models import tiny_clip_config

    torch.manual_seed(0)
    with torch.device(device):
        if family == "sdxl":
            modules: dict[str, Any] = {
                "unet": UNet2DConditionModel(**SDXL_UNET),
                "text_encoder": CLIPTextModel(CLIPTextConfig(**tiny_clip_config(**SDXL_TE1))),
                "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**tiny_clip_config(**SDXL_TE2))),
                "vae": AutoencoderKL(**SDXL_VAE),
            }
        else:
            modules = {
                "chroma_transformer": ChromaTransformer2DModel(**CHROMA_TRANSFORMER),
                "flux_schnell/text_encoder_2": T5EncoderModel(T5Config(**T5_XXL)),
                "flux_schnell/vae": AutoencoderKL(**FLUX_VAE),
            }
    return {k: m.to(torch.bfloat16) for k, m in modules.items()}


def build_model(family: str, device: str, folder: Path) -> dict[str, Path]:
    """The family's model under folder; returns {[model] key: path} for its profile."""
    if family == "sdxl":
        from tests.tiny_models import build_tiny_sdxl

        build_tiny_sdxl(folder)
        paths = {"diffusers_path": folder}
    else:
        from engine.demo_models import build_tiny_chroma

        schnell, transformer = build_tiny_chroma(folder)
        paths = {
            "diffusers_path": schnell,
            "transformer_path": transformer / "diffusion_pytorch_model.safetensors",
        }
    if device == "cuda":
        for sub, module in real_shaped_modules(family).items():
            shutil.rmtree(folder / sub)
            module.save_pretrained(folder / sub)
    return paths


def write_train_profile(family: str, device: str, work: Path) -> Path:
    """Model, dataset and profile (main.toml + dataset.toml) for one train check; returns main.toml."""
    from engine.demo import build_synthetic_dataset

    size = TRAIN_SIZES[(family, device)]
    model_paths = build_model(family, device, work / "model")
    data = build_synthetic_dataset(work / "data", count=size.images, size=(size.px, size.px))
    profile = work / "profile"
    if family == "sdxl":
        from tests.tiny_models import write_profile

        main_path = write_profile(
            profile,
            model_type="sdxl",
            model_dir=model_paths["diffusers_path"],
            directories=[{"path": str(data)}],
        )
    else:
        from engine.demo import family_texts

        main_text, dataset_text = family_texts("chroma", model_paths, data, work / "out")
        profile.mkdir(parents=True, exist_ok=True)
        atomic_write_text(profile / "dataset.toml", dataset_text)
        main_path = profile / "main.toml"
        atomic_write_text(main_path, main_text)
    edit(
        main_path,
        {
            "output_dir": str(work / "out"),
            "epochs": size.epochs,
            "save_every_n_epochs": size.epochs,
            "micro_batch_size_per_gpu": size.batch,
            "model.dtype": size.dtype,
            "adapter.rank": size.rank,
            "adapter.dtype": "float32",
        },
    )
    edit(profile / "dataset.toml", {"resolutions": [size.px]})
    return main_path


def edit(path: Path, values: dict[str, Any], dest: Path | None = None) -> Path:
    """path's TOML with values set (dotted keys), written to dest (default: in place)."""
    doc = TomlFile.load(path)
    for key, value in values.items():
        doc.set(key, value)
    dest = dest or path
    atomic_write_text(dest, doc.dumps())
    return dest


def demo_profile(shared: Path, name: str, out: Path, **values: Any) -> Path:
    """A variant of the tiny SD1.5 demo profile (built once under shared) beside it: the queue checks' job."""
    from engine.demo import prepare

    main = prepare(shared / "demo", "sd15")
    return edit(main, {"output_dir": str(out), **values}, main.with_name(f"{name}.toml"))
