"""Bilinear resizing the way mmseg does it (``F.interpolate``, align_corners False), including to a size
that is a graph INPUT rather than a constant: the label-map contract resizes to each image's original size."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_bilinear(x: torch.Tensor, size_of: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, C, H, W] with (H, W) = the last two dims of ``size_of`` (dynamic in ONNX)."""
    return F.interpolate(x, size=size_of.shape[-2:], mode="bilinear", align_corners=False)


class _ResizeToHW(torch.autograd.Function):
    """Resize to the (h, w) held in row 0 of a [B, 2] float tensor; exports to ONNX ``Resize`` with
    ``sizes`` computed in the graph (the tracer would otherwise freeze the size as a constant)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, hw: torch.Tensor) -> torch.Tensor:
        h, w = (int(v) for v in hw[0].tolist())
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)

    @staticmethod
    def symbolic(g, x, hw):
        leading = g.op("Slice", g.op("Shape", x), g.op("Constant", value_t=torch.tensor([0])),
                       g.op("Constant", value_t=torch.tensor([2])))
        row = g.op("Gather", hw, g.op("Constant", value_t=torch.tensor(0)), axis_i=0)
        sizes = g.op("Concat", leading, g.op("Cast", row, to_i=7), axis_i=0)  # 7 = INT64
        empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
        return g.op("Resize", x, empty, empty, sizes, coordinate_transformation_mode_s="half_pixel",
                    mode_s="linear", nearest_mode_s="floor", cubic_coeff_a_f=-0.75)


def resize_bilinear_to_hw(x: torch.Tensor, hw: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, C, H, W] with (H, W) = ``hw[0]`` ([B, 2] float32 of whole numbers). Every row
    of a batch is resized to the same size: the caller batches only images that share it."""
    return _ResizeToHW.apply(x, hw)
