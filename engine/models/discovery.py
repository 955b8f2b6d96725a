"""Find base models on disk: diffusers folders, original-checkpoint folders and .safetensors files.

Only headers and small JSON configs are read, never weights, so a scan of a big model folder is quick.
A diffusers folder is reported as one item; its inner shards are not listed separately.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

from engine.models.errors import HeaderError
from engine.models.families import identify
from engine.models.safetensors_header import read_header
from engine.models.settings import scan_folders

# diffusers pipeline class (model_index.json `_class_name`) -> model type.
PIPELINE_TYPES: dict[str, str] = {
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionXLPipeline": "sdxl",
    "FluxPipeline": "flux",
    "FluxKontextPipeline": "flux",
    "ChromaPipeline": "chroma",
    "StableDiffusion3Pipeline": "sd3",
    "LTXPipeline": "ltx-video",
    "LTXConditionPipeline": "ltx-video",
    "HunyuanVideoPipeline": "hunyuan-video",
    "Lumina2Pipeline": "lumina_2",
    "Lumina2Text2ImgPipeline": "lumina_2",
    "QwenImagePipeline": "qwen_image",
    "QwenImageEditPipeline": "qwen_image",
    "WanPipeline": "wan",
    "AuraFlowPipeline": "auraflow",
    "HiDreamImagePipeline": "hidream",
    "OmniGen2Pipeline": "omnigen2",
    "ZImagePipeline": "z_image",
}

SKIP_DIRS = {".git", "__pycache__", "node_modules", "blobs", ".quarantine", ".locks"}
MAX_DEPTH = 8


class Discovered(BaseModel):
    path: str
    kind: str  # diffusers | ckpt_folder | checkpoint | transformer | unet | vae | text_encoder | lora | unknown
    family: str | None = None
    variant: str | None = None
    size: int = 0
    dtype: str | None = None
    tensors: int = 0
    evidence: list[str] = []
    error: str | None = None
    root: str = ""


def _folder_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def inspect_folder(path: Path) -> Discovered | None:
    """A diffusers folder (model_index.json) or a Wan-style original checkpoint folder, else None."""
    index = path / "model_index.json"
    if index.is_file():
        try:
            cls = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
        except (OSError, ValueError, AttributeError) as exc:
            return Discovered(path=str(path), kind="diffusers", error=f"{index}: unreadable model_index.json: {exc}")
        family = PIPELINE_TYPES.get(str(cls))
        return Discovered(path=str(path), kind="diffusers", family=family, variant=str(cls) or None,
                          size=_folder_size(path), evidence=[f"model_index.json _class_name={cls}"])
    config = path / "config.json"
    if config.is_file() and any(path.glob("Wan2.*_VAE.pth")):
        return Discovered(path=str(path), kind="ckpt_folder", family="wan", size=_folder_size(path),
                          evidence=["config.json + Wan VAE .pth (Wan original checkpoint folder)"])
    return None


def inspect_file(path: Path) -> Discovered:
    """Header-only identification of one .safetensors file; a bad file becomes an item with `error`."""
    try:
        header = read_header(path, lazy=True)
    except HeaderError as exc:
        size = path.stat().st_size if path.is_file() else 0
        return Discovered(path=str(path), kind="unknown", size=size, error=str(exc))
    ident = identify(header)
    return Discovered(
        path=str(path), kind=ident.kind, family=ident.family, variant=ident.variant, size=header.file_size,
        dtype=header.main_dtype, tensors=len(header.tensors), evidence=ident.evidence,
    )


def _walk(root: Path) -> Iterator[Discovered]:
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        found = inspect_folder(folder)
        if found is not None:
            yield found
            continue
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue  # hidden: partial downloads, quarantine, caches
            try:
                is_dir = entry.is_dir()
            except OSError:
                continue
            if is_dir:
                if entry.name not in SKIP_DIRS and depth < MAX_DEPTH:
                    stack.append((Path(entry.path), depth + 1))
            elif entry.name.endswith(".safetensors"):
                yield inspect_file(Path(entry.path))


def scan(folders: list[Path] | None = None) -> list[Discovered]:
    """Everything found under the configured folders (or `folders`), sorted by path, no duplicates."""
    roots = folders if folders is not None else scan_folders()
    seen: set[str] = set()
    out: list[Discovered] = []
    for root in roots:
        if not root.is_dir():
            continue
        for item in _walk(root):
            real = os.path.realpath(item.path)
            if real in seen:
                continue
            seen.add(real)
            item.root = str(root)
            out.append(item)
    return sorted(out, key=lambda d: d.path)
