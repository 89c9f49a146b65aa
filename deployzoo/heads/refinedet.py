"""RefineDet's heads: anchor refinement (ARM), transfer connection blocks (TCB), object detection (ODM).

Built as flat ModuleLists because the checkpoint's key names are their indices
(``tcb0.3.weight`` is level 1's first conv, ``tcb2.1.weight`` level 0's prediction conv, ...).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def multibox_convs(in_channels: Sequence[int], anchors_per_cell: int, values_per_anchor: int) -> nn.ModuleList:
    """One 3x3 conv per level predicting ``anchors_per_cell * values_per_anchor`` channels."""
    return nn.ModuleList(
        nn.Conv2d(c, anchors_per_cell * values_per_anchor, kernel_size=3, padding=1) for c in in_channels
    )


def tcb_layers(in_channels: Sequence[int], width: int = 256) -> tuple[nn.ModuleList, nn.ModuleList, nn.ModuleList]:
    """(tcb0, tcb1, tcb2): per level [conv, relu, conv], the 2x deconvs between levels, per level [relu, conv, relu]."""
    lateral: list[nn.Module] = []
    predict: list[nn.Module] = []
    for c in in_channels:
        lateral += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(width, width, 3, padding=1)]
        predict += [nn.ReLU(inplace=True), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
    upsample = [nn.ConvTranspose2d(width, width, 2, 2) for _ in range(len(in_channels) - 1)]
    return nn.ModuleList(lateral), nn.ModuleList(upsample), nn.ModuleList(predict)


def run_tcb(
    sources: Sequence[torch.Tensor], tcb0: nn.ModuleList, tcb1: nn.ModuleList, tcb2: nn.ModuleList
) -> list[torch.Tensor]:
    """Top-down pass from the coarsest source; returns the TCB outputs finest first (P3..P6 order)."""
    outputs: list[torch.Tensor] = []
    coarser: torch.Tensor | None = None
    for level in reversed(range(len(sources))):
        s = sources[level]
        for i in range(3):
            s = tcb0[3 * level + i](s)
        if coarser is not None:
            s = s + tcb1[level](coarser)  # deconv of the coarser level, no activation
        for i in range(3):
            s = tcb2[3 * level + i](s)
        coarser = s
        outputs.append(s)
    outputs.reverse()
    return outputs


def flatten_levels(maps: Sequence[torch.Tensor], values_per_anchor: int) -> torch.Tensor:
    """[B, A*V, H, W] per level -> [B, sum(H*W*A), V], cells row-major, anchors within a cell consecutive."""
    batch = maps[0].shape[0]
    return torch.cat([m.permute(0, 2, 3, 1).reshape(batch, -1, values_per_anchor) for m in maps], dim=1)
