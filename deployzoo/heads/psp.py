"""mmseg PSPHead (spec §5.3): pyramid pooling module, 3x3 bottleneck, 1x1 classifier.

Module names follow mmseg so its checkpoint keys load as they are: ``psp_modules.{k}.1.conv.weight``
(index 0 of each branch is the pooling layer, k follows pool_scales), ``bottleneck.conv``/``.bn``,
``conv_seg``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from deployzoo.layers.conv_norm_act import ConvBNReLU
from deployzoo.ops.adaptive_pool import AdaptiveAvgPool2d
from deployzoo.ops.resize import resize_bilinear


class PSPHead(nn.Module):
    """[B, in_channels, h, w] -> logits [B, num_classes, h, w].

    Each pyramid branch: exact adaptive average pooling to s x s (exportable at any h, w), 1x1 conv + BN +
    ReLU, bilinear resize back to h x w (align_corners False). The input and the branches (scales in
    order) are concatenated, then bottleneck (3x3 conv + BN + ReLU), dropout (identity at test) and
    ``conv_seg``.
    """

    def __init__(self, in_channels: int = 2048, channels: int = 512, num_classes: int = 21,
                 pool_scales: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.pool_scales = tuple(pool_scales)
        self.psp_modules = nn.ModuleList(
            nn.Sequential(AdaptiveAvgPool2d(s), ConvBNReLU(in_channels, channels, 1)) for s in self.pool_scales
        )
        self.bottleneck = ConvBNReLU(in_channels + len(self.pool_scales) * channels, channels, 3, padding=1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [x] + [resize_bilinear(branch(x), x) for branch in self.psp_modules]
        return self.conv_seg(self.bottleneck(torch.cat(branches, dim=1)))
