"""The built-in model families by profile `model.type`: the one place that knows every family's class.

A table of import paths, not classes: a family module is imported only when a run asks for it, so a Chroma run
never pays for the SD3 or Qwen-Image imports, and one broken optional dependency cannot stop every family.
Which types the built-in trainer trains is `profiles.model_types.BUILTIN_TYPES` (validation and the queue read
it); tests hold this table's keys equal to it.
"""

from __future__ import annotations

from importlib import import_module

from engine.trainer.family import Family, ModelLoadError

FAMILY_CLASSES: dict[str, str] = {
    "sd15": "engine.trainer.sd15:SD15",
    "sdxl": "engine.trainer.sdxl:SDXL",
    "chroma": "engine.trainer.chroma:Chroma",
    "flux": "engine.trainer.flux:Flux",
    "lumina_2": "engine.trainer.lumina2:Lumina2",
    "qwen_image": "engine.trainer.qwen_image:QwenImage",
    "sd3": "engine.trainer.sd3:SD3",
}


def get_family(model_type: str) -> type[Family]:
    try:
        module, _, cls = FAMILY_CLASSES[model_type].partition(":")
    except KeyError:
        raise ModelLoadError(f"model.type: no built-in family {model_type!r}") from None
    family: type[Family] = getattr(import_module(module), cls)
    return family
