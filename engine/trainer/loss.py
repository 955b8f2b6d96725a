"""The denoising loss of one micro-batch: shared by the trainer and bench/bench_trainer_gpu.py so the
benchmark times exactly the step the trainer runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from engine.trainer.flow import flow_loss

if TYPE_CHECKING:
    from engine.trainer.family import Family

# 1/sqrt(snr) at t=0 (snr ~ 1e4) would weigh the least noisy step 100x down; sd-scripts and diffusion-pipe cap
# the SNR there.
DEBIASED_SNR_CAP = 1000.0


def loss_weights(
    snr: torch.Tensor, *, v_pred: bool, min_snr_gamma: float | None = None, debiased: bool = False
) -> torch.Tensor:
    """Per-sample weights from each sample's SNR (of the schedule before a zero-terminal rescale), as
    diffusion-pipe's apply_snr_weight / apply_debiased_estimation: with v-prediction both divide by snr + 1
    (the v target's own scale), not by snr."""
    weight = torch.ones_like(snr)
    if min_snr_gamma:
        weight = weight * torch.clamp(snr, max=float(min_snr_gamma)) / (snr + 1 if v_pred else snr)
    if debiased:
        capped = torch.clamp(snr, max=DEBIASED_SNR_CAP)
        weight = weight / (capped + 1) if v_pred else weight / torch.sqrt(capped)
    return weight


def denoise_loss(
    model: Any,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    unet_kwargs: dict[str, Any],
    *,
    dtype: torch.dtype,
    v_pred: bool = False,
    min_snr_gamma: float | None = None,
    debiased: bool = False,
    snr: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDPM training loss (eps or v target) with optional min-SNR-gamma and debiased weighting.

    `snr`: per-timestep SNR for the weights (engine.trainer.ddpm.Schedule.snr); by default that of
    `alphas_cumprod` itself.
    """
    ab = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    noisy = ab.sqrt() * latents + (1 - ab).sqrt() * noise
    target = ab.sqrt() * noise - (1 - ab).sqrt() * latents if v_pred else noise
    pred = model(noisy.to(dtype), timesteps, **unet_kwargs).sample
    per_sample = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none").mean(
        dim=(1, 2, 3)
    )
    if min_snr_gamma or debiased:
        table = snr if snr is not None else alphas_cumprod / (1 - alphas_cumprod)
        per_sample = per_sample * loss_weights(
            table[timesteps].float(), v_pred=v_pred, min_snr_gamma=min_snr_gamma, debiased=debiased
        )
    return per_sample.mean()


@dataclass(frozen=True)
class DdpmTerms:
    """What a DDPM family's loss needs beyond the batch (engine.trainer.ddpm.Schedule and the profile)."""

    alphas_cumprod: torch.Tensor
    v_pred: bool = False
    snr: torch.Tensor | None = None
    min_snr_gamma: float | None = None
    debiased: bool = False


def step_loss(family: Family, model: Any, batch: dict[str, Any], ddpm: DdpmTerms | None) -> torch.Tensor:
    """A micro-batch's training loss, as the trainer computes it (and bench/bench_trainer_gpu.py times it):
    batch holds `latents`, `noise`, `t` and the denoiser's `kwargs` on the device; ddpm None = flow matching
    through the family's own forward (packing into tokens is the family's business)."""
    if ddpm is None:
        return flow_loss(
            lambda noisy, t, kw: family.denoise(model, noisy, t, kw),
            batch["latents"],
            batch["noise"],
            batch["t"],
            batch["kwargs"],
            dtype=family.dtype,
        )
    return denoise_loss(
        model,
        batch["latents"],
        batch["noise"],
        batch["t"],
        ddpm.alphas_cumprod,
        batch["kwargs"],
        dtype=family.dtype,
        v_pred=ddpm.v_pred,
        snr=ddpm.snr,
        min_snr_gamma=ddpm.min_snr_gamma,
        debiased=ddpm.debiased,
    )
