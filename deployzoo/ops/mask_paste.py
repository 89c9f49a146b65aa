"""Host-side mask pasting (ROI mask probabilities -> full-image binary masks) and COCO RLE coding.

``paste_masks`` reproduces mmdetection 3.x ``_do_paste_mask`` as it runs on CPU, where
``FCNMaskHead`` pastes one mask per chunk with ``skip_empty=True``: each mask is sampled only over
its box grown by one pixel (integer bounds), with ``grid_sample`` at pixel centres, and is 0
elsewhere. The same torch ops in the same float32 order are used, so the binary masks match the
reference pixel for pixel. Every backend's mask outputs go through this one function.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# pycocotools' decode still calls np.array(copy=False) on its own object; numpy 2 warns every call.
PYCOCOTOOLS_NUMPY2_WARNING = "__array__ implementation doesn't accept a copy keyword"


def _paste_region(mask: torch.Tensor, box: torch.Tensor, img_h: int, img_w: int
                  ) -> tuple[torch.Tensor, int, int] | None:
    """Sample one mask [M, M] over its region. Returns (values [h', w'] float32, y0, x0) or None if empty."""
    # Integer region bounds computed on float32 tensors, as mmdet does (floor/ceil, then int32).
    x0_int = max(int(torch.floor(box[0]).item()) - 1, 0)
    y0_int = max(int(torch.floor(box[1]).item()) - 1, 0)
    x1_int = min(int(torch.ceil(box[2]).item()) + 1, img_w)
    y1_int = min(int(torch.ceil(box[3]).item()) + 1, img_h)
    if x1_int <= x0_int or y1_int <= y0_int:
        return None  # box entirely outside the image (mmdet's arange would fail here)
    x0, y0, x1, y1 = box[0:1], box[1:2], box[2:3], box[3:4]
    img_y = torch.arange(y0_int, y1_int).to(torch.float32) + 0.5
    img_x = torch.arange(x0_int, x1_int).to(torch.float32) + 0.5
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1
    # A zero-width or zero-height box divides by 0; mmdet sends the infinities to the mask centre.
    img_x = torch.where(torch.isinf(img_x), torch.zeros_like(img_x), img_x)
    img_y = torch.where(torch.isinf(img_y), torch.zeros_like(img_y), img_y)
    h, w = img_y.numel(), img_x.numel()
    grid = torch.stack([img_x[None, :].expand(h, w), img_y[:, None].expand(h, w)], dim=2)[None]
    values = F.grid_sample(mask[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return values[0, 0], y0_int, x0_int


def paste_masks(mask_probs: np.ndarray, boxes: np.ndarray, image_hw: Sequence[int],
                threshold: float = 0.5) -> np.ndarray:
    """Paste ROI mask probabilities into the image, as mmdetection 3.x does on CPU.

    Args:
        mask_probs: float32 [N, M, M] probabilities (after the sigmoid), one mask per detection
            (already the detection's class channel).
        boxes: float32 [N, 4] x1, y1, x2, y2 in ORIGINAL image pixels.
        image_hw: (H, W) of the original image.
        threshold: a pixel is set where the sampled probability is >= threshold.

    Returns:
        bool [N, H, W]. Memory: the output plus one box-sized region at a time. The array is a view of
        column-major [H, W, N] storage, the layout pycocotools' RLE encoder reads, so ``encode_rle`` codes
        it without copying (two copies of N x H x W bytes were a third of Cascade's post-processing).
    """
    mask_probs = np.asarray(mask_probs, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if mask_probs.ndim != 3 or mask_probs.shape[0] != boxes.shape[0]:
        raise ValueError(f"expected mask_probs [N, M, M] and boxes [N, 4], got {mask_probs.shape} and {boxes.shape}")
    img_h, img_w = int(image_hw[0]), int(image_hw[1])
    out = np.zeros((img_h, img_w, boxes.shape[0]), dtype=bool, order="F").transpose(2, 0, 1)
    masks_t = torch.from_numpy(np.ascontiguousarray(mask_probs))
    boxes_t = torch.from_numpy(np.ascontiguousarray(boxes))
    with torch.no_grad():
        for i in range(boxes.shape[0]):
            if not all(math.isfinite(v) for v in boxes[i].tolist()):
                continue  # nothing sensible to paste; mmdet would fail on the region bounds
            pasted = _paste_region(masks_t[i], boxes_t[i], img_h, img_w)
            if pasted is None:
                continue
            values, y0, x0 = pasted
            h, w = values.shape
            out[i, y0:y0 + h, x0:x0 + w] = (values >= threshold).numpy()
    return out


def encode_rle(masks: np.ndarray) -> list[dict]:
    """COCO RLE of each binary mask: ``[{"size": [H, W], "counts": str}]`` (pycocotools' compressed form).

    Args:
        masks: bool (or 0/1) [N, H, W].
    """
    from pycocotools import mask as mask_utils

    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected masks [N, H, W], got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    # pycocotools wants uint8 H x W x N in Fortran (column-major) order; paste_masks' output already is
    # (a bool view of it), so neither the view to uint8 nor asfortranarray copies it.
    columns = masks.transpose(1, 2, 0)
    columns = columns.view(np.uint8) if columns.dtype == bool else columns.astype(np.uint8)
    rles = mask_utils.encode(np.asfortranarray(columns))
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in rles]


def _compressed(rle: dict) -> dict:
    """An RLE in the form pycocotools' decode takes (compressed, counts as bytes)."""
    from pycocotools import mask as mask_utils

    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE (COCO crowd annotations)
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def decode_rle(rles: Sequence[dict], image_hw: Sequence[int] | None = None) -> np.ndarray:
    """Binary masks bool [N, H, W] from COCO RLEs (counts as str, bytes, or an uncompressed list).

    ``image_hw`` gives the shape of the result when ``rles`` is empty ([0, 0, 0] without it).
    """
    from pycocotools import mask as mask_utils

    if len(rles) == 0:
        h, w = (int(v) for v in image_hw) if image_hw is not None else (0, 0)
        return np.zeros((0, h, w), dtype=bool)
    sizes = {tuple(int(v) for v in r["size"]) for r in rles}
    if len(sizes) != 1:
        raise ValueError(f"RLEs of different sizes cannot be stacked: {sorted(sizes)}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PYCOCOTOOLS_NUMPY2_WARNING, category=DeprecationWarning)
        decoded = mask_utils.decode([_compressed(r) for r in rles])  # H x W x N
    return decoded.transpose(2, 0, 1).astype(bool)
