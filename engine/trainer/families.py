"""The built-in model families by profile `model.type`: the one place that knows every family.

family.py holds only the interface the families implement; keeping this table out of it means no family
module imports a module that imports it back.
"""

from __future__ import annotations

from engine.trainer.chroma import Chroma
from engine.trainer.family import Family, ModelLoadError
from engine.trainer.flux import Flux
from engine.trainer.sd15 import SD15
from engine.trainer.sdxl import SDXL

FAMILIES: dict[str, type[Family]] = {"sd15": SD15, "sdxl": SDXL, "chroma": Chroma, "flux": Flux}


def get_family(model_type: str) -> type[Family]:
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise ModelLoadError(f"model.type: no built-in family {model_type!r}") from None
