"""FSAF's anchor-free head (mmdet ``FSAFHead``, a RetinaHead with one square prior per location) and its
TBLR box decoding (mmdet ``TBLRBBoxCoder``), spec §3.2.

Module names follow mmdet, so ``bbox_head.cls_convs.{i}.conv.*`` loads as ``cls_convs.{i}.*`` (mmcv's
ConvModule without a norm is a biased conv followed by ReLU) and ``retina_cls`` / ``retina_reg`` as they are.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from deployzoo.ops.box_coder import clip_boxes


class FSAFHead(nn.Module):
    """Two towers of ``stacked_convs`` 3x3 conv + bias + ReLU, shared over the pyramid levels (no per-level
    scale), then ``retina_cls`` 3x3 -> ``num_classes`` sigmoid logits and ``retina_reg`` 3x3 -> 4 TBLR
    distances, which FSAF passes through a ReLU (distances are never negative).

    forward: levels [B, in_channels, H_l, W_l] -> (logits [B, num_classes, H_l, W_l] per level,
    tblr [B, 4, H_l, W_l] per level).
    """

    def __init__(self, num_classes: int = 80, in_channels: int = 256, feat_channels: int = 256, stacked_convs: int = 4):
        super().__init__()
        self.num_classes = num_classes
        widths = [in_channels] + [feat_channels] * (stacked_convs - 1)
        self.cls_convs = nn.ModuleList(nn.Conv2d(c, feat_channels, 3, padding=1) for c in widths)
        self.reg_convs = nn.ModuleList(nn.Conv2d(c, feat_channels, 3, padding=1) for c in widths)
        self.retina_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)

    def forward_single(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls_feat, reg_feat = x, x
        for conv in self.cls_convs:
            cls_feat = F.relu(conv(cls_feat))
        for conv in self.reg_convs:
            reg_feat = F.relu(conv(reg_feat))
        return self.retina_cls(cls_feat), F.relu(self.retina_reg(reg_feat))

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, tblr = [], []
        for x in features:
            cls_score, bbox_pred = self.forward_single(x)
            logits.append(cls_score)
            tblr.append(bbox_pred)
        return logits, tblr


def tblr_decode(
    priors: torch.Tensor, tblr: torch.Tensor, normalizer: float = 4.0, max_hw: torch.Tensor | None = None
) -> torch.Tensor:
    """mmdet ``tblr2bboxes`` (normalize_by_wh=True): boxes [..., 4] (x1, y1, x2, y2) from priors [..., 4]
    and predictions [..., 4] = (top, bottom, left, right), broadcastable.

    The distances are ``tblr * normalizer`` times the prior's height (top, bottom) or width (left,
    right), measured from the prior's centre ((x1 + x2) / 2), in mmdet's float32 operation order.
    ``max_hw``: per-image (h, w) broadcastable to [..., 2]; x is clipped to [0, w] and y to [0, h]
    (the resized, unpadded image, never the padded canvas).
    """
    distance = tblr * normalizer
    centre = (priors[..., 0:2] + priors[..., 2:4]) / 2
    wh = priors[..., 2:4] - priors[..., 0:2]
    top_bottom = wh[..., 1:2] * distance[..., 0:2]
    left_right = wh[..., 0:1] * distance[..., 2:4]
    cx, cy = centre[..., 0:1], centre[..., 1:2]
    boxes = torch.cat([cx - left_right[..., 0:1], cy - top_bottom[..., 0:1],
                       cx + left_right[..., 1:2], cy + top_bottom[..., 1:2]], dim=-1)
    # mmdet clips with where(b < 0, 0, b) then where(b > max, max, b): the same values as clip_boxes
    return boxes if max_hw is None else clip_boxes(boxes, max_hw)
