"""Adaptive average pooling that exports to standard ONNX at any input size (spec §5.4).

PyTorch's ``adaptive_avg_pool2d`` splits an H-long axis into ``s`` bins, bin i covering rows
[floor(i*H/s), ceil((i+1)*H/s)): bins overlap when s does not divide H. Its ONNX export only works
when s divides H (otherwise it fails), and MMDeploy's rewrite (avg_pool2d with kernel = stride =
floor(H/s)) computes something else. Here every bin is a Slice + ReduceMean whose bounds are computed
from the input's runtime shape, so one graph with dynamic H, W is exact at every size.
"""
from __future__ import annotations

import torch
from torch import nn


def _bin_edges(length, bins: int, index: int):
    """[start, end) of bin ``index`` of ``bins`` over ``length`` (a Python int, or a traced size)."""
    start = (index * length) // bins
    end = ((index + 1) * length + bins - 1) // bins  # ceil for non-negative integers
    return start, end


def adaptive_avg_pool2d(x: torch.Tensor, output_size: int | tuple[int, int]) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, sh, sw]: the mean over each of PyTorch's adaptive bins.

    H and W are read from the tensor's shape (under ONNX tracing they are graph values, not constants),
    so the exported bin bounds follow the input.
    """
    sh, sw = (output_size, output_size) if isinstance(output_size, int) else output_size
    if sh == 1 and sw == 1:
        return x.mean(dim=(2, 3), keepdim=True)
    height, width = x.shape[2], x.shape[3]
    rows = []
    for i in range(sh):
        h0, h1 = _bin_edges(height, sh, i)
        band = x[:, :, h0:h1, :]
        cells = []
        for j in range(sw):
            w0, w1 = _bin_edges(width, sw, j)
            cells.append(band[:, :, :, w0:w1].mean(dim=(2, 3), keepdim=True))
        rows.append(torch.cat(cells, dim=3))
    return torch.cat(rows, dim=2)


class AdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` with the exportable computation above (no parameters)."""

    def __init__(self, output_size: int | tuple[int, int]):
        super().__init__()
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"
