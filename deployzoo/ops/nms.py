"""Non-maximum suppression on the host (numpy)."""
from __future__ import annotations

import numpy as np


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, top_k: int | None = None) -> np.ndarray:
    """ssd.pytorch's ``nms``: indices of kept boxes, highest score first.

    boxes [N,4] (x1, y1, x2, y2), scores [N]. Only the ``top_k`` highest-scoring boxes enter (top-k BEFORE
    NMS, as RefineDet does); a box is dropped when its IoU with a kept box is > iou_threshold. IoU has no
    +1 term and intersections are clamped at 0. Equal scores: the later index is taken first, as the
    original's ascending sort read from the end does.
    """
    n = scores.shape[0]
    if n == 0:
        return np.zeros((0,), dtype=np.int64)
    order = np.argsort(scores, kind="stable")[::-1]  # descending; ties: later index first
    if top_k is not None:
        order = order[:top_k]
    b = boxes[order].astype(np.float32, copy=False)
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    area = (x2 - x1) * (y2 - y1)
    alive = np.ones(order.size, dtype=bool)
    keep: list[int] = []
    suppresses = _suppressions(x1, y1, x2, y2, area, iou_threshold)
    for i in range(order.size):
        if not alive[i]:
            continue
        keep.append(i)
        alive[i + 1 :] &= ~suppresses[i // _BLOCK][i % _BLOCK, i % _BLOCK + 1 :]
    return order[np.asarray(keep, dtype=np.int64)]


# _suppressions gives "box i (score order) suppresses later box j" with the same float32 operations in the same
# order as the pairwise loop (IoU = inter / ((area[j] - inter) + area[i]), so the same IoUs bit for bit) and
# 'not <=' rather than '>' so a NaN IoU (0/0) suppresses, as the original's le() does. Vectorised over
# blocks of rows, the upper triangle only: with stand-in weights every class has 1000 candidates.
_BLOCK = 256


def _suppressions(x1, y1, x2, y2, area, iou_threshold: float) -> list[np.ndarray]:
    """Every pair, in row blocks over the upper triangle: per block [rows, n - block start] bool."""
    blocks = []
    for first in range(0, area.size, _BLOCK):
        i, j = slice(first, first + _BLOCK), slice(first, None)
        w = np.maximum(np.minimum(x2[None, j], x2[i, None]) - np.maximum(x1[None, j], x1[i, None]), np.float32(0))
        h = np.maximum(np.minimum(y2[None, j], y2[i, None]) - np.maximum(y1[None, j], y1[i, None]), np.float32(0))
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / ((area[None, j] - inter) + area[i, None])
        blocks.append(~(iou <= iou_threshold))
    return blocks

