"""Lumina Image 2.0 family: Lumina2Transformer2DModel + Gemma 2 2B text encoder + Flux's 16-channel VAE.

Profile keys as diffusion-pipe's models/lumina_2.py reads them: three single files in ComfyUI's layout,
`transformer_path` (the NextDiT, optionally with ComfyUI's `model.diffusion_model.` prefix), `llm_path` (Gemma 2 2B
as ComfyUI ships it: `model.`-prefixed Gemma2Model weights plus its SentencePiece model in a `spiece_model` byte
tensor) and `vae_path` (Flux's original-layout VAE); `lumina_shift` and the flow keys of engine.trainer.flow.

diffusion-pipe takes each file's config from its own checkout (configs/gemma_2_2b, configs/flux_vae, the 2B NextDiT
class); here they are data below (LUMINA2_CONFIG, GEMMA2_2B_CONFIG, FLUX_VAE_CONFIG), with the sizes a file can
vary in (width, depth, head counts, vocabulary) read from its safetensors header, so a file of another size
loads or fails naming what it holds. Its tokenizer (configs/gemma_2_2b there) comes from the llm file's own
`spiece_model`, converted by transformers' GemmaTokenizer: no hub access.

Training as diffusion-pipe: Gemma's second-to-last hidden state over 256 tokens padded right, with the mask;
t = noise amount as engine.trainer.flow draws it; the transformer sees 1 - t and predicts latents - noise,
negated here into the loop's velocity noise - latents (as Lumina2Pipeline negates it before its scheduler).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from engine.trainer.family import ModelLoadError, detect_single_file_family, file_identity
from engine.trainer.flow_family import FlowFamily
from engine.trainer.flux import write_config_folder

# Alpha-VLLM/Lumina-Image-2.0 transformer/config.json (= diffusion-pipe's NextDiT_2B_GQA_patch2_Adaln_Refiner).
LUMINA2_CONFIG: dict[str, Any] = {
    "_class_name": "Lumina2Transformer2DModel",
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": None,
    "hidden_size": 2304,
    "num_layers": 26,
    "num_refiner_layers": 2,
    "num_attention_heads": 24,
    "num_kv_heads": 8,
    "multiple_of": 256,
    "ffn_dim_multiplier": None,
    "norm_eps": 1e-5,
    "scaling_factor": 1.0,
    "axes_dim_rope": [32, 32, 32],
    "axes_lens": [300, 512, 512],
    "cap_feat_dim": 2304,
}
# How Lumina 2 is sampled: ComfyUI's supported_models.Lumina2 sampling_settings (shift 6.0, multiplier 1.0), a
# fixed shift t' = 6t / (1 + 5t), which is FlowMatchEulerDiscreteScheduler's static `shift`. The files carry no
# scheduler config, so [sample] renders take it from here (engine/trainer/sampling.py).
LUMINA2_SAMPLE_SCHEDULER: dict[str, Any] = {"shift": 6.0, "use_dynamic_shifting": False}
# google/gemma-2-2b config.json (diffusion-pipe's configs/gemma_2_2b).
GEMMA2_2B_CONFIG: dict[str, Any] = {
    "model_type": "gemma2",
    "vocab_size": 256000,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "final_logit_softcapping": 30.0,
    "attn_logit_softcapping": 50.0,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 2,
}
# black-forest-labs FLUX.1 vae/config.json (diffusion-pipe's configs/flux_vae).
FLUX_VAE_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
MAX_TEXT_TOKENS = 256  # diffusion-pipe's and Lumina2Pipeline's Gemma length
COMFY_PREFIX = "model.diffusion_model."  # ComfyUI's all-in-one checkpoints; diffusion-pipe strips it too
GEMMA_PREFIX = "model."  # diffusion-pipe reads state_dict['model.' + Gemma2Model parameter name]
SPIECE_KEY = "spiece_model"
# diffusion-pipe trains every Linear of its JointTransformerBlocks: the main stack and both refiners.
BLOCK_PREFIXES = ("layers.", "noise_refiner.", "context_refiner.")


def _header(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, read from the safetensors header (no weights loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: list(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not a usable safetensors file"
        raise ModelLoadError(f"{path}: cannot read as safetensors ({exc})") from exc


def _count(shapes: dict[str, list[int]], prefix: str) -> int:
    """How many numbered children `prefix.N.` the keys name."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return len({m[1] for k in shapes if (m := pattern.match(k))})


def _need(shapes: dict[str, list[int]], key: str, where: str, what: str) -> list[int]:
    if key not in shapes:
        raise ModelLoadError(f"{where}: no tensor {key!r}; expected {what}")
    return shapes[key]


def transformer_config(shapes: dict[str, list[int]], path: Path) -> dict[str, Any]:
    """LUMINA2_CONFIG with the sizes an original-layout file holds (keys without the ComfyUI prefix)."""
    where = f"model.transformer_path: {path}"
    what = "a Lumina 2 NextDiT in ComfyUI / original layout"
    hidden, patch_in = _need(shapes, "x_embedder.weight", where, what)
    head_dim = _need(shapes, "layers.0.attention.q_norm.weight", where, what)[0]
    qkv = _need(shapes, "layers.0.attention.qkv.weight", where, what)[0]
    if head_dim != sum(LUMINA2_CONFIG["axes_dim_rope"]):
        raise ModelLoadError(
            f"{where}: attention heads {head_dim} wide; Lumina 2's are {sum(LUMINA2_CONFIG['axes_dim_rope'])} "
            "(is this another NextDiT, e.g. Z-Image?)"
        )
    patch = LUMINA2_CONFIG["patch_size"]
    return {
        **LUMINA2_CONFIG,
        "hidden_size": hidden,
        "in_channels": patch_in // (patch * patch),
        "num_attention_heads": hidden // head_dim,
        "num_kv_heads": (qkv - hidden) // (2 * head_dim),
        "num_layers": _count(shapes, "layers"),
        "num_refiner_layers": _count(shapes, "noise_refiner"),
        "cap_feat_dim": _need(shapes, "cap_embedder.1.weight", where, what)[1],
    }


def gemma_config(shapes: dict[str, list[int]], path: Path) -> dict[str, Any]:
    """GEMMA2_2B_CONFIG with the sizes a ComfyUI Gemma file holds (`model.`-prefixed keys)."""
    where = f"model.llm_path: {path}"
    what = "Gemma 2 weights as ComfyUI ships them (model.embed_tokens, model.layers.N...)"
    vocab, hidden = _need(shapes, "model.embed_tokens.weight", where, what)
    head = GEMMA2_2B_CONFIG["head_dim"]
    q = _need(shapes, "model.layers.0.self_attn.q_proj.weight", where, what)[0]
    k = _need(shapes, "model.layers.0.self_attn.k_proj.weight", where, what)[0]
    return {
        **GEMMA2_2B_CONFIG,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": _need(shapes, "model.layers.0.mlp.gate_proj.weight", where, what)[0],
        "num_hidden_layers": _count(shapes, "model.layers"),
        "num_attention_heads": q // head,
        "num_key_value_heads": k // head,
    }


def vae_config(shapes: dict[str, list[int]], path: Path) -> dict[str, Any]:
    """FLUX_VAE_CONFIG with the widths an original-layout (encoder.down.N.block.M) VAE file holds."""
    where = f"model.vae_path: {path}"
    what = "Flux's VAE in its original layout (encoder.down.N.block.M...)"
    levels = _count(shapes, "encoder.down")
    if not levels:
        _need(shapes, "encoder.down.0.block.0.conv1.weight", where, what)
    widths = [_need(shapes, f"encoder.down.{i}.block.0.conv1.weight", where, what)[0] for i in range(levels)]
    return {
        **FLUX_VAE_CONFIG,
        "block_out_channels": widths,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "layers_per_block": _count(shapes, "encoder.down.0.block"),
        "latent_channels": _need(shapes, "encoder.conv_out.weight", where, what)[0] // 2,
        "use_quant_conv": "quant_conv.weight" in shapes,
        "use_post_quant_conv": "post_quant_conv.weight" in shapes,
    }


def original_to_diffusers(sd: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """An original-layout NextDiT state dict in diffusers' Lumina2Transformer2DModel names.

    diffusers' own converter does the renaming; its fused-qkv split is hard-wired to the 2B model's widths, so
    qkv is split first by the config's head counts (rows q, then k, then v, as that converter reads them).
    """
    from diffusers.loaders.single_file_utils import convert_lumina2_to_diffusers

    head = config["hidden_size"] // config["num_attention_heads"]
    sizes = [config["hidden_size"], config["num_kv_heads"] * head, config["num_kv_heads"] * head]
    split: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        if key.endswith(".attention.qkv.weight"):
            for name, part in zip(("to_q", "to_k", "to_v"), torch.split(tensor, sizes, dim=0), strict=True):
                split[key.replace(".qkv.", f".{name}.")] = part
        else:
            split[key] = tensor
    converted: dict[str, torch.Tensor] = convert_lumina2_to_diffusers(split)  # type: ignore[no-untyped-call]
    return converted


class Lumina2(FlowFamily):
    name = "lumina_2"
    # diffusion_model.<NextDiT key>, q/k/v fused into attention.qkv as ComfyUI and diffusion-pipe hold it.
    comfy_layout = "lumina_2"
    pipeline_class_name = "Lumina2Pipeline"
    block_prefixes = BLOCK_PREFIXES
    sample_scheduler = LUMINA2_SAMPLE_SCHEDULER

    def __init__(self, model_cfg: dict[str, Any], dtype: torch.dtype, device: torch.device) -> None:
        super().__init__(model_cfg, dtype, device)
        self.text_encoder: Any = None
        self.tokenizer: Any = None

    def _pipeline_cls(self) -> Any:
        from diffusers import Lumina2Pipeline

        return Lumina2Pipeline

    # ---- checks and loading ------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        raw = self.cfg.get(key)
        if not raw:
            raise ModelLoadError(f"model.{key}: required for lumina_2 (a single .safetensors file)")
        path = Path(raw).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"model.{key}: {path} is not a file")
        return path

    def check_family(self) -> None:
        path = self._path("transformer_path")
        found = detect_single_file_family(path)
        if found != self.name:
            raise ModelLoadError(
                f"model.type = 'lumina_2' but model.transformer_path {path} holds a {found} transformer; "
                "fix model.type or the path"
            )
        llm = self._path("llm_path")
        shapes = _header(llm)
        if (
            "model.embed_tokens.weight" not in shapes
            or "model.layers.0.self_attn.q_proj.weight" not in shapes
        ):
            raise ModelLoadError(
                f"model.llm_path: {llm} is not a Gemma 2 text encoder file (found {detect_single_file_family(llm)}); "
                "expected ComfyUI's gemma_2_2b file (model.embed_tokens..., model.layers.N...)"
            )
        if SPIECE_KEY not in shapes:
            raise ModelLoadError(
                f"model.llm_path: {llm} carries no '{SPIECE_KEY}' tensor (the Gemma tokenizer ComfyUI's "
                "gemma_2_2b files ship); use the ComfyUI text encoder file"
            )
        vae = self._path("vae_path")
        vae_cfg = vae_config(_header(vae), vae)
        if vae_cfg["latent_channels"] != LUMINA2_CONFIG["in_channels"]:
            raise ModelLoadError(
                f"model.vae_path: {vae} has {vae_cfg['latent_channels']} latent channels; Lumina 2 uses Flux's "
                f"{LUMINA2_CONFIG['in_channels']}-channel VAE"
            )

    def load(self) -> None:
        self.check_family()
        self.vae = self._load_vae(self._path("vae_path"))
        self._load_text(self._path("llm_path"))
        self.transformer = self._load_transformer(self._path("transformer_path"))
        self.unet = self.transformer  # the loop's name for the denoiser
        self.vae.requires_grad_(False).to(self.device)
        self.transformer.requires_grad_(False)
        self.text_encoder.requires_grad_(False).to(self.device, dtype=self.dtype)

    def _load_vae(self, path: Path) -> Any:
        from diffusers import AutoencoderKL

        config = write_config_folder(vae_config(_header(path), path))
        try:
            return AutoencoderKL.from_single_file(str(path), config=str(config), torch_dtype=torch.float32)
        except Exception as exc:  # noqa: BLE001 - surface the path with the converter's reason
            raise ModelLoadError(f"model.vae_path: {path}: from_single_file failed ({exc})") from exc

    def _load_text(self, path: Path) -> None:
        from accelerate import init_empty_weights
        from safetensors.torch import load_file
        from transformers import Gemma2Config, Gemma2Model

        shapes = _header(path)
        config = Gemma2Config(**gemma_config(shapes, path))
        sd = load_file(str(path))
        self.tokenizer = _gemma_tokenizer(sd.pop(SPIECE_KEY), path)
        weights = {k[len(GEMMA_PREFIX) :]: v for k, v in sd.items() if k.startswith(GEMMA_PREFIX)}
        # As diffusion-pipe: no random init of a 2.6B model before the real weights.
        with init_empty_weights():
            model = Gemma2Model(config)
        _assign(model, weights, "model.llm_path", path)
        self.text_encoder = model.requires_grad_(False)
        self.text_encoder.train(False)

    def _load_transformer(self, path: Path) -> torch.nn.Module:
        from accelerate import init_empty_weights
        from diffusers import Lumina2Transformer2DModel
        from safetensors.torch import load_file

        sd = load_file(str(path))
        if any(k.startswith(COMFY_PREFIX) for k in sd):
            # A ComfyUI checkpoint (the all-in-one file holds the VAE and Gemma too): its transformer part only,
            # as diffusion-pipe takes it.
            sd = {k[len(COMFY_PREFIX) :]: v for k, v in sd.items() if k.startswith(COMFY_PREFIX)}
        if any(k.startswith("time_caption_embed.") for k in sd):
            raise ModelLoadError(
                f"model.transformer_path: {path} is in diffusers' layout; diffusion-pipe (and dpdeck) read the "
                "ComfyUI / original file (lumina_2_model_bf16.safetensors)"
            )
        config = transformer_config({k: list(v.shape) for k, v in sd.items()}, path)
        with init_empty_weights():
            model: torch.nn.Module = Lumina2Transformer2DModel.from_config(config)  # type: ignore[no-untyped-call]
        _assign(model, original_to_diffusers(sd, config), "model.transformer_path", path)
        return model.to(self.dtype)

    def text_encoders(self) -> list[torch.nn.Module]:
        return [self.text_encoder]

    def identity(self, part: str) -> str:
        if part == "vae":
            return file_identity(self._path("vae_path"))
        return f"{file_identity(self._path('llm_path'))}|{self.dtype}|{MAX_TEXT_TOKENS}"

    # ---- encoding ----------------------------------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 8

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        dist = self.vae.encode(pixels.to(self.device, torch.float32)).latent_dist
        # (z - shift_factor) * scaling_factor as diffusion-pipe; the mean (not a sample) keeps the cache
        # deterministic, as for Flux.
        latents: torch.Tensor = (dist.mean - self.vae.config.shift_factor) * self.vae.config.scaling_factor
        return latents.float().cpu()

    @torch.no_grad()
    def encode_prompts(self, captions: list[str]) -> list[dict[str, torch.Tensor]]:
        tokens = self.tokenizer(
            captions, padding="max_length", max_length=MAX_TEXT_TOKENS, truncation=True, return_tensors="pt"
        )
        mask = tokens.attention_mask.to(self.device)
        hidden = self.text_encoder(
            input_ids=tokens.input_ids.to(self.device), attention_mask=mask, output_hidden_states=True
        ).hidden_states[-2]
        return [
            {"encoder_hidden_states": h.cpu(), "encoder_attention_mask": m.cpu()}
            for h, m in zip(hidden, mask, strict=True)
        ]

    def unet_kwargs(
        self, text: dict[str, torch.Tensor], image_meta: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        return {
            "encoder_hidden_states": text["encoder_hidden_states"].to(self.device, self.dtype),
            # integer: the transformer counts each caption's real tokens from it
            "encoder_attention_mask": text["encoder_attention_mask"].to(self.device, torch.long),
        }

    # ---- forward -----------------------------------------------------------------------------------------
    def denoise(
        self, model: Any, noisy: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any]
    ) -> torch.Tensor:
        out: torch.Tensor = model(
            hidden_states=noisy,
            timestep=(1 - t).to(noisy.dtype),  # Lumina's timestep runs from noise (0) to image (1)
            encoder_hidden_states=kwargs["encoder_hidden_states"],
            encoder_attention_mask=kwargs["encoder_attention_mask"],
        ).sample
        return -out


def _assign(model: torch.nn.Module, weights: dict[str, torch.Tensor], key: str, path: Path) -> None:
    """Load every parameter from `weights` into an empty-initialised model, or say what does not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = sorted(k for k in set(own) & set(weights) if tuple(own[k].shape) != tuple(weights[k].shape))
    if missing or unexpected or wrong:
        raise ModelLoadError(
            f"{key}: {path} does not fit the model its header describes (missing e.g. {missing[:3]}, "
            f"unexpected e.g. {unexpected[:3]}, other shapes e.g. {wrong[:3]})"
        )
    model.load_state_dict(weights, strict=True, assign=True)


def _gemma_tokenizer(spiece: torch.Tensor, path: Path) -> Any:
    """Gemma's tokenizer from the SentencePiece model bytes in a ComfyUI Gemma file, padded right."""
    from transformers import GemmaTokenizer

    folder = Path(tempfile.mkdtemp(prefix="dpdeck-gemma-tokenizer-"))
    (folder / "tokenizer.model").write_bytes(spiece.to(torch.uint8).numpy().tobytes())
    try:
        # The gemma-2-2b tokenizer's settings: <bos> first, no <eos>; diffusion-pipe pads on the right.
        tok = GemmaTokenizer.from_pretrained(str(folder), add_bos_token=True, add_eos_token=False)
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign spiece_model
        raise ModelLoadError(
            f"model.llm_path: {path}: its '{SPIECE_KEY}' is not a usable tokenizer ({exc})"
        ) from exc
    tok.padding_side = "right"
    return tok
