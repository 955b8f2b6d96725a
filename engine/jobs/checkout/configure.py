"""Step 6: point dpdeck at the new checkout, through the same settings writer as `dpdeck config set`."""

from __future__ import annotations

from pathlib import Path

from statefiles import settings


def current() -> tuple[str | None, str | None]:
    dp = settings.load().diffusion_pipe
    return dp.path, dp.python


def point_at(checkout: Path, python: Path) -> bool:
    """Set both keys; False when they already held these values (nothing written)."""
    if current() == (str(checkout), str(python)):
        return False
    settings.set_value("diffusion_pipe.path", str(checkout))
    settings.set_value("diffusion_pipe.python", str(python))
    return True
