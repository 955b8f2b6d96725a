"""On-disk cache of VAE latents and text embeddings, content-addressed so exactly what changed is redone.

A latent entry's name hashes the image's path, size and mtime with its bucket size; the folder it lives in
is named after the VAE's identity. A text entry's name hashes the caption; its folder, the text encoders'
identity. Change one image and only its latents are encoded again; change one caption and only its text;
change the buckets and only the sizes that moved. Entries the dataset no longer uses are removed.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file, save

from engine.datasets.buckets import BucketPlan
from engine.datasets.items import DatasetItem, shuffle_tags
from engine.trainer.family import Family
from statefiles.atomic import atomic_write_bytes
from statefiles.paths import cache_dir

DEFAULT_SHUFFLE_VARIANTS = 4


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def caption_variants(item: DatasetItem, shuffle: bool, n_variants: int) -> list[str]:
    if not shuffle:
        return [item.caption]
    return [shuffle_tags(item.caption, seed=int(_sha(f"{item.path}|{v}")[:8], 16)) for v in range(n_variants)]


def fit_image(path: Path, width: int, height: int) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """Load, fit + center-crop to (width, height) like diffusion-pipe; pixels in [-1, 1].

    Also returns the original (h, w) and the crop's top-left in resized coordinates (SDXL conditioning).
    """
    with Image.open(path) as img:
        img.load()
        rgb = img.convert("RGB")
    ow, oh = rgb.size
    fitted = ImageOps.fit(rgb, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    scale = max(width / ow, height / oh)
    crop_tl = (int(round((oh * scale - height) / 2)), int(round((ow * scale - width) / 2)))
    data = torch.frombuffer(bytearray(fitted.tobytes()), dtype=torch.uint8).reshape(height, width, 3)
    pixels = data.permute(2, 0, 1).float() / 127.5 - 1.0
    return pixels, (oh, ow), crop_tl


@dataclass
class CacheStats:
    encoded_latents: int = 0
    reused_latents: int = 0
    encoded_text: int = 0
    reused_text: int = 0
    removed: int = 0
    unreadable: list[str] = field(default_factory=list)


class TrainingCache:
    def __init__(
        self, family: Family, dataset_path: Path, n_variants: int = DEFAULT_SHUFFLE_VARIANTS
    ) -> None:
        base = cache_dir() / "trainer" / f"{family.name}-{_sha(str(dataset_path.resolve()))[:12]}"
        self.latent_dir = base / f"latents-{_sha(family.identity('vae'))[:12]}"
        self.text_dir = base / f"text-{_sha(family.identity('text'))[:12]}"
        self.family = family
        self.n_variants = n_variants

    def latent_path(self, item: DatasetItem, width: int, height: int) -> Path:
        return self.latent_dir / f"{_sha(f'{item.key}|{width}x{height}|fit-center')}.safetensors"

    def text_path(self, caption: str) -> Path:
        return self.text_dir / f"{_sha(caption)}.safetensors"

    def plan_entries(
        self, plan: BucketPlan
    ) -> tuple[dict[Path, tuple[DatasetItem, int, int]], dict[Path, str]]:
        latents: dict[Path, tuple[DatasetItem, int, int]] = {}
        texts: dict[Path, str] = {self.text_path(""): ""}  # the empty caption, for caption dropout
        for bucket in plan.buckets:
            for bi in bucket.items:
                latents.setdefault(
                    self.latent_path(bi.item, bucket.width, bucket.height),
                    (bi.item, bucket.width, bucket.height),
                )
                for cap in caption_variants(bi.item, bi.shuffle_tags, self.n_variants):
                    texts.setdefault(self.text_path(cap), cap)
        return latents, texts

    def build(
        self,
        plan: BucketPlan,
        *,
        regenerate: bool = False,
        batch_size: int = 1,
        log: Callable[[str], None] = print,
        text: bool = True,
    ) -> CacheStats:
        """Encode whatever is missing (everything with regenerate); runs on one rank only.

        text=False: captions are not cached (the text encoders train and run in the step); text entries already
        on disk are kept for later runs that cache them."""
        self.latent_dir.mkdir(parents=True, exist_ok=True)
        self.text_dir.mkdir(parents=True, exist_ok=True)
        stats = CacheStats()
        latents, texts = self.plan_entries(plan)
        if not text:
            texts = {}
        stats.removed += _remove_unused(self.latent_dir, latents)
        stats.removed += _remove_unused(self.text_dir, texts) if text else 0
        todo_l = [p for p in latents if regenerate or not p.is_file()]
        stats.reused_latents = len(latents) - len(todo_l)
        todo_t = [p for p in texts if regenerate or not p.is_file()]
        stats.reused_text = len(texts) - len(todo_t)
        progress = _Progress("caching latents", len(todo_l), log)
        by_size: dict[tuple[int, int], list[Path]] = {}
        for p in todo_l:
            by_size.setdefault(latents[p][1:], []).append(p)
        for (w, h), paths in by_size.items():
            for chunk in _chunks(paths, batch_size):
                loaded = []
                for p in chunk:
                    item = latents[p][0]
                    try:
                        loaded.append((p, *fit_image(item.path, w, h)))
                    except Exception as exc:  # noqa: BLE001 - any decode failure: skip the file, say which
                        msg = f"{item.path}: unreadable image skipped ({exc.__class__.__name__}: {exc})"
                        stats.unreadable.append(msg)
                        print(f"WARNING: {msg}", file=sys.stderr, flush=True)
                if loaded:
                    lat = self.family.encode_image(torch.stack([x[1] for x in loaded]))
                    for (p, _, orig_hw, crop_tl), z in zip(loaded, lat, strict=True):
                        tensors = {
                            "latents": z.contiguous(),
                            "orig_hw": torch.tensor(orig_hw, dtype=torch.int64),
                            "crop_tl": torch.tensor(crop_tl, dtype=torch.int64),
                        }
                        atomic_write_bytes(p, save(tensors))
                        stats.encoded_latents += 1
                progress.advance(
                    len(chunk), f"{len(stats.unreadable)} unreadable" if stats.unreadable else ""
                )
        progress = _Progress("caching text embeddings", len(todo_t), log)
        for chunk in _chunks(todo_t, max(batch_size, 8)):
            encoded = self.family.encode_prompts([texts[p] for p in chunk])
            for p, tensors in zip(chunk, encoded, strict=True):
                atomic_write_bytes(p, save({k: v.contiguous() for k, v in tensors.items()}))
                stats.encoded_text += 1
            progress.advance(len(chunk))
        return stats


def load_latent(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def load_text(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _remove_unused(folder: Path, keep: Iterable[Path]) -> int:
    wanted = {p.name for p in keep}
    removed = 0
    for p in folder.glob("*.safetensors"):
        if p.name not in wanted:
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def _chunks(seq: list[Path], n: int) -> Iterable[list[Path]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class _Progress:
    """Plain progress lines (not tqdm): they read well in log files and the deck's log view."""

    def __init__(self, label: str, total: int, log: Callable[[str], None]) -> None:
        self.label, self.total, self.log = label, total, log
        self.done = 0
        self.last = 0.0
        if total:
            log(f"{label}: 0/{total}")

    def advance(self, n: int, note: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if self.done >= self.total or now - self.last > 2.0:
            self.last = now
            self.log(f"{self.label}: {self.done}/{self.total}" + (f" ({note})" if note else ""))
