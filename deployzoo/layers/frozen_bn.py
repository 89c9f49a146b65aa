"""BatchNorm with fixed statistics and affine parameters, as detectron2 runs its backbones."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class FrozenBatchNorm2d(nn.Module):
    """y = (x - running_mean) * rsqrt(running_var + eps) * weight + bias, as inference-mode batch norm.

    All four tensors are buffers (nothing trains) and there is no ``num_batches_tracked``: detectron2
    checkpoints do not carry one. The eps is always added to the stored ``running_var`` (never assume
    ``running_var + eps == 1``). Input and output: [B, C, H, W].

    The forward is ``F.batch_norm(training=False)``, as detectron2's FrozenBatchNorm2d does without gradients
    (detectron2/layers/batch_norm.py, v0.6): one fused pass over the activations where ``x * scale + shift``
    took two (about 0.4 s of Cascade Mask R-CNN's eager time on 2 cores), and detectron2's own rounding. It
    exports as one ``BatchNormalization``, which ONNX Runtime and OpenVINO fold into the convolution before it.
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
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                            eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
