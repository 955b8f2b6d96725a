"""The DDPM schedule and loss weights against diffusion-pipe's own functions (models/sdxl.py at 8f83dbf, which
copies sd-scripts'), run here on a real diffusers DDPMScheduler: not against dpdeck's reading of them."""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from engine.trainer.ddpm import ScheduleError, schedule_of
from engine.trainer.loss import loss_weights

UPSTREAM = Path(__file__).resolve().parents[2] / "shared" / "upstream" / "diffusion-pipe"
FUNCTIONS = (
    "prepare_scheduler_for_custom_training",
    "fix_noise_scheduler_betas_for_zero_terminal_snr",
    "apply_snr_weight",
    "apply_debiased_estimation",
)


@pytest.fixture(scope="module")
def upstream() -> SimpleNamespace:
    """Upstream's schedule and weighting functions, taken out of models/sdxl.py by name and run as written (the
    module itself imports deepspeed and upstream's package layout, so it is not imported whole)."""
    source = (UPSTREAM / "models" / "sdxl.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    picked = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in FUNCTIONS]
    assert sorted(n.name for n in picked) == sorted(FUNCTIONS), "upstream renamed a function this test runs"
    namespace: dict[str, Any] = {"torch": torch, "logger": logging.getLogger("upstream")}
    exec(compile(ast.Module(body=picked, type_ignores=[]), "models/sdxl.py", "exec"), namespace)  # noqa: S102
    return SimpleNamespace(**{name: namespace[name] for name in FUNCTIONS})


def upstream_scheduler(up: SimpleNamespace, v_pred: bool, **config: Any) -> Any:
    from diffusers import DDPMScheduler

    kwargs = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    scheduler = DDPMScheduler(**{**kwargs, **config, "clip_sample": False})
    up.prepare_scheduler_for_custom_training(scheduler)  # as upstream: SNRs first, then the rescale
    if v_pred:
        up.fix_noise_scheduler_betas_for_zero_terminal_snr(scheduler)
    return scheduler


T = torch.tensor([0, 1, 10, 250, 500, 750, 990, 998, 999])


@pytest.mark.parametrize("v_pred", [False, True])
def test_schedule_and_snr_match_upstream(upstream: SimpleNamespace, v_pred: bool) -> None:
    theirs = upstream_scheduler(upstream, v_pred)
    ours = schedule_of({"v_pred": v_pred})
    assert ours.zero_terminal_snr is v_pred  # v_pred turns on zero terminal SNR, as upstream does
    assert torch.allclose(ours.snr, theirs.all_snr.float(), rtol=1e-4)
    # The last step is pure noise after the rescale (ours keeps it just above 0).
    assert torch.allclose(ours.alphas_cumprod, theirs.alphas_cumprod.float().clamp(min=1e-8), atol=1e-6)


@pytest.mark.parametrize("v_pred", [False, True])
@pytest.mark.parametrize("gamma", [None, 5.0])
@pytest.mark.parametrize("debiased", [False, True])
def test_loss_weights_match_upstream(
    upstream: SimpleNamespace, v_pred: bool, gamma: float | None, debiased: bool
) -> None:
    theirs = upstream_scheduler(upstream, v_pred)
    expected = torch.ones(len(T))
    if gamma:
        expected = upstream.apply_snr_weight(expected, T, theirs, gamma, v_prediction=v_pred)
    if debiased:
        expected = upstream.apply_debiased_estimation(expected, T, theirs, v_prediction=v_pred)
    ours = schedule_of({"v_pred": v_pred})
    got = loss_weights(ours.snr[T], v_pred=v_pred, min_snr_gamma=gamma, debiased=debiased)
    assert torch.allclose(got, expected.float(), rtol=1e-4), (got, expected)
    if v_pred and debiased:  # the reported bug: up to ~10,000x at t=999 with zero-terminal SNR
        assert float(got.max()) <= 1.0


def write_scheduler(folder: Path, **config: Any) -> Path:
    (folder / "scheduler").mkdir(parents=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    return folder


def test_prediction_type_and_zero_snr_come_from_the_scheduler_config(tmp_path: Path) -> None:
    vpred = write_scheduler(
        tmp_path / "vpred",
        prediction_type="v_prediction",
        beta_schedule="linear",
        beta_start=0.0001,
        beta_end=0.02,
    )
    s = schedule_of({"diffusers_path": str(vpred)})
    assert s.v_pred and s.zero_terminal_snr and s.source.endswith("scheduler_config.json")
    assert torch.allclose(
        s.snr[:1], torch.tensor([(1 - 0.0001) / 0.0001]), rtol=1e-4
    )  # the linear betas used
    # The profile's own keys win over the folder's: v_pred = false, zero_terminal_snr = false.
    s = schedule_of({"diffusers_path": str(vpred), "v_pred": False})
    assert not s.v_pred and not s.zero_terminal_snr
    s = schedule_of({"diffusers_path": str(vpred), "zero_terminal_snr": False})
    assert s.v_pred and not s.zero_terminal_snr and float(s.alphas_cumprod[-1]) > 1e-6
    # A single file reads the scheduler of the folder model.diffusers_config names.
    s = schedule_of({"checkpoint_path": "x.safetensors", "diffusers_config": str(vpred)})
    assert s.v_pred
    ztsnr = write_scheduler(tmp_path / "ztsnr", rescale_betas_zero_snr=True)
    assert schedule_of({"diffusers_path": str(ztsnr)}).zero_terminal_snr


def test_bad_scheduler_configs_name_the_file_and_key(tmp_path: Path) -> None:
    bad = write_scheduler(tmp_path / "bad", prediction_type="sample")
    with pytest.raises(ScheduleError, match=r"scheduler_config\.json: prediction_type 'sample'"):
        schedule_of({"diffusers_path": str(bad)})
    cosine = write_scheduler(tmp_path / "cos", beta_schedule="squaredcos_cap_v2")
    with pytest.raises(ScheduleError, match="beta_schedule 'squaredcos_cap_v2'"):
        schedule_of({"diffusers_path": str(cosine)})


def profile(tmp_path: Path, main_extra: str = "", model_extra: str = "") -> Path:
    (tmp_path / "dataset.toml").write_text("[[directory]]\npath = 'images'\n")
    main = tmp_path / "main.toml"
    main.write_text(
        f"output_dir = 'out'\ndataset = 'dataset.toml'\nepochs = 1\nsave_every_n_epochs = 1\n{main_extra}\n"
        f"[model]\ntype = 'sd15'\ndiffusers_path = 'sd15'\ndtype = 'float32'\n{model_extra}\n"
        "[adapter]\ntype = 'lora'\nrank = 4\n[optimizer]\ntype = 'adamw'\nlr = 1e-4\n"
    )
    return main


def test_uncond_fraction_is_read_where_diffusion_pipe_reads_it(tmp_path: Path) -> None:
    from engine.trainer.config import TrainConfigError, load_train_config

    assert load_train_config(profile(tmp_path, "uncond_fraction = 0.25")).uncond_fraction == 0.25
    assert load_train_config(profile(tmp_path, model_extra="caption_dropout = 0.5")).uncond_fraction == 0.5
    assert load_train_config(profile(tmp_path)).uncond_fraction == 0.0
    with pytest.raises(TrainConfigError, match=r"main\.toml: uncond_fraction: set once: .* disagree"):
        load_train_config(profile(tmp_path, "uncond_fraction = 0.25", "caption_dropout = 0.5"))
    with pytest.raises(TrainConfigError, match=r"uncond_fraction: expected a number from 0 to 1 \(found 2\)"):
        load_train_config(profile(tmp_path, "uncond_fraction = 2"))


def test_keys_the_trainer_does_not_read_are_warned_as_validation_warns(tmp_path: Path) -> None:
    from engine.trainer.config import load_train_config
    from profiles.document import load_profile
    from profiles.validate import validate_profile

    main = profile(tmp_path, "warmup_stepz = 10", "min_snr_gama = 5")
    warnings = load_train_config(main).warnings
    expected = [p for p in validate_profile(load_profile(main), backend="builtin", check_paths="off")
                if p.code == "unknown_key"]
    assert len(warnings) == len(expected) == 2
    assert any("warmup_stepz" in w and "did you mean 'warmup_steps'" in w for w in warnings)
    assert any("model.min_snr_gama" in w and "did you mean 'min_snr_gamma'" in w for w in warnings)
    assert load_train_config(profile(tmp_path)).warnings == []
