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


def detection_mask_probs(mask_head: FCNMaskHead, pooler, features, boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masks of the final detections: pool 14x14 from ``boxes`` [B, K, 4] with ``pooler`` (a
    MultiLevelRoIAlign, its ``level_major``), run the head, keep each detection's class -> [B, K, 28, 28]
    probabilities.

    Only real detections (``labels`` [B, K] >= 0) are pooled and run through the head; padding rows get
    all-zero masks. The head costs about 10 ms of CPU per RoI, and trained weights often keep far fewer than K
    detections, so a fixed K would spend most of it on padding. Detections of one image with the very same box
    (detectron2's Cascade regresses boxes class-agnostically, so every class a proposal keeps above the score
    threshold is a detection on the same box) share one RoI: its features, and so its logits for every class,
    are the same, and each detection reads its own class channel of them.
    """
    from deployzoo.ops.roi_extractor import flatten_rois

    batch, dets = boxes.shape[:2]
    flat, batch_index = flatten_rois(boxes)
    flat_labels = labels.reshape(-1)
    valid = flat_labels >= 0
    keep = torch.nonzero(valid).squeeze(1)
    rois, rois_batch, rois_labels = flat[keep], batch_index[keep], flat_labels[keep]
    row, distinct = _shared_boxes(rois, rois_batch)
    # The head runs on the distinct boxes in the pooler's level order (``inverse``: each box's row there), so
    # the pooled [U, 256, 14, 14] is never put back in box order: the one Gather below reads through it.
    pooled, inverse = pooler.level_major(features, rois[distinct], rois_batch[distinct])
    logits = mask_head(pooled)  # [U, C, M, M], level order
    # Detection v reads channel label[v] of its box's row: one Gather over [U * C, M, M]. A label of C or more
    # (NMS gives none; these are the real rows, labels >= 0) points past the end, so it never reads another RoI's
    # channel (eager and ONNX Runtime raise).
    classes, size = logits.shape[1], logits.shape[2:]
    flat_logits = logits.reshape(-1, size[0], size[1])
    at = inverse.index_select(0, row)
    index = torch.where(rois_labels < classes, at * classes + rois_labels, flat_logits.shape[0])
    picked = flat_logits.index_select(0, index)
    probs = picked.sigmoid()  # [V, M, M]
    # Back to [B*K, M, M] with one Gather: real detection k reads row (its rank among the real ones), padding
    # reads an appended zero row. No data-dependent shapes leave this function.
    zero = probs.new_zeros((1, probs.shape[1], probs.shape[2]))
    rank = torch.cumsum(valid.to(torch.int64), 0) - 1
    source = torch.where(valid, rank, torch.full_like(rank, 0) + keep.shape[0])
    probs = torch.cat([probs, zero]).index_select(0, source)
    return probs.reshape(batch, dets, probs.shape[-2], probs.shape[-1])


# Larger than any RoI index, and exact in float32: OpenVINO's CPU plugin took 2**31 - 1 through float32 to INT_MIN.
_NO_MATCH = 2**24


def _shared_boxes(rois: torch.Tensor, batch_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoIs [V, 4] of images ``batch_index`` [V] -> (row [V], distinct [U]): ``distinct`` the RoIs with no earlier
    RoI of the same image on an equal box (ascending), ``row[v]`` the position in ``distinct`` of RoI v's box.
    Equal is ``==`` on every coordinate: -0.0 matches 0.0 (RoIAlign pools both alike), a NaN matches nothing.

    A [V, V] comparison over the whole batch: V is the real detections of all its images (at most 100 per image),
    18 ms of CPU at V = 800 in eager, little next to the head's 8 ms per RoI.
    """
    index = torch.arange(rois.shape[0], device=rois.device)
    same = (rois[:, None, :] == rois[None, :, :]).all(dim=-1) & (batch_index[:, None] == batch_index[None, :])
    same = same | (index[:, None] == index[None, :])  # a RoI is its own match even if a coordinate were NaN
    # One padded column keeps the minimum defined when there is no RoI at all (eager refuses an empty one, and
    # export traces on a blank image).
    candidates = F.pad(torch.where(same, index[None, :], _NO_MATCH), (0, 1), value=_NO_MATCH)
    first = candidates.amin(dim=1)
    is_first = first == index
    row = (torch.cumsum(is_first.to(torch.int64), 0) - 1).index_select(0, first)
    return row, torch.nonzero(is_first).squeeze(1)
