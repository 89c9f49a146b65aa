"""mIoU (mmsegmentation's IoUMetric): hand-worked values, accumulation, and the VOC segmentation task end to end."""
from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deployzoo.data.voc_seg import VOC_SEG_CLASSES, read_label_png
from deployzoo.errors import BadInputError
from deployzoo.eval.miou import SegmentationAccumulator
from deployzoo.structures import LabelMap
from deployzoo.tasks.voc_segmentation import VOCSegGT, VOCSegmentationTask

NAMES4 = ("bg", "a", "b", "never")

# ---------------------------------------------------------------- the metric


def _hand_example():
    # 255 marks ignored pixels; their predictions (0, 2, 1) must not count anywhere.
    gt = np.array([[0, 0, 1, 1],
                   [0, 255, 1, 2],
                   [2, 2, 255, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1],
                     [0, 0, 1, 2],
                     [2, 0, 2, 1]], np.uint8)
    return pred, gt


def test_hand_worked_example():
    # Valid (gt, pred): (0,0)x2 (0,1) (1,1)x3 (2,2)x2 (2,0).
    # intersect 2,3,2; pred 3,4,2; label 3,3,3; union 4,4,3; class 3 absent from both.
    acc = SegmentationAccumulator(4)
    acc.add(*_hand_example())
    r = acc.result(NAMES4)
    np.testing.assert_array_equal(r.area_intersect, [2, 3, 2, 0])
    np.testing.assert_array_equal(r.area_pred, [3, 4, 2, 0])
    np.testing.assert_array_equal(r.area_label, [3, 3, 3, 0])
    np.testing.assert_array_equal(r.area_union, [4, 4, 3, 0])
    assert r.area_intersect.dtype == np.int64
    np.testing.assert_allclose(r.iou[:3], [0.5, 0.75, 2 / 3])
    np.testing.assert_allclose(r.acc[:3], [2 / 3, 1.0, 2 / 3])
    assert math.isnan(r.iou[3]) and math.isnan(r.acc[3])
    assert r.miou == pytest.approx((0.5 + 0.75 + 2 / 3) / 3)
    assert r.macc == pytest.approx(7 / 9)
    assert r.aacc == pytest.approx(7 / 9)
    assert r.num_images == 1


def test_class_predicted_but_absent_from_gt():
    # IoU 0 (it has a union), Acc undefined (no label pixels): it lowers mIoU but not mAcc.
    gt = np.zeros((2, 2), np.uint8)
    pred = np.array([[0, 0], [0, 3]], np.uint8)
    acc = SegmentationAccumulator(4)
    acc.add(pred, gt)
    r = acc.result(NAMES4)
    assert r.iou[3] == 0.0 and math.isnan(r.acc[3])
    assert r.miou == pytest.approx((0.75 + 0.0) / 2)
    assert r.macc == pytest.approx(0.75)


def test_table_and_dict():
    acc = SegmentationAccumulator(4)
    acc.add(*_hand_example())
    r = acc.result(NAMES4)
    table = r.table()
    assert table.splitlines()[0] == "| Class | IoU | Acc |"
    assert "| bg | 50.00 | 66.67 |" in table
    assert "| a | 75.00 | 100.00 |" in table
    assert "| never | nan | nan |" in table
    assert "| aAcc | mIoU | mAcc |" in table
    assert table.splitlines()[-1] == "| 77.78 | 63.89 | 77.78 |"
    d = json.loads(json.dumps(r.to_dict()))  # JSON-ready
    assert d["miou"] == pytest.approx(r.miou) and d["num_images"] == 1
    assert d["per_class"][3] == {"class": "never", "iou": None, "acc": None, "intersect": 0, "union": 0,
                                 "pred": 0, "label": 0}
    assert d["per_class"][1]["iou"] == pytest.approx(0.75)


def test_two_images_equal_one_concatenated():
    rng = np.random.default_rng(0)
    a_gt = rng.integers(0, 5, (30, 40)).astype(np.uint8)
    b_gt = rng.integers(0, 5, (30, 25)).astype(np.uint8)
    a_gt[rng.random(a_gt.shape) < 0.1] = 255
    b_gt[rng.random(b_gt.shape) < 0.1] = 255
    a_pred = rng.integers(0, 5, a_gt.shape).astype(np.uint8)
    b_pred = rng.integers(0, 5, b_gt.shape).astype(np.uint8)
    two, one = SegmentationAccumulator(5), SegmentationAccumulator(5)
    two.add(a_pred, a_gt)
    two.add(b_pred, b_gt)
    one.add(np.concatenate([a_pred, b_pred], axis=1), np.concatenate([a_gt, b_gt], axis=1))
    names = tuple("abcde")
    r2, r1 = two.result(names), one.result(names)
    for field in ("area_intersect", "area_union", "area_pred", "area_label", "iou", "acc"):
        np.testing.assert_array_equal(getattr(r2, field), getattr(r1, field))
    assert (r2.miou, r2.macc, r2.aacc) == (r1.miou, r1.macc, r1.aacc)
    assert (r2.num_images, r1.num_images) == (2, 1)


def test_accumulator_errors():
    acc = SegmentationAccumulator(4)
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*\(3, 2\)"):
        acc.add(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8))
    with pytest.raises(ValueError, match=r"prediction has label value\(s\) \[4\] outside 0..3"):
        acc.add(np.full((2, 2), 4, np.uint8), np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"ground truth has label value\(s\) \[7\]"):
        acc.add(np.zeros((2, 2), np.uint8), np.full((2, 2), 7, np.uint8))
    with pytest.raises(ValueError, match="integer"):
        acc.add(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="class names"):
        acc.result(("x",))
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationAccumulator(4, ignore_index=2)
    # A prediction of 255 where the ground truth is ignored is never looked at.
    acc.add(np.full((2, 2), 255, np.uint8), np.full((2, 2), 255, np.uint8))
    assert acc.num_images == 1


def test_empty_result_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = SegmentationAccumulator(3).result(("a", "b", "c"))
    assert math.isnan(r.miou) and math.isnan(r.macc) and math.isnan(r.aacc) and r.num_images == 0
    assert r.to_dict()["miou"] is None
    assert VOCSegmentationTask.headline(r) != VOCSegmentationTask.headline(r)  # NaN


# ---------------------------------------------------------------- the task, end to end


@pytest.fixture(scope="module")
def task() -> VOCSegmentationTask:
    return VOCSegmentationTask()


@pytest.fixture(scope="module")
def devkit(tmp_path_factory, task) -> Path:
    return task.make_synthetic(tmp_path_factory.mktemp("vocseg"), num_images=8, seed=0)


def _gt_maps(dataset, ids) -> dict[str, np.ndarray]:
    return {i: dataset.read_label(i) for i in ids}


def test_task_attributes(task):
    assert task.metric_name == "mIoU" and task.protocols == ("whole",)
    assert task.class_names == VOC_SEG_CLASSES and task.dataset_name == "VOC2012 val"
    with pytest.raises(ValueError, match="ignore_index"):
        VOCSegmentationTask(ignore_index=3)


def test_ground_truth_as_prediction_scores_100(task, devkit):
    dataset = task.open(devkit)
    annotations, skipped = task.load_ground_truth(dataset)
    assert skipped == [] and list(annotations) == dataset.ids
    handle = annotations[dataset.ids[1]]
    assert isinstance(handle, VOCSegGT) and (handle.height, handle.width) == (500, 375)
    gts = _gt_maps(dataset, dataset.ids)
    # Void pixels become background in the prediction: they must not count.
    results = {i: LabelMap(np.where(g == 255, 0, g).astype(np.uint8)) for i, g in gts.items()}
    results["not-in-split"] = LabelMap(np.zeros((3, 3), np.uint8))  # ignored
    r = task.evaluate(results, annotations)
    present = np.unique(np.concatenate([g[g != 255] for g in gts.values()]))
    assert present.size >= 3
    np.testing.assert_array_equal(r.iou[present], 1.0)
    absent = np.setdiff1d(np.arange(21), present)
    assert np.isnan(r.iou[absent]).all()
    assert task.headline(r) == 100.0 and r.aacc == 1.0 and r.num_images == 8


def test_perturbed_prediction_matches_direct_formula(task, devkit):
    dataset = task.open(devkit)
    annotations, _ = task.load_ground_truth(dataset)
    gts = _gt_maps(dataset, dataset.ids)
    rng = np.random.default_rng(1)
    preds = {}
    for i, g in gts.items():
        p = np.where(g == 255, 0, g).astype(np.uint8)
        p = np.roll(p, shift=7, axis=1)  # misplaced boundaries
        noise = rng.random(p.shape) < 0.05
        p[noise] = rng.integers(0, 21, int(noise.sum()))  # and scattered wrong labels
        preds[i] = p
    r = task.evaluate({i: LabelMap(p) for i, p in preds.items()}, annotations)

    # Independent: pool the valid pixels of the split, IoU_c = |P_c & G_c| / |P_c | G_c|.
    g_all = np.concatenate([g.ravel() for g in gts.values()])
    p_all = np.concatenate([preds[i].ravel() for i in gts])
    keep = g_all != 255
    g_all, p_all = g_all[keep], p_all[keep]
    ious = []
    for c in range(21):
        union = np.sum((p_all == c) | (g_all == c))
        if union:
            ious.append(np.sum((p_all == c) & (g_all == c)) / union)
    expected = 100.0 * np.mean(ious)
    assert 20.0 < expected < 99.0
    assert task.headline(r) == pytest.approx(expected, rel=1e-12)
    assert r.aacc == pytest.approx(np.mean(p_all == g_all), rel=1e-12)


def test_evaluate_errors(task, devkit):
    dataset = task.open(devkit)
    annotations, _ = task.load_ground_truth(dataset)
    first = dataset.ids[0]
    good = {i: LabelMap(np.zeros((h.height, h.width), np.uint8)) for i, h in annotations.items()}

    wrong = dict(good)
    wrong[first] = LabelMap(np.zeros((500, 375), np.uint8))
    with pytest.raises(BadInputError, match=rf"{first}\.png.*\(500, 375\).*\(375, 500\)"):
        task.evaluate(wrong, annotations)

    partial = dict(good)
    del partial[first]
    with pytest.raises(ValueError, match=f"no prediction.*{first}"):
        task.evaluate(partial, annotations)

    out_of_range = dict(good)
    out_of_range[first] = LabelMap(np.full((375, 500), 21, np.uint8))
    with pytest.raises(ValueError, match=f"{first}.*outside 0..20"):
        task.evaluate(out_of_range, annotations)

    with pytest.raises(ValueError, match="unknown protocol"):
        task.evaluate(good, annotations, protocol="slide")


def test_skip_bad_and_late_corruption(task, devkit, tmp_path):
    dataset = task.open(Path(shutil.copytree(devkit, tmp_path / "VOCdevkit")))
    ids = dataset.ids
    dataset.label_path(ids[2]).unlink()
    Image.fromarray(np.zeros((375, 500, 3), np.uint8)).save(dataset.label_path(ids[4]))  # RGB rendering
    with pytest.raises(BadInputError, match=rf"{ids[2]}\.png.*not found"):
        task.load_ground_truth(dataset)
    annotations, skipped = task.load_ground_truth(dataset, skip_bad=True)
    assert [s[0] for s in skipped] == [ids[2], ids[4]]
    assert "mode 'RGB'" in skipped[1][1] and f"{ids[4]}.png" in skipped[1][1]
    assert list(annotations) == [i for i in ids if i not in (ids[2], ids[4])]
    r = task.evaluate({i: LabelMap(dataset.read_label(i)) for i in annotations}, annotations)
    assert r.num_images == 6

    # A PNG whose header is fine but whose data is cut short is found when its pixels are read.
    path = dataset.label_path(ids[0])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    results = {i: LabelMap(np.zeros((h.height, h.width), np.uint8)) for i, h in annotations.items()}
    with pytest.raises(BadInputError, match=rf"{ids[0]}\.png.*truncated"):
        task.evaluate(results, annotations)

    # Values that are neither a class nor void.
    write = np.full((375, 500), 42, np.uint8)
    Image.fromarray(write).save(path)
    with pytest.raises(BadInputError, match=rf"{ids[0]}\.png.*\[42\]"):
        task.evaluate(results, annotations)


def test_write_predictions(task, tmp_path):
    rng = np.random.default_rng(2)
    results = {"2012_000001": LabelMap(rng.integers(0, 21, (5, 7)).astype(np.uint8)),
               "2012_000002": LabelMap(rng.integers(0, 21, (9, 4)).astype(np.uint8))}
    folder = task.write_predictions(tmp_path / "run", results)
    assert folder == tmp_path / "run" / "label_maps"
    assert sorted(p.name for p in folder.iterdir()) == ["2012_000001.png", "2012_000002.png"]
    for image_id, label_map in results.items():
        with Image.open(folder / f"{image_id}.png") as image:
            assert image.mode == "P"
        np.testing.assert_array_equal(read_label_png(folder / f"{image_id}.png"), label_map.labels)
