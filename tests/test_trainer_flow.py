"""Flow-matching families (chroma, flux) of the built-in trainer: samplers, packing, detection, and end to end
under the real deepspeed launcher on CPU with tiny random models.

Reference values come from diffusers' own classes (FluxPipeline helpers, FlowMatchEulerDiscreteScheduler,
ChromaPipeline's T5 encoding), never from engine.trainer.flow itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import (
    assert_resume_repeats_the_run,
    build_tiny_chroma,
    build_tiny_flux,
    launch_trainer,
    run_dir_of,
    run_metrics,
    write_profile,
)

from engine.demo import build_synthetic_dataset
from engine.trainer import flow
from engine.trainer.family import ModelLoadError, detect_folder_family, detect_single_file_family

N = 200_000


# ---- timestep samplers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 1.5])
def test_logit_normal_matches_its_distribution(scale: float) -> None:
    gen = torch.Generator().manual_seed(0)
    t = flow.sample_t(
        {"timestep_sample_method": "logit_normal", "sigmoid_scale": scale}, N, (16, 16), generator=gen
    ).double()
    assert 0 < float(t.min()) and float(t.max()) < 1
    logit = torch.log(t / (1 - t))
    # logit(t) ~ N(0, scale^2): the mean's standard error is scale/sqrt(N); 5 of them is a 1-in-a-million miss.
    assert abs(float(logit.mean())) < 5 * scale / math.sqrt(N)
    assert float(logit.std()) == pytest.approx(scale, rel=0.01)


def test_uniform_passes_a_ks_test() -> None:
    gen = torch.Generator().manual_seed(1)
    t = torch.sort(flow.sample_t({"timestep_sample_method": "uniform"}, N, (16, 16), generator=gen).double())[
        0
    ]
    ecdf = torch.arange(1, N + 1, dtype=torch.float64) / N
    d = float(torch.max(torch.maximum(ecdf - t, t - (ecdf - 1.0 / N))))
    assert d < 1.63 / math.sqrt(N)  # Kolmogorov-Smirnov critical value at alpha = 0.01
    # ... and the test can fail: a shifted sample is far from uniform.
    shifted = torch.sort(flow.shift_t(t, 3.0))[0]
    assert float(torch.max(torch.abs(ecdf - shifted))) > 10 / math.sqrt(N)


def test_fixed_shift_matches_the_hand_formula_and_diffusers_scheduler() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    q = torch.linspace(0.01, 0.99, 99)
    got = flow.sample_t({"timestep_sample_method": "uniform", "shift": 3.0}, 99, (16, 16), quantile=None)
    assert got.shape == (99,)
    for qi in q.tolist():
        t = flow.sample_t({"timestep_sample_method": "uniform", "shift": 3.0}, 1, (16, 16), quantile=qi)
        assert float(t) == pytest.approx(3 * qi / (1 + 2 * qi), rel=1e-5)
    # diffusers' scheduler applies the same shift to its sigmas.
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    plain = FlowMatchEulerDiscreteScheduler(shift=1.0)
    torch.testing.assert_close(flow.shift_t(plain.sigmas[:-1].double(), 3.0).float(), sched.sigmas[:-1])


def test_flux_shift_matches_diffusers_dynamic_shift() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    for latent_hw in ((16, 16), (64, 64), (128, 96)):
        tokens = (latent_hw[0] // 2) * (latent_hw[1] // 2)
        mu = calculate_shift(tokens)
        for q in (0.1, 0.5, 0.9):
            got = flow.sample_t({"flux_shift": True}, 1, latent_hw, quantile=q)
            base = torch.sigmoid(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor([q])))
            torch.testing.assert_close(got, sched._time_shift_exponential(mu, 1.0, base))
    # A fixed shift wins over flux_shift, as in diffusion-pipe.
    t = flow.sample_t(
        {"timestep_sample_method": "uniform", "shift": 2.0, "flux_shift": True}, 1, (64, 64), quantile=0.5
    )
    assert float(t) == pytest.approx(2 * 0.5 / (1 + 0.5))


def test_bad_sample_method_is_an_error() -> None:
    with pytest.raises(flow.FlowConfigError, match="timestep_sample_method"):
        flow.check_flow_config({"timestep_sample_method": "cosmap"})


def test_noisy_and_target_are_the_straight_line() -> None:
    x, n = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    xt, target = flow.noisy_and_target(x, n, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(xt[0], x[0])
    torch.testing.assert_close(xt[1], n[1])
    torch.testing.assert_close(target, n - x)


def test_packing_and_ids_match_flux_pipeline() -> None:
    from diffusers import FluxPipeline

    z = torch.randn(2, 16, 6, 10)
    packed = flow.pack_latents(z)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(z, 2, 16, 6, 10))
    # _unpack_latents takes the pixel size and the VAE factor (here 8).
    torch.testing.assert_close(
        flow.unpack_latents(packed, 6, 10), FluxPipeline._unpack_latents(packed, 48, 80, 8)
    )
    torch.testing.assert_close(
        flow.latent_image_ids(6, 10, torch.device("cpu"), torch.float32),
        FluxPipeline._prepare_latent_image_ids(2, 3, 5, torch.device("cpu"), torch.float32),
    )


# ---- detection and bad input ------------------------------------------------------------------------------
def _header_file(path: Path, keys: list[str]) -> Path:
    save_file({k: torch.zeros(1) for k in keys}, str(path))
    return path


def test_detection_tells_chroma_from_flux(tmp_path: Path) -> None:
    chroma = _header_file(
        tmp_path / "c.safetensors",
        ["distilled_guidance_layer.in_proj.weight", "double_blocks.0.img_attn.qkv.weight"],
    )
    flux = _header_file(
        tmp_path / "f.safetensors", ["double_blocks.0.img_attn.qkv.weight", "guidance_in.in_layer.weight"]
    )
    comfy = _header_file(
        tmp_path / "cc.safetensors", ["model.diffusion_model.distilled_guidance_layer.in_proj.weight"]
    )
    diffusers_flux = _header_file(
        tmp_path / "df.safetensors",
        ["single_transformer_blocks.0.proj_out.weight", "time_text_embed.x.weight"],
    )
    assert detect_single_file_family(chroma) == "chroma"
    assert detect_single_file_family(comfy) == "chroma"
    assert detect_single_file_family(flux) == "flux"
    assert detect_single_file_family(diffusers_flux) == "flux"
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert detect_folder_family(tmp_path / "pipe") == "flux"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("flow")


@pytest.fixture(scope="module")
def chroma_model(work: Path) -> tuple[Path, Path]:
    return build_tiny_chroma(work / "tiny_chroma")


@pytest.fixture(scope="module")
def flux_model(work: Path) -> Path:
    return build_tiny_flux(work / "tiny_flux", guidance_embeds=True)


def test_wrong_family_transformer_is_a_clear_error(tmp_path: Path, chroma_model: tuple[Path, Path]) -> None:
    from engine.trainer.chroma import Chroma
    from engine.trainer.flux import Flux

    schnell, _ = chroma_model
    flux_file = _header_file(tmp_path / "flux1-dev.safetensors", ["double_blocks.0.img_attn.qkv.weight"])
    cfg = {"type": "chroma", "diffusers_path": str(schnell), "transformer_path": str(flux_file)}
    with pytest.raises(ModelLoadError, match=r"holds a flux transformer"):
        Chroma(cfg, torch.float32, torch.device("cpu")).check_family()
    chroma_file = _header_file(tmp_path / "chroma.safetensors", ["distilled_guidance_layer.in_proj.weight"])
    cfg = {"type": "flux", "diffusers_path": str(schnell), "transformer_path": str(chroma_file)}
    with pytest.raises(ModelLoadError, match=r"holds a chroma transformer"):
        Flux(cfg, torch.float32, torch.device("cpu")).check_family()
    with pytest.raises(ModelLoadError, match="transformer_path: required"):
        Chroma(
            {"type": "chroma", "diffusers_path": str(schnell)}, torch.float32, torch.device("cpu")
        ).check_family()
    with pytest.raises(ModelLoadError, match="holds a sd15 model"):
        (tmp_path / "sd").mkdir()
        (tmp_path / "sd" / "model_index.json").write_text(
            json.dumps({"_class_name": "StableDiffusionPipeline"})
        )
        Flux(
            {"type": "flux", "diffusers_path": str(tmp_path / "sd")}, torch.float32, torch.device("cpu")
        ).check_family()
    # The folder form is checked by its config's class.
    with pytest.raises(ModelLoadError, match="FluxTransformer2DModel"):
        Chroma(
            {
                "type": "chroma",
                "diffusers_path": str(schnell),
                "transformer_path": str(schnell / "transformer"),
            },
            torch.float32,
            torch.device("cpu"),
        ).check_family()


def _chroma_pipe(schnell: Path, transformer: Path):  # noqa: ANN202 - a diffusers pipeline
    from diffusers import (
        AutoencoderKL,
        ChromaPipeline,
        ChromaTransformer2DModel,
        FlowMatchEulerDiscreteScheduler,
    )
    from transformers import T5EncoderModel, T5TokenizerFast

    return ChromaPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(schnell, subfolder="scheduler"),
        vae=AutoencoderKL.from_pretrained(schnell, subfolder="vae"),
        text_encoder=T5EncoderModel.from_pretrained(schnell, subfolder="text_encoder_2"),
        tokenizer=T5TokenizerFast.from_pretrained(schnell, subfolder="tokenizer_2"),
        transformer=ChromaTransformer2DModel.from_pretrained(transformer),
    )


def test_chroma_text_and_latents_match_diffusers(chroma_model: tuple[Path, Path]) -> None:
    from engine.trainer.chroma import Chroma

    schnell, transformer = chroma_model
    fam = Chroma(
        {"type": "chroma", "diffusers_path": str(schnell), "transformer_path": str(transformer)},
        torch.float32,
        torch.device("cpu"),
    )
    fam.load()
    pipe = _chroma_pipe(schnell, transformer)
    prompts = ["a red circle", "blue"]
    embeds, mask = pipe._get_t5_prompt_embeds(prompts, max_sequence_length=32, device=torch.device("cpu"))
    ours = fam.encode_prompts(prompts)
    for i in range(2):
        torch.testing.assert_close(ours[i]["encoder_hidden_states"], embeds[i])
        torch.testing.assert_close(ours[i]["attention_mask"], mask[i])
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    dist = pipe.vae.encode(pixels).latent_dist
    want = (dist.mean - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    torch.testing.assert_close(fam.encode_image(pixels), want)


# ---- end to end -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes(work: Path) -> Path:
    return build_synthetic_dataset(work / "shapes", count=8)


def _profile(folder: Path, kind: str, model: Path, data: Path, model_extra: str, **main: object) -> Path:
    settings: dict[str, object] = {
        "epochs": 10,
        "micro_batch_size_per_gpu": 2,
        "checkpoint_every_n_steps": 8,
        "save_every_n_epochs": 10,
        "lr": 2e-2,
    }
    settings.update(main)
    config = write_profile(
        folder, model_type=kind, model_dir=model, directories=[{"path": str(data)}], **settings
    )
    text = config.read_text().replace('dtype = "float32"\n', 'dtype = "float32"\n' + model_extra, 1)
    config.write_text(text)
    return config


@pytest.fixture(scope="module")
def chroma_run(work: Path, chroma_model: tuple[Path, Path], shapes: Path) -> tuple[Path, str, Path]:
    schnell, transformer = chroma_model
    config = _profile(work / "chroma", "chroma", schnell, shapes, f'transformer_path = "{transformer}"\n')
    code, out = launch_trainer(config)
    assert code == 0, out[-6000:]
    return run_dir_of(out), out, config


@pytest.fixture(scope="module")
def flux_run(work: Path, flux_model: Path, shapes: Path) -> tuple[Path, str, Path]:
    config = _profile(
        work / "flux",
        "flux",
        flux_model,
        shapes,
        'guidance = 3.5\ntimestep_sample_method = "logit_normal"\nflux_shift = true\n',
    )
    code, out = launch_trainer(config)
    assert code == 0, out[-6000:]
    return run_dir_of(out), out, config


def _assert_loss_falls(run_dir: Path) -> None:
    losses = [m["loss"] for m in run_metrics(run_dir)]
    assert len(losses) == 40
    # Same seed -> same curve, so this margin is reproducible; a LoRA that does not learn stays flat.
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.9 * first, losses


@torch.no_grad()
def _probe_output(
    transformer: torch.nn.Module, probe: dict[str, torch.Tensor], vae_factor: int
) -> torch.Tensor:
    """The transformer's output on the probe input, packed and unpacked by diffusers' own pipeline helpers."""
    from diffusers import FluxPipeline

    sample = probe["sample"]
    b, c, h, w = sample.shape
    tokens = FluxPipeline._pack_latents(sample, b, c, h, w)
    text = probe["text.encoder_hidden_states"]
    kwargs: dict[str, object] = {}
    if "text.attention_mask" in probe:  # as ChromaPipeline._prepare_attention_mask
        mask = probe["text.attention_mask"]
        kwargs["attention_mask"] = torch.cat([mask, torch.ones(b, tokens.shape[1])], dim=1)
    if "text.pooled_projections" in probe:
        kwargs["pooled_projections"] = probe["text.pooled_projections"]
        if transformer.config.guidance_embeds:
            kwargs["guidance"] = torch.full((b,), 3.5)
    out = transformer(
        hidden_states=tokens,
        timestep=probe["timestep"].float(),
        encoder_hidden_states=text,
        img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, sample.device, sample.dtype),
        txt_ids=torch.zeros(text.shape[1], 3),
        **kwargs,
    ).sample
    return FluxPipeline._unpack_latents(out, h * vae_factor, w * vae_factor, vae_factor)


def _check_reload(pipe_factory, save_dir: Path) -> None:  # noqa: ANN001 - a callable returning a pipeline
    probe = load_file(str(save_dir / "probe.safetensors"))
    assert float(probe["timestep"]) == pytest.approx(0.5)
    base = _probe_output(pipe_factory().transformer, probe, 2)
    assert (base - probe["output"]).abs().max() > 1e-3, "the LoRA did not change the output; test is vacuous"
    pipe = pipe_factory()
    pipe.load_lora_weights(str(save_dir))
    got = _probe_output(pipe.transformer, probe, 2)
    torch.testing.assert_close(got, probe["output"], rtol=1e-4, atol=1e-5)


def _check_saved_file(save_dir: Path, rank: int) -> None:
    from safetensors import safe_open

    assert sorted(p.name for p in save_dir.iterdir()) == [
        "lora_comfy.safetensors",  # its ComfyUI replay: tests/test_trainer_comfy_lora.py
        "probe.safetensors",
        "pytorch_lora_weights.safetensors",
    ]
    keys = list(load_file(str(save_dir / "pytorch_lora_weights.safetensors")))
    assert keys and all(k.startswith("transformer.") for k in keys)
    assert any(".single_transformer_blocks.0." in k for k in keys)
    assert any(".transformer_blocks.0.ff." in k for k in keys)  # every Linear, not attention only
    with safe_open(str(save_dir / "pytorch_lora_weights.safetensors"), framework="pt") as fh:
        meta = json.loads(fh.metadata()["lora_adapter_metadata"])
    assert meta.get("transformer.lora_alpha", meta.get("lora_alpha")) == rank


def test_chroma_loss_falls_below_an_untrained_control(
    work: Path, chroma_model: tuple[Path, Path], shapes: Path, chroma_run: tuple[Path, str, Path]
) -> None:
    """lr = 0 sees exactly the same noise, timesteps and batches: the gap is what the LoRA learned."""
    schnell, transformer = chroma_model
    config = _profile(
        work / "chroma_control", "chroma", schnell, shapes, f'transformer_path = "{transformer}"\n', lr=0.0
    )
    code, out = launch_trainer(config)
    assert code == 0, out[-6000:]
    control = [m["loss"] for m in run_metrics(run_dir_of(out))]
    trained = [m["loss"] for m in run_metrics(chroma_run[0])][:40]
    assert control[0] == pytest.approx(trained[0], rel=1e-5)  # same inputs: step 1 runs before any update
    assert sum(trained[-10:]) < 0.9 * sum(control[-10:]), (trained, control)


def test_chroma_trains_saves_and_reloads(
    chroma_run: tuple[Path, str, Path], chroma_model: tuple[Path, Path]
) -> None:
    run_dir, out, _ = chroma_run
    assert "TRAINING COMPLETE!" in out
    _assert_loss_falls(run_dir)
    _check_saved_file(run_dir / "epoch10", rank=4)
    _check_reload(lambda: _chroma_pipe(*chroma_model), run_dir / "epoch10")


def test_flux_trains_saves_and_reloads(flux_run: tuple[Path, str, Path], flux_model: Path) -> None:
    from diffusers import FluxPipeline

    run_dir, out, _ = flux_run
    assert "TRAINING COMPLETE!" in out
    _assert_loss_falls(run_dir)
    _check_saved_file(run_dir / "epoch10", rank=4)
    _check_reload(lambda: FluxPipeline.from_pretrained(flux_model), run_dir / "epoch10")


def test_chroma_resume_continues_at_the_same_step_with_the_same_loss(
    chroma_run: tuple[Path, str, Path],
) -> None:
    # As after a crash at step 20: the newest checkpoint is global_step16 (the end of epoch 4 of 4 steps).
    run_dir, _, config = chroma_run
    assert_resume_repeats_the_run(run_dir, config, 16, "epoch10")


def test_flux_guidance_bypass_and_exclude_modules(flux_model: Path) -> None:
    from engine.trainer.flux import Flux
    from engine.trainer.lora_io import add_lora

    outs = {}
    for bypass in (False, True):
        fam = Flux(
            {"type": "flux", "diffusers_path": str(flux_model), "bypass_guidance_embedding": bypass},
            torch.float32,
            torch.device("cpu"),
        )
        fam.load()
        text = {k: v.unsqueeze(0) for k, v in fam.encode_prompts(["a red circle"])[0].items()}
        z = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
        kw = fam.unet_kwargs(text, {})
        assert float(kw["guidance"][0]) == 1.0  # the default when the profile sets none
        with torch.no_grad():
            outs[bypass] = [
                fam.denoise(fam.transformer, z, torch.tensor([0.5]), {**kw, "guidance": torch.full((1,), g)})
                for g in (1.0, 10.0)
            ]
    assert (outs[False][0] - outs[False][1]).abs().max() > 1e-4  # guidance matters without the bypass
    torch.testing.assert_close(outs[True][0], outs[True][1])  # and not at all with it
    add_lora(fam.transformer, fam, 4, 0.0, False, exclude_modules=r".*single_transformer_blocks.*")
    lora = [n for n, _ in fam.transformer.named_parameters() if "lora_A" in n]
    assert lora and not any("single_transformer_blocks" in n for n in lora)
    assert any(".ff.net.2." in n for n in lora)
