"""The model types a profile can name, and which `[model]` keys each one needs.

Facts read from diffusion-pipe's train.py and models/*.py at UPSTREAM_COMMIT (which keys each type's code reads
by subscript, and where .get() alternatives exist); every key a checkout reads at all comes from
`profiles.dp_keys`. `sd15` is dpdeck's own (the built-in trainer only; diffusion-pipe has no such type).
Plain data, no heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

PathKind = Literal["file", "folder", "any"]  # "any": a file or a folder is fine

# The diffusion-pipe commit the per-type facts below were read from (tdrussell/diffusion-pipe, 2026-08-20).
UPSTREAM_COMMIT = "8f83dbf"

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
# The types dpdeck's built-in trainer has a family for (engine/trainer/families.py, held equal by a test).
BUILTIN_TYPES: frozenset[str] = frozenset({"sd15", "sdxl", "chroma", "flux", "sd3", "qwen_image", "lumina_2"})
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
    These are the keys upstream's `source` file reads by plain subscript on the path the config takes, read
    at commit `upstream`: without them diffusion-pipe stops with a KeyError. `builtin_requires`: the built-in
    trainer's own alternatives where it accepts more (sdxl from a diffusers folder); None = the same.
    `paths` names the keys that point at files or folders, and which of the two is expected.
    """

    name: str
    label: str
    requires: tuple[tuple[str, ...], ...]
    optional: frozenset[str] = frozenset()
    paths: dict[str, PathKind] = field(default_factory=dict)
    video: bool = False
    diffusion_pipe: bool = True
    builtin_requires: tuple[tuple[str, ...], ...] | None = None
    source: str = ""  # the upstream file these facts were read from ("" for dpdeck's own sd15)
    upstream: str = UPSTREAM_COMMIT

    @property
    def builtin(self) -> bool:
        return self.name in BUILTIN_TYPES

    def requirements(self, backend: str = "diffusion-pipe") -> tuple[tuple[str, ...], ...]:
        if backend == "builtin" and self.builtin_requires is not None:
            return self.builtin_requires
        return self.requires

    @property
    def known_keys(self) -> frozenset[str]:
        alternatives = (*self.requires, *(self.builtin_requires or ()))
        keys = {k for alt in alternatives for k in alt}
        return frozenset(keys | set(self.optional) | set(self.paths) | COMMON_MODEL_KEYS)

    def missing(self, present: set[str], backend: str = "diffusion-pipe") -> tuple[str, ...] | None:
        """None when one alternative is complete, else what the closest alternative lacks.

        Closest = the one the user has started (most keys present), then the one lacking fewest keys.
        """
        best: tuple[tuple[int, int], tuple[str, ...]] | None = None
        for alt in self.requirements(backend):
            lacking = tuple(k for k in alt if k not in present)
            if not lacking:
                return None
            score = (-(len(alt) - len(lacking)), len(lacking))
            if best is None or score < best[0]:
                best = (score, lacking)
        return best[1] if best else None

    def needs_builtin(self, present: set[str]) -> bool:
        """The keys given satisfy only the built-in trainer (sdxl from a diffusers folder)."""
        return (
            self.builtin_requires is not None
            and self.missing(present, "builtin") is None
            and self.missing(present) is not None
        )

    def requirement_text(self, backend: str = "diffusion-pipe") -> str:
        """`a + b, or c` in words, for messages."""
        return ", or ".join(" + ".join(alt) for alt in self.requirements(backend))


# ComfyUI-file based models (models/base.py ComfyPipeline.__init__ and load_diffusion_model) read these three;
# each [[model.text_encoders]] entry needs `path` or `paths`, and `type`.
_COMFY_PATHS: dict[str, PathKind] = {"diffusion_model": "file", "vae": "file"}
_COMFY_REQUIRES: tuple[tuple[str, ...], ...] = (("diffusion_model", "vae", "text_encoders"),)
_COMFY_OPTIONAL = ("merge_adapters",)
# models/cosmos_predict2.py serves cosmos_predict2 and anima alike: a T5 (t5_path) or a generic LLM (llm_path,
# a file or a folder; Anima's Qwen3) as the text encoder, else RuntimeError('Missing text encoder path').
_PREDICT2_REQUIRES: tuple[tuple[str, ...], ...] = (
    ("transformer_path", "vae_path", "t5_path"),
    ("transformer_path", "vae_path", "llm_path"),
)
_PREDICT2_PATHS: dict[str, PathKind] = {
    "transformer_path": "file",
    "vae_path": "file",
    "t5_path": "file",
    "llm_path": "any",
    "llm_adapter_path": "file",
}
_PREDICT2_OPTIONAL = (
    "cache_text_embeddings",
    "multiscale_loss_weight",
    "text_encoder_nf4",
    "text_encoder_fp8",
    "self_attn_lr",
    "cross_attn_lr",
    "mlp_lr",
    "mod_lr",
    "llm_adapter_lr",
)


def _spec(
    name: str,
    label: str,
    requires: tuple[tuple[str, ...], ...],
    paths: dict[str, PathKind],
    optional: tuple[str, ...] = (),
    video: bool = False,
    diffusion_pipe: bool = True,
    source: str = "",
    builtin_requires: tuple[tuple[str, ...], ...] | None = None,
) -> ModelTypeSpec:
    return ModelTypeSpec(
        name,
        label,
        requires,
        frozenset(optional),
        paths,
        video,
        diffusion_pipe,
        builtin_requires=builtin_requires,
        source=source or f"models/{name}.py",
    )


_SPECS: tuple[ModelTypeSpec, ...] = (
    _spec(
        "sdxl",
        "Stable Diffusion XL (incl. Pony / Illustrious / NoobAI checkpoints)",
        # upstream loads only a single-file checkpoint; the built-in trainer also reads a diffusers folder.
        (("checkpoint_path",),),
        {"checkpoint_path": "file", "diffusers_path": "folder"},
        (
            "v_pred",
            "min_snr_gamma",
            "debiased_estimation_loss",
            "unet_lr",
            "text_encoder_1_lr",
            "text_encoder_2_lr",
        ),
        builtin_requires=(("checkpoint_path",), ("diffusers_path",)),
    ),
    _spec(
        "flux",
        "FLUX.1 (dev / schnell / Kontext / Flex)",
        (("diffusers_path",),),  # transformer_path only overrides the transformer; the rest is the folder's
        {"diffusers_path": "folder", "transformer_path": "file"},
        ("bypass_guidance_embedding",),
    ),
    _spec(
        "ltx-video",
        "LTX-Video",
        (("diffusers_path", "single_file_path"),),  # the VAE and the transformer come from the single file
        {"diffusers_path": "folder", "single_file_path": "file"},
        ("first_frame_conditioning_p",),
        video=True,
        source="models/ltx_video.py",
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
        source="models/hunyuan_video.py",
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
        (("ckpt_path",),),  # transformer_path / llm_path override parts of the checkpoint folder
        {"ckpt_path": "folder", "transformer_path": "any", "llm_path": "file"},
        ("cache_text_embeddings", "text_encoder_fp8"),
        video=True,
        source="models/wan/wan.py",
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
    # sd3 and omnigen2 read diffusers_path with .get() but raise NotImplementedError without it.
    _spec("sd3", "Stable Diffusion 3 / 3.5", (("diffusers_path",),), {"diffusers_path": "folder"}),
    _spec(
        "cosmos_predict2",
        "Cosmos-Predict2 (t2i)",
        _PREDICT2_REQUIRES,
        _PREDICT2_PATHS,
        _PREDICT2_OPTIONAL,
    ),
    _spec(
        "anima",
        "Anima",
        _PREDICT2_REQUIRES[::-1],  # Anima's text encoder is a Qwen3 LLM: llm_path is the one to suggest
        _PREDICT2_PATHS,
        _PREDICT2_OPTIONAL,
        source="models/cosmos_predict2.py",
    ),
    _spec("omnigen2", "OmniGen2", (("diffusers_path",),), {"diffusers_path": "folder"}),
    _spec(
        "qwen_image",
        "Qwen-Image / Qwen-Image-Edit",
        # each of the three falls back to its subfolder of diffusers_path when absent
        (("diffusers_path",), ("transformer_path", "text_encoder_path", "vae_path")),
        {
            "diffusers_path": "folder",
            "transformer_path": "file",
            "text_encoder_path": "file",
            "vae_path": "file",
        },
        # the built-in trainer reads the tokenizer and the configs from diffusers_path (diffusion-pipe ships
        # them in its repo), so the three files alone are not enough there
        builtin_requires=(("diffusers_path",),),
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
        (("transformer_path", "text_encoder_path", "vae_path", "max_sequence_length"),),
        {"transformer_path": "file", "text_encoder_path": "file", "vae_path": "file"},
    ),
    _spec("z_image", "Z-Image", _COMFY_REQUIRES, _COMFY_PATHS, _COMFY_OPTIONAL),
    _spec(
        "hunyuan_video_15",
        "HunyuanVideo 1.5",
        _COMFY_REQUIRES,
        _COMFY_PATHS,
        _COMFY_OPTIONAL,
        video=True,
    ),
    _spec("flux2", "FLUX.2 (dev / klein)", _COMFY_REQUIRES, _COMFY_PATHS, _COMFY_OPTIONAL),
    _spec("ernie_image", "ERNIE-Image", _COMFY_REQUIRES, _COMFY_PATHS, _COMFY_OPTIONAL),
    _spec(
        "ltx2",
        "LTX-2 (video + audio)",
        # its own __init__: the VAE is read out of the diffusion_model checkpoint, one Gemma text_encoder file
        (("diffusion_model", "text_encoder"),),
        {"diffusion_model": "file", "text_encoder": "file"},
        _COMFY_OPTIONAL,
        video=True,
    ),
    _spec("ideogram4", "Ideogram 4", _COMFY_REQUIRES, _COMFY_PATHS, _COMFY_OPTIONAL),
    _spec("krea2", "Krea 2", _COMFY_REQUIRES, _COMFY_PATHS, _COMFY_OPTIONAL),
    _spec(
        "minimax_h3",
        "MiniMax H3 (video + audio)",
        ((*_COMFY_REQUIRES[0], "audio_vae"),),
        {**_COMFY_PATHS, "audio_vae": "file"},
        (*_COMFY_OPTIONAL, "cfg", "image_shift"),
        video=True,
    ),
    _spec(
        "sd15",
        "Stable Diffusion 1.5 (dpdeck built-in trainer only)",
        (("diffusers_path",), ("checkpoint_path",)),
        {"diffusers_path": "folder", "checkpoint_path": "file"},
        ("v_pred", "min_snr_gamma", "unet_lr", "text_encoder_lr"),
        diffusion_pipe=False,
        source="engine/trainer/sd15.py",
    ),
)

MODEL_SPECS: dict[str, ModelTypeSpec] = {spec.name: spec for spec in _SPECS}


def get_spec(model_type: str) -> ModelTypeSpec | None:
    return MODEL_SPECS.get(model_type)


def is_known(model_type: str) -> bool:
    return model_type in MODEL_SPECS


def backend_supports(backend: str, model_type: str) -> bool:
    """Can `backend` train `model_type`? (diffusion-pipe: its types; builtin: BUILTIN_TYPES.)"""
    if backend == "builtin":
        return model_type in BUILTIN_TYPES
    if backend == "diffusion-pipe":
        return model_type in MODEL_TYPES
    return False
