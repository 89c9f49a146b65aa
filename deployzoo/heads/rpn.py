"""Region proposal network of the R-CNN family: the head, and test-time proposal selection.

Proposal selection follows mmdetection (3.x) or detectron2 (``ProposalConfig.style``); they differ in
what they rank (sigmoid scores or raw logits), the box coder's conventions, which boxes they drop, and
how NMS within each level is carried out (mmcv's coordinate-offset trick, or torchvision's
``batched_nms``, which loops over the levels when there are many boxes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from deployzoo.ops.anchors import base_anchors, grid_anchors
from deployzoo.ops.batched_nms import nms_keep_mask, nms_keep_mask_per_class
from deployzoo.ops.box_coder import DeltaBoxCoder, clip_boxes
from deployzoo.ops.topk import gather_rows, topk_clamped


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then 1x1 convs to A objectness logits and 4A deltas (per level)."""

    def __init__(self, in_channels: int = 256, num_anchors: int = 3):
        super().__init__()
        self.rpn_conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(in_channels, num_anchors, 1)
        self.rpn_reg = nn.Conv2d(in_channels, num_anchors * 4, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = [], []
        for x in features:
            x = F.relu(self.rpn_conv(x))
            logits.append(self.rpn_cls(x))
            deltas.append(self.rpn_reg(x))
        return logits, deltas


STYLES = ("mmdet", "detectron2")
# torchvision's batched_nms on CPU loops over the groups when boxes.numel() > 4000, i.e. above 1000 boxes,
# and shifts the groups apart (coordinate-offset trick) otherwise; the two differ in float rounding.
TORCHVISION_LOOP_ABOVE = 1000


@dataclass(frozen=True)
class ProposalConfig:
    """Test-time proposal selection (mmdet ``test_cfg.rpn``; detectron2 ``MODEL.RPN.*_TEST``).

    ``style``:
      ``"mmdet"``: per level sigmoid + top-k; decode (stds 1, both-sided dw/dh clamp) clipped to the image;
      drop empty boxes (``drop_empty``); NMS within each level by the offset trick; keep the best
      ``post_nms`` by score.
      ``"detectron2"`` (``find_top_rpn_proposals``): per level top-k on the objectness LOGITS; decode
      (weights 1, upper dw/dh clamp only, centre x1 + w/2); drop boxes or logits that are not finite; clip
      to the image; keep w > 0 and h > 0 (MIN_SIZE 0); torchvision ``batched_nms`` with the level as group;
      keep the best ``post_nms`` by logit. Scores returned are logits. ``drop_empty`` must stay True.
    Anchors are the same numbers in both (float32, centre offset 0; detectron2 sizes = stride * scale).
    """

    strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    anchor_scales: tuple[float, ...] = (8.0,)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    pre_nms_per_level: int = 1000
    post_nms: int = 1000
    nms_iou: float = 0.7
    drop_empty: bool = True  # mmdet >= 2.x after the 2021 refactor: keep only w > 0 and h > 0
    style: str = "mmdet"

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {self.style!r}")
        if self.style == "detectron2" and not self.drop_empty:
            raise ValueError("detectron2 always drops empty proposals (MIN_SIZE 0 keeps w > 0 and h > 0)")


class ProposalGenerator(nn.Module):
    """RPN test semantics of ``config.style`` (see ProposalConfig), batched.

    mmdet (3.x): per level sigmoid + top-k; decode and clip to the image's resized size; drop empty boxes;
    NMS within each level (coordinate-offset trick, as mmcv's batched_nms); keep the best ``post_nms`` of
    each image. detectron2: see ProposalConfig.

    Images are processed independently; an image with fewer survivors gets padding rows whose
    ``valid`` flag is False (scores -1 for mmdet, -inf for detectron2's logits).
    """

    def __init__(self, config: ProposalConfig = ProposalConfig()):
        super().__init__()
        self.config = config
        if config.style == "detectron2":
            self.coder = DeltaBoxCoder(weights=(1.0, 1.0, 1.0, 1.0), clamp_both_sides=False, center_from_corners=False)
        else:
            self.coder = DeltaBoxCoder(stds=(1.0, 1.0, 1.0, 1.0))
        for level, stride in enumerate(config.strides):
            self.register_buffer(f"base_anchors_{level}",
                                 base_anchors(stride, config.anchor_scales, config.anchor_ratios), persistent=False)

    def forward(self, logits: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor], img_hw: torch.Tensor):
        """-> (boxes [B, P, 4], scores [B, P], valid [B, P]) with P = min(post_nms, candidates)."""
        if self.config.style == "detectron2":
            return self._detectron2(logits, deltas, img_hw)
        config = self.config
        batch = logits[0].shape[0]
        level_boxes, level_scores, level_ids = [], [], []
        for level, (logit, delta) in enumerate(zip(logits, deltas)):
            scores = logit.permute(0, 2, 3, 1).reshape(batch, -1).sigmoid()
            delta = delta.permute(0, 2, 3, 1).reshape(batch, -1, 4)
            anchors = grid_anchors(getattr(self, f"base_anchors_{level}"), logit, config.strides[level])
            scores, index = topk_clamped(scores, config.pre_nms_per_level, dim=1)
            level_boxes.append(self.coder.decode(anchors[index], gather_rows(delta, index), img_hw[:, None, :]))
            level_scores.append(scores)
            level_ids.append(torch.full_like(scores, float(level)))
        boxes = torch.cat(level_boxes, dim=1)
        scores = torch.cat(level_scores, dim=1)
        ids = torch.cat(level_ids, dim=1)
        if config.drop_empty:
            valid = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        else:
            valid = torch.ones_like(scores, dtype=torch.bool)
        keep = nms_keep_mask(offset_by_group(boxes, ids, valid), torch.where(valid, scores, -1.0), config.nms_iou, -0.5)
        ranked = torch.where(keep, scores, -1.0)
        top_scores, index = topk_clamped(ranked, config.post_nms, dim=1)
        return gather_rows(boxes, index), top_scores, top_scores >= 0

    def _detectron2(self, logits: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor], img_hw: torch.Tensor):
        """detectron2 ``find_top_rpn_proposals`` (its test path), batched; scores are logits."""
        config = self.config
        batch = logits[0].shape[0]
        level_boxes, level_scores, level_ids = [], [], []
        for level, (logit, delta) in enumerate(zip(logits, deltas)):
            scores = logit.permute(0, 2, 3, 1).reshape(batch, -1)
            delta = delta.permute(0, 2, 3, 1).reshape(batch, -1, 4)
            anchors = grid_anchors(getattr(self, f"base_anchors_{level}"), logit, config.strides[level])
            scores, index = topk_clamped(scores, config.pre_nms_per_level, dim=1)
            level_boxes.append(self.coder.decode(anchors[index], gather_rows(delta, index)))
            level_scores.append(scores)
            level_ids.append(torch.full_like(scores, float(level)))
        boxes = torch.cat(level_boxes, dim=1)
        scores = torch.cat(level_scores, dim=1)
        ids = torch.cat(level_ids, dim=1)
        # Non-finite rows are dropped before the clip (which would turn an infinity into the image edge).
        finite = torch.isfinite(boxes).all(dim=-1) & torch.isfinite(scores)
        boxes = clip_boxes(torch.where(finite[..., None], boxes, torch.zeros_like(boxes)), img_hw[:, None, :])
        valid = finite & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        keep = torchvision_batched_nms(boxes, scores, ids, len(config.strides), valid, config.nms_iou)
        ranked = torch.where(keep, scores, float("-inf"))
        top_scores, index = topk_clamped(ranked, config.post_nms, dim=1)
        return gather_rows(boxes, index), top_scores, top_scores > float("-inf")


def torchvision_batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, num_groups: int,
                            candidate: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Which boxes ``torchvision.ops.batched_nms`` keeps, as it runs on CPU (detectron2's NMS): [B, N] bool.

    boxes [B, N, 4] (x2 >= x1, y2 >= y1); scores [B, N] (any finite values, e.g. logits); groups [B, N]
    (0..num_groups-1, float or int); candidate [B, N]: the boxes handed to batched_nms. NMS runs within
    each group. torchvision loops over the groups on the boxes as they are when an image has more than
    TORCHVISION_LOOP_ABOVE candidates, and uses the coordinate-offset trick below that; the offset costs
    float32 precision, so both are computed and each image takes the one torchvision would have used.
    """
    lowest = float(torch.finfo(torch.float32).min)  # below every real score; -inf marks non-candidates
    masked = torch.where(candidate, scores, float("-inf"))
    trick = nms_keep_mask(offset_by_group(boxes, groups.to(boxes.dtype), candidate), masked, iou_threshold, lowest)
    member = groups.to(torch.int64)[:, None, :] == torch.arange(num_groups, dtype=torch.int64,
                                                               device=groups.device)[None, :, None]
    per_group = torch.where(member, masked[:, None, :], float("-inf"))  # [B, G, N]
    loop = nms_keep_mask_per_class(boxes, per_group, iou_threshold, lowest).any(dim=1)
    use_loop = (candidate.sum(dim=1) > TORCHVISION_LOOP_ABOVE)[:, None]
    return (use_loop & loop) | (~use_loop & trick)  # not Where: ONNX Runtime has no bool Where


def offset_by_group(boxes: torch.Tensor, group: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """mmcv ``batched_nms``'s trick for NMS within groups (levels, classes) in one pass: shift each
    group's boxes by group * (max coordinate + 1), the maximum taken per image over the valid boxes,
    with the same float32 operations so the IoUs match the original bit for bit."""
    masked = torch.where(valid[..., None], boxes, torch.zeros_like(boxes))
    max_coordinate = masked.reshape(boxes.shape[0], -1).max(dim=1).values
    offsets = group * (max_coordinate[:, None] + 1)
    return boxes + offsets[..., None]
