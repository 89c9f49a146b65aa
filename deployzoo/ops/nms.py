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
    for i in range(order.size):
        if not alive[i]:
            continue
        keep.append(i)
        rest = np.flatnonzero(alive[i + 1 :]) + i + 1
        if rest.size == 0:
            break
        w = np.maximum(np.minimum(x2[rest], x2[i]) - np.maximum(x1[rest], x1[i]), np.float32(0))
        h = np.maximum(np.minimum(y2[rest], y2[i]) - np.maximum(y1[rest], y1[i]), np.float32(0))
        inter = w * h
        iou = inter / ((area[rest] - inter) + area[i])
        # 'not <=' rather than '>' so a NaN IoU (0/0) suppresses, as the original's le() does
        alive[rest[~(iou <= iou_threshold)]] = False
    return order[np.asarray(keep, dtype=np.int64)]
