"""Batched greedy NMS keep-mask: eager vs a brute-force greedy reference, and eager vs ONNX Runtime."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from deployzoo.ops import batched_nms
from deployzoo.ops.batched_nms import nms_keep_mask


def _reference_keep(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, score_threshold: float) -> np.ndarray:
    """Sorted greedy over the full IoU matrix (mmcv's CPU formula, float32), one image."""
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1) * (y2 - y1)
    w = np.maximum(np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None]), np.float32(0))
    h = np.maximum(np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None]), np.float32(0))
    inter = w * h
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / ((area[:, None] + area[None]) - inter)
    candidates = [i for i in range(len(scores)) if scores[i] > np.float32(score_threshold)]
    keep = np.zeros(len(scores), dtype=bool)
    kept: list[int] = []
    for i in sorted(candidates, key=lambda i: (-scores[i], i)):
        if not any(iou[k, i] > np.float32(iou_threshold) for k in kept):
            kept.append(i)
            keep[i] = True
    return keep


def _random_boxes(rng, n, extent=100.0, max_side=40.0):
    """Boxes with duplicates, tied scores and some zero-width / zero-height / zero-area boxes."""
    xy = rng.uniform(0, extent, (n, 2))
    wh = rng.uniform(0, max_side, (n, 2))
    wh[rng.random(n) < 0.05, 0] = 0
    wh[rng.random(n) < 0.05] = 0
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    copies = rng.random(n) < 0.15
    boxes[copies] = boxes[rng.integers(0, n, copies.sum())]
    scores = rng.random(n).astype(np.float32)
    scores[rng.random(n) < 0.15] = 0.5
    return boxes, scores


def _eager(boxes, scores, iou_threshold, score_threshold):
    return nms_keep_mask(torch.from_numpy(boxes)[None], torch.from_numpy(scores)[None], iou_threshold, score_threshold)[0].numpy()


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_on_random_boxes(seed):
    rng = np.random.default_rng(seed)
    boxes, scores = _random_boxes(rng, int(rng.integers(1, 600)))
    for iou_threshold, score_threshold in [(0.5, 0.3), (0.7, 0.05), (0.0, 0.0)]:
        np.testing.assert_array_equal(
            _eager(boxes, scores, iou_threshold, score_threshold),
            _reference_keep(boxes, scores, iou_threshold, score_threshold),
        )


def test_small_blocks_and_pair_groups(monkeypatch):
    """The blocked search with tiny blocks, runs and pair groups, so every branch runs on a small input."""
    monkeypatch.setattr(batched_nms, "BLOCK", 7)
    monkeypatch.setattr(batched_nms, "PAIRS", 50)
    monkeypatch.setattr(batched_nms, "LONG_RUN", 12)
    rng = np.random.default_rng(7)
    boxes, scores = _random_boxes(rng, 500, extent=300.0, max_side=60.0)
    boxes[:20, 2] = boxes[:20, 0] + 250  # a few wide boxes: long runs in the x1 order
    for iou_threshold in (0.3, 0.6):
        np.testing.assert_array_equal(
            _eager(boxes, scores, iou_threshold, 0.1), _reference_keep(boxes, scores, iou_threshold, 0.1)
        )


def test_threshold_edges():
    # [0, 0, 2, 1] and [0, 0, 1, 1]: IoU exactly 1 / 2; at threshold 0.5 both stay.
    boxes = np.array([[0, 0, 2, 1], [0, 0, 1, 1], [5, 5, 6, 6], [7, 7, 8, 8]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.3, 0.2], dtype=np.float32)
    assert _eager(boxes, scores, 0.5, 0.2).tolist() == [True, True, True, False]  # score == threshold: out
    assert _eager(boxes, scores, 0.49, 0.0).tolist() == [True, False, True, True]
    # Equal scores: the lower index wins, as ONNX Runtime's NonMaxSuppression decides.
    same = np.array([[0, 0, 1, 1]] * 3, dtype=np.float32)
    assert _eager(same, np.full(3, 0.5, np.float32), 0.5, 0.0).tolist() == [True, False, False]


def test_zero_area_boxes_neither_suppress_nor_are_suppressed():
    boxes = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 2, 2], [0, 1, 2, 1], [0, 0, 2, 2]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], dtype=np.float32)
    assert _eager(boxes, scores, 0.5, 0.0).tolist() == [True, True, True, True, False]


def test_batch_images_are_independent_and_may_be_empty():
    rng = np.random.default_rng(3)
    boxes, scores = _random_boxes(rng, 300)
    other_boxes, other_scores = _random_boxes(rng, 300, extent=50.0)
    batch_boxes = torch.from_numpy(np.stack([boxes, other_boxes, boxes]))
    batch_scores = torch.from_numpy(np.stack([scores, other_scores, np.zeros_like(scores)]))
    mask = nms_keep_mask(batch_boxes, batch_scores, 0.5, 0.1)
    assert mask.dtype == torch.bool and mask.shape == (3, 300)
    np.testing.assert_array_equal(mask[0].numpy(), _reference_keep(boxes, scores, 0.5, 0.1))
    np.testing.assert_array_equal(mask[1].numpy(), _reference_keep(other_boxes, other_scores, 0.5, 0.1))
    assert not mask[2].any()  # no candidates
    empty = nms_keep_mask(torch.zeros(2, 0, 4), torch.zeros(2, 0), 0.5, 0.1)
    assert empty.shape == (2, 0)
    with pytest.raises(ValueError):
        nms_keep_mask(batch_boxes, batch_scores, -0.1, 0.1)


def test_class_offsets_make_it_class_aware():
    """The caller's offset trick: per-class NMS equals one class-agnostic pass over shifted boxes."""
    rng = np.random.default_rng(4)
    boxes, scores = _random_boxes(rng, 400)
    labels = rng.integers(0, 5, 400)
    shifted = boxes + (labels * (boxes.max() + 1)).astype(np.float32)[:, None]
    want = np.zeros(400, dtype=bool)
    for c in range(5):
        sel = np.flatnonzero(labels == c)
        want[sel] = _reference_keep(boxes[sel], scores[sel], 0.5, 0.05)
    np.testing.assert_array_equal(_eager(shifted, scores, 0.5, 0.05), want)


class _Nms(torch.nn.Module):
    def forward(self, boxes, scores):
        return nms_keep_mask(boxes, scores, 0.5, 0.05)


@pytest.fixture(scope="module")
def nms_session():
    rng = np.random.default_rng(5)
    boxes, scores = _random_boxes(rng, 50)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            _Nms(), (torch.from_numpy(boxes)[None], torch.from_numpy(scores)[None]), buffer,
            dynamo=False, opset_version=17, input_names=["boxes", "scores"], output_names=["keep"],
            dynamic_axes={"boxes": {0: "batch", 1: "n"}, "scores": {0: "batch", 1: "n"}, "keep": {0: "batch", 1: "n"}},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    onnx.checker.check_model(proto, full_check=True)
    return proto, ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def test_onnx_graph_is_one_nms_in_default_domain(nms_session):
    proto, _ = nms_session
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    assert [n.op_type for n in proto.graph.node].count("NonMaxSuppression") == 1
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.BOOL


@pytest.mark.parametrize("seed", range(4))
def test_onnxruntime_mask_equals_eager(nms_session, seed):
    _, session = nms_session
    rng = np.random.default_rng(100 + seed)
    images = [_random_boxes(rng, 2000, extent=800.0, max_side=150.0) for _ in range(2)]
    boxes = np.stack([b for b, _ in images])
    scores = np.stack([s for _, s in images])
    scores[:, :100] = 0.05  # exactly at the score threshold: not candidates
    got = session.run(None, {"boxes": boxes, "scores": scores})[0]
    want = nms_keep_mask(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5, 0.05).numpy()
    assert got.dtype == np.bool_ and got.shape == (2, 2000)
    np.testing.assert_array_equal(got, want)


def test_onnxruntime_edge_cases(nms_session):
    _, session = nms_session
    boxes = np.array([[[0, 0, 2, 1], [0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]]], np.float32)
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.8, 0.01]], np.float32)
    got = session.run(None, {"boxes": boxes, "scores": scores})[0]
    want = nms_keep_mask(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5, 0.05).numpy()
    assert got.tolist() == want.tolist() == [[True, True, True, True, False, False]]
    none = session.run(None, {"boxes": boxes, "scores": np.zeros_like(scores)})[0]
    assert not none.any()
