"""Result containers shared by every model and backend."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """Detections of one image, in ORIGINAL-image pixels.

    boxes [K,4] float32 (x1, y1, x2, y2); scores [K] float32; labels [K] int64, 0-based index into the
    model's class names (background excluded). ``masks``: for instance segmentation, one COCO RLE per
    detection (``{"size": [H, W], "counts": str}``, the original image's full-resolution binary mask as
    pycocotools encodes it, counts decoded to str so it is JSON-ready); None for box-only models.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: list[dict] | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @staticmethod
    def empty(with_masks: bool = False) -> "Detections":
        return Detections(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64),
                          [] if with_masks else None)

    def select(self, keep: np.ndarray) -> "Detections":
        """The detections at integer indices ``keep``, in that order."""
        masks = None if self.masks is None else [self.masks[int(i)] for i in keep]
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep], masks)

    def top(self, max_dets: int | None, score_threshold: float = 0.0) -> "Detections":
        """Detections with score >= threshold, then the ``max_dets`` highest (original order kept).

        Raises:
            ValueError: ``max_dets`` below 0 (a negative count would slice from the end) or a NaN threshold
                (it would keep nothing).
        """
        if max_dets is not None and max_dets < 0:
            raise ValueError(f"max_dets must be at least 0, got {max_dets}")
        if np.isnan(score_threshold):
            raise ValueError("score_threshold is NaN: no score compares with it")
        keep = np.flatnonzero(self.scores >= score_threshold)
        if max_dets is not None and keep.size > max_dets:
            best = np.argsort(-self.scores[keep], kind="stable")[:max_dets]
            keep = np.sort(keep[best])
        return self.select(keep)


@dataclass
class LabelMap:
    """Semantic segmentation of one image, in ORIGINAL-image pixels.

    labels [H, W] uint8: class index per pixel (0-based into the model's class names; VOC: 0 = background).
    margin [H, W] float32: top-1 minus top-2 logit per pixel, kept only where a comparison needs to know
    which pixels are near-ties (None otherwise, and after a round trip through disk).
    """

    labels: np.ndarray
    margin: np.ndarray | None = None
