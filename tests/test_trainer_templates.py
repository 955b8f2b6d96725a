"""The seed's Chroma profiles (templates chroma-e6ai-512 / -1024) on the built-in trainer, with only their
placeholder paths pointed at real files: validation and the queue pick the built-in trainer without a
diffusion-pipe checkout, the trainer reads every key, and the 512 profile trains (float8 transformer, activation
checkpointing, adamw_optimi, flux_shift, batch 4 at 512 px) until a save_quit stops it at a checkpoint.

The model is a tiny random Chroma whose VAE downsamples 8x like the real one, so 512 px images give the real
64x64 latents (1024 tokens) on CPU.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tiny_models import build_tiny_chroma, launch_trainer, run_metrics

from engine.demo import build_synthetic_dataset
from profiles.backend_choice import choose_for_model
from profiles.document import load_profile
from profiles.rules.placeholders import PLACEHOLDER
from profiles.templates import load_template
from profiles.validate import validate_profile

pytestmark = pytest.mark.slow


def _vae_8x():  # type: ignore[no-untyped-def]
    from diffusers import AutoencoderKL

    # Flux's VAE shape at toy width: four encoder blocks (three 2x downsamplings), 16 latent channels.
    return AutoencoderKL(
        block_out_channels=[8, 8, 8, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("seed_profiles")
    schnell, transformer = build_tiny_chroma(work / "model")
    _vae_8x().save_pretrained(schnell / "vae")
    return {
        "diffusers_path": schnell,
        # The single file as Chroma is handed around, its config.json beside it.
        "transformer_path": transformer / "diffusion_pytorch_model.safetensors",
        "images": build_synthetic_dataset(work / "e6ai", count=4, size=(512, 512)),
        "work": work,
    }


def _seed_profile(template: str, files: dict[str, Path]) -> Path:
    """The template's two files with each placeholder replaced by a real path; nothing else touched."""
    profile = load_template(template)
    folder = files["work"] / template
    folder.mkdir(exist_ok=True)
    values = {
        "output_dir": str(folder / "output"),
        "model.diffusers_path": str(files["diffusers_path"]),
        "model.transformer_path": str(files["transformer_path"]),
        "directory[0].path": str(files["images"]),
    }
    assert profile.dataset is not None
    for doc, name in ((profile.main, "main.toml"), (profile.dataset, "dataset.toml")):
        for key, value in values.items():
            if doc.has(key):
                assert PLACEHOLDER.search(str(doc.get(key))), f"{template}: {key} is not a placeholder"
                doc.set(key, value)
        left = [v for v in _values(doc.data()) if isinstance(v, str) and PLACEHOLDER.search(v)]
        assert left == [], f"{template}/{name}: placeholders left"
        (folder / name).write_text(doc.dumps())
    return folder / "main.toml"


def _values(node: object) -> list[object]:
    if isinstance(node, dict):
        return [v for child in node.values() for v in _values(child)]
    if isinstance(node, list):
        return [v for child in node for v in _values(child)]
    return [node]


@pytest.mark.parametrize("template", ["chroma-e6ai-512", "chroma-e6ai-1024"])
def test_seed_profiles_validate_for_the_builtin_trainer(template: str, files: dict[str, Path]) -> None:
    from engine.trainer.config import load_train_config

    main = _seed_profile(template, files)
    profile = load_profile(main)
    chosen = choose_for_model(profile.main.data()["model"], profile.model_type)
    assert chosen.backend == "builtin", chosen.reason
    problems = validate_profile(profile, backend="auto")
    assert [str(p) for p in problems if p.severity == "error"] == []
    cfg = load_train_config(main)
    # The trainer reads every key these profiles set: nothing is warned as ignored.
    assert cfg.warnings == []


def test_seed_512_profile_trains_until_save_quit(files: dict[str, Path]) -> None:
    main = _seed_profile("chroma-e6ai-512", files)
    run_dir: list[Path] = []

    def stop_after_two_steps(line: str) -> None:
        if line.startswith("[dpdeck] "):
            event = json.loads(line[len("[dpdeck] ") :])
            if event.get("event") == "run_dir":
                run_dir.append(Path(event["path"]))
        if re.match(r"^steps: 2 loss: ", line) and run_dir:
            (run_dir[0] / "save_quit").touch()

    code, out = launch_trainer(main, on_line=stop_after_two_steps, timeout=900)
    assert code == 0, out[-6000:]
    assert "save_quit: checkpoint written, exiting" in out and "TRAINING COMPLETE!" not in out
    # float8 storage of the frozen blocks, as the profile's transformer_dtype asks.
    assert re.search(r"float8", out), out[-3000:]
    metrics = run_metrics(run_dir[0])
    steps = [m["step"] for m in metrics if "loss" in m]
    assert steps[:2] == [1, 2] and all(m["loss"] == m["loss"] for m in metrics if "loss" in m)
    assert (run_dir[0] / "latest").read_text().strip().startswith("global_step")
