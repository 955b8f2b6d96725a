"""Duplicate images: exact (same bytes) and near (same picture after a resize or re-encode).

Exact: files are grouped by size first and only same-size files are hashed, so a folder of unique files costs one
stat each. Near: a 64-bit difference hash (dHash) of a 9x8 greyscale thumbnail; two images whose hashes differ in at
most `max_distance` bits are near duplicates. JPEGs are decoded at 1/8 scale (`Image.draft`), so a 4K photo costs
about as much as a thumbnail. Hashes are cached under the dpdeck cache dir keyed by (path, size, mtime_ns).
Unreadable files are skipped, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image

from statefiles.atomic import atomic_write_text

# dHash distance of a resized or re-encoded copy is typically 0-4 bits; unrelated photos sit around 32.
DEFAULT_MAX_DISTANCE = 6
_HASH_BITS = 64
_CACHE_NAME = "dhash-v1.json"


@dataclass
class DupeGroup:
    kind: Literal["exact", "near"]
    paths: list[Path]
    distance: int  # 0 for exact; the largest pairwise Hamming distance in the group for near

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "paths": [str(p) for p in self.paths], "distance": self.distance}


def dhash(path: Path | str) -> int:
    """64-bit difference hash of the image (EXIF orientation ignored: a rotated copy is a different picture)."""
    with Image.open(path) as img:
        img.draft("L", (64, 64))  # JPEG only: decode at the smallest DCT scale that still covers 64x64
        small = img.convert("L").resize((9, 8), Image.Resampling.BOX)
        px = small.tobytes()
    bits = 0
    for row in range(8):
        base = row * 9
        for col in range(8):
            bits = (bits << 1) | (px[base + col] > px[base + col + 1])
    return bits


def _file_digest(path: Path) -> str:
    # hashlib.file_digest is 3.11+; the same chunked read works on 3.10
    digest = hashlib.blake2b()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _exact_groups(stats: dict[Path, os.stat_result]) -> list[list[Path]]:
    by_size: dict[int, list[Path]] = defaultdict(list)
    for path, st in stats.items():
        if st.st_size > 0:  # zero-byte files are broken images, not duplicates of each other
            by_size[st.st_size].append(path)
    groups = []
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        by_digest: dict[str, list[Path]] = defaultdict(list)
        for path in same_size:
            try:
                by_digest[_file_digest(path)].append(path)
            except OSError:
                continue
        groups.extend(sorted(g) for g in by_digest.values() if len(g) > 1)
    return sorted(groups)


class _HashCache:
    """dHash per file, valid while the file keeps its size and mtime."""

    def __init__(self) -> None:
        from statefiles.paths import cache_dir

        self.path = cache_dir() / "datasets" / _CACHE_NAME
        try:
            self.data: dict[str, list[int]] = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.data = {}
        self.dirty = False

    def get(self, path: Path, st: os.stat_result) -> int | None:
        hit = self.data.get(str(path))
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        try:
            value = dhash(path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None  # unreadable: not a duplicate of anything
        self.data[str(path)] = [st.st_size, st.st_mtime_ns, value]
        self.dirty = True
        return value

    def save(self) -> None:
        if self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(self.data, separators=(",", ":")))


def _near_pairs(hashes: dict[Path, int], max_distance: int) -> list[tuple[Path, Path]]:
    # Pigeonhole: two hashes within d bits agree exactly on at least one of d+1 disjoint bit ranges, so only
    # files sharing a range value are compared (instead of every pair).
    chunks = max_distance + 1
    width = -(-_HASH_BITS // chunks)
    candidates: set[tuple[Path, Path]] = set()
    for c in range(chunks):
        shift = c * width
        mask = (1 << min(width, _HASH_BITS - shift)) - 1
        buckets: dict[int, list[Path]] = defaultdict(list)
        for path, h in hashes.items():
            buckets[(h >> shift) & mask].append(path)
        for members in buckets.values():
            for i, a in enumerate(members):
                for b in members[i + 1 :]:
                    candidates.add((a, b) if a < b else (b, a))
    return sorted((a, b) for a, b in candidates if (hashes[a] ^ hashes[b]).bit_count() <= max_distance)


def _components(pairs: list[tuple[Path, Path]]) -> list[list[Path]]:
    parent: dict[Path, Path] = {}

    def root(p: Path) -> Path:
        parent.setdefault(p, p)
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    for a, b in pairs:
        parent[root(a)] = root(b)
    groups: dict[Path, list[Path]] = defaultdict(list)
    for p in list(parent):
        groups[root(p)].append(p)
    return sorted(sorted(g) for g in groups.values())


def find_duplicates(
    paths: Iterable[Path], *, near: bool = True, max_distance: int = DEFAULT_MAX_DISTANCE
) -> list[DupeGroup]:
    """Exact groups first, then near groups; a near group never consists of exact copies only."""
    if not 0 <= max_distance < _HASH_BITS:
        raise ValueError(f"max_distance: expected 0..{_HASH_BITS - 1}, found {max_distance}")
    stats: dict[Path, os.stat_result] = {}
    for p in paths:
        p = Path(p)
        try:
            stats[p] = p.stat()
        except OSError:
            continue
    exact = _exact_groups(stats)
    out = [DupeGroup("exact", g, 0) for g in exact]
    if not near:
        return out
    copy_of = {p: i for i, g in enumerate(exact) for p in g}
    cache = _HashCache()
    hashes = {p: h for p, st in stats.items() if st.st_size > 0 and (h := cache.get(p, st)) is not None}
    cache.save()
    # Pairs of exact copies are already reported; a near pair needs two different files' contents.
    pairs = [
        (a, b)
        for a, b in _near_pairs(hashes, max_distance)
        if a not in copy_of or copy_of.get(a) != copy_of.get(b)
    ]
    for group in _components(pairs):
        dist = max((hashes[a] ^ hashes[b]).bit_count() for i, a in enumerate(group) for b in group[i + 1 :])
        out.append(DupeGroup("near", group, dist))
    return out


def duplicates_in(
    target: Path | str, *, near: bool = True, max_distance: int = DEFAULT_MAX_DISTANCE
) -> list[DupeGroup]:
    """Duplicates among the images of a dataset folder or of every folder of a dataset TOML."""
    from engine.datasets.layout import image_paths

    return find_duplicates(image_paths(target), near=near, max_distance=max_distance)
