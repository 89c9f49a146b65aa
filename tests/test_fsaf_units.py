"""Fast FSAF pieces: TBLR decode and priors, the two post-processing algorithms (hand-checked, and against a
plain re-statement of mmdetection's code on a random case), the per-class NMS op, host post-processing,
the registry variants and the checkpoint names."""
from __future__ import annotations

import io
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from deployzoo.errors import DeployzooError
from deployzoo.registry import get_spec

FIXTURE = Path(__file__).parent / "fixtures" / "mmdet-fsaf-r50-fpn-1x"


@pytest.fixture(scope="module")
def fsaf_model():
    """A/B share everything but the selection, so one model runs both (weights are irrelevant here)."""
    from deployzoo.models.fsaf import build_fsaf

    return build_fsaf("A")


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _detect(model, algorithm: str, logits, tblr, img_hw, **config):
    """Run algorithm A (``detect_locations``) or B (``detect_pairs``) under test settings ``config``."""
    from deployzoo.models.fsaf import FSAFConfig

    model.config = FSAFConfig(postprocess=algorithm, **config)
    try:
        with torch.no_grad():
            return (model.detect_locations if algorithm == "A" else model.detect_pairs)(logits, tblr, img_hw)
    finally:
        model.config = FSAFConfig()


# --- TBLR decode and priors --------------------------------------------------------------------------


def test_tblr_decode_by_hand():
    from deployzoo.heads.fsaf import tblr_decode

    # Stride-8 prior at location (x=2, y=1): square of side 8 centred at (16, 8).
    prior = torch.tensor([[12.0, 4.0, 20.0, 12.0]])
    # (top, bottom, left, right) * normalizer 4 * side 8 = (8, 16, 32, 4) pixels from the centre
    tblr = torch.tensor([[0.25, 0.5, 1.0, 0.125]])
    assert tblr_decode(prior, tblr).tolist() == [[-16.0, 0.0, 20.0, 24.0]]
    # clipped to the resized image (h, w) = (20, 18): x to [0, 18], y to [0, 20]
    assert tblr_decode(prior, tblr, 4.0, torch.tensor([20.0, 18.0])).tolist() == [[0.0, 0.0, 18.0, 20.0]]
    # a non-square prior: top/bottom scale with its height, left/right with its width
    wide = torch.tensor([[0.0, 0.0, 10.0, 2.0]])
    assert tblr_decode(wide, torch.tensor([[1.0, 1.0, 1.0, 1.0]]), 1.0).tolist() == [[-5.0, -1.0, 15.0, 3.0]]
    # batched, with one (h, w) per image
    boxes = tblr_decode(prior.expand(2, 1, 4), tblr.expand(2, 1, 4), 4.0, torch.tensor([[[20.0, 18.0]], [[100.0, 100.0]]]))
    assert boxes.tolist() == [[[0.0, 0.0, 18.0, 20.0]], [[0.0, 0.0, 20.0, 24.0]]]


def test_priors_are_stride_squares_centred_on_the_grid(fsaf_model):
    from deployzoo.ops.anchors import grid_anchors

    priors = grid_anchors(fsaf_model.base_prior_0, torch.zeros(1, 1, 2, 3), 8)
    assert priors.tolist()[:4] == [[-4.0, -4.0, 4.0, 4.0], [4.0, -4.0, 12.0, 4.0], [12.0, -4.0, 20.0, 4.0],
                                   [-4.0, 4.0, 4.0, 12.0]]  # x first, then the next row
    assert fsaf_model.base_prior_4.tolist() == [[-64.0, -64.0, 64.0, 64.0]]


def test_head_is_shared_over_levels_and_distances_are_non_negative():
    from deployzoo.heads.fsaf import FSAFHead

    torch.manual_seed(0)
    head = FSAFHead(num_classes=5, in_channels=8, feat_channels=8, stacked_convs=2).eval()
    a, b = torch.randn(1, 8, 6, 5), torch.randn(1, 8, 3, 3)
    with torch.no_grad():
        logits, tblr = head([a, b])
        alone, _ = head([b])
    assert [tuple(t.shape) for t in logits] == [(1, 5, 6, 5), (1, 5, 3, 3)]
    assert [tuple(t.shape) for t in tblr] == [(1, 4, 6, 5), (1, 4, 3, 3)]
    assert torch.equal(logits[1], alone[0])
    assert all(bool((t >= 0).all()) for t in tblr) and any(bool((t == 0).any()) for t in tblr)
    assert sorted(n for n, _ in head.named_parameters())[:4] == ["cls_convs.0.bias", "cls_convs.0.weight",
                                                                 "cls_convs.1.bias", "cls_convs.1.weight"]


# --- the two post-processing algorithms ---------------------------------------------------------------


def _hand_case():
    """One stride-8 level, 1 x 3 locations (centres x = 0, 8, 16; y = 0), three classes.

    scores   class 0  class 1  class 2          boxes (img_hw 30 x 100 clips y2 32 -> 30)
    loc 0    0.90     0.80     0.70             (0, 0, 32, 30)
    loc 1    0.60     0.02     0.01             (8, 0, 16, 8)
    loc 2    0.95     0.03     0.50             (8, 0, 32, 30): IoU 0.75 with loc 0's box
    """
    probs = [[0.90, 0.80, 0.70], [0.60, 0.02, 0.01], [0.95, 0.03, 0.50]]
    logits = torch.tensor([[_logit(p) for p in row] for row in probs]).T.reshape(1, 3, 1, 3)
    tblr = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 0.25, 0.0, 0.25], [0.0, 1.0, 0.25, 0.5]]).T.reshape(1, 4, 1, 3)
    return [logits], [tblr], torch.tensor([[30.0, 100.0]])


def _rows(boxes, scores, labels, num):
    n = int(num[0])
    return [(int(labels[0, i]), round(float(scores[0, i]), 6), boxes[0, i].tolist()) for i in range(n)]


def test_algorithm_a_by_hand(fsaf_model):
    """v2.0: the best nms_pre LOCATIONS by max class score (loc 2: 0.95, loc 0: 0.90; loc 1 out), every
    class of them above 0.05 is a candidate: (2,c0) .95, (0,c0) .90, (0,c1) .80, (0,c2) .70, (2,c2) .50.
    Class-wise NMS: loc 2 suppresses loc 0 in class 0, loc 0 suppresses loc 2 in class 2."""
    logits, tblr, img_hw = _hand_case()
    got = _rows(*_detect(fsaf_model, "A", logits, tblr, img_hw, num_classes=3, nms_pre=2))
    assert got == [(0, 0.95, [8.0, 0.0, 32.0, 30.0]), (1, 0.8, [0.0, 0.0, 32.0, 30.0]), (2, 0.7, [0.0, 0.0, 32.0, 30.0])]


def test_algorithm_b_by_hand(fsaf_model):
    """v3: the best nms_pre (location, class) PAIRS above 0.05: (2,c0) .95, (0,c0) .90 only; NMS leaves one."""
    logits, tblr, img_hw = _hand_case()
    got = _rows(*_detect(fsaf_model, "B", logits, tblr, img_hw, num_classes=3, nms_pre=2))
    # with room for every pair, B keeps what A keeps, plus loc 1 (its location was A's third)
    roomy = _rows(*_detect(fsaf_model, "B", logits, tblr, img_hw, num_classes=3, nms_pre=9))
    assert got == [(0, 0.95, [8.0, 0.0, 32.0, 30.0])]
    assert roomy == [(0, 0.95, [8.0, 0.0, 32.0, 30.0]), (1, 0.8, [0.0, 0.0, 32.0, 30.0]),
                     (2, 0.7, [0.0, 0.0, 32.0, 30.0]), (0, 0.6, [8.0, 0.0, 16.0, 8.0])]


def test_only_algorithm_b_drops_empty_boxes(fsaf_model):
    """mmdet 3.x removes boxes with w <= 0 or h <= 0 before NMS; v2.0 keeps them (and a zero-area box
    never suppresses anything)."""
    logits = torch.tensor([_logit(0.9), _logit(0.8)]).reshape(1, 1, 1, 2)
    tblr = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]]).T.reshape(1, 4, 1, 2)  # loc 0: zero height
    img_hw = torch.tensor([[100.0, 100.0]])
    results = {a: _rows(*_detect(fsaf_model, a, [logits], [tblr], img_hw, num_classes=1)) for a in "AB"}
    assert results["A"] == [(0, 0.9, [0.0, 0.0, 16.0, 0.0]), (0, 0.8, [0.0, 0.0, 24.0, 16.0])]
    assert results["B"] == [(0, 0.8, [0.0, 0.0, 24.0, 16.0])]


def _reference_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy NMS in descending score order (ties: lower index), mmcv's IoU in float32; kept indices."""
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1) * (y2 - y1)
    kept: list[int] = []
    for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        w = np.maximum(np.minimum(x2[i], x2[kept]) - np.maximum(x1[i], x1[kept]), np.float32(0))
        h = np.maximum(np.minimum(y2[i], y2[kept]) - np.maximum(y1[i], y1[kept]), np.float32(0))
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / ((area[i] + area[kept]) - inter)
        if not np.any(iou > np.float32(iou_threshold)):
            kept.append(i)
    return kept


def _reference_mmdet(logits, tblr, img_hw, strides, algorithm, nms_pre=1000, score_thr=0.05, max_dets=100):
    """mmdetection's code path restated with numpy, one image: v2.0 ``get_bboxes_single`` + ``multiclass_nms``
    (A) or v3 ``_predict_by_feat_single`` + ``_bbox_post_process`` (B), class-wise NMS by a per-class loop."""
    h_img, w_img = img_hw
    all_boxes, all_scores, all_labels = [], [], []
    for logit, reg, stride in zip(logits, tblr, strides):
        classes, height, width = logit.shape[1:]
        scores = torch.from_numpy(logit[0].reshape(classes, -1).T.copy()).sigmoid().numpy()  # float32, as torch
        reg = reg[0].reshape(4, -1).T
        ys, xs = np.divmod(np.arange(height * width), width)
        centre = np.stack([xs * stride, ys * stride], 1).astype(np.float32)
        if algorithm == "A":
            index = np.arange(len(scores))
            if len(scores) > nms_pre:
                index = np.argsort(-scores.max(1), kind="stable")[:nms_pre]
            loc = np.repeat(index, classes)
            labels = np.tile(np.arange(classes), len(index))
            pair_scores = scores[index].reshape(-1)
        else:
            flat = scores.reshape(-1)
            valid = np.flatnonzero(flat > np.float32(score_thr))
            order = valid[np.argsort(-flat[valid], kind="stable")][:nms_pre]
            loc, labels, pair_scores = order // classes, order % classes, flat[order]
        d = reg[loc] * np.float32(4.0) * np.float32(stride)
        cx, cy = centre[loc, 0], centre[loc, 1]
        boxes = np.stack([cx - d[:, 2], cy - d[:, 0], cx + d[:, 3], cy + d[:, 1]], 1)
        boxes = np.minimum(np.maximum(boxes, 0), np.asarray([w_img, h_img, w_img, h_img], np.float32))
        all_boxes.append(boxes)
        all_scores.append(pair_scores)
        all_labels.append(labels)
    boxes, scores, labels = map(np.concatenate, (all_boxes, all_scores, all_labels))
    keep = scores > np.float32(score_thr)
    if algorithm == "B":
        keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    kept = []
    for c in np.unique(labels[keep]):
        members = np.flatnonzero(keep & (labels == c))
        kept += members[_reference_nms(boxes[members], scores[members], 0.5)].tolist()
    kept = sorted(kept, key=lambda i: (-scores[i], i))[:max_dets]
    return boxes[kept], scores[kept], labels[kept]


@pytest.mark.parametrize("algorithm", ["A", "B"])
def test_algorithms_match_a_restatement_of_mmdetection(fsaf_model, algorithm):
    """Two levels, the finer with more than nms_pre = 1000 locations, 20 classes, ~40% of the pairs above
    0.05 (A: 1000 of 1200 locations x 20 classes; B: 1000 of ~9,600 pairs), some zero-area boxes."""
    rng = np.random.default_rng(11)
    shapes = [(30, 40), (15, 20)]
    logits = [rng.normal(-3.3, 1.5, (1, 20, h, w)).astype(np.float32) for h, w in shapes]
    tblr = [np.maximum(rng.normal(0.3, 0.4, (1, 4, h, w)), 0).astype(np.float32) for h, w in shapes]
    img_hw = (230.0, 300.0)
    boxes, scores, labels, num = _detect(fsaf_model, algorithm, [torch.from_numpy(x) for x in logits],
                                         [torch.from_numpy(x) for x in tblr], torch.tensor([img_hw]), num_classes=20)
    want_boxes, want_scores, want_labels = _reference_mmdet(logits, tblr, img_hw, (8, 16), algorithm)
    n = int(num[0])
    assert n == len(want_scores) == 100
    np.testing.assert_array_equal(labels[0, :n].numpy(), want_labels)
    np.testing.assert_array_equal(scores[0, :n].numpy(), want_scores)
    np.testing.assert_allclose(boxes[0, :n].numpy(), want_boxes, rtol=0, atol=1e-4)


def test_algorithms_differ_on_the_same_outputs(fsaf_model):
    """The case above, both ways: A and B keep different detections."""
    rng = np.random.default_rng(11)
    logits = [torch.from_numpy(rng.normal(-3.0, 1.5, (1, 80, 30, 40)).astype(np.float32))]
    tblr = [torch.from_numpy(np.maximum(rng.normal(0.3, 0.4, (1, 4, 30, 40)), 0).astype(np.float32))]
    img_hw = torch.tensor([[230.0, 300.0]])
    a, b = (_detect(fsaf_model, algorithm, logits, tblr, img_hw) for algorithm in "AB")
    pairs = [{(int(l), round(float(s), 6)) for l, s in zip(out[2][0], out[1][0])} for out in (a, b)]
    assert pairs[0] != pairs[1]
    # zero-area boxes: only A can return them
    area = [(out[0][0, :, 2] - out[0][0, :, 0]) * (out[0][0, :, 3] - out[0][0, :, 1]) for out in (a, b)]
    assert bool((area[0][: int(a[3][0])] == 0).any()) and not bool((area[1][: int(b[3][0])] == 0).any())


# --- the per-class NMS op and the shared-box multiclass NMS ---------------------------------------------


def _random_case(rng, n, classes):
    """Boxes on a 1/8 pixel grid (so class offsets shift them exactly), zero-area ones, tied scores."""
    xy = np.round(rng.uniform(0, 200, (n, 2)) * 8) / 8
    wh = np.round(rng.uniform(0, 60, (n, 2)) * 8) / 8
    wh[rng.random(n) < 0.05] = 0
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.random((n, classes)).astype(np.float32)
    scores[rng.random((n, classes)) < 0.1] = 0.5  # ties
    return boxes, scores


def test_shared_box_nms_equals_the_offset_trick():
    from deployzoo.ops.multiclass_nms import multiclass_nms, multiclass_nms_shared_boxes

    rng = np.random.default_rng(2)
    cases = [_random_case(rng, 300, 7) for _ in range(2)]
    boxes = torch.from_numpy(np.stack([b for b, _ in cases]))
    scores = torch.from_numpy(np.stack([s for _, s in cases]))
    valid = torch.ones(2, 300, dtype=torch.bool)
    valid[1, 250:] = False
    shared = multiclass_nms_shared_boxes(boxes, scores, valid, 0.3, 0.5, 100)
    offset = multiclass_nms(boxes[:, :, None, :], scores, valid, 0.3, 0.5, 100)
    for got, want in zip(shared, offset):
        assert torch.equal(got, want)
    assert shared[3].tolist() == [100, 100]


class _PerClassNms(torch.nn.Module):
    def forward(self, boxes, scores):
        from deployzoo.ops.batched_nms import nms_keep_mask_per_class

        return nms_keep_mask_per_class(boxes, scores, 0.5, 0.05)


def test_per_class_nms_onnxruntime_equals_eager():
    import onnx
    import onnxruntime as ort

    from deployzoo.ops.batched_nms import nms_keep_mask_per_class

    rng = np.random.default_rng(3)
    boxes, scores = _random_case(rng, 40, 3)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_PerClassNms(), (torch.from_numpy(boxes)[None], torch.from_numpy(scores.T.copy())[None]),
                          buffer, dynamo=False, opset_version=17, input_names=["boxes", "scores"],
                          dynamic_axes={"boxes": {0: "b", 1: "n"}, "scores": {0: "b", 1: "c", 2: "n"}})
    proto = onnx.load_from_string(buffer.getvalue())
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    assert [n.op_type for n in proto.graph.node].count("NonMaxSuppression") == 1
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    cases = [_random_case(rng, 1500, 6) for _ in range(2)]
    boxes = np.stack([b for b, _ in cases])
    scores = np.stack([s.T for _, s in cases])
    scores[:, :, :50] = 0.05  # at the threshold: not candidates
    got = session.run(None, {"boxes": boxes, "scores": scores})[0]
    want = nms_keep_mask_per_class(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5, 0.05).numpy()
    assert got.shape == (2, 6, 1500) and got.dtype == np.bool_
    np.testing.assert_array_equal(got, want)
    for c in range(6):  # and each class is an independent greedy pass
        expected = np.zeros(1500, dtype=bool)
        candidates = np.flatnonzero(scores[0, c] > np.float32(0.05))
        expected[candidates[_reference_nms(boxes[0, candidates], scores[0, c, candidates], 0.5)]] = True
        np.testing.assert_array_equal(want[0, c], expected)


# --- host side, registry, checkpoint names -------------------------------------------------------------


def test_empty_boxes_match_when_their_corners_agree():
    """Algorithm A returns zero-height boxes; engines agree on them only to float precision."""
    from deployzoo.compare import match_detections, pairwise_iou
    from deployzoo.structures import Detections

    a = np.asarray([[0.0, 752.0, 16.0, 752.0], [0.0, 40.0, 0.0, 111.7], [5.0, 5.0, 5.0, 5.0]], np.float32)
    b = a + np.asarray([[0.0, 0.0, 3e-5, 0.0], [0.0, 0.0, 0.0, 1e-5], [0.0, 0.0, 0.0, 0.0]], np.float32)
    assert np.diag(pairwise_iou(a, b)).tolist() == [1.0, 1.0, 1.0]
    assert pairwise_iou(a[:1], a[:1] + np.float32(0.5))[0, 0] == 0.0
    scores, labels = np.asarray([0.9, 0.8, 0.7], np.float32), np.asarray([1, 1, 2])
    assert match_detections(Detections(b, scores, labels), Detections(a, scores, labels)).matched == 3


def test_postprocess_rescales_each_way():
    from deployzoo.transforms import ImageMeta

    meta = ImageMeta(orig_hw=(480, 640), resized_hw=(800, 1067))
    dets = np.zeros((100, 5), np.float32)
    dets[:2] = [[10.0, 20.0, 1067.0, 800.0, 0.9], [0.5, 0.25, 3.0, 7.0, 0.6]]
    labels = np.full(100, -1, np.int64)
    labels[:2] = [3, 0]
    outputs = {"dets": dets, "labels": labels, "num_dets": np.asarray(2, np.int64)}
    v2 = get_spec("mmdet-fsaf-r50-fpn-1x").make_postprocess()(outputs, meta)
    v3 = get_spec("mmdet-fsaf-r50-fpn-1x-v3post").make_postprocess()(outputs, meta)
    factors = np.asarray([1067 / 640, 800 / 480] * 2, np.float32)
    assert np.array_equal(v2.boxes, dets[:2, :4] / factors)
    assert np.array_equal(v3.boxes, dets[:2, :4] * np.asarray([1 / (1067 / 640), 1 / (800 / 480)] * 2, np.float32))
    for d in (v2, v3):
        assert d.boxes.dtype == np.float32 and d.masks is None
        assert d.scores.tolist() == pytest.approx([0.9, 0.6]) and d.labels.tolist() == [3, 0]
        np.testing.assert_allclose(d.boxes[0], [10 * 640 / 1067, 12.0, 640.0, 480.0], rtol=1e-6)


def test_registry_variants():
    a, b = get_spec("mmdet-fsaf-r50-fpn-1x"), get_spec("mmdet-fsaf-r50-fpn-1x-v3post")
    assert a.build_model().config.postprocess == "A" and b.build_model().config.postprocess == "B"
    for spec in (a, b):
        assert spec.output_names == ("dets", "labels", "num_dets")
        assert spec.graph_input_dims() == {"image": (3, None, None), "img_hw": (2,)}
        assert spec.evaluation.iou_types == ("bbox",) and spec.published.value == 37.4
        assert spec.make_example_inputs(2)["img_hw"].tolist() == [[800, 1067]] * 2
    fixed = get_spec("mmdet-fsaf-r50-fpn-1x-v3post@800x1216")
    assert fixed.name == "mmdet-fsaf-r50-fpn-1x-v3post@800x1216"
    assert fixed.build_model().config.postprocess == "B"
    assert fixed.graph_input_dims()["image"] == (3, 800, 1216)
    assert fixed.make_example_inputs(1)["image"].shape == (1, 3, 800, 1216)
    assert get_spec("mmdet-fsaf-r50-fpn-1x@800x1216").name == "mmdet-fsaf-r50-fpn-1x@800x1216"
    a_portrait, meta = fixed.preprocess(np.zeros((640, 480, 3), np.uint8))
    assert meta.resized_hw == (800, 600)  # fit_size: the official 1067x800 does not fit 800 high
    assert fixed.make_feeds([a_portrait], [meta], 1)["image"].shape == (1, 3, 800, 1216)
    with pytest.raises(DeployzooError):
        get_spec("mmdet-fsaf-r50-fpn-1x-v3post@800x1000")
    from deployzoo.models.fsaf import FSAFConfig, make_spec

    with pytest.raises(ValueError):
        make_spec(postprocess="C")
    with pytest.raises(ValueError):
        FSAFConfig(postprocess="v3")


def test_checkpoint_names_round_trip():
    """Every model key maps to an official key in keys.json and back through the rename rules."""
    from deployzoo.models.fsaf import CHECKPOINT_RULES, build_fsaf, official_key

    keys = json.loads((FIXTURE / "keys.json").read_text())
    official = [name for name, *_ in keys["tensors"]]
    model_keys = list(build_fsaf().state_dict())
    assert sorted(official_key(k) for k in model_keys) == sorted(official)
    assert all(CHECKPOINT_RULES.rename(official_key(k)) == k for k in model_keys)
    assert official_key("neck.extra_convs.1.weight") == "neck.fpn_convs.4.conv.weight"


def test_stand_in_weights_are_the_fixture_weights():
    """The default run's stand-in equals the fixture's weights: generated under the official names."""
    from deployzoo.checkpoints import remap_state_dict
    from deployzoo.engine import load_model

    spec = get_spec("mmdet-fsaf-r50-fpn-1x")
    keys = json.loads((FIXTURE / "keys.json").read_text())
    official = {k: torch.from_numpy(np.asarray(v)) for k, v in sys.modules["dzinit"].make_state_dict(keys["tensors"], 0).items()}
    model = load_model(spec).model
    expected, _ = remap_state_dict(official, model.state_dict(), spec.checkpoint_rules)
    state = model.state_dict()
    assert set(state) == set(expected)
    for name, value in expected.items():
        assert torch.equal(state[name], value), name
