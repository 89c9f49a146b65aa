"""VOC07 evaluation: hand-computed AP cases, both protocols, and a loop reference cross-check."""
from __future__ import annotations

import json

import numpy as np
import pytest

from deployzoo.data.voc import VOC_CLASSES, VOCAnnotation, VOCDetection
from deployzoo.data.synthetic_voc import make_synthetic_voc
from deployzoo.eval.voc07 import ImageDetections, _round_like_format, evaluate_voc, voc_ap

CLASSES = ("a", "b")


def ann(image_id: str, boxes0, labels, difficult=None) -> VOCAnnotation:
    """Annotation from 0-based boxes (stored +1, as the XML would hold them)."""
    boxes = np.asarray(boxes0, dtype=np.float64).reshape(-1, 4) + 1.0
    n = len(boxes)
    return VOCAnnotation(image_id, 100, 100, boxes, np.asarray(labels, np.int64),
                         np.zeros(n, bool) if difficult is None else np.asarray(difficult, bool))


def dets(boxes, scores, labels) -> ImageDetections:
    return ImageDetections(np.asarray(boxes, float).reshape(-1, 4), np.asarray(scores, float),
                           np.asarray(labels, np.int64))


def ap_of(result, name="a") -> float:
    return next(r.ap for r in result.per_class if r.name == name)


# ---------------------------------------------------------------- hand-computed cases


def test_two_gt_three_dets_known_ap():
    # TP (0.9), FP (0.8), TP (0.7): recall .5 .5 1, precision 1 .5 2/3
    annotations = {"im": ann("im", [[0, 0, 10, 10], [50, 50, 60, 60]], [0, 0])}
    d = {"im": dets([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0.9, 0.8, 0.7], [0, 0, 0])}
    res = evaluate_voc(d, annotations, class_names=CLASSES)
    assert ap_of(res) == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)
    row = res.per_class[0]
    assert (row.num_gt, row.num_detections, row.tp, row.recall) == (2, 3, 2, 1.0)
    # class "b" has no ground truth: NaN, left out of the mAP
    assert np.isnan(ap_of(res, "b")) and res.map == pytest.approx(ap_of(res))
    area = evaluate_voc(d, annotations, class_names=CLASSES, use_07_metric=False)
    assert ap_of(area) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    assert area.metric == "area" and res.metric == "VOC07 11-point"


def test_difficult_gt_is_ignored():
    annotations = {"im": ann("im", [[0, 0, 10, 10], [50, 50, 60, 60]], [0, 0], [False, True])}
    # detection on the difficult box first: ignored, neither TP nor FP
    d = {"im": dets([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])}
    res = evaluate_voc(d, annotations, class_names=CLASSES)
    row = res.per_class[0]
    assert row.num_gt == 1 and row.tp == 1 and ap_of(res) == pytest.approx(1.0)


def test_duplicate_detection_is_fp():
    annotations = {"im": ann("im", [[0, 0, 10, 10]], [0])}
    d = {"im": dets([[0, 0, 10, 10], [0, 0, 10, 9]], [0.9, 0.95], [0, 0])}
    # ranked: 0.95 TP, 0.9 FP -> precision 1 then .5; AP 1 anyway, but TP count shows it
    res = evaluate_voc(d, annotations, class_names=CLASSES)
    assert res.per_class[0].tp == 1 and ap_of(res) == pytest.approx(1.0)
    # with the duplicate ranked above a second GT's detection, precision at full recall is 2/3
    annotations = {"im": ann("im", [[0, 0, 10, 10], [50, 50, 60, 60]], [0, 0])}
    d = {"im": dets([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8, 0.7], [0, 0, 0])}
    assert ap_of(evaluate_voc(d, annotations, class_names=CLASSES)) == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_iou_exactly_half_is_not_a_match():
    annotations = {"im": ann("im", [[0, 0, 10, 10]], [0])}
    # [0,0,10,10] vs [0,0,10,5]: inter 50, union 100 -> IoU 0.5 exactly (no +1 term)
    res = evaluate_voc({"im": dets([[0, 0, 10, 5]], [0.9], [0])}, annotations, class_names=CLASSES)
    assert res.per_class[0].tp == 0 and ap_of(res) == 0.0
    res = evaluate_voc({"im": dets([[0, 0, 10, 5.01]], [0.9], [0])}, annotations, class_names=CLASSES)
    assert res.per_class[0].tp == 1


def test_wrong_class_or_image_does_not_match():
    annotations = {"x": ann("x", [[0, 0, 10, 10]], [0]), "y": ann("y", [[0, 0, 10, 10]], [1])}
    # class "b" on image x (no "b" there) is a FP, ranked below the TP on y
    d = {"x": dets([[0, 0, 10, 10]], [0.5], [1]), "y": dets([[0, 0, 10, 10]], [0.9], [1])}
    res = evaluate_voc(d, annotations, class_names=CLASSES)
    assert ap_of(res, "a") == 0.0 and ap_of(res, "b") == pytest.approx(1.0) and res.map == pytest.approx(0.5)
    assert res.num_images == 2


def test_best_iou_gt_decides_even_if_already_matched():
    # As in voc_eval: the second detection's best GT is the taken one -> FP,
    # although it also overlaps the free GT by more than 0.5.
    annotations = {"im": ann("im", [[0, 0, 10, 10], [0, 0, 10, 14]], [0, 0])}
    d = {"im": dets([[0, 0, 10, 10], [0, 0, 10, 11]], [0.9, 0.8], [0, 0])}
    res = evaluate_voc(d, annotations, class_names=CLASSES)
    assert res.per_class[0].tp == 1


def test_ap_curve_helper():
    # recall 0.3 does not reach the reference's threshold 0.30000000000000004 (np.arange)
    assert voc_ap(np.array([3 / 10]), np.array([1.0])) == pytest.approx(3 / 11)
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5]), use_07_metric=False) == pytest.approx(0.75)


def test_images_without_detections_and_empty_input():
    annotations = {"x": ann("x", [[0, 0, 10, 10]], [0]), "y": ann("y", [[0, 0, 10, 10]], [0])}
    res = evaluate_voc({"x": dets([[0, 0, 10, 10]], [0.9], [0])}, annotations, class_names=CLASSES)
    assert res.per_class[0].recall == 0.5
    res = evaluate_voc({}, annotations, class_names=CLASSES)
    assert res.map == 0.0 and res.per_class[0].num_detections == 0
    res = evaluate_voc({"x": (np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))}, annotations,
                       class_names=CLASSES)
    assert res.map == 0.0


def test_bad_detections_raise():
    annotations = {"x": ann("x", [[0, 0, 10, 10]], [0])}
    with pytest.raises(ValueError, match="'zz'"):
        evaluate_voc({"zz": dets([[0, 0, 1, 1]], [0.5], [0])}, annotations, class_names=CLASSES)
    with pytest.raises(ValueError, match="out of range"):
        evaluate_voc({"x": dets([[0, 0, 1, 1]], [0.5], [2])}, annotations, class_names=CLASSES)
    with pytest.raises(ValueError, match="do not agree"):
        evaluate_voc({"x": (np.zeros((2, 4)), np.zeros(3), np.zeros(2, int))}, annotations,
                     class_names=CLASSES)
    with pytest.raises(ValueError, match="protocol"):
        evaluate_voc({}, annotations, class_names=CLASSES, protocol="coco")


def test_perfect_detections_on_synthetic_voc(tmp_path):
    ds = VOCDetection(make_synthetic_voc(tmp_path, num_images=16, seed=0))
    annotations = {i: ds.annotation(i) for i in ds.ids}
    d = {i: dets(a.boxes - 1.0, np.linspace(0.9, 0.5, len(a.labels)), a.labels) for i, a in annotations.items()}
    for metric in (True, False):
        res = evaluate_voc(d, annotations, use_07_metric=metric)
        assert res.map == pytest.approx(1.0)
    table = res.table()
    assert table.splitlines()[-1].startswith("| **mAP** | **100.00**")
    assert len(table.splitlines()) == 2 + len(VOC_CLASSES) + 1
    json.dumps(res.to_dict())  # JSON-ready, NaN classes written as null
    # the refinedet-pytorch protocol's +1 shift costs exact boxes a little (never more)
    shifted = evaluate_voc(d, annotations, protocol="refinedet-pytorch")
    assert shifted.protocol == "refinedet-pytorch" and shifted.map <= 1.0 + 1e-12


# ---------------------------------------------------------------- refinedet-pytorch protocol


def test_refinedet_shift_flips_matches():
    # GT 0-based [10,10,14,14] (XML 11..15). A detection equal to it matches in the clean
    # protocol; written +1 it is compared as [11,11,15,15]: IoU 9/23 -> FP.
    annotations = {"im": ann("im", [[10, 10, 14, 14]], [0])}
    exact = {"im": dets([[10, 10, 14, 14]], [0.9], [0])}
    assert ap_of(evaluate_voc(exact, annotations, class_names=CLASSES)) == pytest.approx(1.0)
    assert ap_of(evaluate_voc(exact, annotations, class_names=CLASSES, protocol="refinedet-pytorch")) == 0.0
    # ...and one pixel up-left of it is FP in clean but TP after the shift
    early = {"im": dets([[9, 9, 13, 13]], [0.9], [0])}
    assert ap_of(evaluate_voc(early, annotations, class_names=CLASSES)) == 0.0
    assert ap_of(evaluate_voc(early, annotations, class_names=CLASSES, protocol="refinedet-pytorch")) == pytest.approx(1.0)


def test_refinedet_quantises_scores():
    # FP scored 0.1234 ranks above the TP scored 0.1226 in the clean protocol; both read
    # back as 0.123, and the tie is then ordered by np.argsort over the file order.
    annotations = {"im": ann("im", [[0, 0, 10, 10]], [0])}
    d = {"im": dets([[0, 0, 10, 10], [50, 50, 60, 60]], [0.1226, 0.1234], [0, 0])}
    assert ap_of(evaluate_voc(d, annotations, class_names=CLASSES)) == pytest.approx(0.5)
    order = np.argsort(-np.array([0.123, 0.123]))  # what the original would do
    expected = 1.0 if order[0] == 0 else 0.5
    res = evaluate_voc(d, annotations, class_names=CLASSES, protocol="refinedet-pytorch")
    assert ap_of(res) == pytest.approx(expected)


def test_refinedet_score_filter():
    annotations = {"im": ann("im", [[0, 0, 10, 10]], [0])}
    d = {"im": dets([[0, 0, 10, 10], [0, 0, 10, 10]], [0.0, 0.0004], [0, 0])}
    res = evaluate_voc(d, annotations, class_names=CLASSES, protocol="refinedet-pytorch")
    assert res.per_class[0].num_detections == 1  # score 0 dropped, 0.0004 -> 0.000 kept
    res = evaluate_voc(d, annotations, class_names=CLASSES)
    assert res.per_class[0].num_detections == 2


def test_round_like_format_matches_python_formatting():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.random(2000), rng.random(2000) * 500,
                             [0.1235, 0.0625, 2.675, 1.05, 0.15, 0.25, 12.35, 499.95, -0.04]])
    for decimals in (1, 3):
        expected = np.array([float(f"{v:.{decimals}f}") for v in values])
        np.testing.assert_array_equal(_round_like_format(values, decimals), expected)


# ---------------------------------------------------------------- loop reference cross-check


def _reference_loop(detections, annotations, num_classes, protocol):
    """Straight per-detection loop, following voc_eval literally (results-file round trip included)."""
    aps = []
    for c in range(num_classes):
        recs, npos = {}, 0
        for image_id, a in annotations.items():
            keep = a.labels == c
            recs[image_id] = [a.boxes[keep] - 1.0, a.difficult[keep], [False] * int(keep.sum())]
            npos += int((~a.difficult[keep]).sum())
        ids, conf, bbs = [], [], []
        for image_id in annotations:
            if image_id not in detections:
                continue
            b, s, l = detections[image_id]
            for k in np.flatnonzero(l == c):
                if protocol == "refinedet-pytorch":
                    if not s[k] > 0:
                        continue
                    line = "{:s} {:.3f} {:.1f} {:.1f} {:.1f} {:.1f}".format(
                        image_id, s[k], b[k, 0] + 1, b[k, 1] + 1, b[k, 2] + 1, b[k, 3] + 1).split(" ")
                    ids.append(line[0])
                    conf.append(float(line[1]))
                    bbs.append([float(z) for z in line[2:]])
                else:
                    ids.append(image_id)
                    conf.append(s[k])
                    bbs.append(b[k])
        conf = np.array(conf)
        order = np.argsort(-conf) if protocol == "refinedet-pytorch" else np.argsort(-conf, kind="stable")
        tp, fp = np.zeros(len(order)), np.zeros(len(order))
        for d, i in enumerate(order):
            gt, diff, taken = recs[ids[i]]
            bb = np.asarray(bbs[i], float)
            ovmax = -np.inf
            if gt.size:
                iw = np.maximum(np.minimum(gt[:, 2], bb[2]) - np.maximum(gt[:, 0], bb[0]), 0.0)
                ih = np.maximum(np.minimum(gt[:, 3], bb[3]) - np.maximum(gt[:, 1], bb[1]), 0.0)
                inter = iw * ih
                uni = (bb[2] - bb[0]) * (bb[3] - bb[1]) + (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]) - inter
                ov = inter / uni
                ovmax, jmax = np.max(ov), int(np.argmax(ov))
            if ovmax > 0.5:
                if not diff[jmax]:
                    if not taken[jmax]:
                        tp[d], taken[jmax] = 1, True
                    else:
                        fp[d] = 1
            else:
                fp[d] = 1
        if npos == 0:
            continue
        if len(order) == 0:
            aps.append(0.0)
            continue
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        aps.append(voc_ap(tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)))
    return float(np.mean(aps))


@pytest.mark.parametrize("protocol", ["clean", "refinedet-pytorch"])
def test_vectorised_matches_loop_reference(protocol):
    rng = np.random.default_rng(7)
    num_classes = 4
    annotations, detections = {}, {}
    for i in range(60):
        n = int(rng.integers(0, 6))
        xy = rng.integers(1, 80, size=(n, 2)).astype(float)
        wh = rng.integers(3, 30, size=(n, 2)).astype(float)
        boxes = np.concatenate([xy, xy + wh], axis=1)
        labels = rng.integers(0, num_classes, n)
        image_id = f"{i:06d}"
        annotations[image_id] = VOCAnnotation(image_id, 120, 120, boxes, labels, rng.random(n) < 0.15)
        # detections: jittered copies (some duplicated) plus random boxes, scores with ties
        k = int(rng.integers(0, 12))
        src = rng.integers(0, max(n, 1), size=k)
        base = boxes[src] - 1.0 if n else rng.uniform(0, 90, size=(k, 4))
        jitter = rng.normal(0, 2.0, size=(k, 4))
        det_boxes = np.where(rng.random((k, 1)) < 0.3, rng.uniform(0, 90, size=(k, 4)), base + jitter)
        det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 1)
        det_labels = labels[src] if n else rng.integers(0, num_classes, k)
        det_labels = np.where(rng.random(k) < 0.1, rng.integers(0, num_classes, k), det_labels)
        scores = np.round(rng.random(k), 2) * np.where(rng.random(k) < 0.05, 0, 1)
        if i % 5 != 0:
            detections[image_id] = dets(det_boxes, scores, det_labels)
    names = tuple(f"c{c}" for c in range(num_classes))
    res = evaluate_voc(detections, annotations, class_names=names, protocol=protocol)
    assert res.map == pytest.approx(_reference_loop(detections, annotations, num_classes, protocol), abs=1e-12)
