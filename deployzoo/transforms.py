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


def _check_resized(orig_hw: tuple[int, ...], size_hw: tuple[int, int]) -> None:
    """Raise ImageSizeError when the resize target has a side below 1 pixel (cv2 and PIL would fail with their
    own, unnamed errors)."""
    if min(size_hw) < 1:
        from deployzoo.errors import ImageSizeError

        raise ImageSizeError(f"an image of {orig_hw[0]}x{orig_hw[1]} (H x W) resizes to {size_hw[0]}x{size_hw[1]}: "
                             "a side of 0 pixels, from its extreme aspect ratio (the model's keep-ratio resize; "
                             "the original framework fails on it too)")


def warp_resize_mean_rgb(
    bgr: np.ndarray, size: tuple[int, int], mean_bgr: tuple[float, float, float]
) -> tuple[np.ndarray, ImageMeta]:
    """RefineDet.PyTorch ``BaseTransform``: cv2.resize to (h, w) ignoring aspect (INTER_LINEAR, on uint8),
    float32, subtract the BGR mean, reorder to RGB, CHW. No std division: values stay in 0-255 range.
    """
    if bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"expected a BGR image [H, W, 3], got shape {bgr.shape}")
    h, w = size
    _check_resized(bgr.shape, (h, w))
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
    _check_resized(bgr.shape, (h, w))
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


# --------------------------------------------------------------------------------------------------
# detectron2 (spec §1.1, §1.2): PIL decoding and PIL bilinear resizing on uint8.

# EXIF orientation tag value -> the PIL transpose that displays the image upright (the EXIF 2.3 table).
_EXIF_ORIENTATION = 0x0112
_EXIF_TRANSPOSE = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}


def decode_bgr_pil(data: bytes) -> np.ndarray:
    """detectron2 ``read_image(..., format="BGR")``: decode with PIL, turn the image upright by its EXIF
    orientation, convert to RGB (grey, palette, RGBA and CMYK images all become RGB here, by PIL's
    rules), then reverse the channels. Returns uint8 [H, W, 3] BGR.

    Raises whatever PIL raises for undecodable data (``OSError``, ``PIL.UnidentifiedImageError``).
    """
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        try:
            orientation = image.getexif().get(_EXIF_ORIENTATION)
        except Exception:  # noqa: BLE001 - a broken EXIF block is ignored, as detectron2 does
            orientation = None
        method = _EXIF_TRANSPOSE.get(orientation)
        upright = image.transpose(getattr(Image.Transpose, method)) if method else image
        rgb = np.asarray(upright.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


def shortest_edge_size(orig_hw: tuple[int, int], short_edge: int = 800, max_size: int = 1333) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge.get_output_shape``: the short side becomes ``short_edge``; if the
    long side then exceeds ``max_size`` both are scaled down so it equals ``max_size``; each side is
    rounded as int(x + 0.5), in float64 with detectron2's two-step arithmetic. Returns (h, w)."""
    h, w = orig_hw
    scale = short_edge * 1.0 / min(h, w)
    new_h, new_w = (short_edge * 1.0, scale * w) if h < w else (scale * h, short_edge * 1.0)
    if max(new_h, new_w) > max_size:
        shrink = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def pil_resize(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """detectron2 ``ResizeTransform.apply_image`` on uint8: PIL ``Image.resize((w, h), BILINEAR)`` of the
    array as it is (channel order untouched). PIL widens its filter when shrinking (antialiasing), so the
    pixels differ from cv2's INTER_LINEAR. Returns uint8 [h, w, C]."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 image [H, W, 3], got {image.dtype} {image.shape}")
    h, w = size_hw
    _check_resized(image.shape, (h, w))
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def resize_subtract_mean_bgr(
    bgr: np.ndarray, size_hw: tuple[int, int], mean_bgr: tuple[float, float, float]
) -> tuple[np.ndarray, ImageMeta]:
    """detectron2 test input: PIL bilinear resize of the uint8 BGR image to ``size_hw``, float32, minus the
    BGR pixel mean (PIXEL_STD is 1: no division). CHW, unpadded; the channels stay BGR."""
    resized = pil_resize(bgr, size_hw)
    chw = resized.transpose(2, 0, 1).astype(np.float32)
    chw -= np.asarray(mean_bgr, dtype=np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray(chw), ImageMeta(orig_hw=(int(bgr.shape[0]), int(bgr.shape[1])), resized_hw=tuple(size_hw))
