"""Conv -> BatchNorm -> ReLU, named as mmcv's ``ConvModule`` names it (``conv``, ``bn``), so OpenMMLab
checkpoints load without renames."""
from __future__ import annotations

import torch
from torch import nn

BN_EPS = 1e-5


class ConvBNReLU(nn.Module):
    """``conv`` (no bias: the norm follows) -> ``bn`` (eps 1e-5; run in eval mode) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))
