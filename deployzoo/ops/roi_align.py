"""RoIAlign (average mode) as mmcv / torchvision compute it on the CPU, exported as one ONNX ``RoiAlign``."""
from __future__ import annotations

import torch
from torch import Tensor

# RoIs whose sampling weights are built at once: bounds memory to about CHUNK * output_size * (H + W) floats.
CHUNK = 256

# The eager formulation ``roi_align`` runs: "per-roi" (roi_align_per_roi) or "batched" (roi_align_batched). Both
# give the same results (bit-identical on the Mask R-CNN and Cascade fixtures' RoIs). The batched one removes
# the Python loop but gathers every crop once more; on the 2-core test machine under other load it was not
# faster (scripts/bench_roi_align.py, 2026-12-01), so the loop stays the default until a quiet run shows otherwise.
EAGER = "per-roi"


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
    Inference only: there is no backward. Under ``torch.export`` (AOTInductor packages) it is the custom op
    ``deployzoo::roi_align``, whose kernel is this eager code.
    """
    args = (int(output_size), float(spatial_scale), int(sampling_ratio), bool(aligned))
    if torch.compiler.is_exporting():
        return torch.ops.deployzoo.roi_align(features, boxes, batch_indices, *args)
    return _RoIAlign.apply(features, boxes, batch_indices, *args)


def _eager(features, boxes, batch_indices, output_size, spatial_scale, sampling_ratio, aligned):
    batched = EAGER == "batched" and not torch.jit.is_tracing()
    eager = roi_align_batched if batched else roi_align_per_roi
    return eager(features, boxes, batch_indices, output_size, spatial_scale, sampling_ratio, aligned)


# torch.export cannot trace the eager code (its Python loop reads RoI coordinates), so an exported program holds
# this op and an AOTInductor package calls back into the eager kernel. Its output's shape follows the inputs'.
@torch.library.custom_op("deployzoo::roi_align", mutates_args=())
def _roi_align_op(features: Tensor, boxes: Tensor, batch_indices: Tensor, output_size: int, spatial_scale: float,
                  sampling_ratio: int, aligned: bool) -> Tensor:
    return _eager(features, boxes, batch_indices, output_size, spatial_scale, sampling_ratio, aligned)


@_roi_align_op.register_fake
def _(features, boxes, batch_indices, output_size, spatial_scale, sampling_ratio, aligned):
    return features.new_empty((boxes.shape[0], features.shape[1], output_size, output_size))


class _RoIAlign(torch.autograd.Function):
    """Eager maths in ``forward``; the TorchScript exporter calls ``symbolic`` instead of tracing into it."""

    @staticmethod
    def forward(ctx, features, boxes, batch_indices, output_size, spatial_scale, sampling_ratio, aligned):
        # While the TorchScript exporter traces, forward only has to give the output's shape, and the batched
        # formulation's in-place and out= ops inside the traced function break the exporter's graph passes
        # (_eager runs the per-RoI loop then).
        return _eager(features, boxes, batch_indices, output_size, spatial_scale, sampling_ratio, aligned)

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


def roi_align_per_roi(features, boxes, batch_indices, output_size, spatial_scale, sampling_ratio=0, aligned=True):
    """Eager RoIAlign as one pair of small GEMMs per RoI, in a Python loop (arguments and result as
    ``roi_align``). It reads each crop straight from the channels-last map, so it moves the least memory."""
    _, c, h, w = features.shape
    r = boxes.shape[0]
    out = features.new_empty((r, c, output_size, output_size))  # every row is written below: no zero pass
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
        y0, y1, x0, x1 = y0.tolist(), y1.tolist(), x0.tolist(), x1.tolist()
        wy, wx = wy.to(maps.dtype), wx.to(maps.dtype)  # sample positions stay float32, as in the kernel
        for k in range(chunk.shape[0]):
            if y1[k] <= y0[k] or x1[k] <= x0[k]:
                out[lo + k] = 0  # no sample lands on the map
                continue
            crop = maps[batch[lo + k], y0[k] : y1[k], x0[k] : x1[k]]  # [h_crop, w_crop, C]
            rows = torch.mm(wy[k, :, y0[k] : y1[k]], crop.flatten(1))  # [out, w_crop * C]
            bins = torch.matmul(wx[k, :, x0[k] : x1[k]], rows.view(output_size, x1[k] - x0[k], c))  # [out, out, C]
            out[lo + k] = bins.permute(2, 0, 1)
    return out


def _axis_weights(start, end, size, output_size, spatial_scale, sampling_ratio, aligned, local=False):
    """Per RoI, the [out, size] matrix mapping one axis of the map to the output bins, and the range
    [first, last) of map indices its samples touch (int64 [R] each; empty when none lands on the map).

    Row i holds the two bilinear taps of each sample in bin i, divided by the sample count on this axis
    (the product of both axes' divisions is mmcv's ``count``). Float32 throughout, in mmcv's order.
    ``local``: the matrices are [out, max(last - first)] with column k standing for map index first + k
    (same values, summed in the same order), so their size follows the largest crop, not the map.
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
        nothing = torch.zeros(num, dtype=torch.int64, device=device)
        return weights[:, :, : 0 if local else size], nothing, nothing
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
    first = low.flatten(1).amin(dim=1)
    last = torch.where(used, high + 1, 0).flatten(1).amax(dim=1)
    taps = torch.cat([low, high], dim=2)
    tap_weights = torch.cat([(1.0 - frac) * scale, frac * scale], dim=2)
    if local:
        # Columns counted from each RoI's first touched index; the spare column moves to the crop's end.
        width = int((last - first).max().clamp(min=0))
        taps = torch.where(taps < size, taps - first[:, None, None], width)
        weights = torch.zeros((num, output_size, width + 1), dtype=torch.float32, device=device)
        size = width
    weights.scatter_add_(2, taps, tap_weights)
    return weights[:, :, :size], first, last


# Elements of one chunk's gathered crops: 2**20 floats (4 MiB at fp32), so a chunk's crops and its first
# product stay in the CPU caches between the gather and the GEMM that reads them, instead of a trip to memory.
CHUNK_ELEMENTS = 1 << 20


def roi_align_batched(features, boxes, batch_indices, output_size, spatial_scale, sampling_ratio=0, aligned=True):
    """Eager RoIAlign for all RoIs in a few batched GEMMs instead of a Python loop over RoIs (arguments and
    result as ``roi_align``; float32, float16 or bfloat16 maps).

    Same separable maths as ``roi_align_per_roi``: bin (i, j) = sum_y sum_x wy[i, y] F[y, x] wx[j, x] over
    the crop [y0, y1) x [x0, x1) a RoI's samples touch. RoIs whose crop sizes round up to the same (at most
    25% more per axis) form a group; a group's crops are gathered from the channels-last map by index
    arithmetic into [G, hc, wc * C] (positions past a RoI's own crop read an extra zero row and get weight
    0), then both contractions are batched GEMMs. Padding only adds exact zeros to each sum, so the result
    is the per-RoI loop's up to the summation order inside the BLAS kernels (float32 rounding).

    Why not one 4-neighbour gather per sample (torchvision's and mmcv's loop, vectorised): it moves
    R * out^2 * grid^2 * 4 * C floats, about 800 million for 1000 RoIs, 256 channels, 7x7 bins and 4x4
    samples, where the crops here are R * hc * wc * C (tens of millions), gathered in cache-sized chunks.
    """
    n, c, h, w = features.shape
    r = boxes.shape[0]
    out = features.new_empty((r, c, output_size, output_size))
    if r == 0:
        return out
    boxes = boxes.to(torch.float32)
    wy, y0, y1 = _axis_weights(boxes[:, 1], boxes[:, 3], h, output_size, spatial_scale, sampling_ratio, aligned, True)
    wx, x0, x1 = _axis_weights(boxes[:, 0], boxes[:, 2], w, output_size, spatial_scale, sampling_ratio, aligned, True)
    wy, wx = wy.to(features.dtype), wx.to(features.dtype)  # sample positions stay float32, as in the kernel
    crop_h, crop_w = (y1 - y0).clamp(min=0), (x1 - x0).clamp(min=0)
    touched = (crop_h > 0) & (crop_w > 0)
    out.index_fill_(0, torch.nonzero(~touched).squeeze(1), 0)  # no sample lands on the map
    used = torch.nonzero(touched).squeeze(1)
    if used.numel() == 0:
        return out
    # The map channels last (a crop row is then one run of wc * C floats), plus a zero row for padding.
    flat = features.new_empty((n * h * w + 1, c))
    flat[:-1].view(n, h, w, c).copy_(features.permute(0, 2, 3, 1))
    flat[-1] = 0
    pad_h, pad_w = _round_up(crop_h[used]), _round_up(crop_w[used])
    base = int(pad_w.max()) + 1
    key, order = torch.sort(pad_h * base + pad_w, stable=True)
    sizes, counts = torch.unique_consecutive(key, return_counts=True)
    batch = batch_indices.to(torch.int64)
    start = 0
    for size, count in zip(sizes.tolist(), counts.tolist()):
        hc, wc = divmod(size, base)
        idx = used[order[start : start + count]]
        start += count
        dy = torch.arange(hc, device=idx.device)
        dx = torch.arange(wc, device=idx.device)
        in_y = dy < crop_h[idx, None]  # [G, hc]
        in_x = dx < crop_w[idx, None]  # [G, wc]
        # Local weight columns past the widest crop do not exist: pad them with zeros.
        wyc = _columns(wy[idx], hc) * in_y[:, None, :]
        wxc = _columns(wx[idx], wc) * in_x[:, None, :]
        rows = (batch[idx, None, None] * h + (y0[idx, None] + dy)[:, :, None]) * w + (x0[idx, None] + dx)[:, None, :]
        rows = torch.where(in_y[:, :, None] & in_x[:, None, :], rows, n * h * w)  # [G, hc, wc]
        step = max(1, CHUNK_ELEMENTS // (c * wc * max(hc, output_size)))
        # One set of buffers per group, reused by its chunks: fresh large allocations cost page faults.
        crops = flat.new_empty((step * hc * wc, c))
        first = flat.new_empty((step, output_size, wc * c))
        bins = flat.new_empty((step * output_size, output_size, c))
        for lo in range(0, count, step):
            g = min(step, count - lo)
            torch.index_select(flat, 0, rows[lo : lo + g].flatten(), out=crops[: g * hc * wc])
            torch.bmm(wyc[lo : lo + g], crops[: g * hc * wc].view(g, hc, wc * c), out=first[:g])
            # bins[g, i, j, C] = sum_x wx[g, j, x] first[g, i, x, C]: one GEMM per (RoI, output row)
            torch.bmm(wxc[lo : lo + g, None].expand(g, output_size, output_size, wc).reshape(-1, output_size, wc),
                      first[:g].view(g * output_size, wc, c), out=bins[: g * output_size])
            out.index_copy_(0, idx[lo : lo + g], bins[: g * output_size].view(g, output_size, output_size, c).permute(0, 3, 1, 2))
    return out


def _columns(weights: Tensor, count: int) -> Tensor:
    """The first ``count`` columns of [G, out, L] weights, zero-padded when L < count."""
    have = weights.shape[2]
    if have >= count:
        return weights[:, :, :count]
    return torch.nn.functional.pad(weights, (0, count - have))


def _round_up(length: Tensor) -> Tensor:
    """Crop lengths rounded up to a step of 2^(floor(log2(length)) - 2) (1 below 8): at most 25% padding,
    few distinct sizes."""
    step = torch.exp2(torch.floor(torch.log2(length.clamp(min=1).to(torch.float32))) - 2).clamp(min=1).to(torch.int64)
    return (length + step - 1) // step * step
