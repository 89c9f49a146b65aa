"""Drawing helpers shared by the synthetic dataset generators."""
from __future__ import annotations

import cv2
import numpy as np


def class_colour(index: int, num_classes: int) -> tuple[int, int, int]:
    """A distinct, saturated BGR colour per class (hues spread around the circle)."""
    hsv = np.array([[[int(index * 180 / num_classes), 230, 220]]], dtype=np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def textured_background(rng: np.random.Generator, height: int, width: int, grid: int, noise: int) -> np.ndarray:
    """Smooth low-frequency colour texture plus per-pixel noise (cheap: upscale a small random grid)."""
    cells = rng.integers(40, 200, size=(grid, grid, 3), dtype=np.uint8)
    smooth = cv2.resize(cells, (width, height), interpolation=cv2.INTER_CUBIC)
    jitter = rng.integers(-noise, noise + 1, size=(height, width, 3), dtype=np.int16)
    return np.clip(smooth.astype(np.int16) + jitter, 0, 255).astype(np.uint8)
