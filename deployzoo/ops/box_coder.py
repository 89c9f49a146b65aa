"""The delta (dx, dy, dw, dh) box coder of the R-CNN family, decode side.

mmdetection writes the scale as ``stds`` that multiply the raw deltas, detectron2 as ``weights`` that
divide them: the same coder, but the float operations differ in the last bit, so both spellings are kept
(``DeltaBoxCoder(stds=...)`` or ``DeltaBoxCoder(weights=...)``) together with the other small convention
differences (how the centre is computed, which side of dw/dh is clamped).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

# log(1000 / 16): neither framework lets a box grow more than 1000/16 times in one decode.
SCALE_CLAMP = abs(math.log(16 / 1000))


class DeltaBoxCoder:
    def __init__(
        self,
        stds: Sequence[float] | None = None,
        weights: Sequence[float] | None = None,
        clamp_both_sides: bool = True,
        center_from_corners: bool = True,
    ):
        """``stds`` (mmdet: delta * std) or ``weights`` (detectron2: delta / weight), not both.

        ``clamp_both_sides``: mmdet clamps |dw|, |dh| <= log(1000/16); detectron2 only the upper side.
        ``center_from_corners``: mmdet centre (x1 + x2) * 0.5; detectron2 x1 + 0.5 * width.
        """
        if (stds is None) == (weights is None):
            raise ValueError("give exactly one of stds (mmdet) or weights (detectron2)")
        self.stds = None if stds is None else tuple(float(s) for s in stds)
        self.weights = None if weights is None else tuple(float(w) for w in weights)
        self.clamp_both_sides = clamp_both_sides
        self.center_from_corners = center_from_corners

    def decode(self, priors: torch.Tensor, deltas: torch.Tensor, max_hw: torch.Tensor | None = None) -> torch.Tensor:
        """Boxes [..., 4] from priors and deltas [..., 4] (broadcastable).

        ``max_hw``: per-image (h, w) broadcastable to [..., 2]; boxes are clipped to [0, w] x [0, h]
        (mmdet clips inside decode; detectron2 callers clip afterwards, the same operation).
        """
        if self.stds is not None:
            scale = deltas.new_tensor(self.stds)
            d = deltas * scale
        else:
            d = deltas / deltas.new_tensor(self.weights)
        dxy, dwh = d[..., :2], d[..., 2:]
        pwh = priors[..., 2:] - priors[..., :2]
        if self.center_from_corners:
            pxy = (priors[..., :2] + priors[..., 2:]) * 0.5
        else:
            pxy = priors[..., :2] + 0.5 * pwh
        dwh = dwh.clamp(min=-SCALE_CLAMP, max=SCALE_CLAMP) if self.clamp_both_sides else dwh.clamp(max=SCALE_CLAMP)
        if self.center_from_corners:
            gxy = pxy + pwh * dxy
            gwh = pwh * dwh.exp()
        else:
            gxy = dxy * pwh + pxy
            gwh = dwh.exp() * pwh
        boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
        if max_hw is not None:
            boxes = clip_boxes(boxes, max_hw)
        return boxes


def clip_boxes(boxes: torch.Tensor, max_hw: torch.Tensor) -> torch.Tensor:
    """Clip x to [0, w] and y to [0, h]; ``max_hw`` (h, w) broadcastable to boxes[..., :2]."""
    limit = torch.stack([max_hw[..., 1], max_hw[..., 0]], dim=-1).to(boxes.dtype)
    limit = torch.cat([limit, limit], dim=-1)
    return torch.minimum(boxes.clamp(min=0), limit)
