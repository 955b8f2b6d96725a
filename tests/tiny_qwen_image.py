"""A tiny random Qwen-Image diffusers folder (QwenImagePipeline layout), built from configs, no hub access.

transformer/ (QwenImageTransformer2DModel), vae/ (AutoencoderKLQwenImage, 8x spatial like the real one),
text_encoder/ (Qwen2_5_VLForConditionalGeneration with a 2-layer text model and a 1-block vision tower),
tokenizer/ (a byte-level BPE without merges, with the chat-template special tokens), scheduler/.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.demo import write_tiny_tokenizer

Z_DIM = 16  # the real VAE's latent channels; the transformer sees them 2x2-packed (64)
TEXT_HIDDEN = 32
# Qwen2.5-VL's special tokens the prompt template uses, plus the vision markers the VL config names.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def write_tiny_qwen_tokenizer(out_dir: Path, max_length: int = 1024) -> Path:
    """A Qwen2 byte-level BPE tokenizer over the 256 byte characters (no merges) plus SPECIAL_TOKENS."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    out_dir = Path(out_dir)
    # The CLIP twin's vocabulary file lists the byte characters; take them (without its </w> forms).
    clip_vocab = json.loads((write_tiny_tokenizer(out_dir / "_clip") / "vocab.json").read_text())
    chars = [t for t in clip_vocab if len(t) == 1]
    vocab = {ch: i for i, ch in enumerate(chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": max_length,
        "pad_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "unk_token": None,
        "bos_token": None,
        "padding_side": "right",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config))
    for f in (out_dir / "_clip").iterdir():
        f.unlink()
    (out_dir / "_clip").rmdir()
    Qwen2TokenizerFast.from_pretrained(out_dir)  # fail here, not in the trainer, if it is malformed
    return out_dir


def tiny_text_encoder(tokenizer, seed: int = 0):  # type: ignore[no-untyped-def]
    """A random Qwen2_5_VLForConditionalGeneration sized to the tiny tokenizer (its special-token ids too)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vocab_size = len(tokenizer)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "hidden_size": TEXT_HIDDEN,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "vocab_size": vocab_size,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 2, 4]},  # head dim 16 -> 8 pairs
            "rope_theta": 1_000_000.0,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": TEXT_HIDDEN,
        },
        vocab_size=vocab_size,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config)


def build_tiny_qwen_image(out_dir: Path, seed: int = 0) -> Path:
    """A tiny random QwenImagePipeline folder; returns it (the profile's diffusers_path)."""
    import torch
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2TokenizerFast

    out_dir = Path(out_dir)
    write_tiny_qwen_tokenizer(out_dir / "tokenizer")
    tokenizer = Qwen2TokenizerFast.from_pretrained(out_dir / "tokenizer")
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=Z_DIM * 4,
        out_channels=Z_DIM,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_HIDDEN,
        axes_dims_rope=(4, 6, 6),
    )
    torch.manual_seed(seed + 1)
    # 8x spatial (four levels), as the real VAE; the temporal flags only matter for video.
    vae = AutoencoderKLQwenImage(
        base_dim=16,
        z_dim=Z_DIM,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1 * (i % 5) for i in range(Z_DIM)],
        latents_std=[1.0 + 0.25 * (i % 3) for i in range(Z_DIM)],
    )
    text_encoder = tiny_text_encoder(tokenizer, seed + 2)
    transformer.save_pretrained(out_dir / "transformer")
    vae.save_pretrained(out_dir / "vae")
    text_encoder.save_pretrained(out_dir / "text_encoder")
    FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True).save_pretrained(
        out_dir / "scheduler"
    )
    index = {
        "_class_name": "QwenImagePipeline",
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "transformer": ["diffusers", "QwenImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKLQwenImage"],
    }
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2))
    return out_dir
