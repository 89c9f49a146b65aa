"""Cutting the images still to do into work shards for replicas (pure Python; no Ray)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from deployzoo.data.loader import ImageItem

MAX_SHARD_IMAGES = 64  # large enough that a shard's pipeline fill and drain stay a small part of it


@dataclass(frozen=True)
class WorkShard:
    """Consecutive images of the run, processed by one replica in one call. ``index``: its place in the plan."""

    index: int
    items: tuple[ImageItem, ...]


def shard_images(todo: int, batch_size: int, replicas: int, requested: int | None = None) -> int:
    """Images per work shard: ``requested`` rounded up to a whole number of batches, else about four shards
    per replica (so a lost replica's share spreads and the last shards balance), at most
    ``MAX_SHARD_IMAGES`` (or one batch, when a batch is larger).

    A shard is a whole number of batches so that, counted from the start of the run, every batch holds the
    same images as in a local run (see ``plan_shards``)."""
    if requested is not None and requested < 1:
        raise ValueError(f"a work shard holds at least one image, got {requested}")
    wanted = requested if requested is not None else min(MAX_SHARD_IMAGES, math.ceil(todo / max(1, 4 * replicas)))
    return max(1, math.ceil(max(1, wanted) / batch_size)) * batch_size


def plan_shards(items: Sequence[ImageItem], shard_size: int) -> list[WorkShard]:
    """``items`` in order, cut every ``shard_size`` images (a multiple of the batch size).

    A local run (deployzoo.runner.run_dataset) batches the same list every ``batch_size`` images, so the
    batches inside the shards are the local run's batches: each image meets the same batch partners and
    padding. (Models with a ``batch_key`` also close a batch where the key changes; a shard boundary
    inside a run of equal keys then splits one local batch in two. Per-image outputs do not depend on
    the batch partners on the CPU backends, so metrics still agree; the Ray tests cover a model without it.)
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    return [WorkShard(k, tuple(items[start:start + shard_size]))
            for k, start in enumerate(range(0, len(items), shard_size))]
