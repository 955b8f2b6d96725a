"""A tiny random Lumina Image 2.0 model: diffusers folders (the reference) and the three ComfyUI-layout single
files a lumina_2 profile names (transformer_path, llm_path, vae_path), all from configs, no hub access.

Single-file layouts:
- transformer: the original NextDiT names, the inverse of diffusers' convert_lumina2_to_diffusers (its key map,
  q/k/v rows fused into attention.qkv in that order, plus the unused norm_final.weight real files carry);
- llm: `model.` + Gemma2Model's parameter names, as diffusion-pipe reads it, and ComfyUI's `spiece_model`
  (the SentencePiece model's bytes as a uint8 tensor);
- vae: the original LDM/Flux VAE names (tests/tiny_models._vae_to_ldm).

Sizes fit the 2B model's fixed parts: 96-wide heads (RoPE axes 32+32+32), 2 refiner layers, FFN rounded to 256.
"""

from __future__ import annotations

import io
from pathlib import Path

TEXT_WIDTH = 32
SPM_TEXT = [
    "a red circle on a blue square",
    "a green triangle and a yellow star",
    "shapes and colours of a tiny dataset 0123456789",
    "the quick brown fox jumps over the lazy dog",
]

# diffusers name fragment -> original name fragment (the inverse of diffusers' lumina2 key map); applied in order.
_TO_ORIGINAL: tuple[tuple[str, str], ...] = (
    ("time_caption_embed.caption_embedder.", "cap_embedder."),
    ("time_caption_embed.timestep_embedder.linear_1.", "t_embedder.mlp.0."),
    ("time_caption_embed.timestep_embedder.linear_2.", "t_embedder.mlp.2."),
    ("norm_out.linear_1.", "final_layer.adaLN_modulation.1."),
    ("norm_out.linear_2.", "final_layer.linear."),
    (".attn.to_out.0.", ".attention.out."),
    (".attn.norm_q.", ".attention.q_norm."),
    (".attn.norm_k.", ".attention.k_norm."),
    (".feed_forward.linear_1.", ".feed_forward.w1."),
    (".feed_forward.linear_2.", ".feed_forward.w2."),
    (".feed_forward.linear_3.", ".feed_forward.w3."),
    (".norm1.linear.", ".adaLN_modulation.1."),
    (".norm1.norm.", ".attention_norm1."),
    (".norm1.", ".attention_norm1."),  # context_refiner: a plain RMSNorm, no modulation
    (".norm2.", ".attention_norm2."),
)


def write_tiny_spm(path: Path) -> bytes:
    """A small BPE SentencePiece model with Gemma's settings: ids pad 0, eos 1, bos 2, unk 3, byte fallback,
    no dummy prefix, identity normalisation."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SPM_TEXT * 20),
        model_writer=buf,
        vocab_size=300,
        model_type="bpe",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        byte_fallback=True,
        character_coverage=1.0,
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        minloglevel=2,
        num_threads=1,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def to_original_key(name: str) -> str:
    for new, old in _TO_ORIGINAL:
        if new in name:
            name = name.replace(new, old)
    return name


def transformer_to_original(sd: dict[str, object]) -> dict[str, object]:
    """A diffusers Lumina2Transformer2DModel state dict in the original NextDiT layout."""
    import torch

    out: dict[str, object] = {}
    for key, tensor in sd.items():
        if ".attn.to_k." in key or ".attn.to_v." in key:
            continue
        if ".attn.to_q." in key:
            parts = [sd[key.replace(".to_q.", f".{p}.")] for p in ("to_q", "to_k", "to_v")]
            out[key.replace(".attn.to_q.", ".attention.qkv.")] = torch.cat(parts, dim=0)  # type: ignore[arg-type]
            continue
        out[to_original_key(key)] = tensor
    return out


def build_tiny_lumina2(out_dir: Path, seed: int = 0, vae_levels: int = 2) -> dict[str, Path]:
    """Writes out_dir/diffusers/{transformer,vae,text_encoder,tokenizer} and the three single files.

    vae_levels: 2 (2x, the smallest latents for training tests) or 4 (8x as the real VAE, which Lumina2Pipeline
    assumes: its vae_scale_factor is fixed at 8). Returns the paths by profile key, plus "diffusers" (the
    reference folder) and "spm" (tokenizer.model).
    """
    import torch
    from diffusers import Lumina2Transformer2DModel
    from safetensors.torch import save_file
    from tiny_models import _vae_to_ldm
    from transformers import Gemma2Config, Gemma2Model, GemmaTokenizer

    from engine.demo_models import tiny_vae16

    out_dir = Path(out_dir)
    ref = out_dir / "diffusers"
    spm_bytes = write_tiny_spm(ref / "tokenizer" / "tokenizer.model")
    tokenizer = GemmaTokenizer.from_pretrained(
        str(ref / "tokenizer"), add_bos_token=True, add_eos_token=False
    )
    tokenizer.save_pretrained(str(ref / "tokenizer"))

    torch.manual_seed(seed)
    transformer = Lumina2Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=16,
        hidden_size=96,
        num_layers=2,
        num_refiner_layers=2,
        num_attention_heads=1,
        num_kv_heads=1,
        multiple_of=256,
        axes_dim_rope=(32, 32, 32),
        axes_lens=(300, 512, 512),
        cap_feat_dim=TEXT_WIDTH,
    )
    torch.manual_seed(seed + 1)
    vae = tiny_vae16(levels=vae_levels)  # Flux's VAE (its real shift and scale), at toy width
    torch.manual_seed(seed + 2)
    gemma = Gemma2Model(
        Gemma2Config(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_WIDTH,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=1,
            num_key_value_heads=1,
            head_dim=256,
            query_pre_attn_scalar=256,
            sliding_window=4096,
            rms_norm_eps=1e-6,
            hidden_activation="gelu_pytorch_tanh",
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            pad_token_id=0,
        )
    )
    transformer.save_pretrained(ref / "transformer")
    vae.save_pretrained(ref / "vae")
    gemma.save_pretrained(ref / "text_encoder")

    files = {
        "transformer_path": out_dir / "lumina_2_model_tiny.safetensors",
        "llm_path": out_dir / "gemma_2_2b_tiny.safetensors",
        "vae_path": out_dir / "flux_vae_tiny.safetensors",
    }
    original = transformer_to_original(transformer.state_dict())
    original["norm_final.weight"] = torch.ones(96)  # real files carry it; nothing reads it
    save_file({k: v.contiguous() for k, v in original.items()}, str(files["transformer_path"]))  # type: ignore[union-attr]
    llm = {"model." + k: v.contiguous() for k, v in gemma.state_dict().items()}
    llm["spiece_model"] = torch.frombuffer(bytearray(spm_bytes), dtype=torch.uint8)
    save_file(llm, str(files["llm_path"]))
    n_up = len(vae.config.up_block_types)
    ldm = {_vae_to_ldm(k, n_up): v for k, v in vae.state_dict().items()}
    # LDM stores the VAE's mid-block attention projections as 1x1 convs.
    ldm = {
        k: v[:, :, None, None] if ".mid.attn_1." in k and k.endswith(".weight") and v.ndim == 2 else v
        for k, v in ldm.items()
    }
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(files["vae_path"]))
    return {**files, "diffusers": ref, "spm": ref / "tokenizer" / "tokenizer.model"}
