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


def keep_ratio_size(orig_hw: tuple[int, int], scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv ``rescale_size``: the largest size with the long side <= max(scale) and the short side <=
    min(scale), keeping the aspect ratio; each side rounded as int(x * factor + 0.5). Returns (h, w)."""
    h, w = orig_hw
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * float(factor) + 0.5), int(w * float(factor) + 0.5)


def fit_size(orig_hw: tuple[int, int], scale: tuple[int, int], canvas_hw: tuple[int, int]) -> tuple[int, int]:
    """The keep-ratio size, shrunk further (same rounding) when it would not fit ``canvas_hw``.

    Used by fixed-canvas exports: 800x1216 cannot hold a portrait image at the official size, so such
    images are resized smaller than the official pipeline resizes them (the accuracy cost of fixed shapes).
    """
    h, w = orig_hw
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w), canvas_hw[0] / h, canvas_hw[1] / w)
    return min(int(h * float(factor) + 0.5), canvas_hw[0]), min(int(w * float(factor) + 0.5), canvas_hw[1])


def resize_normalize_rgb(
    bgr: np.ndarray, size_hw: tuple[int, int], mean_rgb: tuple[float, float, float], std_rgb: tuple[float, float, float]
) -> tuple[np.ndarray, ImageMeta]:
    """mmdet 3.x / mmseg 1.x test input: cv2.resize (INTER_LINEAR, on uint8) to ``size_hw``, then what
    their data preprocessors do: BGR -> RGB, float32, (x - mean) / std (a true division). CHW, unpadded."""
    if bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"expected a BGR image [H, W, 3], got shape {bgr.shape}")
    h, w = size_hw
    resized = bgr if (h, w) == bgr.shape[:2] else cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR)
    rgb = resized[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)
    mean = np.asarray(mean_rgb, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(std_rgb, dtype=np.float32).reshape(3, 1, 1)
    chw = np.ascontiguousarray((rgb - mean) / std)
    return chw, ImageMeta(orig_hw=(int(bgr.shape[0]), int(bgr.shape[1])), resized_hw=(h, w))


def pad_batch(images: list[np.ndarray], batch_size: int, divisor: int = 32,
              canvas_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Zero-pad [3,h,w] images bottom/right into one [batch_size,3,H,W] array (after normalisation, as
    mmdet and detectron2 pad). H, W = the batch's largest sides rounded up to ``divisor``, or ``canvas_hw``."""
    if not images:
        raise ValueError("empty batch")
    if len(images) > batch_size:
        raise ValueError(f"{len(images)} images do not fit a batch of {batch_size}")
    if canvas_hw is None:
        height = -(-max(a.shape[1] for a in images) // divisor) * divisor
        width = -(-max(a.shape[2] for a in images) // divisor) * divisor
    else:
        height, width = canvas_hw
    batch = np.zeros((batch_size, images[0].shape[0], height, width), dtype=np.float32)
    for i, image in enumerate(images):
        if image.shape[1] > height or image.shape[2] > width:
            raise ValueError(f"image of size {image.shape[1:]} does not fit the {height}x{width} canvas")
        batch[i, :, : image.shape[1], : image.shape[2]] = image
    return batch
