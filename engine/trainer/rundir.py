"""Run folders in diffusion-pipe's layout, profile copies without secrets, and resume discovery."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from engine.datasets.buckets import BucketPlan
from statefiles.atomic import atomic_write_text

RUN_DIR_RE = re.compile(r"^\d{8}_\d{2}-\d{2}-\d{2}$")
MANIFEST = "dataset_manifest.json"
TRAINER_STATE = "dpdeck_trainer.json"


class ResumeError(RuntimeError):
    pass


def new_run_dir(output_dir: Path) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    while True:
        path = output_dir / time.strftime("%Y%m%d_%H-%M-%S", time.gmtime())
        try:
            path.mkdir()
            return path
        except FileExistsError:  # two runs in one second: wait for the next name
            time.sleep(0.3)


def find_resume_dir(output_dir: Path, name: str | None) -> tuple[Path, str | None]:
    """(run folder, checkpoint tag or None for `latest`) for --resume_from_checkpoint [NAME].

    NAME may be a run folder name in output_dir or a checkpoint tag (global_stepN) of the newest run.
    """
    runs = (
        sorted(p for p in output_dir.glob("*") if p.is_dir() and RUN_DIR_RE.match(p.name))
        if output_dir.is_dir()
        else []
    )
    with_ckpt = [p for p in runs if (p / "latest").is_file()]
    if name:
        if (output_dir / name / "latest").is_file():
            return output_dir / name, None
        for run in reversed(with_ckpt):
            if (run / name).is_dir():
                return run, name
        raise ResumeError(
            f"--resume_from_checkpoint {name}: no run folder {output_dir / name} with a checkpoint, and no "
            f"checkpoint {name} in {', '.join(p.name for p in with_ckpt) or 'any run folder'}"
        )
    if not with_ckpt:
        raise ResumeError(
            f"--resume_from_checkpoint: no run folder in {output_dir} holds a DeepSpeed checkpoint (latest)"
        )
    return with_ckpt[-1], None


def copy_profile(src: Path, run_dir: Path) -> None:
    """Copy a profile TOML into the run folder with secret-carrying keys removed."""
    text = src.read_text(encoding="utf-8")
    try:
        from profiles.secrets import strip_secrets

        text, _ = strip_secrets(text, str(src))
    except ImportError:
        text = (
            "\n".join(line for line in text.splitlines() if not re.search(r"(api_key|token)\s*=", line))
            + "\n"
        )
    atomic_write_text(run_dir / src.name, text)


def manifest_entries(plan: BucketPlan) -> dict[str, str]:
    """path -> 'size|mtime|caption|buckets' for every file the plan trains on."""
    out: dict[str, list[str]] = {}
    for b in plan.buckets:
        for bi in b.items:
            it = bi.item
            entry = out.setdefault(str(it.path), [f"{it.size_bytes}|{it.mtime_ns}|{it.caption}", ""])
            size = f"{b.width}x{b.height}"
            if size not in entry[1].split(","):
                entry[1] = ",".join(filter(None, [*entry[1].split(","), size]))
    return {k: f"{v[0]}|{v[1]}" for k, v in out.items()}


def write_manifest(run_dir: Path, plan: BucketPlan) -> None:
    atomic_write_text(run_dir / MANIFEST, json.dumps(manifest_entries(plan), indent=1, sort_keys=True))


def explain_dataset_change(run_dir: Path, plan: BucketPlan) -> list[str]:
    """What changed in the dataset since the run started; empty when nothing did."""
    path = run_dir / MANIFEST
    if not path.is_file():
        return [f"{path} is missing; cannot tell whether the dataset changed"]
    old = json.loads(path.read_text())
    new = manifest_entries(plan)
    lines = []
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(k for k in set(old) & set(new) if old[k] != new[k])
    for label, names in (
        ("added", added),
        ("removed", removed),
        ("changed (size, mtime, caption or bucket)", changed),
    ):
        if names:
            shown = ", ".join(Path(n).name for n in names[:5]) + (
                f" and {len(names) - 5} more" if len(names) > 5 else ""
            )
            lines.append(f"{len(names)} file(s) {label}: {shown}")
    return lines


def write_trainer_identity(run_dir: Path, identity: dict[str, object]) -> None:
    """What the checkpoints in this run folder hold (family, rank, targets), to refuse a mismatched resume."""
    atomic_write_text(run_dir / TRAINER_STATE, json.dumps(identity, indent=1, sort_keys=True))


def check_trainer_identity(run_dir: Path, identity: dict[str, object]) -> None:
    path = run_dir / TRAINER_STATE
    if not path.is_file():
        return  # not written by this trainer version: DeepSpeed's own checks are all we have
    found = json.loads(path.read_text())
    diffs = [
        f"{k}: checkpoint has {found.get(k)!r}, profile has {v!r}"
        for k, v in identity.items()
        if found.get(k) != v
    ]
    if diffs:
        raise ResumeError(
            f"{run_dir}: its checkpoints were written by a different setup, cannot resume: "
            + "; ".join(diffs)
        )
