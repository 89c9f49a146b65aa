"""Feature Pyramid Network as mmdet and detectron2 build it for their R50-FPN models (spec §1.6).

No norm and no activation anywhere. Laterals and output convs are plain biased convolutions, so mmdet's
``neck.lateral_convs.{i}.conv.*`` / ``neck.fpn_convs.{i}.conv.*`` and detectron2's
``backbone.fpn_lateral{s}.*`` / ``backbone.fpn_output{s}.*`` map onto ``lateral_convs.{i}`` /
``output_convs.{i}`` by renaming only (index i counts from the finest input given).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

EXTRAS = ("maxpool", "p6p7_on_input", "none")
UPSAMPLES = ("size", "scale2")


class FPN(nn.Module):
    """Top-down pyramid over backbone features, finest first.

    Args:
        in_channels: channels of each input feature, finest first (e.g. C2..C5: 256, 512, 1024, 2048).
        out_channels: channels of every output level.
        extra: levels added above the coarsest merged one:
            ``"maxpool"``: one level, ``max_pool2d(last, kernel_size=1, stride=2)`` (mmdet Mask R-CNN,
            detectron2 ``LastLevelMaxPool``);
            ``"p6p7_on_input"``: ``extra_convs.0`` = 3x3/2 conv on the coarsest INPUT (e.g. C5), then
            ``extra_convs.1`` = 3x3/2 conv on that, no ReLU between (mmdet RetinaNet/FSAF
            ``add_extra_convs='on_input'``);
            ``"none"``: no extra level.
        upsample: how the coarser merged level is brought to the finer lateral's size:
            ``"size"``: nearest to the lateral's runtime size (mmdet); ``"scale2"``: nearest x2 (detectron2).
            They agree whenever each level is exactly twice the next (inputs padded to the coarsest stride).

    forward: tuple of [B, in_channels[i], H_i, W_i] -> tuple of [B, out_channels, H_i, W_i] for the inputs,
    followed by the extra levels (each half the previous, rounded up).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        extra: str = "maxpool",
        upsample: str = "size",
    ):
        super().__init__()
        in_channels = tuple(int(c) for c in in_channels)
        if not in_channels:
            raise ValueError("FPN needs at least one input level")
        if extra not in EXTRAS:
            raise ValueError(f"extra must be one of {EXTRAS}, got {extra!r}")
        if upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be one of {UPSAMPLES}, got {upsample!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.extra = extra
        self.upsample = upsample
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels
        )
        if extra == "p6p7_on_input":
            self.extra_convs = nn.ModuleList(
                [
                    nn.Conv2d(in_channels[-1], out_channels, 3, stride=2, padding=1),
                    nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1),
                ]
            )

    @property
    def num_levels(self) -> int:
        return len(self.in_channels) + {"maxpool": 1, "p6p7_on_input": 2, "none": 0}[self.extra]

    def _upsample_to(self, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        if self.upsample == "size":
            # The runtime size (not a constant) so the ONNX graph keeps dynamic H and W.
            return F.interpolate(coarse, size=fine.shape[-2:], mode="nearest")
        return F.interpolate(coarse, scale_factor=2.0, mode="nearest")

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if len(features) != len(self.in_channels):
            raise ValueError(f"FPN built for {len(self.in_channels)} inputs, got {len(features)}")
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)]
        for i in range(len(laterals) - 1, 0, -1):
            # lateral + upsampled, in mmdet's order (the sum is exact either way)
            laterals[i - 1] = laterals[i - 1] + self._upsample_to(laterals[i], laterals[i - 1])
        outputs = [conv(lat) for conv, lat in zip(self.output_convs, laterals)]
        if self.extra == "maxpool":
            outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        elif self.extra == "p6p7_on_input":
            p6 = self.extra_convs[0](features[-1])
            outputs += [p6, self.extra_convs[1](p6)]
        return tuple(outputs)
