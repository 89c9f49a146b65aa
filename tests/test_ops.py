"""Host-side ops: greedy NMS semantics, priors, box decoding."""
from __future__ import annotations

import numpy as np

from deployzoo.heads.refinedet_detect import corners_to_center, decode_offsets
from deployzoo.ops.nms import greedy_nms
from deployzoo.ops.priors import ssd_priors


def _naive_nms(boxes, scores, thr, top_k):
    """The original's loop, literally: ascending sort, take from the end, drop IoU > thr."""
    idx = list(np.argsort(scores, kind="stable")[-top_k:])
    keep = []
    while idx:
        i = idx.pop()
        keep.append(i)
        remaining = []
        for j in idx:
            w = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
            h = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
            inter = w * h
            area_i = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
            area_j = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
            if inter / (area_j - inter + area_i) <= thr:
                remaining.append(j)
        idx = remaining
    return keep


def test_greedy_nms_matches_the_literal_loop():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(1, 120))
        xy = rng.uniform(0, 1, (n, 2))
        wh = rng.uniform(0.02, 0.4, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        scores = rng.uniform(0, 1, n).astype(np.float32)
        top_k = int(rng.integers(1, n + 1))
        assert greedy_nms(boxes, scores, 0.45, top_k).tolist() == _naive_nms(boxes, scores, 0.45, top_k)


def _dense_nms(boxes, scores, thr, top_k):
    """Every pair's suppression first (float32, the original's operation order), then one pass in score order."""
    order = np.argsort(scores, kind="stable")[::-1][:top_k]
    b = boxes[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    w = np.maximum(np.minimum(b[None, :, 2], b[:, None, 2]) - np.maximum(b[None, :, 0], b[:, None, 0]), np.float32(0))
    h = np.maximum(np.minimum(b[None, :, 3], b[:, None, 3]) - np.maximum(b[None, :, 1], b[:, None, 1]), np.float32(0))
    inter = w * h
    with np.errstate(divide="ignore", invalid="ignore"):
        suppresses = ~(inter / ((area[None, :] - inter) + area[:, None]) <= thr)
    alive = np.ones(order.size, bool)
    for i in range(order.size):
        if alive[i]:
            alive[i + 1 :] &= ~suppresses[i, i + 1 :]
    return order[alive].tolist()


def test_greedy_nms_across_blocks_with_chains_ties_and_degenerate_boxes():
    """Many blocks of candidates (1000, as with stand-in weights), clustered so that suppressions chain across
    block boundaries, with tied scores, duplicated boxes and zero-area boxes (0/0 IoU suppresses)."""
    rng = np.random.default_rng(1)
    for trial in range(12):
        n = int(rng.integers(130, 1500))
        centres = rng.uniform(0, 1, (int(rng.integers(1, 30)), 2))
        xy = (centres[rng.integers(0, len(centres), n)] + rng.normal(0, 0.02, (n, 2))).astype(np.float32)
        wh = rng.uniform(0.01, 0.2, (n, 2)).astype(np.float32)
        if trial % 3 == 0:
            wh[rng.random(n) < 0.05] = 0
        boxes = np.concatenate([xy, xy + wh], 1)
        if trial % 2 == 0:
            boxes[rng.integers(0, n, n // 5)] = boxes[rng.integers(0, n, n // 5)]
        scores = np.round(rng.uniform(0, 1, n), 2).astype(np.float32)
        for top_k in (1000, n):
            assert greedy_nms(boxes, scores, 0.45, top_k).tolist() == _dense_nms(boxes, scores, 0.45, top_k)
    boxes = np.concatenate([xy, xy + wh], 1)[:300]
    scores = np.round(rng.uniform(0, 1, 300), 1).astype(np.float32)
    assert greedy_nms(boxes, scores, 0.45, 300).tolist() == _naive_nms(boxes, scores, 0.45, 300)


def test_nms_top_k_applies_before_suppression_and_ties_take_the_later_index():
    boxes = np.array([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5]], np.float32)
    scores = np.array([0.5, 0.5, 0.1], np.float32)
    assert greedy_nms(boxes, scores, 0.45, top_k=2).tolist() == [1, 0]
    assert greedy_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.45).tolist() == []


def test_priors_layout_and_clipping():
    priors = ssd_priors([40, 20, 10, 5], 320, [8, 16, 32, 64], [32, 64, 128, 256], (), [[2]] * 4, clip=True)
    assert priors.shape == (6375, 4)
    assert np.allclose(priors[0], [0.5 / 40, 0.5 / 40, 0.1, 0.1])
    assert np.allclose(priors[1, 2:], [0.1 * np.sqrt(2), 0.1 / np.sqrt(2)])
    assert priors.max() == 1.0  # the last level's wide prior 0.8*sqrt(2) is clamped


def test_decode_then_center_is_consistent():
    priors = np.array([[0.5, 0.5, 0.2, 0.4]], np.float32)
    corners = decode_offsets(np.zeros((1, 4), np.float32), priors, (0.1, 0.2))
    assert np.allclose(corners, [[0.4, 0.3, 0.6, 0.7]])
    assert np.allclose(corners_to_center(corners), priors)


def test_greedy_nms_threads_keep_their_own_work_arrays():
    """run() post-processes in a thread while the next batch infers: concurrent calls on different inputs (and
    sizes that make a thread grow its work arrays) give what one call at a time gives."""
    import threading

    from deployzoo.ops import nms

    rng = np.random.default_rng(2)
    cases = []
    for n in (1000, 40, 700, 1300, 5):
        xy = rng.uniform(0, 1, (n, 2)).astype(np.float32)
        boxes = np.concatenate([xy, xy + rng.uniform(0.02, 0.3, (n, 2)).astype(np.float32)], 1)
        cases.append((boxes, rng.uniform(0, 1, n).astype(np.float32)))
    expected = [_dense_nms(b, s, 0.45, 1000) for b, s in cases]
    got: dict[tuple[int, int, int], tuple[int, list[int]]] = {}

    def work(thread: int) -> None:
        for k in range(3):
            for case, (b, s) in enumerate(cases[thread % 2 :] + cases[: thread % 2]):
                got[(thread, k, case)] = (case + thread % 2) % len(cases), greedy_nms(b, s, 0.45, 1000).tolist()

    threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 3 * 3 * len(cases)
    for case, kept in got.values():
        assert kept == expected[case]
    # a call larger than the kept size gets work arrays of its own, which are not kept for the thread
    big = nms._scratch(nms._KEEP_AT_MOST + 1)
    assert big.size == nms._KEEP_AT_MOST + 1 and nms._scratch(16) is not big
