"""ResNet with Bottleneck blocks, written once for every zoo model that uses one.

The three flavours the zoo needs (spec §1.5) differ only in constructor arguments:

- mmdet (torchvision weights): ``ResNet(50)``; stride in the 3x3 conv, BatchNorm in eval mode.
- detectron2 (MSRA weights): ``ResNet(50, stride_in_1x1=True, norm="frozen_bn")``.
- mmseg ResNetV1c-D8: ``ResNet(50, deep_stem=True, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
  contract_dilation=True)``.

Module names follow torchvision/mmdet (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``...),
so mmdet and mmseg backbone keys load after stripping ``backbone.``; detectron2 needs a rename table.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from deployzoo.layers.frozen_bn import FrozenBatchNorm2d

# Blocks per stage (layer1..layer4) for each supported depth.
BOTTLENECK_DEPTHS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
NORMS = ("bn", "frozen_bn")
BN_EPS = 1e-5  # every zoo checkpoint (torchvision, MSRA, open-mmlab) was trained with it


def make_norm(norm: str, channels: int) -> nn.Module:
    """``"bn"``: nn.BatchNorm2d (run it in eval mode); ``"frozen_bn"``: FrozenBatchNorm2d. Both eps 1e-5."""
    if norm == "bn":
        return nn.BatchNorm2d(channels, eps=BN_EPS)
    if norm == "frozen_bn":
        return FrozenBatchNorm2d(channels, eps=BN_EPS)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


class Bottleneck(nn.Module):
    """1x1 -> norm -> ReLU -> 3x3 (dilated) -> norm -> ReLU -> 1x1 -> norm, plus shortcut, then ReLU.

    ``stride_in_1x1`` puts the block's stride in ``conv1`` (MSRA/caffe, detectron2) instead of ``conv2``
    (torchvision, mmdet ``style='pytorch'``). The shortcut is ``downsample`` = 1x1 conv with the block's
    stride + norm whenever the block changes the channel count or the resolution, identity otherwise.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        stride_in_1x1: bool = False,
        norm: str = "bn",
    ):
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1, stride=stride_1x1, bias=False)
        self.bn1 = make_norm(norm, mid_channels)
        self.conv2 = nn.Conv2d(
            mid_channels, mid_channels, 3, stride=stride_3x3, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = make_norm(norm, mid_channels)
        self.conv3 = nn.Conv2d(mid_channels, out_channels, 1, bias=False)
        self.bn3 = make_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                make_norm(norm, out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Bottleneck ResNet returning the selected stage outputs C2..C5.

    Args:
        depth: 50, 101 or 152.
        stride_in_1x1: stride of each stage's first block in its 1x1 conv (detectron2) rather than its 3x3.
        norm: ``"bn"`` (nn.BatchNorm2d; call ``.eval()``) or ``"frozen_bn"`` (FrozenBatchNorm2d).
        deep_stem: mmseg ResNetV1c stem ``stem.0..8`` (three 3x3 convs 3->32->32->64, the first stride 2,
            each + norm + ReLU) instead of ``conv1`` 7x7/2 + ``bn1`` + ReLU. Both are followed by a 3x3/2
            max pool.
        strides, dilations: per stage (layer1..layer4); the stride applies to each stage's first block.
        contract_dilation: mmseg rule: the first block of a stage with dilation d > 1 uses d // 2.
        out_indices: which stages to return (0 = layer1 = C2, stride 4, ... 3 = layer4 = C5).

    All four stages are always built so that the checkpoint's keys all have a home.
    forward: x [B, 3, H, W] -> tuple of [B, 256 * 2**i, H / s_i, W / s_i] for i in out_indices, where
    s_i = 4 * strides[1] * ... * strides[i] (4, 8, 16, 32 by default; 4, 8, 8, 8 for D8).
    """

    def __init__(
        self,
        depth: int = 50,
        *,
        stride_in_1x1: bool = False,
        norm: str = "bn",
        deep_stem: bool = False,
        strides: Sequence[int] = (1, 2, 2, 2),
        dilations: Sequence[int] = (1, 1, 1, 1),
        contract_dilation: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
    ):
        super().__init__()
        if depth not in BOTTLENECK_DEPTHS:
            raise ValueError(f"depth must be one of {sorted(BOTTLENECK_DEPTHS)}, got {depth}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        strides, dilations, out_indices = tuple(strides), tuple(dilations), tuple(out_indices)
        if len(strides) != 4 or len(dilations) != 4:
            raise ValueError(f"strides and dilations need one entry per stage (4), got {strides}, {dilations}")
        if any(s < 1 for s in strides) or any(d < 1 for d in dilations):
            raise ValueError(f"strides and dilations must be >= 1, got {strides}, {dilations}")
        if not out_indices or list(out_indices) != sorted(set(out_indices)) or not set(out_indices) <= {0, 1, 2, 3}:
            raise ValueError(f"out_indices must be increasing stage indices in 0..3, got {out_indices}")
        self.out_indices = out_indices

        if deep_stem:
            self.stem = nn.Sequential(
                nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False),
                make_norm(norm, 32),
                nn.ReLU(inplace=True),
                nn.Conv2d(32, 32, 3, stride=1, padding=1, bias=False),
                make_norm(norm, 32),
                nn.ReLU(inplace=True),
                nn.Conv2d(32, 64, 3, stride=1, padding=1, bias=False),
                make_norm(norm, 64),
                nn.ReLU(inplace=True),
            )
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.bn1 = make_norm(norm, 64)
            self.relu = nn.ReLU(inplace=True)
        self.deep_stem = deep_stem
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        in_channels = 64
        for i, (num_blocks, stride, dilation) in enumerate(zip(BOTTLENECK_DEPTHS[depth], strides, dilations)):
            mid_channels = 64 * 2**i
            out_channels = 4 * mid_channels
            first_dilation = dilation // 2 if contract_dilation and dilation > 1 else dilation
            blocks = []
            for b in range(num_blocks):
                blocks.append(
                    Bottleneck(
                        in_channels if b == 0 else out_channels,
                        mid_channels,
                        out_channels,
                        stride=stride if b == 0 else 1,
                        dilation=first_dilation if b == 0 else dilation,
                        stride_in_1x1=stride_in_1x1,
                        norm=norm,
                    )
                )
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            in_channels = out_channels
        self.out_channels = tuple(256 * 2**i for i in out_indices)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.deep_stem:
            x = self.stem(x)
        else:
            x = self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        outputs = []
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            x = layer(x)
            if i in self.out_indices:
                outputs.append(x)
            if i == self.out_indices[-1]:
                break  # later stages are built (their weights load) but not run
        return tuple(outputs)
