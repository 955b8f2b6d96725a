"""The [monitoring] table: known keys, no W&B key stored in the profile, the names W&B logging needs."""

from __future__ import annotations

from typing import Any

from profiles.document import TomlFile
from profiles.rules import unknown_keys
from profiles.rules.base import SECRET_KEYS, Ctx
from profiles.rules.placeholders import PLACEHOLDER


def check(ctx: Ctx, toml: TomlFile, monitoring: Any) -> None:
    if not isinstance(monitoring, dict):
        return
    unknown_keys.check_table(ctx, toml, monitoring, "monitoring", ["monitoring"])
    for key in SECRET_KEYS:
        value = monitoring.get(key)
        if isinstance(value, str) and value.strip() and not PLACEHOLDER.search(value) and set(value) != {"*"}:
            ctx.add(
                "warning",
                toml,
                f"monitoring.{key}",
                "a W&B API key is stored in the profile: move it to the secrets store "
                f"(`dpdeck secrets set {key}`) and delete this line",
                raw_found="***",
                expected="no key in the profile",
                code="secret",
            )
    if monitoring.get("enable_wandb") is True:
        for key in ("wandb_tracker_name", "wandb_run_name"):
            if not isinstance(monitoring.get(key), str) or not monitoring.get(key):
                # A warning, not an error: the launcher fills monitoring keys in the frozen job copy.
                ctx.add(
                    "warning",
                    toml,
                    f"monitoring.{key}",
                    "diffusion-pipe reads this when enable_wandb = true (a KeyError when absent)",
                    found=monitoring.get(key),
                    expected="a W&B project / run name",
                    code="required",
                )
