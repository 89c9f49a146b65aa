"""The peers' published VOC AP test vectors replayed with their expected values (the figures carry over,
their code does not).

- mmdetection tests/test_metrics/test_mean_ap.py (mmdet 2.x; eval_map's rules are unchanged in 3.x's
  mmdet/evaluation/functional/mean_ap.py): ``test_tpfp_default`` (tp [1, 1, 0], fp [0, 0, 1]) and ``test_eval_map``
  (0.291 < mAP < 0.293 with ``use_legacy_coordinate`` True and False, eval_map's default ``eval_mode='area'``).
  Its ``det_bboxes`` have 4 columns, so eval_map reads the last one (y2) as the score: 10, 20, 42.
- mmdetection tests/test_evaluation/test_metrics/test_voc_metric.py: VOCMetric on VOC2007 000001.xml (dog,
  person) with two dummy predictions -> AP50 100.0, and AP10 100.0 with ``iou_thrs=[0.1, 0.5]``.
- detectron2 ships no test of its PascalVOCDetectionEvaluator (nothing under tests/ names pascal/voc), so
  there is no detectron2 vector to replay; its rules are exercised in test_voc07_eval.py.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from deployzoo.data.voc import VOCAnnotation
from deployzoo.eval.voc07 import PROTOCOLS, ImageDetections, evaluate_voc

# mmdetection's arrays (0-based, its loader's frame; the XML holds them + 1)
DET_BBOXES = np.array([[0, 0, 10, 10], [10, 10, 20, 20], [32, 32, 38, 42]], dtype=float)
GT_BBOXES = np.array([[0, 0, 10, 20], [0, 10, 10, 19], [10, 10, 20, 20]], dtype=float)
GT_IGNORE = np.array([[5, 5, 10, 20], [6, 10, 10, 19]], dtype=float)

MMDET_LEGACY = PROTOCOLS["mmdet"]  # VOCMetric's use_legacy_coordinate=True
MMDET_PLAIN = replace(PROTOCOLS["mmdet"], name="mmdet eval_map default", plus_one=False)  # eval_map's default


def _image(image_id: str, gt_labels, ignore_labels) -> VOCAnnotation:
    """mmdet's gt_info as a VOC annotation: bboxes, then bboxes_ignore as difficult boxes, XML = mmdet + 1."""
    boxes = np.concatenate([GT_BBOXES, GT_IGNORE]) + 1.0
    labels = np.concatenate([gt_labels, ignore_labels]).astype(np.int64)
    difficult = np.array([False] * len(GT_BBOXES) + [True] * len(GT_IGNORE))
    return VOCAnnotation(image_id, 100, 100, boxes, labels, difficult)


def _detections(num_classes: int) -> ImageDetections:
    """det_results for one image: the same 4-column det_bboxes for every class, score = last column."""
    boxes = np.tile(DET_BBOXES, (num_classes, 1))
    labels = np.repeat(np.arange(num_classes), len(DET_BBOXES))
    return ImageDetections(boxes, boxes[:, -1].copy(), labels)


@pytest.mark.parametrize("rules", [MMDET_LEGACY, MMDET_PLAIN], ids=["legacy", "no-legacy"])
def test_mmdet_tpfp_default_vector(rules):
    # all three GT of one class plus the two ignored ones, one image: tp [1, 1, 0], fp [0, 0, 1]
    annotations = {"im": _image("im", [0, 0, 0], [0, 0])}
    res = evaluate_voc({"im": _detections(1)}, annotations, ("c0",), rules, use_07_metric=False)
    row = res.per_class[0]
    assert (row.num_detections, row.tp, row.num_gt) == (3, 2, 3)
    # ranked by score 42 (the FP), 20, 10 (the TPs): recall 0, 1/3, 2/3, precision 0, 1/2, 2/3;
    # area under the envelope 1/3 * 2/3 + 1/3 * 2/3
    assert row.ap == pytest.approx(4 / 9, abs=1e-6)


@pytest.mark.parametrize("rules", [MMDET_LEGACY, MMDET_PLAIN], ids=["legacy", "no-legacy"])
@pytest.mark.parametrize("num_images", [2, 1])
def test_mmdet_eval_map_vector(rules, num_images):
    annotations = {f"im{i}": _image(f"im{i}", [0, 1, 1], [0, 1]) for i in range(num_images)}
    detections = {i: _detections(2) for i in annotations}
    res = evaluate_voc(detections, annotations, ("c0", "c1"), rules, use_07_metric=False)
    assert 0.291 < res.map < 0.293  # mmdetection's assertion
    # (class 0: 1/3, class 1: 1/4 -> 7/24 = 0.29167; the detection [0,0,10,10] on [0,0,10,20] is the
    # IoU-exactly-0.5 case without legacy coordinates, a match under mmdet's >=)
    assert res.map == pytest.approx(7 / 24, abs=1e-6)


@pytest.mark.parametrize("iou_threshold", [0.5, 0.1])
def test_mmdet_voc_metric_vector(iou_threshold):
    # VOC2007 Annotations/000001.xml: dog 48 240 195 371, person 8 12 352 498 (classes ('dog', 'person'))
    annotations = {"000001": VOCAnnotation("000001", 353, 500, np.array([[48, 240, 195, 371], [8, 12, 352, 498]], float),
                                           np.array([0, 1]), np.array([False, False]))}
    detections = {"000001": ImageDetections(np.array([[48.181, 239.456, 194.984, 371.243], [8, 12, 352, 498]]),
                                             np.array([1.0, 0.98]), np.array([0, 1]))}
    res = evaluate_voc(detections, annotations, ("dog", "person"), "mmdet", iou_threshold=iou_threshold)
    assert round(100 * res.map, 1) == 100.0  # targets {'pascal_voc/AP50(%)': 100.0, 'pascal_voc/mAP(%)': 100.0}
