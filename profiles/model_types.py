"""The model types a profile can name, and which `[model]` keys each one needs.

Facts from diffusion-pipe's train.py, docs/supported_models.md, examples/*.toml and models/*.py. `sd15` is
dpdeck's own (the built-in trainer only; diffusion-pipe has no such type). Plain data, no heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

PathKind = Literal["file", "folder", "any"]  # "any": a file or a folder is fine

# The exact strings train.py dispatches on.
MODEL_TYPES: tuple[str, ...] = (
    "sdxl",
    "flux",
    "ltx-video",
    "hunyuan-video",
    "cosmos",
    "lumina_2",
    "wan",
    "chroma",
    "hidream",
    "sd3",
    "cosmos_predict2",
    "anima",
    "omnigen2",
    "qwen_image",
    "hunyuan_image",
    "auraflow",
    "z_image",
    "hunyuan_video_15",
    "flux2",
    "ernie_image",
    "ltx2",
    "ideogram4",
    "krea2",
    "minimax_h3",
)
DPDECK_ONLY_TYPES: frozenset[str] = frozenset({"sd15"})
BUILTIN_TYPES: frozenset[str] = frozenset({"sd15", "sdxl"})
ALL_TYPES: tuple[str, ...] = (*MODEL_TYPES, "sd15")

BACKENDS: tuple[str, ...] = ("diffusion-pipe", "builtin")

# Keys any model type may carry (train.py and models/base.py read them for every type).
COMMON_MODEL_KEYS: frozenset[str] = frozenset(
    {
        "type",
        "dtype",
        "transformer_dtype",
        "diffusion_model_dtype",
        "timestep_sample_method",
        "sigmoid_scale",
        "shift",
        "flux_shift",
        "guidance",
        "min_t",
        "max_t",
    }
)


@dataclass(frozen=True)
class ModelTypeSpec:
    """What one model type needs in `[model]`.

    `requires` lists alternatives: the profile must contain every key of at least one alternative
    (e.g. hunyuan-video: `ckpt_path`, or `transformer_path` + `vae_path` + `llm_path` + `clip_path`).
    `paths` names the keys that point at files or folders, and which of the two is expected.
    """

    name: str
    label: str
    requires: tuple[tuple[str, ...], ...]
    optional: frozenset[str] = frozenset()
    paths: dict[str, PathKind] = field(default_factory=dict)
    video: bool = False
    diffusion_pipe: bool = True

    @property
    def builtin(self) -> bool:
        return self.name in BUILTIN_TYPES

    @property
    def known_keys(self) -> frozenset[str]:
        keys = {k for alt in self.requires for k in alt}
        return frozenset(keys | set(self.optional) | set(self.paths) | COMMON_MODEL_KEYS)

    def missing(self, present: set[str]) -> tuple[str, ...] | None:
        """None when one alternative is complete, else what the closest alternative lacks.

        Closest = the one the user has started (most keys present), then the one lacking fewest keys.
        """
        best: tuple[tuple[int, int], tuple[str, ...]] | None = None
        for alt in self.requires:
            lacking = tuple(k for k in alt if k not in present)
            if not lacking:
                return None
            score = (-(len(alt) - len(lacking)), len(lacking))
            if best is None or score < best[0]:
                best = (score, lacking)
        return best[1] if best else None

    def requirement_text(self) -> str:
        """`a + b, or c` in words, for messages."""
        return ", or ".join(" + ".join(alt) for alt in self.requires)


# ComfyUI-file based models (models/base.py ComfyPipeline) all read the same three keys.
_COMFY_PATHS: dict[str, PathKind] = {"diffusion_model": "file", "vae": "file"}
_COMFY_REQUIRES: tuple[tuple[str, ...], ...] = (("diffusion_model", "vae", "text_encoders"),)
_COMFY_OPTIONAL = frozenset({"merge_adapters", "cfg", "image_shift"})


def _spec(
    name: str,
    label: str,
    requires: tuple[tuple[str, ...], ...],
    paths: dict[str, PathKind],
    optional: tuple[str, ...] = (),
    video: bool = False,
    diffusion_pipe: bool = True,
) -> ModelTypeSpec:
    return ModelTypeSpec(name, label, requires, frozenset(optional), paths, video, diffusion_pipe)


_SPECS: tuple[ModelTypeSpec, ...] = (
    _spec(
        "sdxl",
        "Stable Diffusion XL (incl. Pony / Illustrious / NoobAI checkpoints)",
        (("checkpoint_path",), ("diffusers_path",)),
        {"checkpoint_path": "file", "diffusers_path": "folder"},
        (
            "v_pred",
            "min_snr_gamma",
            "debiased_estimation_loss",
            "unet_lr",
            "text_encoder_1_lr",
            "text_encoder_2_lr",
        ),
    ),
    _spec(
        "flux",
        "FLUX.1 (dev / schnell / Kontext / Flex)",
        (("diffusers_path",),),
        {"diffusers_path": "folder", "transformer_path": "file"},
        ("bypass_guidance_embedding",),
    ),
    _spec(
        "ltx-video",
        "LTX-Video",
        (("diffusers_path",),),
        {"diffusers_path": "folder", "single_file_path": "file"},
        ("first_frame_conditioning_p",),
        video=True,
    ),
    _spec(
        "hunyuan-video",
        "HunyuanVideo",
        (("ckpt_path",), ("transformer_path", "vae_path", "llm_path", "clip_path")),
        {
            "ckpt_path": "folder",
            "transformer_path": "file",
            "vae_path": "file",
            "llm_path": "folder",
            "clip_path": "folder",
        },
        video=True,
    ),
    _spec(
        "cosmos",
        "Cosmos (text2world)",
        (("transformer_path", "vae_path", "text_encoder_path"),),
        {"transformer_path": "file", "vae_path": "file", "text_encoder_path": "file"},
        video=True,
    ),
    _spec(
        "lumina_2",
        "Lumina Image 2.0",
        (("transformer_path", "llm_path", "vae_path"),),
        {"transformer_path": "file", "llm_path": "file", "vae_path": "file"},
        ("lumina_shift",),
    ),
    _spec(
        "wan",
        "Wan 2.1 / 2.2",
        (("ckpt_path",),),
        {"ckpt_path": "folder", "transformer_path": "any", "llm_path": "file", "clip_path": "file"},
        video=True,
    ),
    _spec(
        "chroma",
        "Chroma (Flux-schnell derived)",
        (("diffusers_path", "transformer_path"),),
        {"diffusers_path": "folder", "transformer_path": "file"},
    ),
    _spec(
        "hidream",
        "HiDream-I1",
        (("diffusers_path", "llama3_path"),),
        {"diffusers_path": "folder", "llama3_path": "folder"},
        ("llama3_4bit", "max_llama3_sequence_length"),
    ),
    _spec("sd3", "Stable Diffusion 3 / 3.5", (("diffusers_path",),), {"diffusers_path": "folder"}),
    _spec(
        "cosmos_predict2",
        "Cosmos-Predict2 (t2i)",
        (("transformer_path", "vae_path", "t5_path"),),
        {"transformer_path": "file", "vae_path": "file", "t5_path": "file"},
    ),
    _spec(
        "anima",
        "Anima",
        (("transformer_path", "vae_path", "qwen_path"),),
        {"transformer_path": "file", "vae_path": "file", "qwen_path": "folder"},
        (
            "cache_text_embeddings",
            "freeze_llm_adapter",
            "llm_adapter_lr",
            "load_to_cuda",
            "qwen_nf4",
            "qwen_fp8",
        ),
    ),
    _spec("omnigen2", "OmniGen2", (("diffusers_path",),), {"diffusers_path": "folder"}),
    _spec(
        "qwen_image",
        "Qwen-Image / Qwen-Image-Edit",
        (("diffusers_path",), ("transformer_path", "text_encoder_path", "vae_path")),
        {
            "diffusers_path": "folder",
            "transformer_path": "file",
            "text_encoder_path": "file",
            "vae_path": "file",
        },
    ),
    _spec(
        "hunyuan_image",
        "HunyuanImage 2.1",
        (("transformer_path", "vae_path", "text_encoder_path", "byt5_path"),),
        {"transformer_path": "file", "vae_path": "file", "text_encoder_path": "file", "byt5_path": "file"},
    ),
    _spec(
        "auraflow",
        "AuraFlow (incl. Pony V7)",
        (("transformer_path", "text_encoder_path", "vae_path"),),
        {"transformer_path": "file", "text_encoder_path": "file", "vae_path": "file"},
        ("max_sequence_length",),
    ),
    _spec("z_image", "Z-Image", _COMFY_REQUIRES, _COMFY_PATHS, tuple(_COMFY_OPTIONAL)),
    _spec(
        "hunyuan_video_15",
        "HunyuanVideo 1.5",
        _COMFY_REQUIRES,
        _COMFY_PATHS,
        tuple(_COMFY_OPTIONAL),
        video=True,
    ),
    _spec("flux2", "FLUX.2 (dev / klein)", _COMFY_REQUIRES, _COMFY_PATHS, tuple(_COMFY_OPTIONAL)),
    _spec("ernie_image", "ERNIE-Image", _COMFY_REQUIRES, _COMFY_PATHS, tuple(_COMFY_OPTIONAL)),
    _spec(
        "ltx2",
        "LTX-2 (video + audio)",
        _COMFY_REQUIRES,
        {**_COMFY_PATHS, "audio_vae": "file"},
        tuple(_COMFY_OPTIONAL),
        video=True,
    ),
    _spec("ideogram4", "Ideogram 4", _COMFY_REQUIRES, _COMFY_PATHS, tuple(_COMFY_OPTIONAL)),
    _spec("krea2", "Krea 2", _COMFY_REQUIRES, _COMFY_PATHS, tuple(_COMFY_OPTIONAL)),
    _spec(
        "minimax_h3",
        "MiniMax H3 (video + audio)",
        _COMFY_REQUIRES,
        {**_COMFY_PATHS, "audio_vae": "file"},
        tuple(_COMFY_OPTIONAL),
        video=True,
    ),
    _spec(
        "sd15",
        "Stable Diffusion 1.5 (dpdeck built-in trainer only)",
        (("diffusers_path",), ("checkpoint_path",)),
        {"diffusers_path": "folder", "checkpoint_path": "file"},
        ("v_pred", "min_snr_gamma", "unet_lr", "text_encoder_lr"),
        diffusion_pipe=False,
    ),
)

MODEL_SPECS: dict[str, ModelTypeSpec] = {spec.name: spec for spec in _SPECS}

# Flat views for code that only needs one facet.
REQUIRED_MODEL_KEYS: dict[str, tuple[tuple[str, ...], ...]] = {s.name: s.requires for s in _SPECS}
OPTIONAL_MODEL_KEYS: dict[str, frozenset[str]] = {s.name: s.optional for s in _SPECS}
MODEL_PATH_KEYS: dict[str, dict[str, PathKind]] = {s.name: dict(s.paths) for s in _SPECS}


def get_spec(model_type: str) -> ModelTypeSpec | None:
    return MODEL_SPECS.get(model_type)


def is_known(model_type: str) -> bool:
    return model_type in MODEL_SPECS


def backend_supports(backend: str, model_type: str) -> bool:
    """Can `backend` train `model_type`? (diffusion-pipe: its 24 types; builtin: sd15 and sdxl.)"""
    if backend == "builtin":
        return model_type in BUILTIN_TYPES
    if backend == "diffusion-pipe":
        return model_type in MODEL_TYPES
    return False


def default_backend(model_type: str) -> str:
    """The backend a profile of this type runs on when nothing else is said."""
    return "builtin" if model_type in DPDECK_ONLY_TYPES else "diffusion-pipe"
