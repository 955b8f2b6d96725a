"""Pydantic models of diffusion-pipe's main config and dataset config, with diffusion-pipe's defaults.

Strict types (TOML has real types: `epochs = "10"` is a mistake diffusion-pipe would crash on later), but
an integer is accepted where a float is expected (`lr = 1`). Unknown keys are kept (`extra="allow"`): newer
diffusion-pipe versions add keys, and validation reports them as warnings instead of dropping them.
Semantic checks (paths, model types, optimizer names, ...) live in `profiles.rules`, run by `profiles.validate`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]

# `micro_batch_size_per_gpu = 4` or per resolution: `[[512, 4], [1024, 1]]`.
Pair = Annotated[list[PositiveInt], Field(min_length=2, max_length=2)]  # TOML has arrays, not tuples
BatchSize = PositiveInt | list[Pair]
# A resolution is a square side (512) or a (width, height) pair whose area counts.
Resolution = PositiveInt | Pair
# An aspect-ratio bucket is a width/height ratio or a (width, height) pair.
ArBucket = PositiveFloat | Pair
SizeBucket = Annotated[list[PositiveInt], Field(min_length=3, max_length=3)]  # (width, height, frames)


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True, defer_build=True)

    def extra_keys(self) -> list[str]:
        return sorted((self.model_extra or {}).keys())


class TextEncoderEntry(_Section):
    """One `[[model.text_encoders]]` entry of a ComfyUI-file model (z_image, flux2, ltx2, ...)."""

    path: str | list[str] | None = None
    paths: str | list[str] | None = None
    type: str


class ModelConfig(_Section):
    type: str
    dtype: str
    transformer_dtype: str | None = None
    diffusion_model_dtype: str | None = None
    timestep_sample_method: Literal["logit_normal", "uniform"] | None = None
    sigmoid_scale: float | None = None
    shift: float | None = None
    flux_shift: bool | None = None
    guidance: float = 1.0
    min_t: Annotated[float, Field(ge=0, le=1)] | None = None
    max_t: Annotated[float, Field(ge=0, le=1)] | None = None
    # Paths (which are required depends on the type: profiles.model_types).
    diffusers_path: str | None = None
    transformer_path: str | None = None
    checkpoint_path: str | None = None
    ckpt_path: str | None = None
    single_file_path: str | None = None
    vae_path: str | None = None
    llm_path: str | None = None
    clip_path: str | None = None
    text_encoder_path: str | None = None
    t5_path: str | None = None
    byt5_path: str | None = None
    llama3_path: str | None = None
    llm_adapter_path: str | None = None
    diffusion_model: str | None = None
    vae: str | None = None
    audio_vae: str | None = None
    text_encoder: str | None = None  # ltx2: one Gemma file (not a text_encoders list)
    text_encoders: list[TextEncoderEntry] | None = None
    merge_adapters: list[str] | None = None
    # Type-specific options.
    v_pred: bool | None = None
    min_snr_gamma: NonNegFloat | None = None
    debiased_estimation_loss: bool | None = None
    unet_lr: NonNegFloat | None = None
    text_encoder_lr: NonNegFloat | None = None
    text_encoder_1_lr: NonNegFloat | None = None
    text_encoder_2_lr: NonNegFloat | None = None
    bypass_guidance_embedding: bool | None = None
    first_frame_conditioning_p: Annotated[float, Field(ge=0, le=1)] | None = None
    lumina_shift: bool | None = None
    llama3_4bit: bool | None = None
    max_llama3_sequence_length: PositiveInt | None = None
    max_sequence_length: PositiveInt | None = None
    cache_text_embeddings: bool | None = None
    text_encoder_fp8: bool | None = None
    text_encoder_nf4: bool | None = None
    multiscale_loss_weight: NonNegFloat | None = None
    llm_adapter_lr: NonNegFloat | None = None
    self_attn_lr: NonNegFloat | None = None
    cross_attn_lr: NonNegFloat | None = None
    mlp_lr: NonNegFloat | None = None
    mod_lr: NonNegFloat | None = None
    cfg: float | None = None
    image_shift: float | None = None


class FuseAdapter(_Section):
    path: str
    weight: float = 1.0


class AdapterConfig(_Section):
    # Required by diffusion-pipe (train.py reads adapter['type']); the built-in trainer assumes 'lora'.
    type: Literal["lora", "lokr"] | None = None
    # diffusion-pipe's LoKr example uses `rank = 1e6` (full-matrix LoKr), hence float too.
    rank: Annotated[int, Field(ge=1)] | Annotated[float, Field(ge=1)]
    dtype: str | None = None  # defaults to [model] dtype
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0  # lora
    rank_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0  # lokr
    decompose_factor: int = -1  # lokr
    exclude_modules: list[str] | str | None = None  # peft's exclude_modules: names or one regex
    init_from_existing: str | None = None
    fuse_adapters: list[FuseAdapter] | None = None


class OptimizerConfig(_Section):
    """Keys other than `type` and `gradient_release` go to the optimizer class as keyword arguments."""

    type: str
    lr: NonNegFloat | None = None
    betas: list[float] | None = None
    weight_decay: NonNegFloat | None = None
    eps: NonNegFloat | None = None
    gradient_release: bool = False
    stabilize: bool | None = None
    beta2_half_life: PositiveFloat | None = None
    momentum: NonNegFloat | None = None


class MonitoringConfig(_Section):
    enable_wandb: bool = False
    wandb_api_key: str | None = None
    wandb_tracker_name: str | None = None
    wandb_run_name: str | None = None


class EvalDataset(_Section):
    name: str
    config: str


class MainConfig(_Section):
    output_dir: str
    dataset: str
    epochs: PositiveInt
    max_steps: PositiveInt | None = None
    micro_batch_size_per_gpu: BatchSize = 1
    image_micro_batch_size_per_gpu: BatchSize | None = None
    pipeline_stages: PositiveInt = 1
    gradient_accumulation_steps: PositiveInt = 1
    gradient_clipping: NonNegFloat = 1.0
    warmup_steps: NonNegInt = 0
    force_constant_lr: NonNegFloat | None = None
    lr_scheduler: str = "constant"  # constant | linear | cosine (profiles.lr_schedulers)
    blocks_to_swap: NonNegInt = 0
    pseudo_huber_c: PositiveFloat | None = None
    huber_delta: PositiveFloat | None = None
    smooth_l1_beta: PositiveFloat | None = None
    uncond_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0
    seed: int | None = None
    # Eval.
    eval_datasets: list[EvalDataset | str] = Field(default_factory=list)
    eval_every_n_epochs: PositiveInt | None = None
    eval_every_n_steps: PositiveInt | None = None
    eval_every_n_examples: PositiveInt | None = None
    eval_before_first_step: bool = True
    eval_micro_batch_size_per_gpu: BatchSize | None = None
    eval_image_micro_batch_size_per_gpu: BatchSize | None = None
    eval_gradient_accumulation_steps: PositiveInt = 1
    disable_block_swap_for_eval: bool = False
    # Saving and checkpoints.
    save_every_n_epochs: PositiveInt | None = None
    save_every_n_steps: PositiveInt | None = None
    save_every_n_examples: PositiveInt | None = None
    checkpoint_every_n_epochs: PositiveInt | None = None
    checkpoint_every_n_steps: PositiveInt | None = None
    checkpoint_every_n_minutes: PositiveFloat | None = None
    save_dtype: str | None = None
    # Performance and misc.
    activation_checkpointing: bool | Literal["unsloth"] = False
    reentrant_activation_checkpointing: bool = False
    partition_method: str = "parameters"
    partition_split: list[PositiveInt] | None = None
    caching_batch_size: PositiveInt = 1
    map_num_proc: PositiveInt | None = None
    compile: bool = False
    steps_per_print: PositiveInt = 1
    logging_steps: PositiveInt = 1
    # models/base.py (8f83dbf): multiple_overlapping is commented out there, a NotImplementedError
    video_clip_mode: Literal["single_beginning", "single_middle"] = "single_beginning"
    x_axis_examples: bool = False
    resume_from_checkpoint: bool | str | None = None
    regenerate_cache: bool | None = None
    # Tables.
    model: ModelConfig
    adapter: AdapterConfig | None = None  # absent: full fine-tune
    optimizer: OptimizerConfig
    monitoring: MonitoringConfig | None = None


class _BucketKeys(_Section):
    """Keys a dataset file may set at the top level and override per `[[directory]]`."""

    resolutions: list[Resolution] | None = None
    enable_ar_bucket: bool | None = None
    ar_buckets: list[ArBucket] | None = None
    min_ar: PositiveFloat | None = None
    max_ar: PositiveFloat | None = None
    num_ar_buckets: PositiveInt | None = None
    frame_buckets: list[PositiveInt] | None = None
    size_buckets: list[SizeBucket] | None = None
    shuffle_tags: bool | None = None
    caption_prefix: str | None = None
    cache_shuffle_num: NonNegInt | None = None
    cache_shuffle_delimiter: str | None = None
    skip_empty_caption: bool | None = None
    shuffle_metadata: bool | None = None
    online_captions: bool | None = None


# diffusion-pipe 8f83dbf counts int(examples * num_repeats): a fraction is allowed.
Repeats = PositiveInt | PositiveFloat


class DirectoryConfig(_BucketKeys):
    path: str
    mask_path: str | None = None
    control_path: str | None = None
    default_mask_file: str | None = None  # the mask of every image without its own in mask_path
    num_repeats: Repeats = 1


class DatasetConfig(_BucketKeys):
    # Effective defaults, as diffusion-pipe applies them when a key is absent everywhere.
    enable_ar_bucket: bool | None = None
    num_repeats: Repeats | None = None
    subsample_ratio: PositiveFloat | None = None  # an epoch is int(steps * ratio) steps
    directory: Annotated[list[DirectoryConfig], Field(min_length=1)]


DATASET_DEFAULTS: dict[str, Any] = {
    "enable_ar_bucket": False,
    "frame_buckets": [1],
    "shuffle_tags": False,
    "caption_prefix": "",
    "cache_shuffle_num": 0,
    "cache_shuffle_delimiter": ", ",
    "skip_empty_caption": True,
    "num_repeats": 1,
    "shuffle_metadata": True,
    "online_captions": False,
}


def known_keys(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(model.model_fields)


def field_default(model: type[BaseModel], name: str) -> Any:
    """diffusion-pipe's default for a key (None when it has none)."""
    info = model.model_fields.get(name)
    if info is None:
        return DATASET_DEFAULTS.get(name)
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    default = info.default
    if default is None and name in DATASET_DEFAULTS:
        return DATASET_DEFAULTS[name]
    return default
