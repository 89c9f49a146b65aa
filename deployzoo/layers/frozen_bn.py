"""BatchNorm with fixed statistics and affine parameters, as detectron2 runs its backbones."""
from __future__ import annotations

import torch
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """y = x * scale + (bias - running_mean * scale), scale = weight * rsqrt(running_var + eps).

    All four tensors are buffers (nothing trains) and there is no ``num_batches_tracked``: detectron2
    checkpoints do not carry one. The eps is always added to the stored ``running_var`` (never assume
    ``running_var + eps == 1``). Input and output: [B, C, H, W]. With constant folding the export is one
    Mul and one Add on constant per-channel vectors.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        # detectron2's initial value: a freshly built layer is the identity.
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
