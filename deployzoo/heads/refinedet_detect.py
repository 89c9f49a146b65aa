"""RefineDet's detection output on the host, in numpy: one implementation for every backend.

Follows ``Detect_RefineDet`` of RefineDet.PyTorch (spec section 6.5): ARM-refined priors, ODM
decoding, objectness filtering, per-class top-k then greedy NMS. The arithmetic is kept in float32 and
in the original's order so boxes agree to the last bits that matter for NMS decisions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deployzoo.ops.nms import greedy_nms


def decode_offsets(loc: np.ndarray, priors: np.ndarray, variances: tuple[float, float]) -> np.ndarray:
    """SSD decoding. loc [P,4], priors [P,4] (cx, cy, w, h) -> corners [P,4] (x1, y1, x2, y2)."""
    v0 = np.float32(variances[0])
    v1 = np.float32(variances[1])
    centre = priors[:, :2] + loc[:, :2] * v0 * priors[:, 2:]
    size = priors[:, 2:] * np.exp(loc[:, 2:] * v1)
    x1y1 = centre - size / np.float32(2)
    return np.concatenate([x1y1, size + x1y1], axis=1)


def corners_to_center(boxes: np.ndarray) -> np.ndarray:
    """(x1, y1, x2, y2) -> (cx, cy, w, h)."""
    return np.concatenate([(boxes[:, 2:] + boxes[:, :2]) / np.float32(2), boxes[:, 2:] - boxes[:, :2]], axis=1)


@dataclass(frozen=True)
class RefineDetDetectConfig:
    """Test settings of ``Detect_RefineDet(21, 320, 0, 1000, 0.01, 0.45, 0.01, 500)``.

    ``max_per_image``: None keeps every per-class NMS survivor, as the original effectively does
    (its keep_top_k=500 step writes into a copy and has no effect).
    """

    score_threshold: float = 0.01
    nms_threshold: float = 0.45
    top_k: int = 1000
    objectness_threshold: float = 0.01
    variances: tuple[float, float] = (0.1, 0.2)
    max_per_image: int | None = None


def refinedet_detect(
    arm_loc: np.ndarray,
    arm_conf: np.ndarray,
    odm_loc: np.ndarray,
    odm_conf: np.ndarray,
    priors: np.ndarray,
    config: RefineDetDetectConfig = RefineDetDetectConfig(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections of ONE image.

    Inputs (no batch dim): arm_loc [P,4], arm_conf [P,2] softmaxed, odm_loc [P,4], odm_conf [P,C]
    softmaxed (class 0 = background), priors [P,4].
    Returns (boxes [K,4] normalised x1,y1,x2,y2, not clipped; scores [K]; labels [K] in 1..C-1), grouped
    by class in ascending order and within a class in NMS order (descending score), as the original's
    output tensor reads.
    """
    arm_loc = np.asarray(arm_loc, dtype=np.float32)
    odm_loc = np.asarray(odm_loc, dtype=np.float32)
    scores_all = np.array(odm_conf, dtype=np.float32, copy=True)
    # Priors the ARM calls background with prob >= 1 - thr lose every class score.
    scores_all[arm_conf[:, 1] <= config.objectness_threshold] = 0.0
    refined = corners_to_center(decode_offsets(arm_loc, priors.astype(np.float32), config.variances))
    boxes = decode_offsets(odm_loc, refined, config.variances)

    out_boxes, out_scores, out_labels = [], [], []
    for cls in range(1, scores_all.shape[1]):
        cls_scores = scores_all[:, cls]
        candidates = np.flatnonzero(cls_scores > config.score_threshold)
        if candidates.size == 0:
            continue
        keep = greedy_nms(boxes[candidates], cls_scores[candidates], config.nms_threshold, config.top_k)
        kept = candidates[keep]
        out_boxes.append(boxes[kept])
        out_scores.append(cls_scores[kept])
        out_labels.append(np.full(kept.size, cls, dtype=np.int64))
    if not out_boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64)
    b, s, l = np.concatenate(out_boxes), np.concatenate(out_scores), np.concatenate(out_labels)
    if config.max_per_image is not None and s.size > config.max_per_image:
        top = np.sort(np.argsort(-s, kind="stable")[: config.max_per_image])  # keep class grouping order
        b, s, l = b[top], s[top], l[top]
    return b, s, l
