"""COCO AP through pycocotools: ground truth scores 1, perturbations score less, edge cases and formats."""
from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from deployzoo.data.coco import COCO_CATEGORY_IDS, COCO_CLASSES, COCODetection
from deployzoo.data.synthetic_coco import make_synthetic_coco
from deployzoo.eval.coco_eval import STAT_NAMES, evaluate_coco
from deployzoo.ops.mask_paste import decode_rle, encode_rle
from deployzoo.structures import Detections
from deployzoo.tasks.coco_detection import COCODetectionTask

# pycocotools calls np.array(copy=False) on its own objects (annToMask, decode); numpy 2 warns.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

LABEL_OF = {cid: k for k, cid in enumerate(COCO_CATEGORY_IDS)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> COCODetection:
    return COCODetection(make_synthetic_coco(tmp_path_factory.mktemp("coco"), num_images=8, seed=0))


def _gt_detections(ds: COCODetection, score_of=lambda ann: 1.0) -> dict[int, Detections]:
    """The non-crowd ground truth as detections (boxes x1y1x2y2, masks as compressed RLE with str counts)."""
    out = {}
    for image_id in ds.ids:
        anns = [a for a in ds.annotations(image_id) if not a["iscrowd"]]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32).reshape(-1, 4)
        masks = encode_rle(np.stack([ds.coco.annToMask(a).astype(bool) for a in anns])) if anns else []
        out[int(image_id)] = Detections(boxes, np.array([score_of(a) for a in anns], np.float32),
                                        np.array([LABEL_OF[a["category_id"]] for a in anns], np.int64), masks)
    return out


def _evaluate(ds, dets, **kw):
    return evaluate_coco(ds.coco, dets, COCO_CATEGORY_IDS, COCO_CLASSES, **kw)


def test_ground_truth_scores_one(dataset, capsys):
    result = _evaluate(dataset, _gt_detections(dataset))
    assert capsys.readouterr().out == ""  # pycocotools' prints swallowed
    assert result.bbox_ap == pytest.approx(1.0) and result.segm_ap == pytest.approx(1.0)
    for t in ("bbox", "segm"):
        r = result.by_type[t]
        assert len(r.stats) == 12 and len(r.summary) == 12
        assert r.summary[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]")
        assert r.summary[0].endswith("= 1.000")
        assert r.stats[1] == pytest.approx(1.0) and r.stats[8] == pytest.approx(1.0)  # AP50, AR100
    assert result.notes == [] and result.num_images == 8


def test_matches_plain_pycocotools(dataset):
    """Same numbers as the usual loadRes + COCOeval over the results records (bbox dropped for segm)."""
    result = _evaluate(dataset, _gt_detections(dataset, score_of=lambda a: 1.0 / (1 + a["id"] % 5)))
    for iou_type in ("bbox", "segm"):
        records = copy.deepcopy(result.records)
        if iou_type == "segm":
            for r in records:
                r.pop("bbox")
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(dataset.coco, dataset.coco.loadRes(records), iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        np.testing.assert_allclose(result.by_type[iou_type].stats, ev.stats)


def test_perturbed_scores_less(dataset):
    dets = _gt_detections(dataset)
    rng = np.random.default_rng(0)
    for image_id, d in dets.items():
        shift = rng.uniform(-8, 8, size=(len(d), 1)).astype(np.float32)
        d.boxes = d.boxes + shift  # same shift for all four coordinates: boxes move
        masks = decode_rle(d.masks, (dataset.image_info(image_id)["height"], dataset.image_info(image_id)["width"]))
        d.masks = encode_rle(np.roll(masks, 6, axis=2))
    result = _evaluate(dataset, dets)
    assert 0 < result.bbox_ap < 1 and 0 < result.segm_ap < 1
    # Dropping half the detections costs recall, hence AP.
    half = {i: d.select(np.arange(len(d))[::2]) for i, d in _gt_detections(dataset).items()}
    assert _evaluate(dataset, half).bbox_ap < 1


def test_empty_detections(dataset):
    empty = {int(i): Detections.empty(with_masks=True) for i in dataset.ids}
    for dets in (empty, {}):
        result = _evaluate(dataset, dets)
        assert result.bbox_ap == 0.0 and result.segm_ap == 0.0
        assert result.records == [] and "no detections" in result.notes[0]
        assert result.by_type["bbox"].summary[0].endswith("= 0.000")
    none = _evaluate(dataset, {}, image_ids=[])
    assert none.bbox_ap is None and none.num_images == 0
    json.dumps(none.to_dict())


def test_per_category_table(dataset):
    result = _evaluate(dataset, _gt_detections(dataset))
    with_gt = {a["category_id"] for a in dataset.coco.anns.values() if not a["iscrowd"]}
    rows = result.by_type["bbox"].per_category
    assert [r.category_id for r in rows] == list(COCO_CATEGORY_IDS) and [r.name for r in rows] == list(COCO_CLASSES)
    for r in rows:
        if r.category_id in with_gt:
            assert r.ap == pytest.approx(1.0) and r.num_gt > 0 and r.num_detections == r.num_gt
        else:
            assert np.isnan(r.ap) and r.num_gt == 0
    table = result.table()
    assert "**COCO box AP**" in table and "**COCO mask AP**" in table
    assert "| person | 1 |" in table and "| toothbrush |" not in table
    assert f"{80 - len(with_gt)} categories without ground truth or detections not listed" in table
    d = result.to_dict()
    json.dumps(d)
    assert d["iou_types"]["bbox"]["ap"] == pytest.approx(1.0)
    assert set(d["iou_types"]["segm"]["stats"]) == set(STAT_NAMES)
    toothbrush = next(c for c in d["iou_types"]["bbox"]["per_category"] if c["name"] == "toothbrush")
    assert toothbrush["ap"] is None and toothbrush["num_gt"] == 0


def test_records_format_and_subset(dataset):
    dets = _gt_detections(dataset)
    first, second = int(dataset.ids[0]), int(dataset.ids[1])
    subset = {first: dets[first], second: dets[second]}
    result = _evaluate(dataset, subset, image_ids=[first, second])
    assert result.num_images == 2 and result.bbox_ap == pytest.approx(1.0)
    records = result.records
    assert len(records) == len(dets[first]) + len(dets[second])
    json.dumps(records)
    rec = records[0]
    assert set(rec) == {"image_id", "category_id", "bbox", "score", "segmentation"}
    x1, y1, x2, y2 = dets[first].boxes[0].tolist()
    assert rec["image_id"] == first and rec["bbox"] == [x1, y1, x2 - x1, y2 - y1]
    assert rec["category_id"] == COCO_CATEGORY_IDS[int(dets[first].labels[0])]
    assert isinstance(rec["segmentation"]["counts"], str)
    # Only the chosen images count: the others' ground truth is not missed.
    assert result.by_type["bbox"].stats[8] == pytest.approx(1.0)
    boxes_only = _evaluate(dataset, subset, image_ids=[first, second], iou_types=("bbox",))
    assert "segmentation" not in boxes_only.records[0] and boxes_only.segm_ap is None


def test_bad_detections(dataset):
    dets = _gt_detections(dataset)
    first = int(dataset.ids[0])
    with pytest.raises(ValueError, match="not being evaluated"):
        _evaluate(dataset, dets, image_ids=[first])
    with pytest.raises(ValueError, match="not in the ground truth"):
        _evaluate(dataset, {}, image_ids=[123456789])
    no_masks = {first: Detections(dets[first].boxes, dets[first].scores, dets[first].labels)}
    with pytest.raises(ValueError, match="no masks"):
        _evaluate(dataset, no_masks)
    assert _evaluate(dataset, no_masks, iou_types=("bbox",)).bbox_ap > 0
    wrong_size = {first: Detections(dets[first].boxes, dets[first].scores, dets[first].labels,
                                    encode_rle(np.zeros((len(dets[first]), 5, 5), bool)))}
    with pytest.raises(ValueError, match="not the image size"):
        _evaluate(dataset, wrong_size)
    bad_label = {first: Detections(dets[first].boxes, dets[first].scores, dets[first].labels + 80, dets[first].masks)}
    with pytest.raises(ValueError, match="label out of range"):
        _evaluate(dataset, bad_label)


def test_task_evaluate(tmp_path):
    task = COCODetectionTask()
    ds = task.open(task.make_synthetic(tmp_path, num_images=5, seed=4))
    annotations, _ = task.load_ground_truth(ds)
    results = {str(i): d for i, d in _gt_detections(ds).items()}
    kept = {k: v for k, v in list(annotations.items())[:3]}
    result = task.evaluate(results, kept)  # results of the other images are ignored
    assert result.num_images == 3
    assert task.headline(result) == pytest.approx(100.0)
    assert task.results_records(result) is result.records
    assert {r["image_id"] for r in result.records} <= {int(k) for k in kept}
    with pytest.raises(ValueError, match="protocol"):
        task.evaluate(results, kept, protocol="clean")
    nothing = task.evaluate(results, {})
    assert np.isnan(task.headline(nothing)) and "n/a" in nothing.table()
    assert task.metric_name == "COCO box AP" and task.protocols == ("standard",)


def test_written_results_load_back(dataset, tmp_path: Path):
    """The records, written as JSON, are what pycocotools' loadRes reads."""
    result = _evaluate(dataset, _gt_detections(dataset))
    path = tmp_path / "coco_results.json"
    path.write_text(json.dumps(result.records))
    with contextlib.redirect_stdout(io.StringIO()):
        loaded = dataset.coco.loadRes(str(path))
    assert len(loaded.anns) == len(result.records)
