"""Which trainer runs a profile, and why: the one rule the queue, `profile validate` and the editor share.

Asked for by name, that backend. Otherwise (auto), in order:
  1. a type only dpdeck trains (sd15) runs on the built-in trainer;
  2. keys only the built-in trainer reads (sdxl from a diffusers folder) run there;
  3. a configured diffusion-pipe checkout runs every type it knows;
  4. without one, a type the built-in trainer has a family for runs there;
  5. anything else has no backend until diffusion-pipe is configured.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from profiles import model_types as mt

AUTO = "auto"
LABELS: dict[str, str] = {"builtin": "built-in trainer", "diffusion-pipe": "diffusion-pipe"}


@dataclass(frozen=True)
class BackendChoice:
    """`backend` is None when nothing can run the profile as configured; `reason` then says what to do."""

    backend: str | None
    reason: str

    def describe(self) -> str:
        """One line for people: 'runs on: built-in trainer (no diffusion-pipe checkout configured)'."""
        if self.backend is None:
            return f"runs on: nothing yet ({self.reason})"
        return f"runs on: {LABELS[self.backend]} ({self.reason})"


def configured_checkout() -> str | None:
    from statefiles import settings

    return settings.load().diffusion_pipe.path


def choose_backend(
    model_type: str | None,
    model_keys: Iterable[str] = (),
    requested: str = AUTO,
    checkout: str | None = None,
) -> BackendChoice:
    """The backend for a profile of `model_type` whose `[model]` table sets `model_keys`.

    `checkout`: the configured diffusion-pipe path (callers pass configured_checkout(); None = none).
    """
    if requested in mt.BACKENDS:
        return BackendChoice(requested, "asked for")
    if requested != AUTO:
        raise ValueError(f"unknown backend {requested!r}; expected auto, builtin or diffusion-pipe")
    mtype = model_type or ""
    if mtype in mt.DPDECK_ONLY_TYPES:
        return BackendChoice("builtin", f"{mtype} is dpdeck's own type")
    spec = mt.get_spec(mtype)
    if spec is not None and spec.needs_builtin(set(model_keys)):
        keys = " or ".join("+".join(alt) for alt in spec.requirements())
        return BackendChoice("builtin", f"diffusion-pipe's {mtype} reads {keys}, which this profile lacks")
    if checkout and mtype in mt.MODEL_TYPES:
        return BackendChoice("diffusion-pipe", f"diffusion-pipe at {checkout}")
    if mtype in mt.BUILTIN_TYPES:
        return BackendChoice("builtin", "no diffusion-pipe checkout configured")
    return BackendChoice(
        None,
        f"model type {mtype!r} is trained by diffusion-pipe, which is not configured: run "
        "`dpdeck backend install diffusion-pipe` or `dpdeck config set diffusion_pipe.path /path/to/diffusion-pipe`"
        f" (the built-in trainer trains {', '.join(sorted(mt.BUILTIN_TYPES))})",
    )


def choose_for_model(model: object, model_type: str | None, requested: str = AUTO) -> BackendChoice:
    """choose_backend for a profile's parsed `[model]` table, against the configured checkout."""
    keys = [k for k, v in model.items() if v] if isinstance(model, dict) else []
    checkout = configured_checkout() if requested == AUTO else None
    return choose_backend(model_type, keys, requested, checkout)
