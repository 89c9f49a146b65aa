"""RoIAlign (average mode) as mmcv / torchvision compute it on the CPU, exported as one ONNX ``RoiAlign``."""
from __future__ import annotations

import torch
from torch import Tensor

# RoIs whose sampling weights are built at once: bounds memory to about CHUNK * output_size * (H + W) floats.
CHUNK = 256


def roi_align(
    features: Tensor,
    boxes: Tensor,
    batch_indices: Tensor,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> Tensor:
    """Average-pooled bilinear crops of ``features`` [N, C, H, W] float32 -> [R, C, out, out].

    ``boxes`` [R, 4] are (x1, y1, x2, y2) in input pixels, ``batch_indices`` [R] int64 pick the image.
    ``sampling_ratio`` 0 means ceil(roi_size / output_size) samples per bin along each axis, per RoI.
    ``aligned`` shifts sample points by half a pixel (torchvision ``aligned=True``, detectron2 ROIAlignV2,
    mmcv ``aligned=True``). Exports to ONNX (opset >= 16) as a single default-domain ``RoiAlign`` node.
    Inference only: there is no backward.
    """
    return _RoIAlign.apply(
        features, boxes, batch_indices, int(output_size), float(spatial_scale), int(sampling_ratio), bool(aligned)
    )


class _RoIAlign(torch.autograd.Function):
    """Eager maths in ``forward``; the TorchScript exporter calls ``symbolic`` instead of tracing into it."""

    @staticmethod
    def forward(ctx, features, boxes, batch_indices, output_size, spatial_scale, sampling_ratio, aligned):
        return _roi_align_eager(features, boxes, batch_indices, output_size, spatial_scale, sampling_ratio, aligned)

    @staticmethod
    def symbolic(g, features, boxes, batch_indices, output_size, spatial_scale, sampling_ratio, aligned):
        return g.op(
            "RoiAlign",
            features,
            boxes,
            batch_indices,
            coordinate_transformation_mode_s="half_pixel" if aligned else "output_half_pixel",
            mode_s="avg",
            output_height_i=output_size,
            output_width_i=output_size,
            sampling_ratio_i=sampling_ratio,
            spatial_scale_f=spatial_scale,
        )


def _roi_align_eager(features, boxes, batch_indices, output_size, spatial_scale, sampling_ratio, aligned):
    _, c, h, w = features.shape
    r = boxes.shape[0]
    out = features.new_zeros((r, c, output_size, output_size))
    if r == 0:
        return out
    boxes = boxes.to(torch.float32)
    batch = batch_indices.tolist()
    # Channels last, so a crop's rows are [w_crop * C] contiguous runs and both contractions are plain GEMMs.
    maps = features.permute(0, 2, 3, 1).contiguous()
    for lo in range(0, r, CHUNK):
        chunk = boxes[lo : lo + CHUNK]
        # Bilinear sampling then averaging is separable: bin (i, j) = sum_y sum_x wy[i, y] F[y, x] wx[j, x].
        # Only the rows / columns a RoI touches are read, so cost follows the RoI's area, not the map's.
        wy, y0, y1 = _axis_weights(chunk[:, 1], chunk[:, 3], h, output_size, spatial_scale, sampling_ratio, aligned)
        wx, x0, x1 = _axis_weights(chunk[:, 0], chunk[:, 2], w, output_size, spatial_scale, sampling_ratio, aligned)
        wy, wx = wy.to(maps.dtype), wx.to(maps.dtype)  # sample positions stay float32, as in the kernel
        for k in range(chunk.shape[0]):
            if y1[k] <= y0[k] or x1[k] <= x0[k]:
                continue  # no sample lands on the map: the output stays 0
            crop = maps[batch[lo + k], y0[k] : y1[k], x0[k] : x1[k]]  # [h_crop, w_crop, C]
            rows = torch.mm(wy[k, :, y0[k] : y1[k]], crop.flatten(1))  # [out, w_crop * C]
            bins = torch.matmul(wx[k, :, x0[k] : x1[k]], rows.view(output_size, x1[k] - x0[k], c))  # [out, out, C]
            out[lo + k] = bins.permute(2, 0, 1)
    return out


def _axis_weights(start, end, size, output_size, spatial_scale, sampling_ratio, aligned):
    """Per RoI, the [out, size] matrix mapping one axis of the map to the output bins, and the range
    [first, last) of map indices its samples touch (empty when none lands on the map).

    Row i holds the two bilinear taps of each sample in bin i, divided by the sample count on this axis
    (the product of both axes' divisions is mmcv's ``count``). Float32 throughout, in mmcv's order.
    """
    offset = 0.5 if aligned else 0.0
    start = start * spatial_scale - offset
    end = end * spatial_scale - offset
    length = end - start
    if not aligned:
        length = length.clamp(min=1.0)  # the legacy kernel forces malformed RoIs to 1 pixel
    bin_size = length / output_size
    if sampling_ratio > 0:
        grid = torch.full_like(length, sampling_ratio, dtype=torch.int64)
    else:
        grid = torch.ceil(length / output_size).to(torch.int64).clamp(min=0)
    num = start.shape[0]
    g = int(grid.max()) if num else 0
    device = start.device
    weights = torch.zeros((num, output_size, size + 1), dtype=torch.float32, device=device)
    if g == 0:
        return weights[:, :, :size], [0] * num, [0] * num
    bins = torch.arange(output_size, dtype=torch.float32, device=device)
    steps = torch.arange(g, dtype=torch.float32, device=device)
    grid_f = grid.to(torch.float32).clamp(min=1.0)[:, None, None]
    # y = start + p * bin + (i + 0.5) * bin / grid, evaluated exactly like the C++ kernel
    pos = (start[:, None, None] + bins[None, :, None] * bin_size[:, None, None]) + (
        (steps + 0.5)[None, None, :] * bin_size[:, None, None]
    ) / grid_f
    used = (steps[None, None, :] < grid[:, None, None]) & (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0.0)
    low = pos.to(torch.int64)  # truncation == floor, since pos >= 0
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    pos = torch.where(at_edge, low.to(torch.float32), pos)
    frac = pos - low.to(torch.float32)
    scale = used.to(torch.float32) / grid_f
    # Unused samples are sent to the spare column ``size`` with weight 0, then dropped.
    low = torch.where(used, low, size)
    high = torch.where(used, high, size)
    taps = torch.cat([low, high], dim=2)
    tap_weights = torch.cat([(1.0 - frac) * scale, frac * scale], dim=2)
    weights.scatter_add_(2, taps, tap_weights)
    first = low.flatten(1).amin(dim=1)
    last = torch.where(used, high + 1, 0).flatten(1).amax(dim=1)
    return weights[:, :, :size], first.tolist(), last.tolist()
