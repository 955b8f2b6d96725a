"""Learning-rate schedulers each training backend implements: one table for the profile check (validate)
and the built-in trainer's own config reader. Plain data, no imports, so the trainer stays light."""

from __future__ import annotations

# diffusion-pipe's train.py (8f83dbf, the `scheduler_type` chain) and the built-in trainer (engine.trainer.optim)
# know the same three; a newer checkout's own values come from profiles.dp_keys ("main.lr_scheduler").
LR_SCHEDULERS: dict[str, tuple[str, ...]] = {
    "diffusion-pipe": ("constant", "linear", "cosine"),
    "builtin": ("constant", "linear", "cosine"),
}


def allowed(backend: str) -> tuple[str, ...]:
    """The schedulers `backend` accepts; an undecided backend ("auto") gets diffusion-pipe's."""
    return LR_SCHEDULERS.get(backend, LR_SCHEDULERS["diffusion-pipe"])
