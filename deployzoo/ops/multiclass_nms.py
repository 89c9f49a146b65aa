"""Final detection selection: per-class score threshold, class-wise NMS, top-k.

Three entry points, one selection rule (candidates above the score threshold, greedy NMS within each
class at IoU > threshold, the best ``max_dets`` of each image):

* ``multiclass_nms``: every RoI has a score per class and class-specific (or shared) boxes; class-wise by
  mmcv's coordinate-offset trick (R-CNN box heads).
* ``multiclass_nms_shared_boxes``: every location has one box and a score per class; class-wise through
  NMS's own class dimension, which stays cheap with tens of thousands of candidates (mmdet v2 dense heads).
* ``labelled_nms``: candidates that already carry one class each (mmdet >= 2.18 dense heads); offset trick.
"""
from __future__ import annotations

import torch

from deployzoo.heads.rpn import offset_by_group
from deployzoo.ops.batched_nms import nms_keep_mask, nms_keep_mask_per_class
from deployzoo.ops.topk import gather_rows, topk_clamped

# (boxes [B, K, 4], scores [B, K], labels [B, K] int64, num_dets [B] int64)
Selected = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def multiclass_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    valid: torch.Tensor,
    score_threshold: float,
    iou_threshold: float,
    max_dets: int,
) -> Selected:
    """mmdet ``multiclass_nms`` / detectron2 ``fast_rcnn_inference_single_image``, batched.

    boxes [B, R, C, 4] (class-specific) or [B, R, 1, 4] (class-agnostic); scores [B, R, C] without the
    background column; valid [B, R] marks real RoIs. Every (RoI, class) with score > ``score_threshold``
    is a candidate; NMS runs per class; the ``max_dets`` best survivors of each image are returned as
    (boxes [B, K, 4], scores [B, K], labels [B, K] int64, num_dets [B] int64), padding rows zero with
    label -1. Candidates are flattened RoI-major, as both frameworks do.
    """
    batch, rois, classes = scores.shape
    boxes = boxes.expand(batch, rois, classes, 4).reshape(batch, -1, 4)
    labels = _class_labels(batch, rois, classes, scores.device)
    flat_scores = scores.reshape(batch, -1)
    candidate = (flat_scores > score_threshold) & valid[:, :, None].expand(batch, rois, classes).reshape(batch, -1)
    return labelled_nms(boxes, flat_scores, labels, candidate, iou_threshold, max_dets)


def multiclass_nms_shared_boxes(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    valid: torch.Tensor,
    score_threshold: float,
    iou_threshold: float,
    max_dets: int,
) -> Selected:
    """``multiclass_nms`` for one box per location shared by all classes: boxes [B, R, 4], scores [B, R, C],
    valid [B, R]; same candidates, order and outputs.

    NMS runs per class on the boxes as they are (mmcv ``batched_nms``'s per-class loop, which it uses
    above 10,000 candidates), not on offset-shifted copies: the IoUs can differ from the offset trick's in
    the last float32 bits, which decides a pair only when its IoU is within ~1e-5 of the threshold.
    """
    batch, rois, classes = scores.shape
    candidate = (scores > score_threshold) & valid[:, :, None]
    keep = nms_keep_mask_per_class(boxes, torch.where(candidate, scores, -1.0).transpose(1, 2), iou_threshold, -0.5)
    flat_boxes = boxes[:, :, None, :].expand(batch, rois, classes, 4).reshape(batch, -1, 4)
    return _best(flat_boxes, scores.reshape(batch, -1), _class_labels(batch, rois, classes, scores.device),
                 keep.transpose(1, 2).reshape(batch, -1), max_dets)


def labelled_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    candidate: torch.Tensor,
    iou_threshold: float,
    max_dets: int,
) -> Selected:
    """mmcv ``batched_nms`` (class-wise greedy NMS by the coordinate-offset trick), then the top ``max_dets``.

    boxes [B, N, 4]; scores [B, N] (>= 0); labels [B, N] int64; candidate [B, N] bool (only these take
    part: the offset's maximum coordinate is taken over them, as mmcv sees only the filtered boxes).
    Returns (boxes [B, K, 4], scores [B, K], labels [B, K] int64, num_dets [B] int64), K = min(max_dets,
    N), best first; padding rows are zero with label -1.
    """
    group = labels.to(boxes.dtype)
    keep = nms_keep_mask(offset_by_group(boxes, group, candidate), torch.where(candidate, scores, -1.0),
                         iou_threshold, -0.5)
    return _best(boxes, scores, labels, keep, max_dets)


def _class_labels(batch: int, rois: int, classes: int, device: torch.device) -> torch.Tensor:
    """[B, R * C] class index of each flattened (RoI, class) pair, RoI-major."""
    return torch.arange(classes, dtype=torch.int64, device=device).repeat(rois)[None, :].expand(batch, rois * classes)


def _best(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor, max_dets: int) -> Selected:
    """The ``max_dets`` highest-scoring kept rows of each image (ties: lower index first), zero-padded."""
    ranked = torch.where(keep, scores, -1.0)
    top_scores, index = topk_clamped(ranked, max_dets, dim=1)
    found = top_scores >= 0
    det_boxes = torch.where(found[..., None], gather_rows(boxes, index), torch.zeros_like(boxes[:, :1]))
    det_labels = torch.where(found, torch.gather(labels, 1, index), torch.full_like(index, -1))
    det_scores = torch.where(found, top_scores, torch.zeros_like(top_scores))
    return det_boxes, det_scores, det_labels, found.sum(dim=1)
