"""Identify what a single .safetensors file is from its tensor names and shapes (header only).

Checkpoints come in several key layouts for the same network: original (BFL/LDM/Comfy) names, the same names
under a `model.diffusion_model.` prefix (full checkpoints), and diffusers names. Each family below is
recognised by names that only it uses, then confirmed or refined by a shape (hidden size, channel count).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.models.safetensors_header import Header, TensorInfo

# Stripped in this order so `model.diffusion_model.x` and `diffusion_model.x` both become `x`.
PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "unet.", "net.")  # net.: Cosmos


@dataclass
class Identification:
    family: str | None  # a model type string (sdxl, flux, chroma...) or None when unknown
    kind: str  # checkpoint | transformer | unet | vae | text_encoder | lora | unknown
    variant: str | None = None
    evidence: list[str] = field(default_factory=list)

    def label(self) -> str:
        parts = [self.family or "unknown", self.kind]
        if self.variant:
            parts.append(f"({self.variant})")
        return " ".join(parts)


class _Keys:
    """Tensor names with the diffusion-model prefix removed, plus prefix presence flags."""

    def __init__(self, tensors: Mapping[str, TensorInfo]):
        self.raw = tensors
        self.by_name: dict[str, str] = {}  # stripped name -> name in the file
        self.prefixed = False
        for orig in tensors:
            name = orig
            if name[0] in "mdtun":  # cheap pre-filter: every prefix starts with one of these
                for prefix in PREFIXES:
                    if name.startswith(prefix):
                        name = name[len(prefix):]
                        self.prefixed = True
                        break
            self.by_name.setdefault(name, orig)
        self.names = self.by_name.keys()
        # Sorted names (stripped and raw) answer "any name starts with P?" by bisection, not a full scan.
        self._sorted = sorted(self.by_name)
        self._raw_sorted = sorted(tensors)

    def has(self, *names: str) -> bool:
        return all(n in self.by_name for n in names)

    @staticmethod
    def _prefixed(names: list[str], prefix: str) -> bool:
        i = bisect_left(names, prefix)
        return i < len(names) and names[i].startswith(prefix)

    def any_startswith(self, prefix: str) -> bool:
        return self._prefixed(self._sorted, prefix)

    def raw_startswith(self, prefix: str) -> bool:
        return self._prefixed(self._raw_sorted, prefix)

    def shape(self, name: str) -> tuple[int, ...] | None:
        orig = self.by_name.get(name)
        if orig is None:
            orig = name if name in self.raw else None
        return self.raw[orig].shape if orig is not None else None

    def _block(self, fmt: str, i: int) -> bool:
        return self.any_startswith(fmt.format(i))


def _is_lora(names: list[str]) -> bool:
    markers = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", "lora_unet_", "lora_te", ".hada_w1_a", ".lokr_w1")
    sample = names[:4000]
    blob = "\n".join(sample)  # str.count in C instead of a Python loop per name and marker
    hits = sum(blob.count(m) for m in markers)
    return hits > 0 and hits * 4 >= len(sample)


def identify(header: Header) -> Identification:
    names = list(header.tensors)
    if not names:
        return Identification(None, "unknown", evidence=["no tensors in the file"])
    if _is_lora(names):
        return Identification(None, "lora", evidence=["lora_down/lora_up or lora_A/lora_B keys"])
    keys = _Keys(header.tensors)
    for rule in (_sd_unet, _chroma, _flux2, _flux, _hunyuan_video, _sd3, _auraflow, _wan, _ltx, _z_image, _lumina,
                 _qwen, _hidream, _cosmos_predict2, _cosmos):
        found = rule(keys)
        if found is not None:
            return found
    for rule in (_vae, _text_encoder):
        found = rule(keys)
        if found is not None:
            return found
    return Identification(None, "unknown", evidence=[f"{len(names)} tensors, no known key pattern"])


def _dm_kind(keys: _Keys, text_prefixes: tuple[str, ...], vae_prefix: str = "first_stage_model.") -> str:
    bundled = keys.raw_startswith(vae_prefix) or any(keys.raw_startswith(p) for p in text_prefixes)
    return "checkpoint" if bundled else "transformer"


def _sd_unet(keys: _Keys) -> Identification | None:
    conv_in = keys.shape("input_blocks.0.0.weight")
    if conv_in is None:
        return None
    ev = [f"input_blocks.0.0.weight {list(conv_in)}"]
    kind = "checkpoint" if keys.raw_startswith("first_stage_model.") else "unet"
    if keys.has("label_emb.0.0.weight"):
        ev.append("label_emb (SDXL size conditioning)")
        variant = "v-prediction" if "v_pred" in keys.raw else None
        if keys.raw_startswith("conditioner.embedders.1."):
            ev.append("two text encoders (conditioner.embedders.0/1)")
        if variant:
            ev.append("v_pred marker tensor")
        inpaint = conv_in[1] == 9
        return Identification("sdxl", kind, "inpainting" if inpaint else variant, ev)
    ctx = None
    for name in keys.names:
        if name.endswith("attn2.to_k.weight"):
            ctx = keys.shape(name)
            break
    if ctx is not None and ctx[-1] == 1024:
        ev.append("cross-attention context 1024 (OpenCLIP-H)")
        return Identification(None, kind, "sd2.x (not trainable here)", ev)
    ev.append("cross-attention context 768 (CLIP-L)")
    return Identification("sd15", kind, "inpainting" if conv_in[1] == 9 else None, ev)


def _flux_like_dims(keys: _Keys) -> list[str]:
    img_in = keys.shape("img_in.weight") or keys.shape("x_embedder.weight")
    return [f"img_in {list(img_in)}"] if img_in else []


def _chroma(keys: _Keys) -> Identification | None:
    if not keys.any_startswith("distilled_guidance_layer."):
        return None
    if not (keys.any_startswith("double_blocks.") or keys.any_startswith("transformer_blocks.")):
        return None
    ev = ["distilled_guidance_layer (Chroma's modulation approximator)", *_flux_like_dims(keys)]
    return Identification("chroma", _dm_kind(keys, ("text_encoders.", "cond_stage_model.")), None, ev)


def _flux(keys: _Keys) -> Identification | None:
    bfl = keys.has("img_in.weight") and keys.any_startswith("double_blocks.0.img_attn.qkv.")
    dif = keys.has("x_embedder.weight") and keys.any_startswith("single_transformer_blocks.0.") and keys.has(
        "context_embedder.weight") and keys.any_startswith("time_text_embed.")
    if not (bfl or dif):
        return None
    guidance = keys.any_startswith("guidance_in.") or keys.any_startswith("time_text_embed.guidance_embedder.")
    ev = ["double_blocks/img_attn.qkv (BFL names)" if bfl else "single_transformer_blocks (diffusers names)"]
    ev += _flux_like_dims(keys)
    ev.append("guidance embedding present (dev-style)" if guidance else "no guidance embedding (schnell-style)")
    img_in = keys.shape("img_in.weight") or keys.shape("x_embedder.weight")
    variant = "dev" if guidance else "schnell"
    if img_in is not None and len(img_in) == 2 and img_in[1] == 128:
        variant = "fill/depth (128 input channels)"
    return Identification("flux", _dm_kind(keys, ("text_encoders.",)), variant, ev)


def _flux2(keys: _Keys) -> Identification | None:
    # FLUX.2 shares one modulation per stream across all blocks (FLUX.1 has one per block): these names exist in
    # both its BFL and diffusers layouts and in no other family.
    if not (keys.any_startswith("double_stream_modulation_img.") and keys.any_startswith("single_stream_modulation.")):
        return None
    x = keys.shape("img_in.weight") or keys.shape("x_embedder.weight") or ()
    dim = x[0] if x else None
    ev = ["double_stream_modulation_img + single_stream_modulation (shared modulation)"]
    if x:
        ev.append(f"img_in {list(x)}")
    variant = "dev" if dim == 6144 else (f"hidden size {dim}" if dim else None)
    return Identification("flux2", _dm_kind(keys, ("text_encoders.",)), variant, ev)


def _hunyuan_video(keys: _Keys) -> Identification | None:
    if not (keys.any_startswith("double_blocks.0.img_attn_qkv.") and keys.any_startswith("txt_in.")):
        return None
    ev = ["double_blocks.*.img_attn_qkv + txt_in token refiner"]
    img_in = keys.shape("img_in.proj.weight")
    if img_in:
        ev.append(f"img_in.proj {list(img_in)}")
    variant = "i2v" if img_in and len(img_in) > 1 and img_in[1] > 16 else None
    return Identification("hunyuan-video", "transformer", variant, ev)


def _sd3(keys: _Keys) -> Identification | None:
    orig = keys.any_startswith("joint_blocks.0.x_block.") and keys.any_startswith("x_embedder.proj.")
    dif = keys.has("pos_embed.proj.weight") and keys.any_startswith("transformer_blocks.0.attn.add_q_proj.") and \
        keys.has("context_embedder.weight") and not keys.any_startswith("img_in")
    if not (orig or dif):
        return None
    depth = 0
    fmt = "joint_blocks.{}." if orig else "transformer_blocks.{}."
    while depth < 100 and keys._block(fmt, depth):
        depth += 1
    variant = {24: "3.5 medium / 3 medium", 38: "3.5 large"}.get(depth, f"{depth} joint blocks")
    ev = [f"{depth} joint blocks ({'original' if orig else 'diffusers'} names)"]
    return Identification("sd3", _dm_kind(keys, ("text_encoders.",)), variant, ev)


def _auraflow(keys: _Keys) -> Identification | None:
    orig = keys.any_startswith("double_layers.0.") and keys.any_startswith("cond_seq_linear.")
    dif = keys.any_startswith("joint_transformer_blocks.0.") and keys.has("register_tokens")
    if not (orig or dif):
        return None
    return Identification("auraflow", "transformer", None, ["double_layers/cond_seq_linear (AuraFlow MMDiT)"])


def _wan(keys: _Keys) -> Identification | None:
    if not (keys.any_startswith("blocks.0.self_attn.q.") and keys.any_startswith("blocks.0.cross_attn.")
            and keys.has("patch_embedding.weight")):
        return None
    pe = keys.shape("patch_embedding.weight") or ()
    dim = pe[0] if pe else None
    in_ch = pe[1] if len(pe) > 1 else None
    ev = [f"patch_embedding {list(pe)}"]
    size = {1536: "1.3B", 3072: "5B", 5120: "14B"}.get(dim or 0, f"dim {dim}")
    if keys.any_startswith("blocks.0.cross_attn.k_img.") or keys.any_startswith("img_emb."):
        task = "i2v"
    elif in_ch == 48:
        task = "ti2v (Wan2.2 5B)"
    elif in_ch == 36:
        task = "i2v (Wan2.2)"
    else:
        task = "t2v"
    return Identification("wan", "transformer", f"{size} {task}", ev)


def _ltx(keys: _Keys) -> Identification | None:
    if not (keys.has("patchify_proj.weight") and keys.any_startswith("adaln_single.")):
        return None
    bundled = keys.raw_startswith("vae.")
    ev = [f"patchify_proj {list(keys.shape('patchify_proj.weight') or ())}", "adaln_single"]
    if bundled:
        ev.append("VAE bundled (vae.*)")
    return Identification("ltx-video", "checkpoint" if bundled else "transformer", None, ev)


def _z_image(keys: _Keys) -> Identification | None:
    # Z-Image is a NextDiT like Lumina 2 but 3840 wide; its diffusers layout names the patch embedder per
    # patch size (all_x_embedder.2-1) and keeps pad tokens for image and caption.
    if not keys.any_startswith("layers.0."):
        return None
    marks = [m for m in ("all_x_embedder.", "x_pad_token", "cap_pad_token") if keys.any_startswith(m)]
    if not marks:
        return None
    ev = [f"{', '.join(marks)} (Z-Image layout)"]
    norm = keys.shape("layers.0.attention_norm1.weight")
    if norm:
        ev.append(f"hidden size {norm[0]}")
    return Identification("z_image", "transformer", None, ev)


def _lumina(keys: _Keys) -> Identification | None:
    # cap_embedder: original/ComfyUI names; time_caption_embed: diffusers' Lumina2Transformer2DModel.
    if not ((keys.any_startswith("cap_embedder.") or keys.any_startswith("time_caption_embed.caption_embedder."))
            and keys.any_startswith("layers.0.")):
        return None
    x = keys.shape("x_embedder.weight") or ()
    dim = x[0] if x else None
    ev = [f"cap_embedder + NextDiT layers, x_embedder {list(x)}"]
    if dim == 3840:
        return Identification("z_image", "transformer", None, ev + ["hidden size 3840 (Z-Image)"])
    return Identification("lumina_2", "transformer", None, ev)


def _qwen(keys: _Keys) -> Identification | None:
    if not (keys.has("img_in.weight", "txt_in.weight") and keys.any_startswith("transformer_blocks.0.img_mod.")):
        return None
    txt = keys.shape("txt_in.weight") or ()
    return Identification("qwen_image", "transformer", None, [f"img_mod/txt_mod blocks, txt_in {list(txt)}"])


def _hidream(keys: _Keys) -> Identification | None:
    if not (keys.any_startswith("double_stream_blocks.0.") and keys.any_startswith("single_stream_blocks.0.")):
        return None
    ev = ["double_stream_blocks/single_stream_blocks"]
    gate = keys.shape("double_stream_blocks.0.block.ff_i.gate.weight")
    if gate and len(gate) == 2:
        ev.append(f"mixture of experts: {gate[0]} routed experts, hidden size {gate[1]}")
    if keys.any_startswith("caption_projection."):
        ev.append("caption_projection (Llama + T5 caption layers)")
    return Identification("hidream", "transformer", None, ev)


def _cosmos_predict2(keys: _Keys) -> Identification | None:
    # Cosmos-Predict2 (MiniTrainDIT): flat blocks with self_attn.q_proj and per-block adaLN modulation; `net.`
    # prefix in NVIDIA's files (stripped with the others).
    if not (keys.any_startswith("blocks.0.self_attn.q_proj.") and keys.any_startswith("blocks.0.adaln_modulation_")):
        return None
    x = keys.shape("x_embedder.proj.1.weight") or ()
    dim = x[0] if x else None
    ev = ["blocks.N.self_attn.q_proj + adaln_modulation (Cosmos-Predict2 DiT)"]
    if x:
        ev.append(f"x_embedder.proj.1 {list(x)}")
    variant = {2048: "2B", 5120: "14B"}.get(dim or 0)
    return Identification("cosmos_predict2", "transformer", variant, ev)


def _cosmos(keys: _Keys) -> Identification | None:
    # Cosmos 1.0 diffusion: NVIDIA's nested block names (blocks.block0.blocks.0.block.attn), or the diffusers
    # CosmosTransformer3DModel, whose 1.0 configuration has a learnable extra positional embedding.
    nvidia = keys.any_startswith("blocks.block0.")
    dif = keys.has("patch_embed.proj.weight") and keys.any_startswith("time_embed.t_embedder.") and \
        keys.any_startswith("transformer_blocks.0.norm1.")
    if not (nvidia or dif):
        return None
    if dif and not keys.any_startswith("learnable_pos_embed."):
        pe = keys.shape("patch_embed.proj.weight") or ()
        return Identification("cosmos_predict2", "transformer", None,
                              [f"diffusers Cosmos DiT without a learnable positional embedding (Predict2), "
                               f"patch_embed {list(pe)}"])
    ev = ["blocks.block0 (Cosmos 1.0 names)" if nvidia else "diffusers Cosmos DiT with learnable_pos_embed (1.0)"]
    return Identification("cosmos", "transformer", None, ev)


def _vae(keys: _Keys) -> Identification | None:
    conv = keys.shape("decoder.conv_in.weight") or keys.shape("first_stage_model.decoder.conv_in.weight")
    if conv is None or not keys.raw_startswith("encoder.") and not keys.raw_startswith("decoder."):
        return None
    latent = conv[1] if len(conv) > 1 else None
    variant = {4: "SD/SDXL 4-channel", 16: "16-channel (Flux/SD3/Lumina)"}.get(latent or 0, f"{latent} latent channels")
    if len(conv) == 5:
        variant = f"video, {latent} latent channels"
    return Identification(None, "vae", variant, [f"decoder.conv_in {list(conv)}"])


def _text_encoder(keys: _Keys) -> Identification | None:
    raw = keys.raw_startswith
    if raw("text_model.encoder.layers.") or raw("text_model.embeddings."):
        emb = keys.shape("text_model.embeddings.token_embedding.weight") or ()
        width = emb[1] if len(emb) > 1 else None
        variant = {768: "CLIP-L", 1280: "CLIP-G (OpenCLIP bigG)"}.get(width or 0, f"CLIP width {width}")
        return Identification(None, "text_encoder", variant, [f"text_model.* token_embedding {list(emb)}"])
    if raw("encoder.block.0.layer.0.SelfAttention."):
        shared = keys.shape("shared.weight") or keys.shape("encoder.embed_tokens.weight") or ()
        vocab = shared[0] if shared else None
        variant = "UMT5" if vocab and vocab > 200000 else "T5"
        return Identification(None, "text_encoder", variant, [f"T5 encoder blocks, vocab {vocab}"])
    if raw("model.layers.0.self_attn.") or raw("layers.0.self_attn."):
        visual = raw("visual.") or raw("model.visual.")
        return Identification(None, "text_encoder", "vision-language LLM" if visual else "LLM",
                              ["decoder-only transformer layers"])
    return None
