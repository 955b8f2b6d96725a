"""Samples while training ([sample], engine/trainer/sampling.py): settings and their errors, one render on tiny
models checked against diffusers' own pipelines, and one run under the real deepspeed launcher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomlkit
import torch
from PIL import Image
from tiny_models import (
    build_tiny_flux,
    build_tiny_sd15,
    launch_trainer,
    run_dir_of,
    write_profile,
)

from engine.jobs.progress import Progress, feed_line
from engine.jobs.samples import list_samples
from engine.trainer.config import TrainConfigError
from engine.trainer.lora_io import add_lora
from engine.trainer.sampling import (
    Sampler,
    SampleSettings,
    check_fits,
    load_sample_settings,
)
from profiles.document import load_profile
from profiles.validate import validate_profile

MAIN = Path("/profiles/main.toml")


def _settings(model_type: str = "sd15", **table: Any) -> SampleSettings | None:
    base: dict[str, Any] = {"prompts": ["a red cat"], "every_n_steps": 10}
    merged = {k: v for k, v in {**base, **table}.items() if v is not None}  # None: leave the key out
    return load_sample_settings({"sample": merged}, model_type, MAIN, 42)


# ---- settings ----------------------------------------------------------------------------------------------


def test_defaults_follow_the_family_and_the_run_seed() -> None:
    assert load_sample_settings({}, "sd15", MAIN, 1) is None
    s = _settings("sdxl")
    assert s is not None and (s.width, s.height, s.steps, s.seed, s.before_first_step) == (
        1024,
        1024,
        25,
        42,
        False,
    )
    s = _settings("sd15", every_n_steps=None, every_n_epochs=2, width=512, height=768, guidance=0)
    assert s is not None and (s.width, s.height, s.guidance) == (512, 768, 0.0)
    assert s.due_after_epoch(4) and not s.due_after_epoch(3) and not s.due_after_step(10)


@pytest.mark.parametrize(
    ("model_type", "table", "error"),
    [
        ("sd15", {"prompts": []}, r"main\.toml: sample\.prompts: at least one prompt .*found \[\]"),
        ("sd15", {"prompts": ["ok", "  "]}, r"sample\.prompts\[1\]: each prompt must be non-empty"),
        ("sd15", {"width": 500}, r"sample\.width: sd15 samples need a multiple of 8 .*found 500.*496 or 504"),
        ("flux", {"height": 1000}, r"sample\.height: flux samples need a multiple of 16"),
        ("flux", {"negative_prompt": "blurry"}, r"sample\.negative_prompt: flux samples use no negative"),
        ("sd15", {"every_n_steps": None}, r"sample\.every_n_steps: no sampling frequency"),
        ("sd15", {"steps": 0}, r"sample\.steps: out of range .*1 to 500"),
        ("sd15", {"width": 8192}, r"sample\.width: out of range"),
        ("sd15", {"height": 8}, r"sample\.height: out of range .*16 to 4096"),
        ("sd15", {"before_first_step": "yes"}, r"sample\.before_first_step: not a boolean"),
        ("qwen_image", {"width": 1000}, r"sample\.width: qwen_image samples need a multiple of 16"),
        ("lumina_2", {"height": 520}, r"sample\.height: lumina_2 samples need a multiple of 16"),
        ("wan", {}, r"sample: samples while training are not built in for model\.type 'wan'"),
    ],
)
def test_bad_sample_tables_name_file_key_and_expectation(
    model_type: str, table: dict[str, Any], error: str
) -> None:
    with pytest.raises(TrainConfigError, match=error):
        _settings(model_type, **table)


def test_a_sample_too_big_for_the_gpu_fails_before_loading() -> None:
    big = _settings("flux", width=4096, height=4096)
    assert big is not None
    with pytest.raises(TrainConfigError, match=r"4096x4096 sample needs about 96\.0 GiB .* 24\.0 GiB"):
        check_fits(big, MAIN, 24 * 2**30)
    check_fits(big, MAIN, None)  # a CPU run: host memory, not checked
    small = _settings("sdxl")
    assert small is not None
    check_fits(small, MAIN, 24 * 2**30)


def test_profile_validate_reports_the_same_errors_with_lines(tmp_path: Path) -> None:
    config = write_profile(
        tmp_path,
        model_type="sd15",
        model_dir=tmp_path,
        directories=[{"path": str(tmp_path)}],
        sample={"prompts": [], "width": 100, "every_n_steps": 5, "cfg": 7},
    )
    problems = validate_profile(load_profile(config), backend="builtin", check_paths="off")
    by_key = {p.key: p for p in problems}
    assert by_key["sample.prompts"].is_error and by_key["sample.prompts"].line
    assert by_key["sample.width"].is_error and "multiple of 8" in by_key["sample.width"].message
    assert not by_key["sample.cfg"].is_error and "unknown key" in by_key["sample.cfg"].message
    fixed = write_profile(
        tmp_path / "ok",
        model_type="sd15",
        model_dir=tmp_path,
        directories=[{"path": str(tmp_path)}],
        sample={"prompts": ["a cat"], "width": 96, "every_n_steps": 5},
    )
    keys = {p.key for p in validate_profile(load_profile(fixed), backend="builtin", check_paths="off")}
    assert not any(k.startswith("sample") for k in keys)
    for model_type in ("qwen_image", "lumina_2"):
        config = write_profile(
            tmp_path / model_type,
            model_type=model_type,
            model_dir=tmp_path,
            directories=[{"path": str(tmp_path)}],
            sample={"prompts": ["a cat"], "negative_prompt": "blurry", "width": 48, "every_n_steps": 5},
        )
        found = validate_profile(load_profile(config), backend="builtin", check_paths="off")
        assert not [p for p in found if p.key.startswith("sample")], model_type
        bad = write_profile(
            tmp_path / f"{model_type}_bad",
            model_type=model_type,
            model_dir=tmp_path,
            directories=[{"path": str(tmp_path)}],
            sample={"prompts": ["a cat"], "width": 40, "every_n_steps": 5},
        )
        found = validate_profile(load_profile(bad), backend="builtin", check_paths="off")
        assert [p.message for p in found if p.key == "sample.width"] == [
            f"{model_type} samples need a multiple of 16 (whole latent cells)"
        ]


def test_every_builtin_family_samples() -> None:
    """The trainer's pipelines and the validation tables cover the same families: every built-in one."""
    from engine.trainer.sampling import FAMILY_PIPELINES
    from profiles.model_types import BUILTIN_TYPES
    from profiles.rules import sample as spec

    tables = (FAMILY_PIPELINES, spec.SIZE_MULTIPLE, spec.USES_NEGATIVE, spec.GUIDANCE_MEANING, spec.DEFAULTS)
    for table in tables:
        assert set(table) == set(BUILTIN_TYPES)


# ---- rendering on tiny models ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sampling")


@pytest.fixture(scope="module")
def sd15_model(work: Path) -> Path:
    return build_tiny_sd15(work / "tiny_sd15")


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def test_sd15_sample_matches_diffusers_and_shows_the_lora(
    sd15_model: Path, work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from engine.trainer.sd15 import SD15

    settings = SampleSettings(("a red cat",), "", 64, 48, 3, 7.0, 5, 1, None, False)
    fam = SD15({"type": "sd15", "diffusers_path": str(sd15_model)}, torch.float32, torch.device("cpu"))
    fam.load()
    add_lora(fam.unet, fam, 4, 0.0, False)  # B = 0: the LoRA changes nothing yet
    sampler = Sampler(fam, settings)
    sampler.encode()
    fam.free_encoders(keep_vae=True)
    assert fam.text_encoder is None and fam.vae is not None
    fam.unet.train()
    run = work / "run"
    (first,) = sampler.render(fam.unet, 0, 1, run)
    assert fam.unet.training  # back in train mode for the next step
    assert first == run / "samples" / "0_0.png" and Image.open(first).size == (64, 48)
    assert _pixels(first).std() > 1.0  # a picture, not a flat fill
    side = json.loads(first.with_suffix(".json").read_text())
    assert side["prompt"] == "a red cat" and (side["width"], side["height"], side["seed"]) == (64, 48, 5)
    assert (side["step"], side["steps"], side["guidance"]) == (0, 3, 7.0)

    # diffusers' own pipeline with the text encoder, the same scheduler and seed: the same picture.
    pipe = StableDiffusionPipeline.from_pretrained(
        sd15_model, safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    want = pipe(
        "a red cat",
        negative_prompt="",
        width=64,
        height=48,
        num_inference_steps=3,
        guidance_scale=7.0,
        generator=torch.Generator().manual_seed(5),
    ).images[0]
    assert np.abs(_pixels(first) - np.asarray(want).astype(np.int16)).max() <= 1

    # The in-training LoRA is what renders: nonzero B weights change the image, same seed.
    with torch.no_grad():
        for name, p in fam.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    (second,) = sampler.render(fam.unet, 7, 1, run)
    assert second.name == "7_0.png" and Image.open(second).size == (64, 48)
    assert np.abs(_pixels(second) - _pixels(first)).mean() > 1.0
    again = sampler.render(fam.unet, 7, 1, run)[0]
    assert np.array_equal(_pixels(again), _pixels(second))  # deterministic by seed

    progress = Progress()
    for line in capsys.readouterr().out.splitlines():
        feed_line(progress, line)
    assert progress.samples[0]["step"] == 7 and progress.samples[0]["path"] == str(second.resolve())
    assert [(s.step, s.index, s.width) for s in list_samples(run)] == [(0, 0, 64), (7, 0, 64)]


def test_flux_sample_matches_flux_pipeline(work: Path) -> None:
    from diffusers import FluxPipeline

    from engine.trainer.flux import Flux

    model = build_tiny_flux(work / "tiny_flux", guidance_embeds=True)
    settings = SampleSettings(("a blue square",), "", 32, 48, 2, 3.5, 9, 1, None, False)
    fam = Flux({"type": "flux", "diffusers_path": str(model)}, torch.float32, torch.device("cpu"))
    fam.load()
    add_lora(fam.transformer, fam, 4, 0.0, False)
    sampler = Sampler(fam, settings)
    sampler.encode()
    fam.free_encoders(keep_vae=True)
    (png,) = sampler.render(fam.transformer, 3, 1, work / "flux_run")
    assert Image.open(png).size == (32, 48) and _pixels(png).std() > 1.0  # a picture, not a flat fill
    pipe = FluxPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    want = pipe(
        "a blue square",
        width=32,
        height=48,
        num_inference_steps=2,
        guidance_scale=3.5,
        max_sequence_length=fam._t5_length(),
        generator=torch.Generator().manual_seed(9),
    ).images[0]
    assert np.abs(_pixels(png) - np.asarray(want).astype(np.int16)).max() <= 1


# ---- end to end --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_samples_during_a_launched_run(work: Path, sd15_model: Path) -> None:
    from engine.demo import build_synthetic_dataset

    data = build_synthetic_dataset(work / "shapes", count=4)
    config = write_profile(
        work / "launched",
        model_type="sd15",
        model_dir=sd15_model,
        directories=[{"path": str(data)}],
        epochs=2,
        micro_batch_size_per_gpu=2,
        save_every_n_epochs=2,
        sample={
            "prompts": ["a red circle", "a green square"],
            "width": 48,
            "height": 32,
            "steps": 2,
            "every_n_steps": 3,
            "every_n_epochs": 1,
            "before_first_step": True,
        },
    )
    # The text encoder trains too (text-encoder LoRA): samples then encode their prompts at each render with it.
    doc = tomlkit.parse(config.read_text())
    doc["model"]["text_encoder_lr"] = 5e-3  # type: ignore[index]
    config.write_text(tomlkit.dumps(doc))
    code, out = launch_trainer(config)
    assert code == 0, out[-6000:]
    assert "text encoder LoRA" in out
    run = run_dir_of(out)
    # 4 steps: before step 1, after step 3 (every_n_steps), after step 2 and 4 (epoch ends).
    found = list_samples(run)
    assert sorted({s.step for s in found}) == [0, 2, 3, 4]
    assert {(s.index, s.prompt) for s in found} == {(0, "a red circle"), (1, "a green square")}
    for s in found:
        assert Image.open(s.path).size == (48, 32)
        assert (s.width, s.height, s.steps) == (48, 32, 2)
    assert len(found) == 8
    first, last = (s.path for s in found if s.index == 0 and s.step in (0, 4))
    assert np.abs(_pixels(Path(last)) - _pixels(Path(first))).mean() > 0.5  # the trained LoRA shows
    progress = Progress()
    for line in out.splitlines():
        feed_line(progress, line)
    assert {i: p["step"] for i, p in progress.samples.items()} == {0: 4, 1: 4}
    assert progress.samples[1]["prompt"] == "a green square" and Path(progress.samples[1]["path"]).is_file()
    assert "TRAINING COMPLETE!" in out


def test_chroma_sample_with_a_negative_prompt_matches_chroma_pipeline(work: Path) -> None:
    """Chroma: T5 with its attention mask, cfg with a negative prompt, as diffusers' ChromaPipeline."""
    from diffusers import (
        AutoencoderKL,
        ChromaPipeline,
        ChromaTransformer2DModel,
        FlowMatchEulerDiscreteScheduler,
    )
    from tiny_models import build_tiny_chroma
    from transformers import T5EncoderModel, T5TokenizerFast

    from engine.trainer.chroma import Chroma

    schnell, transformer = build_tiny_chroma(work / "tiny_chroma")
    settings = SampleSettings(("a red circle",), "blurry", 32, 32, 2, 4.0, 11, 1, None, False)
    cfg = {"type": "chroma", "diffusers_path": str(schnell), "transformer_path": str(transformer)}
    fam = Chroma(cfg, torch.float32, torch.device("cpu"))
    fam.load()
    add_lora(fam.transformer, fam, 4, 0.0, False)
    sampler = Sampler(fam, settings)
    sampler.encode()
    fam.free_encoders(keep_vae=True)
    (png,) = sampler.render(fam.transformer, 1, 1, work / "chroma_run")
    assert Image.open(png).size == (32, 32) and _pixels(png).std() > 1.0
    pipe = ChromaPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(schnell, subfolder="scheduler"),
        vae=AutoencoderKL.from_pretrained(schnell, subfolder="vae"),
        text_encoder=T5EncoderModel.from_pretrained(schnell, subfolder="text_encoder_2"),
        tokenizer=T5TokenizerFast.from_pretrained(schnell, subfolder="tokenizer_2"),
        transformer=ChromaTransformer2DModel.from_pretrained(transformer),
    )
    pipe.set_progress_bar_config(disable=True)
    want = pipe(
        "a red circle",
        negative_prompt="blurry",
        width=32,
        height=32,
        num_inference_steps=2,
        guidance_scale=4.0,
        max_sequence_length=fam._t5_length(),
        generator=torch.Generator().manual_seed(11),
    ).images[0]
    assert np.abs(_pixels(png) - np.asarray(want).astype(np.int16)).max() <= 1


def test_progress_keeps_the_newest_sample_per_prompt() -> None:
    progress = Progress()
    for obj in (
        {"event": "sample", "path": "/r/samples/5_0.png", "step": 5, "epoch": 1, "index": 0, "prompt": "a"},
        {"event": "sample", "path": "/r/samples/3_0.png", "step": 3, "epoch": 1, "index": 0, "prompt": "a"},
        {"event": "sample", "path": "/r/samples/5_1.png", "step": 5, "epoch": "x", "index": 1},
        {"event": "sample", "path": "/r/samples/9_9.png", "step": 9, "index": True},  # a bool is no index
        {"event": "sample", "path": 7, "step": 9, "index": 2},
    ):
        feed_line(progress, "[dpdeck] " + json.dumps(obj))
    assert progress.samples == {
        0: {"path": "/r/samples/5_0.png", "step": 5, "epoch": 1, "prompt": "a"},
        1: {"path": "/r/samples/5_1.png", "step": 5, "epoch": None, "prompt": ""},
    }


def test_sd3_sample_matches_stable_diffusion_3_pipeline(work: Path) -> None:
    """SD3: CLIP-L + CLIP-G + T5 embeddings and pooled CLIPs, cfg with the empty negative, unpacked latents."""
    from diffusers import StableDiffusion3Pipeline
    from tiny_sd3 import build_tiny_sd3

    from engine.trainer.sd3 import SD3

    model = build_tiny_sd3(work / "tiny_sd3")
    settings = SampleSettings(("a red circle",), "", 32, 48, 2, 5.0, 13, 1, None, False)
    fam = SD3({"type": "sd3", "diffusers_path": str(model)}, torch.float32, torch.device("cpu"))
    fam.load()
    add_lora(fam.transformer, fam, 4, 0.0, False)
    sampler = Sampler(fam, settings)
    sampler.encode()
    fam.free_encoders(keep_vae=True)
    (png,) = sampler.render(fam.transformer, 2, 1, work / "sd3_run")
    assert Image.open(png).size == (32, 48) and _pixels(png).std() > 1.0
    pipe = StableDiffusion3Pipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    want = pipe(
        "a red circle",
        negative_prompt="",
        width=32,
        height=48,
        num_inference_steps=2,
        guidance_scale=5.0,
        max_sequence_length=256,  # engine/trainer/sd3.py T5_LENGTH, the pipeline's default
        generator=torch.Generator().manual_seed(13),
    ).images[0]
    assert np.abs(_pixels(png) - np.asarray(want).astype(np.int16)).max() <= 1


def test_sdxl_sample_matches_the_xl_pipeline_and_renders_in_bf16(work: Path) -> None:
    """SDXL: pooled + penultimate states of both encoders, size conditioning, the zeroed empty negative (the
    pipeline's force_zeros_for_empty_prompt); in bf16, as real runs train, it renders too."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from tiny_models import build_tiny_sdxl

    from engine.trainer.sdxl import SDXL

    model = build_tiny_sdxl(work / "tiny_sdxl")
    settings = SampleSettings(("a red circle",), "", 48, 64, 2, 6.0, 17, 1, None, False)
    pngs = []
    for dtype in (torch.float32, torch.bfloat16):
        fam = SDXL({"type": "sdxl", "diffusers_path": str(model)}, dtype, torch.device("cpu"))
        fam.load()
        add_lora(fam.unet, fam, 4, 0.0, False)
        sampler = Sampler(fam, settings)
        sampler.encode()
        fam.free_encoders(keep_vae=True)
        (png,) = sampler.render(fam.unet, 1, 1, work / f"sdxl_run_{str(dtype)[6:]}")
        assert Image.open(png).size == (48, 64) and _pixels(png).std() > 1.0
        pngs.append(png)
    pipe = StableDiffusionXLPipeline.from_pretrained(model)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    want = pipe(
        "a red circle",
        width=48,
        height=64,
        num_inference_steps=2,
        guidance_scale=6.0,
        generator=torch.Generator().manual_seed(17),
    ).images[0]
    assert np.abs(_pixels(pngs[0]) - np.asarray(want).astype(np.int16)).max() <= 1


def _randomize_lora(model: torch.nn.Module) -> None:
    """Nonzero LoRA B weights: the adapter now changes the denoiser's output."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))


def test_qwen_image_sample_matches_qwen_image_pipeline(work: Path) -> None:
    """Qwen-Image: the chat-template prompt embeddings, true cfg against a negative prompt, packed latents and
    the video VAE's one frame, as diffusers' QwenImagePipeline (with its own text encoder) renders them."""
    from diffusers import QwenImagePipeline
    from tiny_qwen_image import build_tiny_qwen_image

    from engine.trainer.qwen_image import QwenImage

    model = build_tiny_qwen_image(work / "tiny_qwen_image")
    settings = SampleSettings(("a red circle",), "blurry", 32, 48, 2, 4.0, 19, 1, None, False)
    fam = QwenImage({"type": "qwen_image", "diffusers_path": str(model)}, torch.float32, torch.device("cpu"))
    fam.load()
    add_lora(fam.transformer, fam, 4, 0.0, False)
    sampler = Sampler(fam, settings)
    sampler.encode()
    fam.free_encoders(keep_vae=True)
    assert fam.text_encoder is None and fam.vae is not None
    run = work / "qwen_run"
    (png,) = sampler.render(fam.transformer, 1, 1, run)
    assert Image.open(png).size == (32, 48) and _pixels(png).std() > 1.0
    pipe = QwenImagePipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    want = pipe(
        "a red circle",
        negative_prompt="blurry",
        true_cfg_scale=4.0,
        width=32,
        height=48,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(19),
    ).images[0]
    assert np.abs(_pixels(png) - np.asarray(want).astype(np.int16)).max() <= 1
    # The tiny transformer hears its text faintly (a prompt moves few pixels by 1), so the latents are compared
    # too: equal to the pipeline's, and apart from those without the negative branch (cfg really runs).
    call = {"width": 32, "height": 48, "num_inference_steps": 2, "output_type": "latent"}
    ref = pipe(
        "a red circle",
        negative_prompt="blurry",
        true_cfg_scale=4.0,
        generator=torch.Generator().manual_seed(19),
        **call,
    ).images
    plain = pipe("a red circle", generator=torch.Generator().manual_seed(19), **call).images
    ours = sampler.latents(0)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    assert (ours - plain).abs().max() > 1e-2

    _randomize_lora(fam.transformer)
    (trained,) = sampler.render(fam.transformer, 2, 1, run)
    assert Image.open(trained).size == (32, 48)
    assert np.abs(_pixels(trained) - _pixels(png)).mean() > 1.0


def test_lumina2_sample_matches_lumina2_pipeline_on_the_training_embeddings(work: Path) -> None:
    """Lumina 2: Lumina2Pipeline fed diffusion-pipe's prompt embeddings (Gemma's second-to-last state of the bare
    prompt, 256 tokens padded right: no system prompt), normalised cfg against the empty negative, and the
    shift-6 flow schedule ComfyUI samples Lumina 2 with."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        Lumina2Pipeline,
        Lumina2Transformer2DModel,
    )
    from tiny_lumina2 import build_tiny_lumina2
    from transformers import Gemma2Model, GemmaTokenizer

    from engine.trainer.lumina2 import Lumina2

    # An 8x VAE as the real one: Lumina2Pipeline's vae_scale_factor is fixed at 8.
    model = build_tiny_lumina2(work / "tiny_lumina2", vae_levels=4)
    settings = SampleSettings(("a red circle",), "", 32, 48, 2, 4.0, 23, 1, None, False)
    cfg = {"type": "lumina_2", **{k: str(model[k]) for k in ("transformer_path", "llm_path", "vae_path")}}
    fam = Lumina2(cfg, torch.float32, torch.device("cpu"))
    fam.load()
    add_lora(fam.transformer, fam, 4, 0.0, False)
    sampler = Sampler(fam, settings)
    sampler.encode()
    fam.free_encoders(keep_vae=True)
    assert fam.text_encoder is None and fam.vae is not None
    run = work / "lumina_run"
    (png,) = sampler.render(fam.transformer, 1, 1, run)
    assert Image.open(png).size == (32, 48) and _pixels(png).std() > 1.0

    ref = model["diffusers"]
    pipe = Lumina2Pipeline(
        # ComfyUI's Lumina2 sampling_settings: shift 6.0 (a fixed shift, no resolution-dependent one).
        scheduler=FlowMatchEulerDiscreteScheduler(shift=6.0),
        vae=AutoencoderKL.from_pretrained(ref / "vae"),
        text_encoder=Gemma2Model.from_pretrained(ref / "text_encoder"),
        tokenizer=GemmaTokenizer.from_pretrained(ref / "tokenizer"),
        transformer=Lumina2Transformer2DModel.from_pretrained(ref / "transformer"),
    )
    pipe.set_progress_bar_config(disable=True)
    # The pipeline's own Gemma encoding of the bare prompt (its system prompt is added one level up, in
    # encode_prompt, which embeddings bypass); diffusion-pipe's models/lumina_2.py encodes captions this way.
    with torch.no_grad():
        embeds, mask = pipe._get_gemma_prompt_embeds("a red circle", max_sequence_length=256)
        neg_embeds, neg_mask = pipe._get_gemma_prompt_embeds("", max_sequence_length=256)
    want = pipe(
        prompt_embeds=embeds,
        prompt_attention_mask=mask,
        negative_prompt_embeds=neg_embeds,
        negative_prompt_attention_mask=neg_mask,
        width=32,
        height=48,
        num_inference_steps=2,
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(23),
    ).images[0]
    assert np.abs(_pixels(png) - np.asarray(want).astype(np.int16)).max() <= 1
    # Latents too (the tiny transformer hears its text faintly): equal to the pipeline's on these embeddings,
    # apart from its own default encoding, which prepends the system prompt.
    call = {
        "width": 32,
        "height": 48,
        "num_inference_steps": 2,
        "guidance_scale": 4.0,
        "output_type": "latent",
    }
    ref = pipe(
        prompt_embeds=embeds,
        prompt_attention_mask=mask,
        negative_prompt_embeds=neg_embeds,
        negative_prompt_attention_mask=neg_mask,
        generator=torch.Generator().manual_seed(23),
        **call,
    ).images
    prompted = pipe("a red circle", generator=torch.Generator().manual_seed(23), **call).images
    ours = sampler.latents(0)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    assert (ours - prompted).abs().max() > 1e-2

    _randomize_lora(fam.transformer)
    (trained,) = sampler.render(fam.transformer, 2, 1, run)
    assert Image.open(trained).size == (32, 48)
    assert np.abs(_pixels(trained) - _pixels(png)).mean() > 1.0


def test_a_vae_of_another_depth_than_the_pipeline_assumes_is_refused(work: Path) -> None:
    """Lumina2Pipeline's vae_scale_factor is fixed at 8: a 2x VAE would render quarter-size images silently."""
    from tiny_lumina2 import build_tiny_lumina2

    from engine.trainer.lumina2 import Lumina2

    model = build_tiny_lumina2(work / "tiny_lumina2_2x")  # the training tests' 2x VAE
    cfg = {"type": "lumina_2", **{k: str(model[k]) for k in ("transformer_path", "llm_path", "vae_path")}}
    fam = Lumina2(cfg, torch.float32, torch.device("cpu"))
    fam.load()
    sampler = Sampler(fam, SampleSettings(("a red circle",), "", 32, 32, 1, 4.0, 1, 1, None, False))
    sampler.encode()
    with pytest.raises(
        TrainConfigError, match=r"Lumina2Pipeline assumes a VAE that downsamples 8x, but .* 2x"
    ):
        sampler.render(fam.transformer, 0, 1, work / "lumina_2x_run")


@pytest.mark.slow
def test_qwen_image_samples_during_a_launched_run(work: Path) -> None:
    """The trainer keeps Qwen-Image's video VAE for rank 0 and renders before the first step and after step 2."""
    from tiny_qwen_image import build_tiny_qwen_image

    from engine.demo import build_synthetic_dataset

    model = build_tiny_qwen_image(work / "tiny_qwen_launched")
    data = build_synthetic_dataset(work / "qwen_shapes", count=4)
    config = write_profile(
        work / "qwen_launched",
        model_type="qwen_image",
        model_dir=model,
        directories=[{"path": str(data)}],
        epochs=1,
        micro_batch_size_per_gpu=2,
        lr=5e-2,
        sample={
            "prompts": ["a red circle"],
            "negative_prompt": "blurry",
            "width": 48,
            "height": 32,
            "steps": 2,
            "every_n_steps": 2,
            "before_first_step": True,
        },
    )
    code, out = launch_trainer(config)
    assert code == 0, out[-6000:]
    found = list_samples(run_dir_of(out))
    assert [(s.step, s.index) for s in found] == [(0, 0), (2, 0)]
    for s in found:
        assert Image.open(s.path).size == (48, 32) and (s.width, s.height, s.steps) == (48, 32, 2)
    before, after = (_pixels(Path(s.path)) for s in found)
    assert np.abs(after - before).mean() > 0.5  # two steps at a high lr show in the render
    assert "TRAINING COMPLETE!" in out
