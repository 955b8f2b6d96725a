"""Lumina Image 2.0 family of the built-in trainer: single-file loading, encoders, lumina_shift, bad input, and
end to end under the real deepspeed launcher on CPU with a tiny random model (tests/tiny_lumina2.py).

References come from diffusers (Lumina2Pipeline, Lumina2Transformer2DModel, its single-file converter, its
scheduler's dynamic shift) and SentencePiece itself, never from engine.trainer.lumina2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_lumina2 import build_tiny_lumina2
from tiny_models import assert_resume_repeats_the_run, launch_trainer, run_dir_of, run_metrics, write_profile

from engine.demo import build_synthetic_dataset
from engine.trainer import flow
from engine.trainer.family import ModelLoadError, detect_single_file_family

PATH_KEYS = ("transformer_path", "llm_path", "vae_path")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lumina2")


@pytest.fixture(scope="module")
def model(work: Path) -> dict[str, Path]:
    return build_tiny_lumina2(work / "tiny")


def _cfg(model: dict[str, Path], **extra: object) -> dict[str, object]:
    return {"type": "lumina_2", **{k: str(model[k]) for k in PATH_KEYS}, **extra}


@pytest.fixture(scope="module")
def family(model: dict[str, Path]):  # noqa: ANN201 - the loaded family
    from engine.trainer.lumina2 import Lumina2

    fam = Lumina2(_cfg(model), torch.float32, CPU)
    fam.load()
    return fam


def _pipe(model: dict[str, Path]):  # noqa: ANN202 - a diffusers pipeline from the reference folders
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        Lumina2Pipeline,
        Lumina2Transformer2DModel,
    )
    from transformers import Gemma2Model, GemmaTokenizer

    ref = model["diffusers"]
    return Lumina2Pipeline(
        transformer=Lumina2Transformer2DModel.from_pretrained(ref / "transformer"),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=AutoencoderKL.from_pretrained(ref / "vae"),
        text_encoder=Gemma2Model.from_pretrained(ref / "text_encoder"),
        tokenizer=GemmaTokenizer.from_pretrained(ref / "tokenizer"),
    )


# ---- single files -----------------------------------------------------------------------------------------
def test_tiny_transformer_file_is_in_the_layout_diffusers_converts(model: dict[str, Path]) -> None:
    """The tiny file's names are what diffusers' own converter maps (its fused-qkv split is 2B-only, so q/k/v
    are compared separately)."""
    from diffusers import Lumina2Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_lumina2_to_diffusers

    want = Lumina2Transformer2DModel.from_pretrained(model["diffusers"] / "transformer").state_dict()
    original = load_file(str(model["transformer_path"]))
    unfused = {k: v for k, v in original.items() if ".qkv." not in k}
    got = convert_lumina2_to_diffusers(dict(unfused))
    assert set(got) == {k for k in want if not any(f".attn.to_{p}." in k for p in "qkv")}
    for k, v in got.items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=0)
    qkv = original["layers.0.attention.qkv.weight"]
    torch.testing.assert_close(
        qkv, torch.cat([want[f"layers.0.attn.to_{p}.weight"] for p in "qkv"]), rtol=0, atol=0
    )


def test_family_loads_the_single_files_exactly(
    family,
    model: dict[str, Path],
    tmp_path: Path,  # noqa: ANN001
) -> None:
    from diffusers import Lumina2Transformer2DModel
    from transformers import Gemma2Model

    from engine.trainer.lumina2 import Lumina2

    want = Lumina2Transformer2DModel.from_pretrained(model["diffusers"] / "transformer").state_dict()
    got = family.transformer.state_dict()
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    gemma = Gemma2Model.from_pretrained(model["diffusers"] / "text_encoder").state_dict()
    for k, v in family.text_encoder.state_dict().items():
        torch.testing.assert_close(v, gemma[k], rtol=0, atol=0)
    # ComfyUI's all-in-one checkpoint is read as diffusion-pipe reads it: the prefixed transformer part only.
    prefixed = tmp_path / "comfy.safetensors"
    sd = {f"model.diffusion_model.{k}": v for k, v in load_file(str(model["transformer_path"])).items()}
    sd["first_stage_model.encoder.conv_in.weight"] = torch.zeros(32, 3, 3, 3)
    sd["text_encoders.gemma2_2b.transformer.model.norm.weight"] = torch.zeros(32)
    save_file(sd, str(prefixed))
    assert detect_single_file_family(prefixed) == "lumina_2"
    fam = Lumina2(_cfg(model, transformer_path=str(prefixed)), torch.float32, CPU)
    loaded = fam._load_transformer(prefixed).state_dict()
    for k in want:
        torch.testing.assert_close(loaded[k], want[k], rtol=0, atol=0)


def test_full_size_headers_give_the_real_configs() -> None:
    """Headers of the real 2B NextDiT, Gemma 2 2B and Flux VAE (built on the meta device: shapes, no memory)
    read back as the built-in configs, and the qkv split agrees with diffusers' converter at full size."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, Lumina2Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_lumina2_to_diffusers
    from tiny_lumina2 import transformer_to_original
    from tiny_models import _vae_to_ldm
    from transformers import Gemma2Config, Gemma2Model

    from engine.trainer import lumina2

    here = Path("full.safetensors")
    with init_empty_weights():
        dit = Lumina2Transformer2DModel.from_config(lumina2.LUMINA2_CONFIG)
        gemma = Gemma2Model(Gemma2Config(**lumina2.GEMMA2_2B_CONFIG))
        vae = AutoencoderKL.from_config(lumina2.FLUX_VAE_CONFIG)
    original = transformer_to_original(dit.state_dict())
    config = lumina2.transformer_config({k: list(v.shape) for k, v in original.items()}, here)  # type: ignore[union-attr]
    assert config == lumina2.LUMINA2_CONFIG
    ours = lumina2.original_to_diffusers(dict(original), config)  # type: ignore[arg-type]
    theirs = convert_lumina2_to_diffusers(dict(original))  # its split is hard-wired to this size
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert set(ours) == set(dit.state_dict())
    llm = {f"model.{k}": list(v.shape) for k, v in gemma.state_dict().items()}
    assert lumina2.gemma_config(llm, here) == lumina2.GEMMA2_2B_CONFIG
    n_up = len(lumina2.FLUX_VAE_CONFIG["up_block_types"])
    ldm = {_vae_to_ldm(k, n_up): list(v.shape) for k, v in vae.state_dict().items()}
    assert lumina2.vae_config(ldm, here) == lumina2.FLUX_VAE_CONFIG


def test_text_and_latents_match_diffusers(family, model: dict[str, Path]) -> None:  # noqa: ANN001
    import sentencepiece as spm

    from engine.trainer.lumina2 import MAX_TEXT_TOKENS

    prompts = ["a red circle on a blue square", "Zürich 2024, ünïcode!", ""]
    sp = spm.SentencePieceProcessor(model_file=str(model["spm"]))
    ids = family.tokenizer(prompts).input_ids
    assert ids == [[2, *sp.encode(p)] for p in prompts]  # <bos>, then SentencePiece's own pieces
    pipe = _pipe(model)
    embeds, mask = pipe._get_gemma_prompt_embeds(prompts, device=CPU, max_sequence_length=MAX_TEXT_TOKENS)
    ours = family.encode_prompts(prompts)
    for i in range(len(prompts)):
        torch.testing.assert_close(ours[i]["encoder_hidden_states"], embeds[i])
        torch.testing.assert_close(ours[i]["encoder_attention_mask"], mask[i])
    assert int(ours[2]["encoder_attention_mask"].sum()) == 1  # the empty caption is <bos> alone
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    dist = pipe.vae.encode(pixels).latent_dist
    # The inverse of Lumina2Pipeline's decode: latents / scaling_factor + shift_factor.
    want = (dist.mean - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    torch.testing.assert_close(family.encode_image(pixels), want)


def test_lora_targets_every_block_linear_minus_exclude_modules(model: dict[str, Path]) -> None:
    from engine.trainer.lora_io import add_lora
    from engine.trainer.lumina2 import Lumina2

    fam = Lumina2(_cfg(model), torch.float32, CPU)
    fam.transformer = fam.unet = fam._load_transformer(model["transformer_path"])
    linears = {n for n, m in fam.transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    targets = set(fam.lora_target_modules())
    # Outside the blocks: the embedders and the final layer stay frozen, as in diffusion-pipe.
    assert linears - targets == {
        "x_embedder",
        "time_caption_embed.timestep_embedder.linear_1",
        "time_caption_embed.timestep_embedder.linear_2",
        "time_caption_embed.caption_embedder.1",
        "norm_out.linear_1",
        "norm_out.linear_2",
    }
    add_lora(fam.transformer, fam, 4, 0.0, False, exclude_modules=r".*context_refiner.*")
    lora = {n.rsplit(".lora_A", 1)[0] for n, _ in fam.transformer.named_parameters() if ".lora_A." in n}
    assert lora == {t for t in targets if not t.startswith("context_refiner.")}


def test_lumina_shift_matches_the_pipeline_dynamic_shift() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.lumina2.pipeline_lumina2 import calculate_shift

    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    for latent_hw in ((16, 16), (128, 128), (96, 160)):
        mu = calculate_shift((latent_hw[0] // 2) * (latent_hw[1] // 2))  # the pipeline's patch-2 token count
        for q in (0.1, 0.5, 0.9):
            got = flow.sample_t({"type": "lumina_2", "lumina_shift": True}, 1, latent_hw, quantile=q)
            base = torch.sigmoid(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor([q])))
            torch.testing.assert_close(got, sched._time_shift_exponential(mu, 1.0, base))
    # diffusion-pipe's lumina_2 reads lumina_shift only: flux_shift leaves t alone, and `shift` wins.
    plain = flow.sample_t({"type": "lumina_2"}, 1, (128, 128), quantile=0.3)
    assert flow.sample_t({"type": "lumina_2", "flux_shift": True}, 1, (128, 128), quantile=0.3) == plain
    fixed = flow.sample_t(
        {"type": "lumina_2", "timestep_sample_method": "uniform", "shift": 2.0, "lumina_shift": True},
        1,
        (128, 128),
        quantile=0.5,
    )
    assert float(fixed) == pytest.approx(2 * 0.5 / (1 + 0.5))


# ---- bad input ------------------------------------------------------------------------------------------
def _header_file(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, str(path))
    return path


def test_wrong_files_are_clear_errors(model: dict[str, Path], tmp_path: Path) -> None:
    from engine.trainer.lumina2 import Lumina2

    def check(**paths: object) -> None:
        Lumina2(_cfg(model, **paths), torch.float32, CPU).check_family()

    flux = _header_file(
        tmp_path / "flux1-dev.safetensors", {"double_blocks.0.img_attn.qkv.weight": torch.zeros(1)}
    )
    with pytest.raises(
        ModelLoadError, match=r"transformer_path .*flux1-dev.safetensors holds a flux transformer"
    ):
        check(transformer_path=str(flux))
    zimage = _header_file(
        tmp_path / "z_image.safetensors",
        {"all_x_embedder.2-1.weight": torch.zeros(1), "cap_embedder.1.weight": torch.zeros(1)},
    )
    with pytest.raises(ModelLoadError, match="holds a z_image transformer"):
        check(transformer_path=str(zimage))
    with pytest.raises(
        ModelLoadError, match=r"llm_path: .* is not a Gemma 2 text encoder file \(found lumina_2\)"
    ):
        check(llm_path=str(model["transformer_path"]))
    llm = load_file(str(model["llm_path"]))
    del llm["spiece_model"]
    bare = _header_file(tmp_path / "gemma_hf.safetensors", llm)
    with pytest.raises(ModelLoadError, match="carries no 'spiece_model'"):
        check(llm_path=str(bare))
    with pytest.raises(ModelLoadError, match=r"vae_path: .* no tensor 'encoder.down.0.block.0.conv1.weight'"):
        check(vae_path=str(model["llm_path"]))
    with pytest.raises(ModelLoadError, match="vae_path: .* is not a file"):
        check(vae_path=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelLoadError, match="llm_path: required"):
        Lumina2(
            {"type": "lumina_2", "transformer_path": str(model["transformer_path"])}, torch.float32, CPU
        ).check_family()


def test_a_transformer_of_another_size_says_what_it_holds(model: dict[str, Path], tmp_path: Path) -> None:
    from engine.trainer.lumina2 import Lumina2

    sd = load_file(str(model["transformer_path"]))
    sd["layers.1.feed_forward.w1.weight"] = torch.zeros(128, 96)  # one layer's FFN narrower than the rest
    odd = _header_file(tmp_path / "odd.safetensors", sd)
    fam = Lumina2(_cfg(model, transformer_path=str(odd)), torch.float32, CPU)
    with pytest.raises(
        ModelLoadError, match=r"odd.safetensors does not fit .*layers.1.feed_forward.linear_1"
    ):
        fam._load_transformer(odd)


# ---- end to end -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes(work: Path) -> Path:
    return build_synthetic_dataset(work / "shapes", count=8)


def _profile(folder: Path, model: dict[str, Path], data: Path, **main: object) -> Path:
    settings: dict[str, object] = {
        "epochs": 8,
        "micro_batch_size_per_gpu": 2,
        "save_every_n_epochs": 8,
        "lr": 2e-2,
    }
    settings.update(main)
    config = write_profile(
        folder,
        model_type="lumina_2",
        model_dir=model["diffusers"],
        directories=[{"path": str(data)}],
        **settings,
    )
    paths = "".join(f'{k} = "{model[k]}"\n' for k in PATH_KEYS)
    text = config.read_text()
    start = text.index("diffusers_path = ")
    end = text.index("\n", start) + 1
    config.write_text(text[:start] + paths + "lumina_shift = true\n" + text[end:])
    return config


@pytest.fixture(scope="module")
def run(work: Path, model: dict[str, Path], shapes: Path) -> tuple[Path, str]:
    code, out = launch_trainer(_profile(work / "run", model, shapes, checkpoint_every_n_steps=16))
    assert code == 0, out[-6000:]
    return run_dir_of(out), out


@torch.no_grad()
def _probe_output(transformer: torch.nn.Module, probe: dict[str, torch.Tensor]) -> torch.Tensor:
    """The velocity Lumina2Pipeline steps with: minus the transformer's output at Lumina time 1 - t."""
    out = transformer(
        hidden_states=probe["sample"],
        timestep=1 - probe["timestep"].float(),
        encoder_hidden_states=probe["text.encoder_hidden_states"],
        encoder_attention_mask=probe["text.encoder_attention_mask"],
    ).sample
    return -out


@pytest.mark.slow
def test_lumina2_trains_saves_and_reloads(
    run: tuple[Path, str], model: dict[str, Path], work: Path, shapes: Path
) -> None:
    from safetensors import safe_open

    run_dir, out = run
    assert "TRAINING COMPLETE!" in out
    trained = [m["loss"] for m in run_metrics(run_dir)]
    assert len(trained) == 32
    # lr = 0 sees exactly the same noise, timesteps and batches: the gap is what the LoRA learned.
    code, control_out = launch_trainer(_profile(work / "control", model, shapes, lr=0.0))
    assert code == 0, control_out[-6000:]
    control = [m["loss"] for m in run_metrics(run_dir_of(control_out))]
    assert control[0] == pytest.approx(trained[0], rel=1e-5)  # step 1 runs before any update
    assert sum(trained[-8:]) < 0.9 * sum(control[-8:]), (trained, control)

    save = run_dir / "epoch8"
    keys = list(load_file(str(save / "pytorch_lora_weights.safetensors")))
    assert keys and all(k.startswith("transformer.") for k in keys)
    for block in (
        "layers.1.",
        "noise_refiner.0.",
        "context_refiner.1.",
    ):  # every block kind, as diffusion-pipe
        assert any(f".{block}" in k for k in keys), block
    assert any(".feed_forward.linear_3." in k for k in keys) and any(".norm1.linear." in k for k in keys)
    with safe_open(str(save / "pytorch_lora_weights.safetensors"), framework="pt") as fh:
        meta = json.loads(fh.metadata()["lora_adapter_metadata"])
    assert meta.get("transformer.lora_alpha", meta.get("lora_alpha")) == 4

    probe = load_file(str(save / "probe.safetensors"))
    assert float(probe["timestep"]) == pytest.approx(0.5)
    base = _probe_output(_pipe(model).transformer, probe)
    assert (base - probe["output"]).abs().max() > 1e-3, "the LoRA did not change the output; test is vacuous"
    pipe = _pipe(model)
    pipe.load_lora_weights(str(save))
    torch.testing.assert_close(_probe_output(pipe.transformer, probe), probe["output"], rtol=1e-4, atol=1e-5)

    # The ComfyUI file, replayed onto the run's own original-layout transformer file (ComfyUI's NextDiT names).
    from test_trainer_comfy_lora import _merged, check_saved_comfy_file
    from tiny_lumina2 import transformer_to_original

    assert sorted(p.name for p in save.iterdir()) == [
        "lora_comfy.safetensors",
        "probe.safetensors",
        "pytorch_lora_weights.safetensors",
    ]
    original = load_file(str(model["transformer_path"]))
    merged = transformer_to_original(_merged(pipe.transformer))
    blocks = ("layers.", "noise_refiner.", "context_refiner.")
    merged = {k: v for k, v in merged.items() if k.startswith(blocks)}  # type: ignore[misc]
    check_saved_comfy_file(save, "lumina_2", original, merged, hidden=96)  # type: ignore[arg-type]


def test_lumina2_resume_continues_at_the_same_step_with_the_same_loss(
    run: tuple[Path, str], work: Path
) -> None:
    assert_resume_repeats_the_run(run[0], work / "run" / "main.toml", 16, "epoch8")
