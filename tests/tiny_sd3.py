"""A tiny random StableDiffusion3Pipeline folder, every component from a config (no hub access).

Shaped like SD3.5 Medium in miniature: CLIP-L and CLIP-G of different widths (pooled 32 + 48 = 80), a T5 wider
than both CLIPs together (so the CLIP states are zero-padded up to it, as 768 + 1280 < 4096 in the real model),
an MMDiT-X transformer with a dual-attention first block and RMS q/k norms, and a 16-channel VAE with a shift
factor.
"""

from __future__ import annotations

import json
from pathlib import Path

# Through tiny_models: it re-exports the shared tiny builders wherever they live in engine/.
from tiny_models import tiny_clip_config, tiny_vae16, write_tiny_t5_tokenizer, write_tiny_tokenizer

CLIP_L_WIDTH = 32
CLIP_G_WIDTH = 48
T5_WIDTH = 96


def tiny_sd3_transformer(seed: int = 0):  # type: ignore[no-untyped-def]
    import torch
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=T5_WIDTH,
        caption_projection_dim=32,
        pooled_projection_dim=CLIP_L_WIDTH + CLIP_G_WIDTH,
        pos_embed_max_size=32,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )


def build_tiny_sd3(out_dir: Path, seed: int = 0, with_t5: bool = True) -> Path:
    """The folder a `diffusers_path` names; with_t5=False leaves out text_encoder_3 (a bad-input case)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
    )

    out_dir = Path(out_dir)
    tiny_sd3_transformer(seed).save_pretrained(out_dir / "transformer")
    torch.manual_seed(seed + 1)
    tiny_vae16(shift_factor=0.0609, scaling_factor=1.5305).save_pretrained(out_dir / "vae")  # SD3's factors
    for i, (sub, width) in enumerate((("text_encoder", CLIP_L_WIDTH), ("text_encoder_2", CLIP_G_WIDTH))):
        torch.manual_seed(seed + 2 + i)
        clip = CLIPTextModelWithProjection(
            CLIPTextConfig(**tiny_clip_config(hidden_size=width, projection_dim=width))
        )
        clip.save_pretrained(out_dir / sub)
    if with_t5:
        torch.manual_seed(seed + 4)
        t5 = T5EncoderModel(
            T5Config(
                d_model=T5_WIDTH,
                d_kv=8,
                d_ff=37,
                num_layers=2,
                num_heads=4,
                vocab_size=128,
                relative_attention_num_buckets=8,
            )
        )
        t5.save_pretrained(out_dir / "text_encoder_3")
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(out_dir / "scheduler")
    for sub in ("tokenizer", "tokenizer_2"):
        write_tiny_tokenizer(out_dir / sub)
        CLIPTokenizer.from_pretrained(out_dir / sub)
    write_tiny_t5_tokenizer(out_dir / "tokenizer_3")
    index = {
        "_class_name": "StableDiffusion3Pipeline",
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_3": ["transformers", "T5EncoderModel"] if with_t5 else [None, None],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "tokenizer_3": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "SD3Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "image_encoder": [None, None],
        "feature_extractor": [None, None],
    }
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2))
    return out_dir
