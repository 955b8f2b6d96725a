"""Deterministic batch order: every rank computes the same epoch plan and takes its own slice.

A global batch comes from one bucket (one size). Its sample at global index g is fed to rank
(g // micro) % world in micro step g // (micro * world), so one rank with batch 2B sees exactly what two ranks
with batch B see together. Per-sample randomness (noise, timestep, caption dropout) is seeded by
(seed, step, g), not by the rank, for the same reason.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from engine.datasets.buckets import Bucket, BucketItem, BucketPlan


@dataclass(frozen=True)
class GlobalBatch:
    bucket: Bucket
    items: list[BucketItem]


def drop_missing(plan: BucketPlan, keep: set[str]) -> int:
    """Remove items whose cache entry is missing (unreadable files) and re-truncate; returns how many went."""
    removed = 0
    for bucket in plan.buckets:
        before = bucket.count
        bucket.items = [bi for bi in bucket.items if bi.item.key in keep]
        keep_n = bucket.count - bucket.count % plan.global_batch
        bucket.dropped += bucket.count - keep_n
        del bucket.items[keep_n:]
        removed += before - bucket.count
    return removed


def epoch_batches(plan: BucketPlan, epoch: int, seed: int) -> list[GlobalBatch]:
    batches: list[GlobalBatch] = []
    for bucket in plan.buckets:
        items = list(bucket.items)
        random.Random(f"{seed}|{epoch}|{bucket.size}").shuffle(items)
        for i in range(0, len(items) - plan.global_batch + 1, plan.global_batch):
            batches.append(GlobalBatch(bucket, items[i : i + plan.global_batch]))
    random.Random(f"{seed}|{epoch}|order").shuffle(batches)
    return batches


def micro_slice(
    batch: GlobalBatch, micro_step: int, rank: int, world: int, micro: int
) -> list[tuple[int, BucketItem]]:
    start = micro_step * micro * world + rank * micro
    return [(g, batch.items[g]) for g in range(start, start + micro)]


def sample_seed(seed: int, step: int, g: int) -> int:
    return ((seed * 1_000_003 + step) * 4099 + g) % (2**63 - 1)
