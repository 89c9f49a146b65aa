"""VOC07 protocols: each rule of each protocol on crafted cases whose expected values are worked out by hand
in the test (IoU exactly 0.5, +1 pixel boundaries, difficult boxes, duplicates, score ties, classes without
ground truth, MATLAB's 11-point thresholds), and a per-detection loop transcription of each reference
cross-checked with the vectorised code on random sets with tied scores."""
from __future__ import annotations

import json

import numpy as np
import pytest

from deployzoo.data.synthetic_voc import make_synthetic_voc
from deployzoo.data.voc import VOC_CLASSES, VOCAnnotation, VOCDetection
from deployzoo.errors import DeployzooError
from deployzoo.eval.voc07 import (PROTOCOLS, ImageDetections, _round_like_format, evaluate_voc, resolve_protocol,
                                  voc_ap)

CLASSES = ("a", "b")
NAMES = ("voc-devkit", "refinedet-pytorch", "detectron2", "mmdet")

# The rules each protocol is documented to follow (module docstring, README "VOC07 protocols").
PLUS_ONE = {"voc-devkit": True, "refinedet-pytorch": False, "detectron2": True, "mmdet": True}
INCLUSIVE = {"voc-devkit": True, "refinedet-pytorch": False, "detectron2": False, "mmdet": True}


def xml_ann(image_id: str, xml_boxes, labels, difficult=None) -> VOCAnnotation:
    """Annotation holding XML (1-based) boxes."""
    boxes = np.asarray(xml_boxes, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    return VOCAnnotation(image_id, 200, 200, boxes, np.asarray(labels, np.int64),
                         np.zeros(n, bool) if difficult is None else np.asarray(difficult, bool))


def ann(image_id: str, boxes0, labels, difficult=None) -> VOCAnnotation:
    """Annotation from 0-based boxes (stored +1, as the XML would hold them)."""
    return xml_ann(image_id, np.asarray(boxes0, dtype=np.float64).reshape(-1, 4) + 1.0, labels, difficult)


def dets(boxes, scores, labels) -> ImageDetections:
    return ImageDetections(np.asarray(boxes, float).reshape(-1, 4), np.asarray(scores, float),
                           np.asarray(labels, np.int64))


def det_for(protocol: str, xml_frame_boxes) -> np.ndarray:
    """The detection that ``protocol`` compares with the XML as ``xml_frame_boxes`` (documented frames:
    devkit writes x+1 and reads XML; detectron2 writes x1+1, y1+1; RefineDet writes x+1 against XML-1;
    mmdet compares as given against XML-1)."""
    shift = {"voc-devkit": (1, 1, 1, 1), "detectron2": (1, 1, 0, 0), "refinedet-pytorch": (2, 2, 2, 2),
             "mmdet": (1, 1, 1, 1)}[protocol]
    return np.asarray(xml_frame_boxes, float).reshape(-1, 4) - np.asarray(shift, float)


def ap_of(result, name="a") -> float:
    return next(r.ap for r in result.per_class if r.name == name)


def row_of(result, name="a"):
    return next(r for r in result.per_class if r.name == name)


# ---------------------------------------------------------------- one rule at a time, every protocol


@pytest.mark.parametrize("protocol", NAMES)
def test_iou_exactly_half(protocol):
    # +1 widths: GT 1..10 x 1..20 is 10x20 = 200 px, the detection 1..10 x 1..10 is 100 px, all inside:
    # IoU 100/200. Without +1 (RefineDet): GT 1..11 x 1..21 is 10x20, the detection 1..11 x 1..11 10x10.
    gt, box = ([1, 1, 10, 20], [1, 1, 10, 10]) if PLUS_ONE[protocol] else ([1, 1, 11, 21], [1, 1, 11, 11])
    annotations = {"im": xml_ann("im", [gt], [0])}
    res = evaluate_voc({"im": dets(det_for(protocol, box), [0.9], [0])}, annotations, CLASSES, protocol)
    # devkit `ovmax>=VOCopts.minoverlap`, mmdet `ious_max >= iou_thr`: a match; voc_eval's `ovmax > ovthresh`: not
    expected = 1.0 if INCLUSIVE[protocol] else 0.0
    assert ap_of(res) == pytest.approx(expected, abs=1e-12) and row_of(res).tp == int(expected)


@pytest.mark.parametrize("protocol", NAMES)
def test_plus_one_pixel_areas(protocol):
    # GT 1..3 x 1..3, detection 1..3 x 1..5: with +1 widths 9 / 15 = 0.6 (a match under > and >=);
    # without, 4 / 8 = 0.5 (no match under RefineDet's >).
    annotations = {"im": xml_ann("im", [[1, 1, 3, 3]], [0])}
    res = evaluate_voc({"im": dets(det_for(protocol, [1, 1, 3, 5]), [0.9], [0])}, annotations, CLASSES, protocol)
    assert ap_of(res) == pytest.approx(1.0 if PLUS_ONE[protocol] else 0.0, abs=1e-12)
    # one-pixel boxes: 1 px each with +1 (IoU 1), 0/0 without (NaN, never a match)
    annotations = {"im": xml_ann("im", [[5, 5, 5, 5]], [0])}
    res = evaluate_voc({"im": dets(det_for(protocol, [5, 5, 5, 5]), [0.9], [0])}, annotations, CLASSES, protocol)
    assert ap_of(res) == pytest.approx(1.0 if PLUS_ONE[protocol] else 0.0, abs=1e-12)


@pytest.mark.parametrize("protocol", NAMES)
def test_difficult_boxes(protocol):
    normal, hard = [1, 1, 20, 20], [41, 41, 60, 60]
    annotations = {"im": xml_ann("im", [normal, hard], [0, 0], [False, True])}
    # the detection on the difficult box ranks first: neither TP nor FP; the next one is a TP -> AP 1
    d = {"im": dets(det_for(protocol, [hard, normal]), [0.9, 0.8], [0, 0])}
    res = evaluate_voc(d, annotations, CLASSES, protocol)
    assert (row_of(res).num_gt, row_of(res).tp, ap_of(res)) == (1, 1, pytest.approx(1.0, abs=1e-12))
    # only the difficult box found: tp 0, fp 0. The devkit's prec = tp./(fp+tp) is 0/0 = NaN and MATLAB's
    # max of all-NaN is NaN; voc_eval divides by max(tp+fp, eps) -> 0; mmdet likewise -> 0.
    d = {"im": dets(det_for(protocol, [hard]), [0.9], [0])}
    res = evaluate_voc(d, annotations, CLASSES, protocol)
    if protocol == "voc-devkit":
        assert np.isnan(ap_of(res))
    else:
        assert ap_of(res) == 0.0
    # A difficult box listed before an identical normal one: the devkit and voc_eval take the first best
    # overlap (the difficult one: ignored); mmdet stacks bboxes_ignore after the others: the normal one (TP).
    annotations = {"im": xml_ann("im", [hard, hard], [0, 0], [True, False])}
    res = evaluate_voc({"im": dets(det_for(protocol, [hard]), [0.9], [0])}, annotations, CLASSES, protocol)
    assert row_of(res).num_gt == 1
    expected = {"mmdet": 1.0, "voc-devkit": float("nan")}.get(protocol, 0.0)
    assert ap_of(res) == pytest.approx(expected, abs=1e-12, nan_ok=True)


@pytest.mark.parametrize("protocol", NAMES)
def test_duplicates_are_false_positives(protocol):
    g1, g2 = [1, 1, 20, 20], [51, 51, 70, 70]
    annotations = {"im": xml_ann("im", [g1, g2], [0, 0])}
    d = {"im": dets(det_for(protocol, [g1, g1, g2]), [0.9, 0.8, 0.7], [0, 0, 0])}
    # TP, FP (second match of g1), TP: recall .5 .5 1, precision 1 .5 2/3
    res = evaluate_voc(d, annotations, CLASSES, protocol)
    assert row_of(res).tp == 2
    assert ap_of(res) == pytest.approx((6 * 1.0 + 5 * (2 / 3)) / 11, abs=1e-6)  # t = 0..0.5 -> 1, 0.6..1 -> 2/3
    area = evaluate_voc(d, annotations, CLASSES, protocol, use_07_metric=False)
    assert ap_of(area) == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3), abs=1e-6) and area.metric == "area"


def _ap11_by_hand(flags: list[int], npos: int, thresholds) -> float:
    """11-point AP of a ranked TP(1)/FP(0) list, written out plainly."""
    tp = fp = 0
    points = []
    for f in flags:
        tp, fp = tp + f, fp + (1 - f)
        points.append((tp / npos, tp / (tp + fp)))
    return sum(max([p for r, p in points if r >= t], default=0.0) for t in thresholds) / 11


NUMPY_T = [0.0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.6000000000000001, 0.7000000000000001, 0.8, 0.9, 1.0]
MATLAB_T = [0.0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


@pytest.mark.parametrize("protocol", NAMES)
def test_score_ties(protocol):
    # 30 images; image i holds one GT, detected exactly (TP) on odd i and missed on even i, where a
    # stray box (FP) is detected instead. All scores tie at 0.5.
    annotations, d, flags = {}, {}, []
    for i in range(30):
        annotations[f"{i:03d}"] = xml_ann(f"{i:03d}", [[1, 1, 20, 20]], [0])
        box = [1, 1, 20, 20] if i % 2 else [101, 101, 120, 120]
        d[f"{i:03d}"] = dets(det_for(protocol, [box]), [0.5], [0])
        flags.append(i % 2)
    scores = np.full(30, 0.5, dtype=np.float32 if protocol == "mmdet" else np.float64)
    # the devkit's MATLAB sort is stable (file order); the others use numpy's default argsort, whatever
    # order the installed numpy gives
    order = np.arange(30) if protocol == "voc-devkit" else np.argsort(-scores)
    expected = _ap11_by_hand([flags[k] for k in order], 30, MATLAB_T if protocol == "voc-devkit" else NUMPY_T)
    assert ap_of(evaluate_voc(d, annotations, CLASSES, protocol)) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("protocol", NAMES)
def test_ties_made_by_the_results_file(protocol):
    # FP 0.9004 on the first image, TP 0.9001 on the second. Written with '{:.3f}' (RefineDet, detectron2)
    # both read back as 0.900 and numpy's argsort orders the tie; the devkit (full precision) and mmdet
    # (float32) keep FP first: precision 0 then 1/2 -> AP 0.5.
    annotations = {"x": xml_ann("x", [[1, 1, 20, 20]], [1]), "y": xml_ann("y", [[1, 1, 20, 20]], [0])}
    d = {"x": dets(det_for(protocol, [[1, 1, 20, 20]]), [0.9004], [0]),
         "y": dets(det_for(protocol, [[1, 1, 20, 20]]), [0.9001], [0])}
    if protocol in ("refinedet-pytorch", "detectron2"):
        fp_first = np.argsort(-np.array([0.9, 0.9]))[0] == 0
    else:
        fp_first = True
    assert ap_of(evaluate_voc(d, annotations, CLASSES, protocol)) == pytest.approx(0.5 if fp_first else 1.0, abs=1e-12)


@pytest.mark.parametrize("protocol", NAMES)
def test_classes_without_ground_truth(protocol):
    # class "a": one GT, found (AP 1). class "b": no GT, one detection. VOCevaldet / voc_eval: recall
    # tp/0 = NaN passes no 11-point threshold -> AP 0, and their mAP averages every class -> 0.5.
    # mmdet: AP 0 but eval_map averages only classes with num_gts > 0 -> 1.0.
    annotations = {"im": xml_ann("im", [[1, 1, 20, 20]], [0])}
    d = {"im": dets(det_for(protocol, [[1, 1, 20, 20], [1, 1, 20, 20]]), [0.9, 0.8], [0, 1])}
    res = evaluate_voc(d, annotations, CLASSES, protocol)
    assert (ap_of(res, "a"), ap_of(res, "b")) == (pytest.approx(1.0, abs=1e-12), 0.0)
    assert row_of(res, "b").in_mean == (protocol != "mmdet")
    assert res.map == pytest.approx(1.0 if protocol == "mmdet" else 0.5)
    # and with no detection of "b" either: AP 0 everywhere (detectron2 writes an empty file; RefineDet's
    # original returns -1 there, a sentinel deployzoo does not average in)
    d = {"im": dets(det_for(protocol, [[1, 1, 20, 20]]), [0.9], [0])}
    res = evaluate_voc(d, annotations, CLASSES, protocol)
    assert ap_of(res, "b") == 0.0 and res.map == pytest.approx(1.0 if protocol == "mmdet" else 0.5)


@pytest.mark.parametrize("protocol", NAMES)
def test_eleven_point_thresholds(protocol):
    # 10 GT, 7 found: recall ends at 7/10 = 0.7 (the double nearest 0.7). numpy.arange's 7th threshold
    # is 0.7000000000000001 > 0.7 (7 points of 11); MATLAB's 0:0.1:1 holds 0.7 itself (8 points).
    annotations = {"im": xml_ann("im", [[1 + 10 * k, 1, 8 + 10 * k, 8] for k in range(10)], [0] * 10)}
    found = [[1 + 10 * k, 1, 8 + 10 * k, 8] for k in range(7)]
    res = evaluate_voc({"im": dets(det_for(protocol, found), np.linspace(0.9, 0.3, 7), [0] * 7)},
                       annotations, CLASSES, protocol)
    assert ap_of(res) == pytest.approx((8 if protocol == "voc-devkit" else 7) / 11, abs=1e-6)


def test_mmdet_truncates_xml_coordinates():
    # mmdet 3.x XMLDataset: int(float(x)) - 1. XML 10.9 / 20.9 become 9 / 19 (0-based): GT 10x20 with +1
    # widths, the detection 10x10 inside it -> IoU 0.5 -> a match (>=). The devkit keeps 10.9 / 20.9:
    # 100 / (10.9 * 20.9) < 0.5 -> no match.
    annotations = {"im": xml_ann("im", [[1, 1, 10.9, 20.9]], [0])}
    res = evaluate_voc({"im": dets(det_for("mmdet", [1, 1, 10, 10]), [0.9], [0])}, annotations, CLASSES, "mmdet")
    assert ap_of(res) == pytest.approx(1.0, abs=1e-6)
    res = evaluate_voc({"im": dets(det_for("voc-devkit", [1, 1, 10, 10]), [0.9], [0])}, annotations, CLASSES)
    assert ap_of(res) == 0.0


# ---------------------------------------------------------------- refinedet-pytorch specifics


def test_refinedet_shift_flips_matches():
    # GT 0-based [10,10,14,14] (XML 11..15). A detection equal to it matches under the devkit (written +1,
    # read against the XML); RefineDet writes it +1 but reads the GT as XML - 1: [11,11,15,15] vs
    # [10,10,14,14], IoU 9/23 -> FP.
    annotations = {"im": ann("im", [[10, 10, 14, 14]], [0])}
    exact = {"im": dets([[10, 10, 14, 14]], [0.9], [0])}
    assert ap_of(evaluate_voc(exact, annotations, CLASSES, "voc-devkit")) == pytest.approx(1.0, abs=1e-12)
    assert ap_of(evaluate_voc(exact, annotations, CLASSES, "refinedet-pytorch")) == 0.0
    early = {"im": dets([[9, 9, 13, 13]], [0.9], [0])}
    assert ap_of(evaluate_voc(early, annotations, CLASSES, "refinedet-pytorch")) == pytest.approx(1.0, abs=1e-12)


def test_refinedet_score_filter():
    annotations = {"im": ann("im", [[0, 0, 10, 10]], [0])}
    d = {"im": dets([[0, 0, 10, 10], [0, 0, 10, 10]], [0.0, 0.0004], [0, 0])}
    res = evaluate_voc(d, annotations, CLASSES, "refinedet-pytorch")
    assert row_of(res).num_detections == 1  # score 0 dropped, 0.0004 -> 0.000 kept
    assert row_of(evaluate_voc(d, annotations, CLASSES, "voc-devkit")).num_detections == 2


def test_round_like_format_matches_python_formatting():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.random(2000), rng.random(2000) * 500,
                             [0.1235, 0.0625, 2.675, 1.05, 0.15, 0.25, 12.35, 499.95, -0.04]])
    for decimals in (1, 3):
        expected = np.array([float(f"{v:.{decimals}f}") for v in values])
        np.testing.assert_array_equal(_round_like_format(values, decimals), expected)


def test_ap_curve_helper():
    # recall 0.3 does not reach py-faster-rcnn's threshold 0.30000000000000004 (np.arange)
    assert voc_ap(np.array([3 / 10]), np.array([1.0])) == pytest.approx(3 / 11)
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5]), use_07_metric=False) == pytest.approx(0.75)


# ---------------------------------------------------------------- names, defaults, reports, errors


def test_clean_is_refused_with_the_replacement_named():
    annotations = {"x": ann("x", [[0, 0, 10, 10]], [0])}
    with pytest.raises(ValueError, match="'clean' was removed.*voc-devkit"):
        evaluate_voc({}, annotations, CLASSES, protocol="clean")
    with pytest.raises(ValueError, match="unknown protocol 'coco'"):
        evaluate_voc({}, annotations, CLASSES, protocol="coco")
    from deployzoo.registry import get_spec
    from deployzoo.tasks.protocol_choice import choose_protocol

    task = get_spec("refinedet320-vgg16-voc").evaluation
    with pytest.raises(DeployzooError, match="'clean' was removed.*default for this model is refinedet-pytorch"):
        choose_protocol(task, "clean")
    with pytest.raises(DeployzooError, match="choose from refinedet-pytorch, voc-devkit, detectron2, mmdet"):
        choose_protocol(task, "nope")
    # the model's default is the protocol its published figure was measured with
    assert choose_protocol(task, None) == "refinedet-pytorch"
    assert resolve_protocol("mmdet") is PROTOCOLS["mmdet"]


def test_reports_name_the_protocol_and_what_it_equals(tmp_path):
    ds = VOCDetection(make_synthetic_voc(tmp_path, num_images=16, seed=0))
    annotations = {i: ds.annotation(i) for i in ds.ids}
    d = {i: dets(a.boxes - 1.0, np.linspace(0.9, 0.5, len(a.labels)), a.labels) for i, a in annotations.items()}
    for metric in (True, False):  # exact boxes under the devkit: AP 1 wherever there is ground truth
        res = evaluate_voc(d, annotations, use_07_metric=metric)
        assert [r.ap for r in res.per_class if r.num_gt] == pytest.approx([1.0] * sum(r.num_gt > 0 for r in res.per_class))
    res = evaluate_voc(d, annotations, protocol="refinedet-pytorch")
    out = json.loads(json.dumps(res.to_dict()))  # JSON-ready
    assert out["protocol"] == "refinedet-pytorch" and "RefineDet.PyTorch eval_refinedet.py" in out["protocol_equals"]
    assert out["protocol_rules"].startswith("IoU > 0.5 without +1 pixel areas, scores rounded to 3 decimals")
    rules = {p: evaluate_voc({}, annotations, protocol=p).protocol_rules for p in NAMES}
    for p in NAMES:  # the one-line rules say what the tests above check
        assert rules[p].startswith(f"IoU {'>=' if INCLUSIVE[p] else '>'} 0.5 {'with' if PLUS_ONE[p] else 'without'} +1")
        assert rules[p].endswith("classes with ground truth" if p == "mmdet" else "all classes")
    lines = res.table().splitlines()
    assert lines[2 + len(VOC_CLASSES)].startswith("| **mAP** |")
    assert lines[-1].startswith("protocol refinedet-pytorch: equals RefineDet.PyTorch")


def test_bad_detections_raise():
    annotations = {"x": ann("x", [[0, 0, 10, 10]], [0])}
    with pytest.raises(ValueError, match="'zz'"):
        evaluate_voc({"zz": dets([[0, 0, 1, 1]], [0.5], [0])}, annotations, CLASSES)
    with pytest.raises(ValueError, match="out of range"):
        evaluate_voc({"x": dets([[0, 0, 1, 1]], [0.5], [2])}, annotations, CLASSES)
    with pytest.raises(ValueError, match="do not agree"):
        evaluate_voc({"x": (np.zeros((2, 4)), np.zeros(3), np.zeros(2, int))}, annotations, CLASSES)


def test_images_without_detections_and_empty_input():
    annotations = {"x": ann("x", [[0, 0, 10, 10]], [0]), "y": ann("y", [[0, 0, 10, 10]], [0])}
    for protocol in NAMES:
        res = evaluate_voc({"x": dets([[0, 0, 10, 10]], [0.9], [0])}, annotations, CLASSES, protocol)
        assert row_of(res).recall == 0.5
        res = evaluate_voc({}, annotations, CLASSES, protocol)
        assert res.map == 0.0 and row_of(res).num_detections == 0 and row_of(res).recall == 0.0


# ---------------------------------------------------------------- loop transcriptions cross-check


def _loop_reference(detections, annotations, num_classes, protocol):
    """Per-class AP and mAP by a plain per-detection loop, transcribing each reference's procedure
    (results-file round trip, frames, matching loop, ranking, AP arithmetic)."""
    aps, npos_of = [], []
    for c in range(num_classes):
        gts, npos = {}, 0
        for iid, a in annotations.items():
            k = a.labels == c
            boxes, diff = a.boxes[k].astype(float), a.difficult[k].astype(bool)
            if protocol == "mmdet":
                boxes = np.trunc(boxes) - 1
                o = np.argsort(diff, kind="stable")
                boxes, diff = boxes[o], diff[o]
            elif protocol == "refinedet-pytorch":
                boxes = boxes - 1
            gts[iid] = [boxes, diff, [False] * len(diff)]
            npos += int((~diff).sum())
        npos_of.append(npos)
        ids, conf, bbs = [], [], []
        for iid in annotations:
            if iid not in detections:
                continue
            b, s, l = detections[iid]
            for k in np.flatnonzero(l == c):
                if protocol in ("refinedet-pytorch", "detectron2"):
                    if protocol == "refinedet-pytorch" and not s[k] > 0:
                        continue
                    shift = (1, 1, 1, 1) if protocol == "refinedet-pytorch" else (1, 1, 0, 0)
                    line = "{:.3f} {:.1f} {:.1f} {:.1f} {:.1f}".format(s[k], *(b[k, m] + shift[m] for m in range(4)))
                    vals = [float(z) for z in line.split(" ")]
                    conf.append(vals[0])
                    bbs.append(vals[1:])
                elif protocol == "voc-devkit":
                    conf.append(s[k])
                    bbs.append(list(b[k] + 1))
                else:
                    conf.append(np.float32(s[k]))
                    bbs.append(list(b[k]))
                ids.append(iid)
        nd = len(ids)
        tp, fp = np.zeros(nd), np.zeros(nd)
        if protocol == "mmdet":
            conf = np.array(conf, dtype=np.float32)
            for iid in annotations:  # TP/FP decided per image, in that image's argsort order
                mine = [n for n in range(nd) if ids[n] == iid]
                gt, diff, taken = gts[iid]
                g32 = gt.astype(np.float32)
                for n in [mine[q] for q in np.argsort(-conf[mine])]:
                    bb = np.array(bbs[n], dtype=np.float32)
                    if len(gt) == 0:
                        fp[n] = 1
                        continue
                    ious = []
                    for g in g32:
                        ov = (np.maximum(np.minimum(bb[2], g[2]) - np.maximum(bb[0], g[0]) + 1, 0)
                              * np.maximum(np.minimum(bb[3], g[3]) - np.maximum(bb[1], g[1]) + 1, 0))
                        union = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - ov
                        ious.append(np.float32(ov / np.maximum(union, np.float32(1e-6))))
                    j = int(np.argmax(ious))
                    if ious[j] >= np.float32(0.5):
                        if not diff[j]:
                            if not taken[j]:
                                taken[j], tp[n] = True, 1
                            else:
                                fp[n] = 1
                    else:
                        fp[n] = 1
            order = np.argsort(-conf)
            t32, f32 = np.cumsum(tp[order].astype(np.float32)), np.cumsum(fp[order].astype(np.float32))
            rec = t32 / np.maximum(np.array([npos]), np.finfo(np.float32).eps)
            prec = t32 / np.maximum(t32 + f32, np.finfo(np.float32).eps)
            ap = np.float32(0)
            for t in NUMPY_T:
                sel = prec[rec >= t]
                ap = np.float32(ap + (sel.max() if sel.size else np.float32(0)))
            aps.append(np.float32(ap / np.float32(11)))
            continue
        conf = np.array(conf, dtype=np.float64)
        order = np.argsort(-conf, kind="stable") if protocol == "voc-devkit" else np.argsort(-conf)
        plus = 0.0 if protocol == "refinedet-pytorch" else 1.0
        for d, n in enumerate(order):
            gt, diff, taken = gts[ids[n]]
            bb = np.asarray(bbs[n], float)
            ovmax, jmax, ovs = -np.inf, -1, []
            for j, g in enumerate(gt):
                iw = min(bb[2], g[2]) - max(bb[0], g[0]) + plus
                ih = min(bb[3], g[3]) - max(bb[1], g[1]) + plus
                if protocol == "voc-devkit":
                    if iw > 0 and ih > 0:
                        ov = iw * ih / ((bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - iw * ih)
                        if ov > ovmax:
                            ovmax, jmax = ov, j
                    continue
                inter = max(iw, 0.0) * max(ih, 0.0)
                uni = (bb[2] - bb[0] + plus) * (bb[3] - bb[1] + plus) + (g[2] - g[0] + plus) * (g[3] - g[1] + plus) - inter
                with np.errstate(invalid="ignore"):
                    ovs.append(np.float64(inter) / np.float64(uni))
            if protocol != "voc-devkit" and len(gt):
                ovmax, jmax = np.max(ovs), int(np.argmax(ovs))  # voc_eval: first max, NaN propagates
            with np.errstate(invalid="ignore"):
                hit = ovmax >= 0.5 if protocol == "voc-devkit" else ovmax > 0.5
            if hit:
                if not diff[jmax]:
                    if not taken[jmax]:
                        tp[d], taken[jmax] = 1, True
                    else:
                        fp[d] = 1
            else:
                fp[d] = 1
        tc, fc = np.cumsum(tp), np.cumsum(fp)
        with np.errstate(divide="ignore", invalid="ignore"):
            rec = tc / float(npos)
            if protocol == "voc-devkit":
                prec = tc / (fc + tc)
                ap = 0.0
                for t in MATLAB_T:
                    sel = prec[rec >= t]
                    p = 0.0 if sel.size == 0 else (float("nan") if np.isnan(sel).all() else float(np.nanmax(sel)))
                    ap = ap + p / 11
            else:
                ap = voc_ap(rec, tc / np.maximum(tc + fc, np.finfo(np.float64).eps))
        aps.append(ap)
    if protocol == "mmdet":
        kept = [a for a, n in zip(aps, npos_of) if n > 0]
        return [float(a) for a in aps], float(np.array(kept, dtype=np.float32).mean())
    return [float(a) for a in aps], float(np.mean(aps))


@pytest.mark.parametrize("protocol", NAMES)
def test_vectorised_matches_loop_transcription(protocol):
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
        # detections: jittered copies (some duplicated) plus random boxes, scores with many ties
        k = int(rng.integers(0, 24))
        src = rng.integers(0, max(n, 1), size=k)
        base = boxes[src] - 1.0 if n else rng.uniform(0, 90, size=(k, 4))
        jitter = rng.normal(0, 2.0, size=(k, 4)) * (rng.random((k, 1)) < 0.7)
        det_boxes = np.where(rng.random((k, 1)) < 0.3, rng.uniform(0, 90, size=(k, 4)), base + jitter)
        det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 1)
        det_labels = labels[src] if n else rng.integers(0, num_classes, k)
        det_labels = np.where(rng.random(k) < 0.1, rng.integers(0, num_classes, k), det_labels)
        scores = np.round(rng.random(k), 1) * np.where(rng.random(k) < 0.05, 0, 1)
        if i % 5 != 0:
            detections[image_id] = dets(det_boxes, scores, det_labels)
    names = tuple(f"c{c}" for c in range(num_classes))
    res = evaluate_voc(detections, annotations, class_names=names, protocol=protocol)
    per_class, mean = _loop_reference(detections, annotations, num_classes, protocol)
    np.testing.assert_allclose([r.ap for r in res.per_class], per_class, rtol=0, atol=1e-12)
    assert res.map == pytest.approx(mean, abs=1e-12)


def test_eval_command_refuses_clean_before_loading_weights(tmp_path, synthetic_voc, capsys):
    from deployzoo.cli import main

    missing = tmp_path / "never-read.pth"  # reaching the weights would fail on this file instead
    rc = main(["eval", "refinedet320-vgg16-voc", "--checkpoint", str(missing), "--data", str(synthetic_voc),
               "--protocol", "clean", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "'clean' was removed" in err and "voc-devkit" in err and "never-read" not in err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_score_and_run_refuse_clean_before_any_work(tmp_path):
    from deployzoo.job import run_main_job
    from deployzoo.score import score_predictions
    from deployzoo.tasks.voc_detection import VOCDetectionTask

    task = VOCDetectionTask()  # `deployzoo score` on a VOC set: no model, the official rule by default
    assert task.protocols[0] == "voc-devkit"
    with pytest.raises(DeployzooError, match="'clean' was removed"):
        score_predictions(task, {}, {"x": ann("x", [[0, 0, 10, 10]], [0])}, protocol="clean")
    with pytest.raises(DeployzooError, match="'clean' was removed"):
        run_main_job("refinedet320-vgg16-voc", out_dir=tmp_path / "run", protocol="clean")
    assert not (tmp_path / "run").exists()  # nothing written, loaded or exported
