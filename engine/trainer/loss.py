"""The denoising loss of one micro-batch: shared by the trainer and bench/bench_trainer_gpu.py so the
benchmark times exactly the step the trainer runs."""

from __future__ import annotations

from typing import Any

import torch


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
) -> torch.Tensor:
    """DDPM training loss (eps or v target) with optional min-SNR-gamma and debiased weighting (as sd-scripts)."""
    ab = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    noisy = ab.sqrt() * latents + (1 - ab).sqrt() * noise
    target = ab.sqrt() * noise - (1 - ab).sqrt() * latents if v_pred else noise
    pred = model(noisy.to(dtype), timesteps, **unet_kwargs).sample
    per_sample = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none").mean(
        dim=(1, 2, 3)
    )
    snr = (ab / (1 - ab)).view(-1)
    if min_snr_gamma:
        per_sample = per_sample * torch.clamp(snr, max=float(min_snr_gamma)) / (snr + 1 if v_pred else snr)
    if debiased:
        per_sample = per_sample / torch.sqrt(torch.clamp(snr, max=1000.0))
    return per_sample.mean()
