"""The main file's references to dataset TOMLs (`dataset`, `eval_datasets`): each found and then checked."""

from __future__ import annotations

from profiles.document import Profile
from profiles.rules import dataset
from profiles.rules.base import Ctx


def check(ctx: Ctx, profile: Profile, model_type: str | None) -> None:
    toml = profile.main
    data = toml.data()
    ref = data.get("dataset")
    if isinstance(ref, str) and not ctx.holds_placeholder(toml, "dataset"):
        if profile.dataset is not None:
            dataset.check(ctx, profile.dataset, model_type)
        elif ctx.check_paths != "off":
            ctx.add(
                "error",
                toml,
                "dataset",
                "dataset TOML not found (relative paths are tried beside this file and in the current folder)",
                found=ref,
                expected="the path of an existing dataset TOML",
                code="path",
            )
    evals = data.get("eval_datasets")
    if not isinstance(evals, list):
        return
    for i, entry in enumerate(evals):
        if isinstance(entry, dict):
            name, config = entry.get("name"), entry.get("config")
            key = f"eval_datasets[{i}].config"
        else:
            name, config, key = None, entry, f"eval_datasets[{i}]"
        if not isinstance(config, str) or ctx.holds_placeholder(toml, key):
            continue
        loaded = profile.eval_datasets.get(str(name if name is not None else config))
        if loaded is not None:
            dataset.check(ctx, loaded, model_type)
        elif ctx.check_paths != "off":
            ctx.add(
                "error",
                toml,
                key,
                "eval dataset TOML not found",
                found=config,
                expected="the path of an existing dataset TOML",
                code="path",
            )
