"""The DDPM noise schedule of the SD1.5/SDXL families: alphas_cumprod, the SNRs the loss weights use, and
whether the model predicts v.

As diffusion-pipe (models/sdxl.py, 8f83dbf) and sd-scripts do it:
- the schedule comes from the model's scheduler config (a diffusers folder's `scheduler/`, or the folder in
  `model.diffusers_config` for a single file), else SD's scaled_linear 0.00085-0.012 over 1000 steps;
- `v_pred = true` also rescales the schedule to zero terminal SNR; `zero_terminal_snr = false` turns that off,
  `zero_terminal_snr = true` turns it on for eps models, and a scheduler config's `rescale_betas_zero_snr`
  asks for it too;
- the SNRs behind min_snr_gamma and debiased_estimation_loss are those of the schedule before the rescale
  (upstream computes them first, "to match sd-scripts"): after it the last step's SNR is 0, and a 1/sqrt(snr)
  weight would be unbounded there.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

DEFAULTS: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
}
PREDICTION_TYPES = {"epsilon": False, "v_prediction": True}


class ScheduleError(ValueError):
    """A scheduler config the DDPM families cannot train with."""


@dataclass(frozen=True)
class Schedule:
    alphas_cumprod: torch.Tensor  # what noising uses (zero terminal SNR applied when on)
    snr: torch.Tensor  # per timestep, of the schedule before any zero-terminal rescale
    v_pred: bool
    zero_terminal_snr: bool
    source: str  # where the schedule came from, for the run log

    def to(self, device: torch.device | str) -> Schedule:
        return replace(self, alphas_cumprod=self.alphas_cumprod.to(device), snr=self.snr.to(device))


def scheduler_config(model_cfg: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The scheduler_config.json the model folder carries ({} when none), and its path or why none."""
    for key in ("diffusers_path", "diffusers_config"):
        if model_cfg.get(key):
            path = Path(str(model_cfg[key])).expanduser() / "scheduler" / "scheduler_config.json"
            if path.is_file():
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    raise ScheduleError(f"{path}: unreadable scheduler config ({exc})") from exc
                if not isinstance(data, dict):
                    raise ScheduleError(f"{path}: expected a JSON object")
                return data, str(path)
    return {}, "SD defaults (no scheduler config)"


def betas_of(sched: dict[str, Any], where: str) -> torch.Tensor:
    start, end = (
        float(sched.get("beta_start", DEFAULTS["beta_start"])),
        float(sched.get("beta_end", DEFAULTS["beta_end"])),
    )
    n = int(sched.get("num_train_timesteps", DEFAULTS["num_train_timesteps"]))
    kind = sched.get("beta_schedule", DEFAULTS["beta_schedule"])
    if kind == "linear":
        return torch.linspace(start, end, n, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(math.sqrt(start), math.sqrt(end), n, dtype=torch.float64) ** 2
    raise ScheduleError(
        f"{where}: beta_schedule {kind!r} is not supported (expected linear or scaled_linear)"
    )


def zero_terminal(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Shift sqrt(alphas_cumprod) so the last step is pure noise, scaled so the first step is unchanged
    (Lin et al. 2023, https://arxiv.org/abs/2305.08891)."""
    s = alphas_cumprod.sqrt()
    s0, s_t = s[0].clone(), s[-1].clone()
    return ((s - s_t) * s0 / (s0 - s_t)) ** 2


def v_pred_of(model_cfg: dict[str, Any], sched: dict[str, Any], where: str) -> bool:
    """The profile's `v_pred` when it sets one; else the scheduler config's prediction_type."""
    if "v_pred" in model_cfg:
        return bool(model_cfg["v_pred"])
    kind = sched.get("prediction_type", DEFAULTS["prediction_type"])
    if kind not in PREDICTION_TYPES:
        raise ScheduleError(
            f"{where}: prediction_type {kind!r} is not supported (expected {' or '.join(PREDICTION_TYPES)})"
        )
    return PREDICTION_TYPES[kind]


def schedule_of(model_cfg: dict[str, Any]) -> Schedule:
    sched, where = scheduler_config(model_cfg)
    ab = torch.cumprod(1 - betas_of(sched, where), dim=0)
    snr = ab / (1 - ab)
    v_pred = v_pred_of(model_cfg, sched, where)
    ztsnr = bool(model_cfg.get("zero_terminal_snr", v_pred or bool(sched.get("rescale_betas_zero_snr"))))
    if ztsnr:
        ab = zero_terminal(ab)
    # Above 0: the rescaled last step is exactly 0, and the probe and samplers divide by it.
    return Schedule(ab.clamp(min=1e-8).float(), snr.float(), v_pred, ztsnr, where)
