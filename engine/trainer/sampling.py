"""Samples while training: the optional [sample] table, rendered on rank 0 with the in-training weights.

No second copy of anything: the sample prompts are encoded once, before the text encoders are freed, and the
family's own diffusers pipeline class is built around the modules already loaded (the VAE, kept for this, and
the peft-wrapped denoiser being trained). The denoiser runs in eval mode under torch.no_grad and goes back to
train mode after. Each image is `samples/<step>_<n>.png` in the run folder with a JSON sidecar beside it, and a
`[dpdeck] {"event": "sample", ...}` line (engine/jobs/progress.py) says it exists.

Which values are valid is profiles/rules/sample.py's (shared with `dpdeck profile validate`); what each family
passes its pipeline is the FAMILY_PIPELINES table below.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.trainer import flow, report
from engine.trainer.config import TrainConfigError
from engine.trainer.family import Family
from profiles.rules import sample as spec

SAMPLES_DIR = "samples"
# Peak memory of an fp32 VAE decode per output pixel (the last up-block's 128-256 channels at full size, a few
# tensors live at once): 1024x1024 is ~6 GiB. An estimate for refusing hopeless sizes, not a promise.
DECODE_BYTES_PER_PIXEL = 6 * 1024
# The share of the device a sample decode may need; the rest holds weights, optimizer state, activations.
DECODE_SHARE = 0.5


class SampleConfigError(TrainConfigError):
    """A [sample] table the trainer cannot render: the message names the file, the key and the expectation."""


@dataclass(frozen=True)
class SampleSettings:
    prompts: tuple[str, ...]
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    every_n_steps: int | None
    every_n_epochs: int | None
    before_first_step: bool

    def due_after_step(self, step: int) -> bool:
        return bool(self.every_n_steps) and step % (self.every_n_steps or 1) == 0

    def due_after_epoch(self, epoch: int) -> bool:
        return bool(self.every_n_epochs) and epoch % (self.every_n_epochs or 1) == 0


def load_sample_settings(
    main: dict[str, Any], model_type: str, main_path: Path, default_seed: int
) -> SampleSettings | None:
    """The [sample] table of a main profile as settings; None when there is none. Bad values raise."""
    table = main.get(spec.TABLE)
    if table is None:
        return None
    if model_type not in FAMILY_PIPELINES:
        raise SampleConfigError(
            f"{main_path}: sample: samples while training are not built in for model.type {model_type!r} yet "
            f"(they are for {', '.join(FAMILY_PIPELINES)}); remove [sample]"
        )
    problems = spec.issues(table, model_type)
    if problems:
        first = problems[0]
        found = f" (found {first.found!r})" if first.found is not None else ""
        expected = f"; expected {first.expected}" if first.expected else ""
        raise SampleConfigError(f"{main_path}: {first.key}: {first.message}{found}{expected}")
    size, steps, guidance = spec.DEFAULTS[model_type]
    return SampleSettings(
        prompts=tuple(table["prompts"]),
        negative_prompt=str(table.get("negative_prompt", "")),
        width=int(table.get("width", size)),
        height=int(table.get("height", size)),
        steps=int(table.get("steps", steps)),
        guidance=float(table.get("guidance", guidance)),
        seed=int(table.get("seed", default_seed)),
        every_n_steps=table.get("every_n_steps"),
        every_n_epochs=table.get("every_n_epochs"),
        before_first_step=bool(table.get("before_first_step", False)),
    )


def decode_bytes(settings: SampleSettings) -> int:
    return settings.width * settings.height * DECODE_BYTES_PER_PIXEL


def check_fits(settings: SampleSettings, main_path: Path, device_bytes: int | None) -> None:
    """Refuse a sample size whose VAE decode alone would need more than its share of the device; called before
    the model is loaded, so the error comes before any GPU memory is taken. None: a CPU run (no check)."""
    if device_bytes is None:
        return
    need = decode_bytes(settings)
    if need > DECODE_SHARE * device_bytes:
        gib = 2**30
        raise SampleConfigError(
            f"{main_path}: sample.width/sample.height: a {settings.width}x{settings.height} sample needs about "
            f"{need / gib:.1f} GiB to decode, more than {DECODE_SHARE:.0%} of this GPU's "
            f"{device_bytes / gib:.1f} GiB (the rest holds the model and training); use a smaller size "
            "or remove [sample]"
        )


# ---- per-family pipeline knowledge --------------------------------------------------------------------------
Text = dict[str, torch.Tensor]


def _embeds(args: dict[str, str], negative: bool = True) -> Callable[[Text, Text | None], dict[str, Any]]:
    """The pipeline call's embedding arguments from cached prompt tensors, {argument: cache key}; the negative
    prompt's go to the same arguments prefixed `negative_`, as every pipeline here names them."""

    def call(text: Text, neg: Text | None) -> dict[str, Any]:
        out = {arg: text[key] for arg, key in args.items()}
        if negative and neg is not None:
            out |= {f"negative_{arg}": neg[key] for arg, key in args.items()}
        return out

    return call


def _qwen_kwargs(text: Text, negative: Text | None) -> dict[str, Any]:
    def real(embeds: torch.Tensor) -> torch.Tensor:
        # A batch of one is cached at its own length, so every token is real (the pipeline drops an all-ones mask).
        return torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)

    out = {"prompt_embeds": text["prompt_embeds"], "prompt_embeds_mask": real(text["prompt_embeds"])}
    if negative is not None:
        out["negative_prompt_embeds"] = negative["prompt_embeds"]
        out["negative_prompt_embeds_mask"] = real(negative["prompt_embeds"])
    return out


@dataclass(frozen=True)
class PipelineSpec:
    # cached prompt tensors (+ the negative prompt's, when used) -> the pipeline call's embedding arguments
    call_kwargs: Callable[[Text, Text | None], dict[str, Any]]
    # the denoiser's argument name in the pipeline constructor
    denoiser: str
    # constructor arguments beyond the modules (defaults that would need a part we never load)
    extra: dict[str, Any]
    # whether the pipeline needs the negative prompt's embeddings even when it is "" (else it would tokenize
    # "" itself, and the tokenizers are gone); SDXL zeroes an empty negative itself (force_zeros_for_empty_prompt)
    encode_empty_negative: bool
    # whether the pipeline's latents come out packed in 2x2 patches (Flux, Chroma) rather than (B, C, h, w)
    packed: bool = False
    # the pipeline call's argument that takes [sample] guidance (QwenImagePipeline's cfg is `true_cfg_scale`;
    # its `guidance_scale` is for guidance-distilled transformers only)
    guidance_arg: str = "guidance_scale"
    # whether the VAE is a video VAE taking (B, C, frames, h, w): an image is its one frame (Qwen-Image)
    frames: bool = False


FAMILY_PIPELINES: dict[str, PipelineSpec] = {
    "sd15": PipelineSpec(
        _embeds({"prompt_embeds": "encoder_hidden_states"}), "unet", {"requires_safety_checker": False}, True
    ),
    "sdxl": PipelineSpec(
        _embeds({"prompt_embeds": "encoder_hidden_states", "pooled_prompt_embeds": "text_embeds"}),
        "unet",
        {},
        False,
    ),
    "sd3": PipelineSpec(
        _embeds({"prompt_embeds": "encoder_hidden_states", "pooled_prompt_embeds": "pooled_projections"}),
        "transformer",
        {},
        True,
    ),
    "flux": PipelineSpec(
        # Flux takes no negative prompt (validation refuses one).
        _embeds(
            {"prompt_embeds": "encoder_hidden_states", "pooled_prompt_embeds": "pooled_projections"},
            negative=False,
        ),
        "transformer",
        {},
        False,
        packed=True,
    ),
    "chroma": PipelineSpec(
        _embeds({"prompt_embeds": "encoder_hidden_states", "prompt_attention_mask": "attention_mask"}),
        "transformer",
        {},
        True,
        packed=True,
    ),
    # An empty negative prompt is encoded, not left out: without negative embeddings QwenImagePipeline skips
    # cfg altogether, whatever true_cfg_scale says (ComfyUI's Qwen-Image workflows run cfg on an empty negative).
    "qwen_image": PipelineSpec(
        _qwen_kwargs, "transformer", {}, True, packed=True, guidance_arg="true_cfg_scale", frames=True
    ),
    "lumina_2": PipelineSpec(
        # Embeddings passed in, so the pipeline never applies its system prompt: the prompts are encoded as the
        # captions were (engine/trainer/lumina2.py, diffusion-pipe's way: no system prompt).
        _embeds(
            {"prompt_embeds": "encoder_hidden_states", "prompt_attention_mask": "encoder_attention_mask"}
        ),
        "transformer",
        {},
        True,
    ),
}


def _scheduler(family: Family) -> Any:
    """The sampling scheduler: Euler over the training schedule (DDPM families) or the folder's flow-matching
    scheduler (flow families; one without a diffusers folder, as lumina_2, names its own settings)."""
    if family.schedule == "flow":
        from diffusers import FlowMatchEulerDiscreteScheduler

        root = Path(str(family.cfg.get("diffusers_path", ""))).expanduser()
        if family.cfg.get("diffusers_path") and (root / "scheduler" / "scheduler_config.json").is_file():
            return FlowMatchEulerDiscreteScheduler.from_pretrained(root, subfolder="scheduler")
        return FlowMatchEulerDiscreteScheduler(**getattr(family, "sample_scheduler", {}))
    from diffusers import EulerDiscreteScheduler

    from engine.trainer.ddpm import DEFAULTS, schedule_of, scheduler_config

    config, _ = scheduler_config(family.cfg)
    schedule = schedule_of(family.cfg)
    merged = {**DEFAULTS, **config}
    merged["prediction_type"] = "v_prediction" if schedule.v_pred else "epsilon"
    merged["rescale_betas_zero_snr"] = schedule.zero_terminal_snr
    if schedule.zero_terminal_snr:
        merged["timestep_spacing"] = "trailing"  # the last step must reach SNR 0 (Lin et al., 2023)
    return EulerDiscreteScheduler.from_config(merged)


def build_pipeline(family: Family, denoiser: torch.nn.Module) -> Any:
    """The family's diffusers pipeline around the loaded VAE and `denoiser`; text parts left out (None)."""
    pipe_spec = FAMILY_PIPELINES[family.name]
    cls = family._pipeline_cls()  # type: ignore[attr-defined]
    components: dict[str, Any] = {
        name: None
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.default is inspect.Parameter.empty
    }
    vae = getattr(family, "vae", None)
    if vae is None:
        raise RuntimeError("sampling needs the VAE: free_encoders() dropped it")
    components.update(vae=vae, scheduler=_scheduler(family), **pipe_spec.extra)
    components[pipe_spec.denoiser] = denoiser
    pipe = cls(**components)
    # Lumina2Pipeline fixes its factor at 8 (the Flux VAE's); a VAE of another depth would render at the wrong
    # size without a word, so say so here.
    if pipe.vae_scale_factor != family.vae_scale_factor:
        raise SampleConfigError(
            f"sample: {cls.__name__} assumes a VAE that downsamples {pipe.vae_scale_factor}x, but the loaded VAE "
            f"downsamples {family.vae_scale_factor}x; expected the family's standard VAE"
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _decode(pipe: Any, family: Family, latents: torch.Tensor, settings: SampleSettings) -> Any:
    """Latents -> a PIL image, decoded by the fp32 VAE (the pipelines would feed it bf16 latents)."""
    vae = pipe.vae
    pipe_spec = FAMILY_PIPELINES[family.name]
    if pipe_spec.packed:
        scale = pipe.vae_scale_factor
        latents = flow.unpack_latents(latents, settings.height // scale, settings.width // scale)
    latents = latents.to(vae.device, torch.float32)
    if pipe_spec.frames:
        latents = latents[:, :, None]  # one frame
    # A video VAE (Qwen-Image) has no scaling factor: its statistics alone normalise the latents.
    scaling = getattr(vae.config, "scaling_factor", None) or 1.0
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:  # VAEs that carry latent statistics (SDXL-style, Qwen-Image)
        shape = (1, len(mean)) + (1,) * (latents.ndim - 2)
        mean_t = torch.tensor(mean).view(shape).to(latents)
        std_t = torch.tensor(std).view(shape).to(latents)
        latents = latents * std_t / scaling + mean_t
    else:
        latents = latents / scaling + (getattr(vae.config, "shift_factor", None) or 0.0)
    image = vae.decode(latents, return_dict=False)[0]
    if pipe_spec.frames:
        image = image[:, :, 0]
    return pipe.image_processor.postprocess(image, output_type="pil")[0]


class Sampler:
    """Encodes the prompts once (before the encoders go) and renders them at the steps asked for."""

    def __init__(self, family: Family, settings: SampleSettings, reencode: bool = False) -> None:
        """reencode: the text encoders train (text-encoder LoRA) and stay loaded, so each render encodes the
        prompts again with them as they are; otherwise the prompts are encoded once, before they are freed."""
        if family.name not in FAMILY_PIPELINES:
            raise SampleConfigError(f"sample: no sampling pipeline for model.type {family.name!r}")
        self.family = family
        self.settings = settings
        self.spec = FAMILY_PIPELINES[family.name]
        self.texts: list[Text] = []
        self.negative: Text | None = None
        self.pipe: Any = None
        self.reencode = reencode

    def uses_negative(self) -> bool:
        return spec.USES_NEGATIVE[self.family.name] and (
            bool(self.settings.negative_prompt) or self.spec.encode_empty_negative
        )

    def encode(self) -> None:
        """Run the text encoders on the prompts (and negative prompt) now, while they are still loaded."""
        prompts = list(self.settings.prompts)
        if self.uses_negative():
            prompts.append(self.settings.negative_prompt)
        encoded = self.family.encode_prompts(prompts)
        self.texts = encoded[: len(self.settings.prompts)]
        self.negative = encoded[len(self.settings.prompts)] if self.uses_negative() else None

    def _encode_in_eval_mode(self) -> None:
        """Encode with the training text encoders, LoRA dropout off, then give them back their mode."""
        encoders = [e for e in self.family.text_encoders() if e is not None]  # type: ignore[attr-defined]
        modes = [e.training for e in encoders]
        for e in encoders:
            e.eval()
        try:
            self.encode()
        finally:
            for e, mode in zip(encoders, modes, strict=True):
                e.train(mode)

    def _on_device(self, text: Text | None) -> Text | None:
        if text is None:
            return None
        fam = self.family
        # A batch of one: the cached entry with a batch axis (no padding to agree on).
        return {
            k: v.unsqueeze(0).to(fam.device, fam.dtype if v.is_floating_point() else v.dtype)
            for k, v in text.items()
        }

    @torch.no_grad()
    def render(self, denoiser: torch.nn.Module, step: int, epoch: int, run_dir: Path) -> list[Path]:
        """Every prompt at this step; writes PNG + JSON sidecar and emits one `sample` event per image."""
        if not self.texts:
            raise RuntimeError("Sampler.render before Sampler.encode")
        s = self.settings
        if self.reencode:
            self._encode_in_eval_mode()
        if self.pipe is None:
            self.pipe = build_pipeline(self.family, denoiser)
        out_dir = run_dir / SAMPLES_DIR
        was_training = denoiser.training
        denoiser.eval()
        paths: list[Path] = []
        try:
            for n in range(len(self.texts)):
                t0 = time.monotonic()
                latents = self.latents(n)
                image = _decode(self.pipe, self.family, latents, s)
                paths.append(self._write(image, out_dir, step, epoch, n, time.monotonic() - t0))
        finally:
            denoiser.train(was_training)
        return paths

    @torch.no_grad()
    def latents(self, n: int) -> torch.Tensor:
        """Prompt n's final latents, as the pipeline returns them (packed for Flux-style families); render()
        decodes them. Needs the pipeline render() builds, with the denoiser in the mode it should run in."""
        if self.pipe is None:
            raise RuntimeError("Sampler.latents before Sampler.render")
        s = self.settings
        kwargs = self.spec.call_kwargs(self._on_device(self.texts[n]) or {}, self._on_device(self.negative))
        # A CPU generator: the same seed gives the same start noise on any device.
        gen = torch.Generator().manual_seed(s.seed)
        latents: torch.Tensor = self.pipe(
            width=s.width,
            height=s.height,
            num_inference_steps=s.steps,
            generator=gen,
            **{self.spec.guidance_arg: s.guidance},
            output_type="latent",
            **kwargs,
        ).images
        return latents

    def _write(self, image: Any, out_dir: Path, step: int, epoch: int, n: int, seconds: float) -> Path:
        s = self.settings
        sidecar = {
            "step": step,
            "epoch": epoch,
            "index": n,
            "prompt": s.prompts[n],
            "negative_prompt": s.negative_prompt if spec.USES_NEGATIVE[self.family.name] else None,
            "seed": s.seed,
            "width": s.width,
            "height": s.height,
            "steps": s.steps,
            "guidance": s.guidance,
            "model_type": self.family.name,
            "seconds": round(seconds, 3),
            "time": time.time(),
        }
        return write_sample(out_dir, image, sidecar)


def write_sample(out_dir: Path, image: Any, sidecar: dict[str, Any]) -> Path:
    """`<step>_<index>.png` and its JSON sidecar in `out_dir`, then the `sample` event line."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{sidecar['step']}_{sidecar['index']}.png"
    # Sidecar first, each file renamed into place: a reader that finds the PNG finds whole files.
    _replace_with(png.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(sidecar, indent=1)))
    _replace_with(png, lambda tmp: image.save(tmp, format="PNG"))
    report.emit(
        "sample",
        path=str(png.resolve()),
        step=sidecar["step"],
        epoch=sidecar["epoch"],
        index=sidecar["index"],
        prompt=sidecar["prompt"],
        width=image.width,
        height=image.height,
    )
    return png


def _replace_with(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)
