"""Grid anchors of the R-CNN family: float, un-rounded, centred at (x * stride, y * stride).

Computed with the same float32 operations as mmdetection's AnchorGenerator, so the anchors are
bit-identical; the grid is built from the feature map's runtime size, so a dynamic-shape ONNX export
follows the input size.
"""
from __future__ import annotations

from typing import Sequence

import torch


def base_anchors(stride: int, scales: Sequence[float], ratios: Sequence[float], center_offset: float = 0.0) -> torch.Tensor:
    """[A, 4] anchors around the origin, ratio-major (mmdet ``scale_major``); ratio = h / w."""
    ratios_t = torch.tensor(list(ratios), dtype=torch.float32)
    scales_t = torch.tensor(list(scales), dtype=torch.float32)
    h_ratios = torch.sqrt(ratios_t)
    w_ratios = 1 / h_ratios
    ws = (stride * w_ratios[:, None] * scales_t[None, :]).reshape(-1)
    hs = (stride * h_ratios[:, None] * scales_t[None, :]).reshape(-1)
    cx = cy = center_offset * stride
    return torch.stack([cx - 0.5 * ws, cy - 0.5 * hs, cx + 0.5 * ws, cy + 0.5 * hs], dim=-1)


def grid_anchors(base: torch.Tensor, feature: torch.Tensor, stride: int) -> torch.Tensor:
    """[H*W*A, 4] anchors for a feature map [B, C, H, W]: locations row-major, anchors innermost."""
    height, width = feature.shape[-2], feature.shape[-1]
    shift_x = torch.arange(width, dtype=torch.float32, device=feature.device) * stride
    shift_y = torch.arange(height, dtype=torch.float32, device=feature.device) * stride
    xx = shift_x[None, :].expand(shift_y.shape[0], shift_x.shape[0]).reshape(-1)
    yy = shift_y[:, None].expand(shift_y.shape[0], shift_x.shape[0]).reshape(-1)
    shifts = torch.stack([xx, yy, xx, yy], dim=-1)
    return (base[None, :, :] + shifts[:, None, :]).reshape(-1, 4)
