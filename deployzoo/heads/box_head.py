"""The R-CNN box head with two shared fully connected layers (mmdet Shared2FCBBoxHead, detectron2 FastRCNNConvFCHead 2fc)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Shared2FCBoxHead(nn.Module):
    """RoI features [R, C, 7, 7] -> flatten -> fc + ReLU -> fc + ReLU -> class logits and box deltas.

    ``num_classes`` excludes background; the classifier has one more output, background LAST.
    ``class_agnostic``: 4 deltas per RoI instead of 4 per class.
    """

    def __init__(self, in_channels: int = 256, roi_size: int = 7, fc_channels: int = 1024,
                 num_classes: int = 80, class_agnostic: bool = False):
        super().__init__()
        self.shared_fcs = nn.ModuleList([
            nn.Linear(in_channels * roi_size * roi_size, fc_channels),
            nn.Linear(fc_channels, fc_channels),
        ])
        self.fc_cls = nn.Linear(fc_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_channels, 4 if class_agnostic else 4 * num_classes)

    def forward(self, roi_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = roi_features.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)
