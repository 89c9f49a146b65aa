"""The FCN mask head of Mask R-CNN (mmdet FCNMaskHead, detectron2 MaskRCNNConvUpsampleHead)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class FCNMaskHead(nn.Module):
    """RoI features [R, C, 14, 14] -> 4 x (3x3 conv + ReLU) -> 2x2 stride-2 deconv + ReLU -> 1x1 conv
    to one 28x28 logit map per class."""

    def __init__(self, in_channels: int = 256, conv_channels: int = 256, num_convs: int = 4, num_classes: int = 80):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else conv_channels, conv_channels, 3, padding=1) for i in range(num_convs)
        )
        self.upsample = nn.ConvTranspose2d(conv_channels, conv_channels, 2, stride=2)
        self.conv_logits = nn.Conv2d(conv_channels, num_classes, 1)

    def forward(self, roi_features: torch.Tensor) -> torch.Tensor:
        x = roi_features
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.conv_logits(F.relu(self.upsample(x)))


def class_mask_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sigmoid of each RoI's own class channel: logits [R, K, M, M], labels [R] (-1 = padding) -> [R, M, M]."""
    index = labels.clamp(min=0).reshape(-1, 1, 1, 1).expand(-1, 1, logits.shape[2], logits.shape[3])
    return torch.gather(logits, 1, index)[:, 0].sigmoid()


def detection_mask_probs(mask_head: FCNMaskHead, pooler, features, boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masks of the final detections: pool 14x14 from ``boxes`` [B, K, 4] with ``pooler`` (a
    MultiLevelRoIAlign), run the head, keep each detection's class -> [B, K, 28, 28] probabilities.

    Only real detections (``labels`` [B, K] >= 0) are pooled and run through the head; padding rows get
    all-zero masks. The head costs about 10 ms of CPU per RoI, and trained weights often keep far fewer than K
    detections, so a fixed K would spend most of it on padding.
    """
    from deployzoo.ops.roi_extractor import flatten_rois

    batch, dets = boxes.shape[:2]
    flat, batch_index = flatten_rois(boxes)
    flat_labels = labels.reshape(-1)
    valid = flat_labels >= 0
    keep = torch.nonzero(valid).squeeze(1)
    logits = mask_head(pooler(features, flat[keep], batch_index[keep]))
    probs = class_mask_probs(logits, flat_labels[keep])  # [V, M, M]
    # Back to [B*K, M, M] with one Gather: real detection k reads row (its rank among the real ones), padding
    # reads an appended zero row. No data-dependent shapes leave this function.
    zero = probs.new_zeros((1, probs.shape[1], probs.shape[2]))
    rank = torch.cumsum(valid.to(torch.int64), 0) - 1
    source = torch.where(valid, rank, torch.full_like(rank, 0) + keep.shape[0])
    probs = torch.cat([probs, zero]).index_select(0, source)
    return probs.reshape(batch, dets, probs.shape[-2], probs.shape[-1])
