"""The sample images a run rendered while training: `RUN/samples/<step>_<n>.png` with `<step>_<n>.json` beside.

The run folder is the source of truth (as for saves): the deck's Run screen and `dpdeck samples JOB` read it,
so a restarted daemon or a finished job shows the same list. The trainer writes the sidecar first and renames
each file into place (engine/trainer/sampling.py), so a PNG listed here is whole.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SAMPLES_DIR = "samples"
NAME = re.compile(r"^(\d+)_(\d+)\.png$")


@dataclass(frozen=True)
class SampleImage:
    path: str
    step: int
    index: int  # which [sample] prompt
    prompt: str = ""
    epoch: int | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _typed(data: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(key)
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def list_samples(run_dir: Path | str | None) -> list[SampleImage]:
    """Every sample of the run, by prompt then step; [] before the run folder or its first sample exists."""
    if not run_dir:
        return []
    folder = Path(run_dir) / SAMPLES_DIR
    out: list[SampleImage] = []
    with contextlib.suppress(OSError):
        for png in folder.iterdir():
            m = NAME.match(png.name)
            if not m or not png.is_file():
                continue
            meta: dict[str, Any] = {}
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads(png.with_suffix(".json").read_text(encoding="utf-8"))
                meta = loaded if isinstance(loaded, dict) else {}
            out.append(
                SampleImage(
                    path=str(png),
                    step=int(m[1]),
                    index=int(m[2]),
                    prompt=_typed(meta, "prompt", str) or "",
                    epoch=_typed(meta, "epoch", int),
                    width=_typed(meta, "width", int),
                    height=_typed(meta, "height", int),
                    seed=_typed(meta, "seed", int),
                    steps=_typed(meta, "steps", int),
                    guidance=_typed(meta, "guidance", (int, float)),
                )
            )
    return sorted(out, key=lambda s: (s.index, s.step))


def by_prompt(samples: list[SampleImage]) -> dict[int, list[SampleImage]]:
    """Each prompt's samples, oldest step first."""
    out: dict[int, list[SampleImage]] = {}
    for s in samples:
        out.setdefault(s.index, []).append(s)
    return out
