"""Each task scores one engine's predictions against another's as ground truth (the guard's agreement figure)."""
from __future__ import annotations

import numpy as np
import pytest

from deployzoo.data.voc import VOCAnnotation
from deployzoo.structures import Detections, LabelMap
from deployzoo.tasks.coco_detection import COCODetectionTask, COCOImageGT
from deployzoo.tasks.voc_detection import VOCDetectionTask
from deployzoo.tasks.voc_segmentation import VOCSegGT, VOCSegmentationTask


def _dets(boxes, scores, labels) -> Detections:
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                      np.asarray(labels, np.int64))


REFERENCE = {
    "a": _dets([[10, 10, 60, 80], [100, 20, 180, 90], [5, 5, 7, 7]], [0.9, 0.6, 0.01], [0, 3, 1]),
    "b": _dets([[30, 40, 120, 150]], [0.7], [5]),
}


def _moved(dets: Detections, dx: float) -> Detections:
    boxes = dets.boxes.copy()
    boxes[:, [0, 2]] += dx
    return Detections(boxes, dets.scores.copy(), dets.labels.copy())


@pytest.fixture
def voc_images():
    return {k: VOCAnnotation(k, 200, 200, np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool)) for k in "ab"}


@pytest.fixture
def coco_images():
    return {k: COCOImageGT(i + 1, 200, 200, 0, None) for i, k in enumerate("ab")}


@pytest.mark.parametrize("task_name", ["voc", "coco"])
def test_detections_agree_fully_with_themselves_and_less_when_moved(task_name, voc_images, coco_images):
    task, images = (VOCDetectionTask(), voc_images) if task_name == "voc" else (COCODetectionTask(), coco_images)
    assert task.agreement(REFERENCE, REFERENCE, images) == pytest.approx(100.0)
    # One image's boxes moved by 40 px: its detections no longer match (IoU < 0.5), the other's still do.
    half = {"a": _moved(REFERENCE["a"], 40.0), "b": REFERENCE["b"]}
    score = task.agreement(half, REFERENCE, images)
    assert 0.0 < score < 100.0
    # Slightly moved boxes cost COCO AP (IoU thresholds up to 0.95) but not VOC's (IoU > 0.5).
    nudged = {k: _moved(d, 3.0) for k, d in REFERENCE.items()}
    if task_name == "voc":
        assert task.agreement(nudged, REFERENCE, images) == pytest.approx(100.0)
    else:
        assert 50.0 < task.agreement(nudged, REFERENCE, images) < 100.0


@pytest.mark.parametrize("task_name", ["voc", "coco"])
def test_no_reference_detections_means_nothing_to_score(task_name, voc_images, coco_images):
    task, images = (VOCDetectionTask(), voc_images) if task_name == "voc" else (COCODetectionTask(), coco_images)
    faint = {k: _dets([[10, 10, 60, 80]], [0.01], [0]) for k in "ab"}  # below the 0.05 test threshold
    assert task.agreement(REFERENCE, faint, images) is None


def test_label_maps_agree_by_miou():
    task = VOCSegmentationTask()
    images = {k: VOCSegGT(k, None, 40, 40) for k in "ab"}
    reference = {k: LabelMap(np.zeros((40, 40), np.uint8)) for k in "ab"}
    reference["a"].labels[10:30, 10:30] = 15
    assert task.agreement(reference, reference, images) == pytest.approx(100.0)
    shifted = {"a": LabelMap(np.roll(reference["a"].labels, 10, axis=1)), "b": reference["b"]}
    # Over both images: person 200 of 600 pixels (IoU 1/3); background 2600 of 3000 (13/15).
    assert task.agreement(shifted, reference, images) == pytest.approx(100.0 * (1 / 3 + 13 / 15) / 2)


@pytest.mark.parametrize("task_name", ["voc", "coco"])
def test_one_threshold_for_the_sample_so_the_reference_agrees_with_itself(task_name, voc_images, coco_images):
    from deployzoo.tasks import REFERENCE_TOP, reference_truth

    task, images = (VOCDetectionTask(), voc_images) if task_name == "voc" else (COCODetectionTask(), coco_images)
    # Image a: 50 confident detections on a grid; image b: 5 fainter ones. Per-image caps would let a's
    # left-out detections outrank b's kept ones; one threshold over the sample does not.
    grid = [[x, y, x + 15, y + 15] for x in range(0, 200, 20) for y in range(0, 100, 20)]
    reference = {"a": _dets(grid, np.linspace(0.95, 0.5, 50), np.arange(50) % 20),
                 "b": _dets(grid[:5], [0.3] * 5, [1] * 5)}
    truth = reference_truth(reference, "ab")
    assert len(truth["a"]) == 2 * REFERENCE_TOP and len(truth["b"]) == 0
    assert task.agreement(reference, reference, images) == pytest.approx(100.0)
