"""Region proposal network of the R-CNN family: the head, and test-time proposal selection."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from deployzoo.ops.anchors import base_anchors, grid_anchors
from deployzoo.ops.batched_nms import nms_keep_mask
from deployzoo.ops.box_coder import DeltaBoxCoder
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


@dataclass(frozen=True)
class ProposalConfig:
    """Test-time proposal selection (mmdet ``test_cfg.rpn``)."""

    strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    anchor_scales: tuple[float, ...] = (8.0,)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    pre_nms_per_level: int = 1000
    post_nms: int = 1000
    nms_iou: float = 0.7
    drop_empty: bool = True  # mmdet >= 2.x after the 2021 refactor: keep only w > 0 and h > 0


class ProposalGenerator(nn.Module):
    """mmdet (3.x) RPN test semantics, batched: per level sigmoid + top-k; decode and clip to the image's
    resized size; drop empty boxes; NMS within each level (coordinate-offset trick, as mmcv's batched_nms);
    keep the best ``post_nms`` of each image.

    Images are processed independently; an image with fewer survivors gets padding rows whose
    ``valid`` flag is False (scores -1).
    """

    def __init__(self, config: ProposalConfig = ProposalConfig()):
        super().__init__()
        self.config = config
        self.coder = DeltaBoxCoder(stds=(1.0, 1.0, 1.0, 1.0))
        for level, stride in enumerate(config.strides):
            self.register_buffer(f"base_anchors_{level}",
                                 base_anchors(stride, config.anchor_scales, config.anchor_ratios), persistent=False)

    def forward(self, logits: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor], img_hw: torch.Tensor):
        """-> (boxes [B, P, 4], scores [B, P], valid [B, P]) with P = min(post_nms, candidates)."""
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


def offset_by_group(boxes: torch.Tensor, group: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """mmcv ``batched_nms``'s trick for NMS within groups (levels, classes) in one pass: shift each
    group's boxes by group * (max coordinate + 1), the maximum taken per image over the valid boxes,
    with the same float32 operations so the IoUs match the original bit for bit."""
    masked = torch.where(valid[..., None], boxes, torch.zeros_like(boxes))
    max_coordinate = masked.reshape(boxes.shape[0], -1).max(dim=1).values
    offsets = group * (max_coordinate[:, None] + 1)
    return boxes + offsets[..., None]
