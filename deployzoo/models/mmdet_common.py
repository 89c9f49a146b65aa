"""Host-side pieces every mmdetection detector in the zoo shares (spec §1.1-§1.4).

The mmdet test pipeline (cv2 decode, keep-ratio resize to (1333, 800), RGB mean/std, pad /32) and the
two-input graph contract built on it: ``image`` [B,3,H,W] plus ``img_hw`` [B,2], each image's resized,
unpadded (h, w), which every clip inside the graph uses instead of the padded canvas.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deployzoo.transforms import ImageMeta, fit_size, keep_ratio_size, pad_batch, resize_normalize_rgb

MMDET_MEAN_RGB = (123.675, 116.28, 103.53)
MMDET_STD_RGB = (58.395, 57.12, 57.375)
DEFAULT_PADDED_HW = (800, 1088)  # a 640x480 COCO image resized to 800x1067, padded to /32

PREPROCESS_DESCRIPTION = (
    "cv2 BGR uint8 -> keep-ratio resize to (1333, 800) (mmcv.imrescale: cv2.resize INTER_LINEAR on uint8) -> "
    "RGB float32 (x - [123.675,116.28,103.53]) / [58.395,57.12,57.375] -> zero pad bottom/right to a multiple "
    "of 32 (the batch's largest image); img_hw = resized (h, w)"
)


@dataclass(frozen=True)
class MMDetPreprocess:
    """mmdet test pipeline: cv2 BGR -> keep-ratio resize to ``scale`` (cv2 INTER_LINEAR) -> RGB, (x - mean) / std.

    ``canvas_hw``: a fixed-shape export's canvas; images whose official size does not fit are resized
    smaller so they do (see ``transforms.fit_size``).
    """

    scale: tuple[int, int] = (1333, 800)
    canvas_hw: tuple[int, int] | None = None

    def __call__(self, bgr: np.ndarray) -> tuple[np.ndarray, ImageMeta]:
        orig = bgr.shape[:2]
        size = keep_ratio_size(orig, self.scale) if self.canvas_hw is None else fit_size(orig, self.scale, self.canvas_hw)
        return resize_normalize_rgb(bgr, size, MMDET_MEAN_RGB, MMDET_STD_RGB)


@dataclass(frozen=True)
class PaddedCollate:
    """Preprocessed images of one batch -> graph inputs: the images zero-padded to the batch's largest
    size rounded up to 32 (or to ``canvas_hw``), and each image's resized (h, w)."""

    canvas_hw: tuple[int, int] | None = None
    divisor: int = 32

    def __call__(self, arrays: list[np.ndarray], metas: list[ImageMeta], batch_size: int) -> dict[str, np.ndarray]:
        image = pad_batch(arrays, batch_size, self.divisor, self.canvas_hw)
        img_hw = np.zeros((batch_size, 2), dtype=np.float32)
        img_hw[:] = image.shape[2:]  # padding rows: the canvas (their outputs are dropped)
        for i, meta in enumerate(metas):
            img_hw[i] = meta.resized_hw
        return {"image": image, "img_hw": img_hw}


def example_inputs(batch_size: int, hw: tuple[int, int] = DEFAULT_PADDED_HW) -> dict[str, np.ndarray]:
    """Deterministic graph inputs for tracing and pure-inference benchmarks: an image-like tensor at the
    padded size of a typical 640x480 COCO image, with the true resized size 800x1067."""
    rng = np.random.default_rng(0)
    image = rng.standard_normal((batch_size, 3, *hw), dtype=np.float32)
    img_hw = np.tile(np.asarray([[hw[0], min(hw[1], 1067)]], dtype=np.float32), (batch_size, 1))
    return {"image": image, "img_hw": img_hw}


def resize_factors(meta: ImageMeta) -> np.ndarray:
    """mmdet's ``scale_factor`` as a box multiplier row: [w_scale, h_scale, w_scale, h_scale], float32,
    each resized side over the original one (separate x and y factors since mmdet v2.0)."""
    (h, w), (rh, rw) = meta.orig_hw, meta.resized_hw
    return np.asarray([rw / w, rh / h, rw / w, rh / h], dtype=np.float32)
