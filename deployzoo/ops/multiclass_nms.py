"""Final detection selection of the R-CNN family: per-class score threshold, class-wise NMS, top-k."""
from __future__ import annotations

import torch

from deployzoo.heads.rpn import offset_by_group
from deployzoo.ops.batched_nms import nms_keep_mask
from deployzoo.ops.topk import gather_rows, topk_clamped


def multiclass_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    valid: torch.Tensor,
    score_threshold: float,
    iou_threshold: float,
    max_dets: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """mmdet ``multiclass_nms`` / detectron2 ``fast_rcnn_inference_single_image``, batched.

    boxes [B, R, C, 4] (class-specific) or [B, R, 1, 4] (class-agnostic); scores [B, R, C] without the
    background column; valid [B, R] marks real RoIs. Every (RoI, class) with score > ``score_threshold``
    is a candidate; NMS runs per class; the ``max_dets`` best survivors of each image are returned as
    (boxes [B, K, 4], scores [B, K], labels [B, K] int64, num_dets [B] int64), padding rows zero with
    label -1. Candidates are flattened RoI-major, as both frameworks do.
    """
    batch, rois, classes = scores.shape
    boxes = boxes.expand(batch, rois, classes, 4).reshape(batch, -1, 4)
    labels = torch.arange(classes, dtype=torch.int64).repeat(rois)
    flat_scores = scores.reshape(batch, -1)
    candidate = (flat_scores > score_threshold) & valid[:, :, None].expand(batch, rois, classes).reshape(batch, -1)
    group = labels.to(boxes.dtype)[None, :].expand(batch, labels.shape[0])
    keep = nms_keep_mask(offset_by_group(boxes, group, candidate), torch.where(candidate, flat_scores, -1.0),
                         iou_threshold, -0.5)
    ranked = torch.where(keep, flat_scores, -1.0)
    top_scores, index = topk_clamped(ranked, max_dets, dim=1)
    found = top_scores >= 0
    det_boxes = torch.where(found[..., None], gather_rows(boxes, index), torch.zeros_like(boxes[:, :1]))
    det_labels = torch.where(found, labels[index], torch.full_like(index, -1))
    det_scores = torch.where(found, top_scores, torch.zeros_like(top_scores))
    return det_boxes, det_scores, det_labels, found.sum(dim=1)
