"""Rectified-flow training as diffusion-pipe does it for Flux / Chroma (models/flux.py, models/chroma.py, 8f83dbf).

- t ~ sigmoid(sigmoid_scale * N(0, 1)) (`timestep_sample_method = 'logit_normal'`, the default) or U(0, 1)
  (`'uniform'`);
- then `shift = s` maps t -> s*t / (1 + (s-1)*t); without it, `flux_shift = true` applies Flux's
  resolution-dependent shift: mu linear in the packed token count (0.5 at 256 tokens, 1.15 at 4096) and
  t -> e^mu / (e^mu + 1/t - 1); Lumina 2 reads the same shift under its own key (RESOLUTION_SHIFT_KEYS);
- x_t = (1 - t) * latents + t * noise; the model predicts the velocity noise - latents; plain MSE.

The diffusers Flux / Chroma transformers take t in [0, 1] (their forward multiplies by 1000), so t goes to the
model as is.
"""

from __future__ import annotations

import math
from typing import Any

import torch

SAMPLE_METHODS = ("logit_normal", "uniform")
# The key that turns on the resolution-dependent shift, by model.type: diffusion-pipe's models/lumina_2.py reads
# `lumina_shift` (and not flux_shift); every other flow model reads `flux_shift`.
RESOLUTION_SHIFT_KEYS: dict[str, str] = {"lumina_2": "lumina_shift"}


class FlowConfigError(ValueError):
    """A flow-matching setting the trainer cannot use."""


def check_flow_config(model_cfg: dict[str, Any]) -> None:
    method = model_cfg.get("timestep_sample_method", "logit_normal")
    if method not in SAMPLE_METHODS:
        raise FlowConfigError(
            f"model.timestep_sample_method: expected one of {', '.join(SAMPLE_METHODS)} (found {method!r})"
        )
    shift = model_cfg.get("shift")
    if shift is not None and (isinstance(shift, bool) or not isinstance(shift, (int, float)) or shift <= 0):
        raise FlowConfigError(f"model.shift: expected a number > 0 (found {shift!r})")


def lin_mu(tokens: float, x1: float = 256, y1: float = 0.5, x2: float = 4096, y2: float = 1.15) -> float:
    """Flux's resolution-dependent mu: a line through (256 tokens, 0.5) and (4096 tokens, 1.15)."""
    m = (y2 - y1) / (x2 - x1)
    return m * tokens + (y1 - m * x1)


def time_shift(mu: float, sigma: float, t: torch.Tensor) -> torch.Tensor:
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


def shift_t(t: torch.Tensor, shift: float) -> torch.Tensor:
    """The fixed shift of SD3 / diffusion-pipe: larger shift moves t toward 1 (more noise)."""
    return (t * shift) / (1 + (shift - 1) * t)


def sample_t(
    model_cfg: dict[str, Any],
    n: int,
    latent_hw: tuple[int, int],
    generator: torch.Generator | None = None,
    quantile: float | None = None,
) -> torch.Tensor:
    """n timesteps in (0, 1) as diffusion-pipe draws them; `quantile` gives the fixed eval point instead.

    latent_hw is the latent's (h, w) before 2x2 packing: flux_shift counts (h/2)*(w/2) tokens.
    """
    method = model_cfg.get("timestep_sample_method", "logit_normal")
    if method not in SAMPLE_METHODS:
        raise FlowConfigError(f"model.timestep_sample_method: {method!r} is not one of {SAMPLE_METHODS}")
    if method == "logit_normal":
        dist: torch.distributions.Distribution = torch.distributions.Normal(0.0, 1.0)
    else:
        dist = torch.distributions.Uniform(0.0, 1.0)
    if quantile is not None:
        t = dist.icdf(torch.full((n,), float(quantile)))
    elif method == "logit_normal":
        t = torch.randn((n,), generator=generator)
    else:
        t = torch.rand((n,), generator=generator)
    if method == "logit_normal":
        t = torch.sigmoid(t * float(model_cfg.get("sigmoid_scale", 1.0)))
    shift = model_cfg.get("shift")
    if shift:
        t = shift_t(t, float(shift))
    elif model_cfg.get(RESOLUTION_SHIFT_KEYS.get(str(model_cfg.get("type")), "flux_shift"), False):
        h, w = latent_hw
        t = time_shift(lin_mu((h // 2) * (w // 2)), 1.0, t)
    return t


def noisy_and_target(
    latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t on the straight line from the data (t=0) to the noise (t=1), and the velocity target."""
    te = t.view(-1, *([1] * (latents.ndim - 1))).to(latents.dtype)
    return (1 - te) * latents + te * noise, noise - latents


def flow_loss(
    denoise: Any,
    latents: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    kwargs: dict[str, Any],
    *,
    dtype: torch.dtype,
) -> torch.Tensor:
    """MSE between the model's velocity and noise - latents; `denoise(x_t, t, kwargs)` runs the model."""
    x_t, target = noisy_and_target(latents.float(), noise.float(), t.float())
    pred = denoise(x_t.to(dtype), t.to(dtype), kwargs)
    return torch.nn.functional.mse_loss(pred.float(), target.float())


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, C*4) in 2x2 patches, as diffusers' FluxPipeline._pack_latents."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of pack_latents for latent size (h, w)."""
    b, _, d = tokens.shape
    c = d // 4
    x = tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def latent_image_ids(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(h/2 * w/2, 3) rotary position ids (0, row, col) of the packed tokens, as FluxPipeline builds them.
    Built on `device` (in float32, then cast): a copy from the host would wait for the queued GPU work."""
    ids = torch.zeros(h // 2, w // 2, 3, device=device)
    ids[..., 1] = torch.arange(h // 2, device=device)[:, None]
    ids[..., 2] = torch.arange(w // 2, device=device)[None, :]
    return ids.reshape(-1, 3).to(dtype=dtype)
