"""SSD-style prior (default) boxes, as ``PriorBox`` of ssd.pytorch / RefineDet.PyTorch computes them."""
from __future__ import annotations

from itertools import product
from math import sqrt
from typing import Sequence

import numpy as np


def ssd_priors(
    feature_maps: Sequence[int],
    image_size: int,
    steps: Sequence[int],
    min_sizes: Sequence[float],
    max_sizes: Sequence[float] = (),
    aspect_ratios: Sequence[Sequence[float]] = (),
    clip: bool = True,
) -> np.ndarray:
    """Priors [P, 4] float32 as normalised (cx, cy, w, h).

    Per level and cell (row-major): (s, s), then (s', s') if max sizes are given, then for each
    aspect ratio a: (s*sqrt(a), s/sqrt(a)) and (s/sqrt(a), s*sqrt(a)). Computed in float64 like the
    original's Python floats, then cast; ``clip`` clamps every component (w and h too) to [0, 1].
    """
    rows: list[list[float]] = []
    for k, f in enumerate(feature_maps):
        f_k = image_size / steps[k]
        s_k = min_sizes[k] / image_size
        for i, j in product(range(f), repeat=2):
            cx = (j + 0.5) / f_k
            cy = (i + 0.5) / f_k
            rows.append([cx, cy, s_k, s_k])
            if max_sizes:
                s_prime = sqrt(s_k * (max_sizes[k] / image_size))
                rows.append([cx, cy, s_prime, s_prime])
            for ar in aspect_ratios[k] if aspect_ratios else ():
                rows.append([cx, cy, s_k * sqrt(ar), s_k / sqrt(ar)])
                rows.append([cx, cy, s_k / sqrt(ar), s_k * sqrt(ar)])
    priors = np.asarray(rows, dtype=np.float32).reshape(-1, 4)
    if clip:
        np.clip(priors, 0.0, 1.0, out=priors)
    return priors
