"""Host-side pieces of detectron2 detectors (spec §1.1-§1.3, §2.2, §2.4), torch-free for worker processes.

detectron2's test input: PIL decode (EXIF orientation, RGB, reversed to BGR), ``ResizeShortestEdge(800,
1333)`` with PIL bilinear on uint8, float32 minus the BGR pixel mean (std 1), zero padding to /32 after
normalisation. The two-input graph contract (``image`` + ``img_hw``) and its collation are the mmdet
detectors' (``mmdet_common.PaddedCollate``): the convention is the framework-independent one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deployzoo.data.images import read_image_bgr_pil
from deployzoo.transforms import ImageMeta, fit_size, resize_subtract_mean_bgr, shortest_edge_size

D2_PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)

D2_PREPROCESS_DESCRIPTION = (
    "PIL decode with EXIF orientation -> RGB -> BGR uint8 (detectron2 read_image) -> ResizeShortestEdge(800, "
    "max 1333) with PIL Image.resize BILINEAR on uint8 -> float32 BGR minus [103.530,116.280,123.675] (std 1) "
    "-> zero pad bottom/right to a multiple of 32 (the batch's largest image); img_hw = resized (h, w)"
)


@dataclass(frozen=True)
class D2Preprocess:
    """detectron2 test pipeline: BGR uint8 -> resized, mean-subtracted float32 [3, h, w] BGR (unpadded).

    ``read_image`` is the decoder the data loader uses for this model (PIL, as detectron2; cv2 decodes
    some JPEGs and CMYK/16-bit files differently). ``canvas_hw``: a fixed-shape export's canvas; images
    whose official size does not fit it are resized smaller so they do (``transforms.fit_size``).
    """

    short_edge: int = 800
    max_size: int = 1333
    canvas_hw: tuple[int, int] | None = None

    read_image = staticmethod(read_image_bgr_pil)

    def __call__(self, bgr: np.ndarray) -> tuple[np.ndarray, ImageMeta]:
        if bgr.ndim != 3 or bgr.shape[2] != 3:
            raise ValueError(f"expected a BGR image [H, W, 3], got shape {bgr.shape}")
        orig = (int(bgr.shape[0]), int(bgr.shape[1]))
        size = shortest_edge_size(orig, self.short_edge, self.max_size)
        if self.canvas_hw is not None and (size[0] > self.canvas_hw[0] or size[1] > self.canvas_hw[1]):
            size = fit_size(orig, (self.max_size, self.short_edge), self.canvas_hw)
        return resize_subtract_mean_bgr(bgr, size, D2_PIXEL_MEAN_BGR)


def original_scale(meta: ImageMeta) -> np.ndarray:
    """detectron2 ``detector_postprocess``'s box multiplier row [W/w, H/h, W/w, H/h] (original over resized),
    float32: torch multiplies a float32 tensor by a Python float in float32."""
    (h, w), (rh, rw) = meta.orig_hw, meta.resized_hw
    return np.asarray([w / rw, h / rh, w / rw, h / rh], dtype=np.float32)
