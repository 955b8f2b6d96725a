"""Check a profile the way diffusion-pipe (or the built-in trainer) would, before a GPU hour is spent on it.

Every finding is a `Problem` naming the file, the key path, the line, what was found and what is expected.
Bad content never raises: only an unreadable or unparseable file does, earlier, in `profiles.document`.
The checks (one module per area in `profiles.rules`) work on plain data with type guards, so one wrong value
never hides the rest; this module only runs them in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from profiles import dp_keys
from profiles import model_types as mt
from profiles.backend_choice import choose_for_model
from profiles.document import Profile
from profiles.rules import (
    adapter,
    backends,
    checkout_required,
    dataset_refs,
    dtypes,
    main,
    model,
    monitoring,
    optimizer,
    paths,
    placeholders,
    sample,
    unknown_keys,
)
from profiles.rules.base import Ctx, Problem, has_errors, label
from profiles.rules.schema_errors import schema_problems
from profiles.schema import MainConfig

__all__ = ["Problem", "has_errors", "validate_profile"]


def _check_main(ctx: Ctx, profile: Profile, num_gpus: int | None) -> None:
    toml = profile.main
    data = toml.data()
    schema_problems(ctx, toml, data, MainConfig)
    unknown_keys.check_table(ctx, toml, data, "main", [])
    placeholders.check(ctx, toml, data)
    main.check_frequencies(ctx, toml, data)
    mtype = model.check(ctx, toml, data.get("model"))
    adapter.check(ctx, toml, data.get("adapter"))
    optimizer.check(ctx, toml, data.get("optimizer"))
    monitoring.check(ctx, toml, data.get("monitoring"))
    main.check_training(ctx, toml, data, num_gpus)
    main.check_eval_datasets(ctx, toml, data)
    if isinstance(data.get("save_dtype"), str):
        dtypes.check(ctx, toml, "save_dtype", data["save_dtype"])
    backends.check(ctx, toml, data, mtype)
    sample.check(ctx, toml, data, mtype)
    checkout_required.check(ctx, toml, data, mtype)
    paths.check_main(ctx, profile, data, mtype)


def validate_profile(
    profile: Profile,
    *,
    backend: str = "diffusion-pipe",
    check_paths: str = "error",
    num_gpus: int | None = None,
    roots: list[Path] | None = None,
    checkout: Path | str | None | Literal["configured"] = "configured",
) -> list[Problem]:
    """All problems of a profile, errors first, in file/line order within each severity.

    backend: "diffusion-pipe", "builtin" or "auto" (what the queue would pick: profiles.backend_choice).
    check_paths: "error" on the GPU box, "warn" away from it (paths reported as warnings), "off".
    roots: extra folders to resolve relative paths against (e.g. the diffusion-pipe checkout).
    checkout: the diffusion-pipe checkout whose code decides which keys are read; "configured" (the default)
    follows the `diffusion_pipe.path` setting, None uses dpdeck's built-in knowledge of upstream 8f83dbf.
    """
    if check_paths not in ("error", "warn", "off"):
        raise ValueError(f"check_paths must be 'error', 'warn' or 'off', not {check_paths!r}")
    if backend == "auto":
        # The queue's own choice; with none possible, check against diffusion-pipe (which would train it).
        chosen = choose_for_model(profile.main.data().get("model"), profile.model_type)
        backend = chosen.backend or "diffusion-pipe"
    if backend not in mt.BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(mt.BACKENDS)} or 'auto', not {backend!r}")
    keys = dp_keys.configured() if checkout == "configured" else dp_keys.keys_for(checkout)
    ctx = Ctx(backend=backend, check_paths=check_paths, roots=list(roots or []), keys=keys)  # type: ignore[arg-type]
    _check_main(ctx, profile, num_gpus)
    dataset_refs.check(ctx, profile, profile.model_type)
    order = {"error": 0, "warning": 1}
    return sorted(
        ctx.problems, key=lambda p: (order[p.severity], p.file != label(profile.main), p.file, p.line or 0)
    )
