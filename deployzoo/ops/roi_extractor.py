"""Multi-level RoIAlign: each RoI is pooled from the one FPN level its size maps to."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from deployzoo.ops.roi_align import roi_align

LEVEL_RULES = ("mmdet", "detectron2")


def map_roi_levels(boxes: Tensor, num_levels: int, rule: str = "mmdet") -> Tensor:
    """0-based level index [R] int64 for ``boxes`` [R, 4] (x1, y1, x2, y2), float32 maths as each framework.

    mmdet (SingleRoIExtractor, finest_scale 56): floor(log2(sqrt(area) / 56 + 1e-6)), clamped to the levels.
    detectron2 (assign_boxes_to_levels, canonical box 224 at level 4, levels from 2): floor(4 +
    log2(sqrt(area) / 224 + 1e-8)) clamped to [2, 2 + num_levels - 1], minus 2.
    """
    boxes = boxes.to(torch.float32)
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    if rule == "mmdet":
        levels = torch.floor(torch.log2(scale / 56 + 1e-6))
        return levels.clamp(min=0, max=num_levels - 1).to(torch.int64)
    if rule == "detectron2":
        levels = torch.floor(4 + torch.log2(scale / 224 + 1e-8))
        return levels.clamp(min=2, max=2 + num_levels - 1).to(torch.int64) - 2
    raise ValueError(f"unknown level rule {rule!r}; expected one of {LEVEL_RULES}")


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign over FPN levels (mmdet SingleRoIExtractor, detectron2 ROIPooler with ROIAlignV2).

    ``strides`` are the levels' strides, finest first; level i is sampled with spatial scale 1 / strides[i].
    """

    def __init__(
        self,
        output_size: int,
        strides: Sequence[int],
        sampling_ratio: int = 0,
        aligned: bool = True,
        level_rule: str = "mmdet",
    ) -> None:
        super().__init__()
        if level_rule not in LEVEL_RULES:
            raise ValueError(f"unknown level rule {level_rule!r}; expected one of {LEVEL_RULES}")
        if not strides:
            raise ValueError("MultiLevelRoIAlign needs at least one stride")
        self.output_size = int(output_size)
        self.strides = tuple(int(s) for s in strides)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.level_rule = level_rule

    def forward(self, features: list[Tensor], boxes: Tensor, batch_indices: Tensor) -> Tensor:
        """``features`` one [N, C, H_i, W_i] map per stride, ``boxes`` [R, 4] in input pixels, ``batch_indices``
        [R] int64 -> [R, C, out, out]."""
        pooled, inverse = self.level_major(features, boxes, batch_indices)
        return pooled.index_select(0, inverse)

    def level_major(self, features: list[Tensor], boxes: Tensor, batch_indices: Tensor) -> tuple[Tensor, Tensor]:
        """The pooled features level by level, and each RoI's row in them.

        Same inputs as ``forward`` -> (pooled [R, C, out, out]: the RoIs of the finest level first, each level's
        in input order; inverse [R] int64: RoI r's row in ``pooled``). ``pooled.index_select(0, inverse)`` is
        ``forward``'s result. A head that treats every RoI on its own (the box head's FCs, the mask head's
        convolutions) can run on ``pooled`` and gather only its outputs back into RoI order (``per_roi_head``):
        the same values up to GEMM rounding, and the gather moves the head's outputs (Cascade's [R, 81] and
        [R, 4], Mask R-CNN's [R, 81] and [R, 320]) instead of [R, 256, 7, 7]. On Cascade Mask R-CNN (OpenVINO
        fp32, 2-core AVX2 EPYC) that took the copies and reorders around the poolers from 0.150 to 0.121 s per
        image.
        """
        if len(features) != len(self.strides):
            raise ValueError(f"got {len(features)} feature maps for {len(self.strides)} strides")
        levels = map_roi_levels(boxes, len(self.strides), self.level_rule)
        size = self.output_size
        pooled, order = [], []
        for level, (feature, stride) in enumerate(zip(features, self.strides)):
            # The RoIs of this level, possibly none: NonZero -> Gather -> RoiAlign.
            index = torch.nonzero(levels == level).squeeze(1)
            pooled.append(roi_align(
                feature, boxes[index], batch_indices[index], size, 1.0 / stride, self.sampling_ratio, self.aligned
            ))
            order.append(index)
        # Level-major results go back to RoI order with one Gather by the inverse permutation. Writing each level
        # into a zero [R, C, out, out] tensor (ScatterElements with an expanded int64 index) cost ONNX Runtime
        # 16% of Cascade Mask R-CNN's time; inverting the permutation scatters only R integers.
        order = torch.cat(order)
        if torch.compiler.is_exporting():
            torch._check(order.shape[0] == boxes.shape[0])  # a run-time check in an AOTInductor package
        elif not torch.jit.is_tracing() and order.shape[0] != boxes.shape[0]:
            raise ValueError(f"{boxes.shape[0] - order.shape[0]} of {boxes.shape[0]} RoIs map to no FPN level "
                             "(a non-finite box)")
        positions = torch.arange(order.shape[0], dtype=order.dtype, device=order.device)
        # The inverse takes the RoIs' own length, not the levels' total: torch.export cannot tell that nonzero's
        # lengths add up to R, and every shape after the gather would be left free (an AOTInductor package then
        # asserts guesses about them at run time).
        inverse = torch.zeros_like(levels).scatter(0, order, positions)
        return torch.cat(pooled), inverse


def per_roi_head(head: nn.Module, pooler: MultiLevelRoIAlign, features: list[Tensor], boxes: Tensor,
                 batch_indices: Tensor) -> Tensor | tuple[Tensor, ...]:
    """``head`` (a module that treats each RoI on its own and returns one [R, ...] tensor or a tuple of them) on
    the RoIs ``boxes`` [R, 4] pooled by ``pooler``, run in the pooler's level order; its outputs come back in RoI
    order. The values of ``head(pooler(...))`` up to GEMM rounding (PyTorch's CPU GEMM may round a row of a short
    tail block by an ulp), with the head's outputs gathered instead of the pooled features."""
    pooled, inverse = pooler.level_major(features, boxes, batch_indices)
    outputs = head(pooled)
    if isinstance(outputs, Tensor):
        return outputs.index_select(0, inverse)
    return tuple(out.index_select(0, inverse) for out in outputs)


def flatten_rois(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image RoIs [B, R, 4] -> (boxes [B*R, 4], batch index [B*R]), the layout RoIAlign takes."""
    batch, rois = boxes.shape[:2]
    batch_index = torch.arange(batch, dtype=torch.int64, device=boxes.device)[:, None].expand(batch, rois).reshape(-1)
    return boxes.reshape(-1, 4), batch_index
