"""Greedy NMS over a batch as a keep-mask, exported as one ONNX ``NonMaxSuppression``.

Class-agnostic: callers make it class-aware by shifting each class's boxes apart (mmcv's
``batched_nms`` offset trick), so boxes of different classes never overlap.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# max_output_boxes_per_class in the exported graph: no cap, but still a plain int32-sized constant.
MAX_OUTPUT_BOXES = 2**31 - 1
# Candidates settled together by one IoU matrix (BLOCK x BLOCK), and box pairs scored at once.
BLOCK = 256
PAIRS = 1 << 20
LONG_RUN = 1024


def nms_keep_mask(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    """Which boxes greedy NMS keeps: [B, N] bool, per image independently.

    ``boxes`` [B, N, 4] float32 (x1, y1, x2, y2) with x2 >= x1 and y2 >= y1, ``scores`` [B, N] float32.
    Candidates have score > ``score_threshold``; they are visited by descending score (ties: lower index
    first) and a candidate is dropped when its IoU with an already kept box is > ``iou_threshold``.
    IoU is mmcv's (no +1 offset, float32); zero-area boxes neither suppress nor get suppressed.
    Exports as NonMaxSuppression plus a scatter of its selected indices into a mask.
    """
    if iou_threshold < 0:
        raise ValueError(f"iou_threshold must be >= 0, got {iou_threshold}")
    if torch.compiler.is_exporting():
        return torch.ops.deployzoo.nms_keep_mask(boxes, scores, float(iou_threshold), float(score_threshold))
    return _NmsKeepMask.apply(boxes, scores, float(iou_threshold), float(score_threshold))


class _NmsKeepMask(torch.autograd.Function):
    """Eager greedy loop in ``forward``; the TorchScript exporter emits ``symbolic`` instead."""

    @staticmethod
    def forward(ctx, boxes, scores, iou_threshold, score_threshold):
        return _keep_mask(boxes, scores, iou_threshold, score_threshold)

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold, score_threshold):
        def const(values, dtype):
            return g.op("Constant", value_t=torch.tensor(values, dtype=dtype))

        selected = g.op(
            "NonMaxSuppression",
            boxes,
            g.op("Unsqueeze", scores, const([1], torch.int64)),  # one class: [B, 1, N]
            const([MAX_OUTPUT_BOXES], torch.int64),
            const([iou_threshold], torch.float32),
            const([score_threshold], torch.float32),
        )  # [M, 3] = (batch, class, box), in no particular order
        where = g.op("Gather", selected, const([0, 2], torch.int64), axis_i=1)
        ones = g.op("ConstantOfShape", g.op("Shape", where, start_i=0, end_i=1), value_t=torch.tensor([1.0]))
        zeros = g.op("ConstantOfShape", g.op("Shape", scores), value_t=torch.tensor([0.0]))
        kept = g.op("Cast", g.op("ScatterND", zeros, where, ones), to_i=9)  # 9 = BOOL
        # Non-candidates all score below every candidate, so they can never suppress one: AND-ing with the
        # strict test makes the mask exact whether a backend's score filter is '>' (ONNX Runtime) or '>='.
        candidates = g.op("Greater", scores, const(score_threshold, torch.float32))
        return g.op("And", kept, candidates)


def nms_keep_mask_per_class(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    """Greedy NMS of every class separately over boxes the classes share: [B, C, N] bool.

    ``boxes`` [B, N, 4] float32, ``scores`` [B, C, N] float32 (class c's score of box n): the layout of
    ONNX ``NonMaxSuppression``'s class dimension, which it exports as. Each (image, class) runs the greedy
    pass of :func:`nms_keep_mask` over its own candidates (score > ``score_threshold``) on the unshifted
    boxes, as mmcv's ``batched_nms`` does in its per-class loop. For many classes with class-agnostic
    boxes this is far cheaper than one NMS over the coordinate-shifted copies (an engine's NMS compares
    every candidate with every kept box of its class).
    """
    if iou_threshold < 0:
        raise ValueError(f"iou_threshold must be >= 0, got {iou_threshold}")
    if torch.compiler.is_exporting():
        return torch.ops.deployzoo.nms_keep_mask_per_class(boxes, scores, float(iou_threshold), float(score_threshold))
    return _NmsKeepMaskPerClass.apply(boxes, scores, float(iou_threshold), float(score_threshold))


class _NmsKeepMaskPerClass(torch.autograd.Function):
    @staticmethod
    def forward(ctx, boxes, scores, iou_threshold, score_threshold):
        return _keep_mask_per_class(boxes, scores, iou_threshold, score_threshold)

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold, score_threshold):
        def const(values, dtype):
            return g.op("Constant", value_t=torch.tensor(values, dtype=dtype))

        selected = g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            const([MAX_OUTPUT_BOXES], torch.int64),
            const([iou_threshold], torch.float32),
            const([score_threshold], torch.float32),
        )  # [M, 3] = (batch, class, box)
        ones = g.op("ConstantOfShape", g.op("Shape", selected, start_i=0, end_i=1), value_t=torch.tensor([1.0]))
        zeros = g.op("ConstantOfShape", g.op("Shape", scores), value_t=torch.tensor([0.0]))
        kept = g.op("Cast", g.op("ScatterND", zeros, selected, ones), to_i=9)  # 9 = BOOL
        # as in nms_keep_mask: exact whether a backend's score filter is '>' or '>='
        candidates = g.op("Greater", scores, const(score_threshold, torch.float32))
        return g.op("And", kept, candidates)


def _keep_mask(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    boxes_np = boxes.detach().to(torch.float32).cpu().numpy()
    scores_np = scores.detach().to(torch.float32).cpu().numpy()
    mask = np.zeros(scores_np.shape, dtype=bool)
    for b in range(scores_np.shape[0]):
        mask[b] = _keep_one_image(boxes_np[b], scores_np[b], iou_threshold, score_threshold)
    return torch.from_numpy(mask).to(scores.device)


def _keep_mask_per_class(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    boxes_np = boxes.detach().to(torch.float32).cpu().numpy()
    scores_np = scores.detach().to(torch.float32).cpu().numpy()
    mask = np.zeros(scores_np.shape, dtype=bool)
    for b in range(scores_np.shape[0]):
        for c in range(scores_np.shape[1]):
            mask[b, c] = _keep_one_image(boxes_np[b], scores_np[b, c], iou_threshold, score_threshold)
    return torch.from_numpy(mask).to(scores.device)


def _register_host_op(name: str, kernel) -> None:
    """``kernel`` (boxes, scores, iou_threshold, score_threshold) -> keep mask as the custom op ``deployzoo::name``:
    torch.export cannot trace the numpy loops, so an exported program holds the op (its mask has the scores' shape)
    and an AOTInductor package calls back into the same host code."""
    op = torch.library.custom_op(f"deployzoo::{name}", kernel, mutates_args=())
    op.register_fake(lambda boxes, scores, iou_threshold, score_threshold:
                     torch.empty(scores.shape, dtype=torch.bool, device=scores.device))


_register_host_op("nms_keep_mask", _keep_mask)
_register_host_op("nms_keep_mask_per_class", _keep_mask_per_class)


def _keep_one_image(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, score_threshold: float) -> np.ndarray:
    """Greedy NMS of one image: boxes [N, 4], scores [N] float32 -> keep [N] bool.

    Works through the candidates in blocks of BLOCK, best first: the greedy pass inside a block uses the
    block's own IoU matrix, then the block's kept boxes suppress the later candidates they overlap, found
    through a sort by x1 (a box can only reach a contiguous run of it), so nothing is N x N.
    """
    keep = np.zeros(scores.shape[0], dtype=bool)
    cand = np.flatnonzero(scores > np.float32(score_threshold))
    if cand.size == 0:
        return keep
    order = cand[np.argsort(-scores[cand], kind="stable")]  # descending; ties: lower index first, as ORT
    b = boxes[order].astype(np.float32)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    thr = np.float32(iou_threshold)
    widest = float(np.max(b[:, 2].astype(np.float64) - b[:, 0]))
    pending = np.arange(order.size)  # undecided ranks, best first
    by_x = np.argsort(b[:, 0], kind="stable")  # the same ranks, by x1
    alive = np.ones(order.size, dtype=bool)
    kept: list[np.ndarray] = []
    while pending.size:
        block, pending = pending[:BLOCK], pending[BLOCK:]
        block_keep = block[_greedy_within(_columns(b, area, block), thr)]
        kept.append(block_keep)
        alive[block] = False
        by_x = by_x[alive[by_x]]
        if by_x.size == 0:
            break
        alive[_overlapped(b, area, block_keep, by_x, widest, thr)] = False
        pending = pending[alive[pending]]
    keep[order[np.concatenate(kept)]] = True
    return keep


def _columns(boxes: np.ndarray, area: np.ndarray, index) -> tuple[np.ndarray, ...]:
    """(x1, y1, x2, y2, area) of the chosen boxes, each a contiguous 1-D array."""
    return tuple(np.ascontiguousarray(boxes[index, k]) for k in range(4)) + (area[index],)


def _iou(a: tuple, b: tuple) -> np.ndarray:
    """Elementwise IoU of broadcastable (x1, y1, x2, y2, area) columns, as mmcv's CPU nms (offset 0, float32)."""
    w = np.maximum(np.minimum(a[2], b[2]) - np.maximum(a[0], b[0]), np.float32(0))
    h = np.maximum(np.minimum(a[3], b[3]) - np.maximum(a[1], b[1]), np.float32(0))
    inter = w * h
    with np.errstate(divide="ignore", invalid="ignore"):  # two zero-area boxes: 0/0 = NaN, which never suppresses
        return inter / ((a[4] + b[4]) - inter)


def _greedy_within(cols: tuple, thr: np.float32) -> np.ndarray:
    """Plain greedy NMS over a few boxes already in score order: kept positions."""
    suppresses = _iou(tuple(c[:, None] for c in cols), tuple(c[None] for c in cols)) > thr
    suppresses = np.triu(suppresses, k=1)  # only a better box suppresses a worse one
    keep = np.ones(cols[0].shape[0], dtype=bool)
    for i in np.flatnonzero(suppresses.any(axis=1)).tolist():
        if keep[i]:
            keep &= ~suppresses[i]
    return np.flatnonzero(keep)


def _overlapped(boxes, area, kept, by_x, widest, thr) -> np.ndarray:
    """Ranks in ``by_x`` (sorted by x1) that a box of ``kept`` overlaps with IoU > thr."""
    cols = _columns(boxes, area, by_x)
    mine = _columns(boxes, area, kept)
    reach = mine[0].astype(np.float64) - widest
    lo = np.searchsorted(cols[0], reach - 1e-9 * (np.abs(reach) + widest))  # margin for the float64 rounding
    hi = np.searchsorted(cols[0], mine[2])  # x1 < the kept box's x2
    counts = np.maximum(hi - lo, 0)
    hit: list[np.ndarray] = []
    # Long runs are scored as plain slices (no gathers); their per-call overhead is small beside their length.
    long_runs = np.flatnonzero(counts >= LONG_RUN)
    for k in long_runs.tolist():
        run = slice(lo[k], hi[k])
        iou = _iou(tuple(c[k] for c in mine), tuple(c[run] for c in cols))
        hit.append(by_x[lo[k] + np.flatnonzero(iou > thr)])
    # Short runs: every (kept box, run member) pair at once, in groups of about PAIRS to bound memory.
    short = np.flatnonzero((counts > 0) & (counts < LONG_RUN))
    for group in np.split(short, np.flatnonzero(np.diff(np.cumsum(counts[short]) // PAIRS)) + 1):
        if group.size == 0:
            continue
        n = counts[group]
        members = np.repeat(lo[group] - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
        iou = _iou(tuple(np.repeat(c[group], n) for c in mine), tuple(c[members] for c in cols))
        hit.append(by_x[members[iou > thr]])
    return np.concatenate(hit) if hit else np.zeros(0, dtype=np.int64)
