"""Test-time preprocessing exactly as each original framework does it, in numpy + OpenCV.

Functions here import neither torch nor the models, so data-loading worker processes stay light.
Every function maps a BGR uint8 image [H, W, 3] (as cv2.imread gives) to a float32 [3, h, w] array and
an ``ImageMeta`` that post-processing uses to map results back to the original image.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class ImageMeta:
    """Where a network input came from: original (H, W) and the (h, w) it was resized to."""

    orig_hw: tuple[int, int]
    resized_hw: tuple[int, int]


def warp_resize_mean_rgb(
    bgr: np.ndarray, size: tuple[int, int], mean_bgr: tuple[float, float, float]
) -> tuple[np.ndarray, ImageMeta]:
    """RefineDet.PyTorch ``BaseTransform``: cv2.resize to (h, w) ignoring aspect (INTER_LINEAR, on uint8),
    float32, subtract the BGR mean, reorder to RGB, CHW. No std division: values stay in 0-255 range.
    """
    if bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"expected a BGR image [H, W, 3], got shape {bgr.shape}")
    h, w = size
    resized = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    resized -= np.asarray(mean_bgr, dtype=np.float32)
    chw = np.ascontiguousarray(resized[:, :, ::-1].transpose(2, 0, 1))
    return chw, ImageMeta(orig_hw=(int(bgr.shape[0]), int(bgr.shape[1])), resized_hw=(h, w))
