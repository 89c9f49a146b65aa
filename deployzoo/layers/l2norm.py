"""Channel-wise L2 normalisation with a learned per-channel scale (SSD / RefineDet)."""
from __future__ import annotations

import torch
from torch import nn


class L2Norm(nn.Module):
    """y[c] = weight[c] * x[c] / (sqrt(sum_c x^2) + eps).

    The eps is added AFTER the square root, as RefineDet.PyTorch does (Caffe's Normalize adds it inside).
    Input and output: [B, C, H, W].
    """

    def __init__(self, channels: int, initial_scale: float, eps: float = 1e-10):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.full((channels,), float(initial_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return self.weight.view(1, -1, 1, 1) * (x / norm)
