"""Tiny random diffusers models built from configs (no hub): SD1.5, Flux (dev / schnell-like) and Chroma.

`dpdeck demo` trains on them, and the tests and benchmarks build theirs here too (tests/tiny_models.py
imports these), so the package never depends on tests/. torch, diffusers and transformers are imported inside
the builders only: importing this module stays cheap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_tiny_tokenizer(out_dir: Path) -> Path:
    """A CLIP BPE tokenizer whose vocabulary is the 256 byte-level characters (with and without </w>).

    No merges: every word becomes characters. That is all a random tiny text encoder needs.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # GPT-2/CLIP byte -> printable unicode table (the standard construction).
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = [chr(b) for b in printable]
    extra = 0
    for b in range(256):
        if b not in printable:
            chars.append(chr(256 + extra))
            extra += 1
    vocab: dict[str, int] = {"<|startoftext|>": 0, "!": 1, "<|endoftext|>": 2}
    for ch in chars:
        for tok in (ch, ch + "</w>"):
            if tok not in vocab:
                vocab[tok] = len(vocab)
    (out_dir / "vocab.json").write_text(json.dumps(vocab))
    (out_dir / "merges.txt").write_text("#version: 0.2\n")
    config = {
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config))
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")})
    )
    return out_dir


def tiny_vae():  # type: ignore[no-untyped-def]
    """The 2-block random VAE every tiny pipeline here shares (seed the RNG before calling)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=32,
    )


def tiny_clip_config(**overrides: Any) -> dict[str, Any]:
    """CLIPTextConfig keyword arguments for a 32-wide random text encoder that fits the tiny tokenizer."""
    cfg: dict[str, Any] = dict(
        bos_token_id=0,
        eos_token_id=2,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=3,
        pad_token_id=1,
        vocab_size=600,
        hidden_act="gelu",
    )
    cfg.update(overrides)
    return cfg


def build_tiny_sd15(out_dir: Path, seed: int = 0) -> Path:
    """A tiny random SD1.5-style pipeline folder (UNet block_out_channels (32, 64), 2x VAE)."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars are noise in the demo's output
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = tiny_vae()
    torch.manual_seed(seed + 2)
    te = CLIPTextModel(CLIPTextConfig(**tiny_clip_config(num_hidden_layers=2)))
    scheduler = DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
        steps_offset=1,
    )
    unet.save_pretrained(out_dir / "unet")
    vae.save_pretrained(out_dir / "vae")
    te.save_pretrained(out_dir / "text_encoder")
    scheduler.save_pretrained(out_dir / "scheduler")
    write_tiny_tokenizer(out_dir / "tokenizer")
    CLIPTokenizer.from_pretrained(out_dir / "tokenizer")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.31.0",
        "requires_safety_checker": False,
        "vae": ["diffusers", "AutoencoderKL"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
    }
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2))
    return out_dir


def write_tiny_t5_tokenizer(out_dir: Path, max_length: int = 32) -> Path:
    """A character-level T5 tokenizer (Unigram over printable ASCII, `</s>` appended) built with `tokenizers`.

    max_length becomes model_max_length, which the flow families use as the T5 length (real T5: 512).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    vocab += [(chr(c), -1.0) for c in range(33, 127)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "T5Tokenizer",
        "model_max_length": max_length,
        "pad_token": "<pad>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "extra_ids": 0,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config))
    T5TokenizerFast.from_pretrained(out_dir)  # fail here, not in the trainer, if it is malformed
    return out_dir


def tiny_flow_transformer_kwargs() -> dict[str, object]:
    """Shared dims of the tiny Flux / Chroma transformers: 2 heads x 16, rope axes 4 + 6 + 6 = 16."""
    return dict(
        patch_size=1,
        in_channels=64,  # 16 latent channels x 2x2 packing
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=(4, 6, 6),
    )


def tiny_vae16(  # type: ignore[no-untyped-def]
    shift_factor: float = 0.1159, scaling_factor: float = 0.3611, levels: int = 2
):
    """A toy-width VAE with 16 latent channels and no quant convs: Flux's (and Lumina 2's) factors by default,
    SD3 passes its own (0.0609, 1.5305). `levels` resolution levels downsample 2 ** (levels - 1) times: 4 is the
    real VAE's 8x (which Lumina2Pipeline assumes)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32] * levels,
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        latent_channels=16,
        norm_num_groups=32,
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=shift_factor,
        scaling_factor=scaling_factor,
    )


def build_tiny_flux(out_dir: Path, seed: int = 0, guidance_embeds: bool = True) -> Path:
    """A tiny random FluxPipeline folder (dev-like with guidance_embeds, schnell-like without)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars are noise in the demo's output
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        **tiny_flow_transformer_kwargs(), pooled_projection_dim=32, guidance_embeds=guidance_embeds
    )
    torch.manual_seed(seed + 1)
    vae = tiny_vae16()
    torch.manual_seed(seed + 2)
    clip = CLIPTextModel(CLIPTextConfig(**tiny_clip_config(projection_dim=32)))
    torch.manual_seed(seed + 3)
    t5 = T5EncoderModel(
        T5Config(
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            vocab_size=128,
            relative_attention_num_buckets=8,
        )
    )
    transformer.save_pretrained(out_dir / "transformer")
    vae.save_pretrained(out_dir / "vae")
    clip.save_pretrained(out_dir / "text_encoder")
    t5.save_pretrained(out_dir / "text_encoder_2")
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(out_dir / "scheduler")
    write_tiny_tokenizer(out_dir / "tokenizer")
    CLIPTokenizer.from_pretrained(out_dir / "tokenizer")
    write_tiny_t5_tokenizer(out_dir / "tokenizer_2")
    index = {
        "_class_name": "FluxPipeline",
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "image_encoder": [None, None],
        "feature_extractor": [None, None],
    }
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2))
    return out_dir


def build_tiny_chroma(out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """A tiny Flux-schnell folder (VAE + T5 + tokenizers) and a tiny Chroma transformer folder beside it.

    Returns (diffusers_path, transformer_path) as a chroma profile names them; the transformer is a diffusers
    folder (config.json + weights): an original-layout tiny file cannot go through from_single_file.
    """
    import torch
    from diffusers import ChromaTransformer2DModel

    out_dir = Path(out_dir)
    schnell = build_tiny_flux(out_dir / "flux_schnell", seed=seed, guidance_embeds=False)
    torch.manual_seed(seed + 10)
    transformer = ChromaTransformer2DModel(
        **tiny_flow_transformer_kwargs(),
        approximator_num_channels=16,
        approximator_hidden_dim=32,
        approximator_layers=1,
    )
    transformer.save_pretrained(out_dir / "chroma_transformer")
    return schnell, out_dir / "chroma_transformer"
