"""Non-maximum suppression on the host (numpy)."""
from __future__ import annotations

import threading

import numpy as np


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, top_k: int | None = None) -> np.ndarray:
    """ssd.pytorch's ``nms``: indices of kept boxes, highest score first.

    boxes [N,4] (x1, y1, x2, y2), scores [N]. Only the ``top_k`` highest-scoring boxes enter (top-k BEFORE
    NMS, as RefineDet does); a box is dropped when its IoU with a kept box is > iou_threshold. IoU has no
    +1 term and intersections are clamped at 0. Equal scores: the later index is taken first, as the
    original's ascending sort read from the end does.
    """
    n = scores.shape[0]
    if n == 0:
        return np.zeros((0,), dtype=np.int64)
    order = _descending(scores, top_k)
    b = boxes[order].astype(np.float32, copy=False)
    x1, y1, x2, y2 = (np.ascontiguousarray(b[:, k]) for k in range(4))
    area = (x2 - x1) * (y2 - y1)
    alive = np.ones(order.size, dtype=bool)
    scratch = _scratch(min(_BLOCK, order.size) * order.size)
    # Blocks of _BLOCK boxes in score order. A block's rows are its boxes still alive after the earlier blocks'
    # kept boxes, its columns every alive box from the block on: suppressed boxes get no row and dead boxes no
    # column: with stand-in weights about half the pairs of the full upper triangle are computed.
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 IoUs are meant (they suppress), once for all blocks
        for first in range(0, order.size, _BLOCK):
            rows = first + np.flatnonzero(alive[first : first + _BLOCK])
            if rows.size == 0:
                continue
            cols = first + np.flatnonzero(alive[first:])  # starts with ``rows`` itself
            suppresses = _suppressions(x1, y1, x2, y2, area, rows, cols, iou_threshold, scratch)
            # rows keep their score order, so "i before j" is the strict upper triangle of the block's own square
            kept = _greedy_within(suppresses[:, : rows.size] & _LATER[: rows.size, : rows.size])
            alive[rows[~kept]] = False
            later = cols[rows.size :]
            if later.size:
                alive[later[np.logical_or.reduce(suppresses[kept, rows.size :], axis=0)]] = False
    return order[np.flatnonzero(alive)]


def _descending(scores: np.ndarray, top_k: int | None) -> np.ndarray:
    """The first ``top_k`` indices of a stable ascending sort read from the end (ties: later index first).

    Sorts only the scores at or above the top_k-th largest (all its ties included, in index order, so the
    reversed stable sort orders them as the full sort would): with stand-in weights 1000 of 6375 per class.
    """
    if top_k is not None and top_k < scores.size and not np.isnan(scores).any():
        cut = np.partition(scores, scores.size - top_k)[scores.size - top_k]
        among = np.flatnonzero(scores >= cut)
        return among[np.argsort(scores[among], kind="stable")[::-1][:top_k]]
    order = np.argsort(scores, kind="stable")[::-1]
    return order if top_k is None else order[:top_k]


# Rows per block: measured 64-256 within noise of each other on stand-in RefineDet outputs (1000 candidates a class);
# a block of rows over all columns stays within a few MB of temporaries.
_BLOCK = 128
_LATER = np.triu(np.ones((_BLOCK, _BLOCK), dtype=bool), 1)  # [i, j]: j comes after i


def _greedy_within(suppresses: np.ndarray) -> np.ndarray:
    """Greedy NMS inside one block: ``suppresses`` [n, n] strictly upper triangular ("i suppresses later j").

    Iterates keep[j] = no kept i < j suppresses j from all-kept. The rule has exactly one fixed point (keep[0] is
    forced, and each keep[j] follows from the earlier ones), the greedy pass's answer, and after t rounds every box
    whose chain of suppressors is shorter than t is final, so this ends, at the greedy answer, within n + 1 rounds
    (in practice a handful) without a Python step per box.
    """
    keep = np.ones(suppresses.shape[0], dtype=bool)
    while True:
        # the ufunc methods directly: np.any / np.array_equal wrappers cost as much as the work on 128 x 128
        new = np.logical_or.reduce(suppresses[keep], axis=0)
        np.logical_not(new, out=new)
        if (new == keep).all():
            return keep
        keep = new


_LOCAL = threading.local()  # one scratch per thread: run() post-processes in a thread while the next batch infers
_KEEP_AT_MOST = _BLOCK * 4096  # pairs: a larger scratch (2.2 MB per 128 x 1000) is made for its call and dropped


def _scratch(size: int) -> _Scratch:
    """Work arrays for ``size`` pairs, this thread's kept ones when they are large enough."""
    have = getattr(_LOCAL, "scratch", None)
    if have is not None and have.size >= size:
        return have
    made = _Scratch(size)
    if size <= _KEEP_AT_MOST:
        _LOCAL.scratch = made
    return made


class _Scratch:
    """Work arrays for ``_suppressions``, reused by every block and call of a thread: fresh half-megabyte
    temporaries a dozen times a block cost more than the arithmetic. ``zero`` is there to clamp with: numpy 2.4's
    maximum against a scalar ran 0.74 ns per element here, against an array 0.19 (2-core AMD EPYC, AVX2)."""

    def __init__(self, size: int):
        self.size = size
        self.a, self.b, self.c = (np.empty(size, np.float32) for _ in range(3))
        self.zero = np.zeros(size, np.float32)
        self.within = np.empty(size, bool)

    def views(self, rows: int, cols: int) -> tuple[np.ndarray, ...]:
        return tuple(v[: rows * cols].reshape(rows, cols) for v in (self.a, self.b, self.c, self.zero, self.within))


# _suppressions gives "box i (score order) suppresses later box j" with the same float32 operations in the same
# order as the pairwise loop (IoU = inter / ((area[j] - inter) + area[i]), so the same IoUs bit for bit) and
# 'not <=' rather than '>' so a NaN IoU (0/0) suppresses, as the original's le() does. Every step writes into the
# caller's scratch arrays: with stand-in weights every class has 1000 candidates.
def _suppressions(x1, y1, x2, y2, area, rows: np.ndarray, cols: np.ndarray, iou_threshold: float,
                  scratch: _Scratch) -> np.ndarray:
    """[len(rows), len(cols)] bool: row box i suppresses column box j (meaningful where j comes after i)."""
    rx1, ry1, rx2, ry2, ra = x1[rows, None], y1[rows, None], x2[rows, None], y2[rows, None], area[rows, None]
    cx1, cy1, cx2, cy2, ca = x1[None, cols], y1[None, cols], x2[None, cols], y2[None, cols], area[None, cols]
    inter, h, tmp, zero, within = scratch.views(rows.size, cols.size)
    np.minimum(cx2, rx2, out=inter)
    inter -= np.maximum(cx1, rx1, out=tmp)
    np.maximum(inter, zero, out=inter)  # w
    np.minimum(cy2, ry2, out=h)
    h -= np.maximum(cy1, ry1, out=tmp)
    np.maximum(h, zero, out=h)
    inter *= h
    union = np.subtract(ca, inter, out=tmp)
    union += ra
    np.divide(inter, union, out=inter)  # under the caller's errstate
    np.less_equal(inter, iou_threshold, out=within)
    return np.invert(within, out=within)
