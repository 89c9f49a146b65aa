"""`deployzoo score` and the scoring path eval shares: COCO results per IoU type equal to pycocotools run
directly on the files written, the predictions contract (file_name + image_id), strict checks of a predictions
file, dataset kinds, --skip-bad's two figures, and faster-coco-eval against pycocotools."""
from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from deployzoo.cli import main
from deployzoo.data.kinds import dataset_kind
from deployzoo.errors import BadInputError

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    from deployzoo.data.synthetic_coco import make_synthetic_coco

    return make_synthetic_coco(tmp_path_factory.mktemp("coco"), num_images=8, seed=5)


def _gt(root: Path) -> dict:
    return json.loads((root / "annotations" / "instances_val2017.json").read_text())


def _coco_results(root: Path, seed: int = 0, masks: bool = True) -> list[dict]:
    """Results made from the ground truth with noise: jittered boxes, masks shifted (so that a mask's area is
    not its box's), wrong-class duplicates and false positives, scores at random."""
    from pycocotools import mask as mask_utils

    gt = _gt(root)
    rng = np.random.default_rng(seed)
    images = {i["id"]: i for i in gt["images"]}
    cat_ids = [c["id"] for c in gt["categories"]]
    out = []
    for ann in gt["annotations"]:
        image = images[ann["image_id"]]
        h, w = image["height"], image["width"]
        seg = ann["segmentation"]
        rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg, list) or isinstance(seg.get("counts"), list) else seg
        mask = mask_utils.decode(mask_utils.merge(rle) if isinstance(rle, list) else rle)
        mask = np.roll(mask, int(rng.integers(-3, 4)), axis=1)
        enc = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        segmentation = {"size": [int(v) for v in enc["size"]], "counts": enc["counts"].decode("ascii")}
        x, y, bw, bh = ann["bbox"]
        for category in (ann["category_id"], int(rng.choice(cat_ids))):
            record = {"image_id": ann["image_id"], "category_id": category,
                      "bbox": [x + float(rng.normal(0, 2)), y + float(rng.normal(0, 2)),
                               bw * float(rng.uniform(0.85, 1.1)), bh * float(rng.uniform(0.85, 1.1))],
                      "score": float(rng.uniform())}
            if masks:
                record["segmentation"] = segmentation
            out.append(record)
    return out


def _pycocotools_stats(gt_file: Path, results_file: Path, iou_type: str) -> list[float]:
    """pycocotools on the files as they are, the way its own demo scores them."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        dt = gt.loadRes(str(results_file))
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


def _metrics_stats(metrics: dict, iou_type: str) -> list[float]:
    stats = metrics["metrics"]["iou_types"][iou_type]["stats"]
    return [-1.0 if stats[name] is None else stats[name] for name in STATS]


def test_score_equals_pycocotools_run_directly_on_the_files_it_writes(coco_root, tmp_path, capsys):
    """bbox and segm: all 12 stats of `deployzoo score` are pycocotools' on coco_results.<type>.json."""
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_coco_results(coco_root)))
    out = tmp_path / "score"
    assert main(["score", "--data", str(coco_root), "--predictions", str(results), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "COCO box AP (standard protocol, pycocotools)" in text and "| category | id | GT |" in text
    metrics = json.loads((out / "metrics.json").read_text())
    gt_file = coco_root / "annotations" / "instances_val2017.json"
    for iou_type in ("bbox", "segm"):
        written = out / f"coco_results.{iou_type}.json"
        records = json.loads(written.read_text())
        assert ("segmentation" in records[0]) == (iou_type == "segm") and ("bbox" in records[0]) == (iou_type == "bbox")
        assert _metrics_stats(metrics, iou_type) == _pycocotools_stats(gt_file, written, iou_type)
    # boxes are scored as given: pycocotools on the user's own file agrees for bbox too
    assert _metrics_stats(metrics, "bbox") == _pycocotools_stats(gt_file, results, "bbox")
    # the old single file (bbox and segmentation in one record) makes pycocotools use box areas for segm
    combined = _pycocotools_stats(gt_file, results, "segm")
    assert combined[:3] == _metrics_stats(metrics, "segm")[:3] and combined != _metrics_stats(metrics, "segm")
    assert metrics["predictions_format"] == "COCO results" and metrics["dataset_kind"] == "coco"


def test_our_contract_scores_like_the_coco_results_it_holds(coco_root, tmp_path):
    """The same detections as predictions.json records (file_name, category, no image_id) score the same."""
    gt = _gt(coco_root)
    names = {i["id"]: i["file_name"] for i in gt["images"]}
    categories = {c["id"]: c["name"] for c in gt["categories"]}
    results = _coco_results(coco_root, seed=1)
    contract = [{"file_name": names[r["image_id"]], "path": f"somewhere/{names[r['image_id']]}",
                 "category": categories[r["category_id"]], **{k: v for k, v in r.items() if k != "image_id"}}
                for r in results]
    (tmp_path / "coco.json").write_text(json.dumps(results))
    (tmp_path / "predictions.json").write_text(json.dumps(contract))
    for name in ("coco", "predictions"):
        assert main(["score", "--data", str(coco_root), "--predictions", str(tmp_path / f"{name}.json"),
                     "--out", str(tmp_path / f"out-{name}")]) == 0
    a, b = (json.loads((tmp_path / f"out-{n}" / "metrics.json").read_text()) for n in ("coco", "predictions"))
    assert a["metrics"] == b["metrics"] and b["predictions_format"] == "predictions contract"


def test_box_only_results_score_box_ap_only(coco_root, tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(_coco_results(coco_root, masks=False)))
    assert main(["score", "--data", str(coco_root), "--predictions", str(tmp_path / "r.json"),
                 "--out", str(tmp_path / "o")]) == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert list(metrics["metrics"]["iou_types"]) == ["bbox"]
    assert not (tmp_path / "o" / "coco_results.segm.json").exists()


def _mutations(coco_root: Path):
    gt = _gt(coco_root)
    first_id = gt["images"][0]["id"]
    h = gt["images"][0]["height"]
    return {
        "unknown image id": (lambda r: r[0].update(image_id=987654), "image_id 987654 is not an image"),
        "string image id": (lambda r: r[0].update(image_id=str(first_id)), "must be the COCO integer id"),
        "unknown file name": (lambda r: (r[0].pop("image_id"), r[0].update(file_name="nope.jpg")),
                              "file_name 'nope.jpg' is not an image file"),
        "unknown category": (lambda r: r[3].update(category_id=12), "category_id 12 is not a category"),
        "missing score": (lambda r: r[2].pop("score"), "record 2: missing 'score'"),
        "no image": (lambda r: r[1].pop("image_id"), "record 1: no 'image_id' or 'file_name'"),
        "NaN box": (lambda r: r[4]["bbox"].__setitem__(1, float("nan")), "record 4: bbox"),
        "infinite score": (lambda r: r[0].update(score=float("inf")), "is not a finite number"),
        "negative width": (lambda r: r[0]["bbox"].__setitem__(2, -1.0), "negative width"),
        "mask of another size": (lambda r: r[0]["segmentation"].update(size=[h + 1, 5]), "not the image size"),
        "some masks only": (lambda r: r[5].pop("segmentation"), "either every record has a mask or none"),
        "polygon mask": (lambda r: [x.update(segmentation=[[0, 0, 5, 0, 5, 5]]) for x in r],
                         "compressed COCO RLE"),
    }


@pytest.mark.parametrize("case", ["unknown image id", "string image id", "unknown file name", "unknown category",
                                  "missing score", "no image", "NaN box", "infinite score", "negative width",
                                  "mask of another size", "some masks only", "polygon mask"])
def test_a_bad_predictions_file_is_named_with_its_problem(coco_root, tmp_path, capsys, case):
    records = _coco_results(coco_root)
    mutate, expected = _mutations(coco_root)[case]
    mutate(records)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(records))  # NaN/Infinity written as JSON's non-standard literals
    assert main(["score", "--data", str(coco_root), "--predictions", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and expected in err, err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_not_a_results_list_is_named(coco_root, tmp_path, capsys):
    gt_file = coco_root / "annotations" / "instances_val2017.json"
    assert main(["score", "--data", str(coco_root), "--predictions", str(gt_file), "--out", str(tmp_path)]) == 2
    assert "ground-truth" in capsys.readouterr().err
    (tmp_path / "x.json").write_text("[1, 2")
    assert main(["score", "--data", str(coco_root), "--predictions", str(tmp_path / "x.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_dataset_kind_is_recognised_from_the_layout(coco_root, synthetic_voc, tmp_path):
    from deployzoo.data.synthetic_voc_seg import make_synthetic_voc_seg

    seg = make_synthetic_voc_seg(tmp_path / "seg", num_images=2)
    assert dataset_kind(coco_root) == "coco"
    assert dataset_kind(synthetic_voc) == dataset_kind(synthetic_voc / "VOC2007") == "voc07"
    assert dataset_kind(seg) == dataset_kind(seg.parent) == "voc12seg"
    with pytest.raises(BadInputError, match="no dataset layout recognised"):
        dataset_kind(tmp_path / "seg" / "VOCdevkit" / "VOC2012" / "JPEGImages")
    both = tmp_path / "both"
    shutil.copytree(seg, both / "VOCdevkit")
    shutil.copytree(synthetic_voc / "VOC2007", both / "VOCdevkit" / "VOC2007")
    with pytest.raises(BadInputError, match="more than one dataset .voc07, voc12seg.: say which with --dataset"):
        dataset_kind(both)


def _voc_detections(synthetic_voc: Path, seed: int = 0):
    """Detections from the ground truth with noise (float32 corners, as an engine gives them)."""
    from deployzoo.structures import Detections
    from deployzoo.tasks.voc_detection import VOCDetectionTask

    task = VOCDetectionTask()
    dataset = task.open(synthetic_voc)
    annotations, _ = task.load_ground_truth(dataset)
    rng = np.random.default_rng(seed)
    out = {}
    for key, ann in annotations.items():
        boxes = np.concatenate([ann.boxes - 1 + rng.normal(0, 3, ann.boxes.shape), [[5, 5, 60, 40]]])
        labels = np.concatenate([ann.labels, [int(rng.integers(20))]])
        scores = rng.uniform(size=len(labels))
        scores[0] = 0.5  # a tie across images
        out[key] = Detections(boxes.astype(np.float32), scores.astype(np.float32), labels.astype(np.int64))
    return task, dataset, annotations, out


def test_voc_predictions_contract_scores_like_the_detections_it_holds(synthetic_voc, tmp_path):
    from deployzoo.predictions import records_for, write_predictions
    from deployzoo.score import score_predictions

    task, dataset, annotations, dets = _voc_detections(synthetic_voc)
    spec_like = type("S", (), {"class_names": task.class_names, "category_ids": None})
    records = records_for(spec_like, [(dataset.image_path(k).name, d) for k, d in dets.items()])
    write_predictions(tmp_path / "predictions.json", records)
    for protocol in task.protocols:
        assert main(["score", "--data", str(synthetic_voc), "--predictions", str(tmp_path / "predictions.json"),
                     "--protocol", protocol, "--out", str(tmp_path / protocol)]) == 0
        metrics = json.loads((tmp_path / protocol / "metrics.json").read_text())
        direct = score_predictions(task, dets, annotations, protocol=protocol)
        assert metrics["headline"]["value"] == pytest.approx(direct.headline, abs=1e-12)
        assert metrics["metrics"] == json.loads(json.dumps(direct.metrics.to_dict()))
        assert metrics["dataset_kind"] == "voc07" and metrics["protocol"] == protocol


def test_segmentation_label_maps_score(tmp_path):
    from deployzoo.data.synthetic_voc_seg import make_synthetic_voc_seg
    from deployzoo.data.voc_seg import read_label_png
    from deployzoo.predictions import LABEL_MAP_DIR, write_label_maps
    from deployzoo.structures import LabelMap
    from deployzoo.tasks.voc_segmentation import VOCSegmentationTask

    root = make_synthetic_voc_seg(tmp_path / "seg", num_images=3, seed=2)
    task = VOCSegmentationTask()
    dataset = task.open(root)
    annotations, _ = task.load_ground_truth(dataset)
    rng = np.random.default_rng(0)
    preds = {}
    for key, handle in annotations.items():
        labels = read_label_png(handle.label_path).copy()
        labels[labels == 255] = 0
        labels[: labels.shape[0] // 3] = rng.integers(0, 21)  # a band of one wrong class
        preds[key] = LabelMap(labels)
    out = tmp_path / "pred"
    write_label_maps(out, preds.items(), list(preds))
    records = [{"file_name": dataset.image_path(k).name, "image_id": k, "label_map": f"{LABEL_MAP_DIR}/{k}.png",
                "height": p.labels.shape[0], "width": p.labels.shape[1]} for k, p in preds.items()]
    (out / "predictions.json").write_text(json.dumps(records))
    assert main(["score", "--data", str(root), "--predictions", str(out / "predictions.json")]) == 0
    metrics = json.loads((out / "score" / "metrics.json").read_text())
    expected = task.evaluate(preds, annotations)
    assert metrics["headline"]["value"] == pytest.approx(100 * expected.miou, abs=1e-12)
    # a label map missing for one image is named
    (out / "predictions.json").write_text(json.dumps(records[1:]))
    with pytest.raises(BadInputError, match="no label map for 1 image"):
        from deployzoo.score import score_file

        score_file(root, out / "predictions.json", tmp_path / "x")


def test_skipped_images_give_both_figures(synthetic_voc, coco_root):
    """Counted as missed = scored over every image with no detections on the skipped ones."""
    from deployzoo.score import policy_lines, score_predictions, scores_summary
    from deployzoo.structures import Detections

    task, _, annotations, dets = _voc_detections(synthetic_voc, seed=4)
    skipped = list(annotations)[:2]
    kept = {k: a for k, a in annotations.items() if k not in skipped}
    scores = score_predictions(task, dets, kept, skipped=skipped,
                               skipped_annotations={k: annotations[k] for k in skipped})
    empty = {**dets, **{k: Detections.empty() for k in skipped}}
    assert scores.missed_headline == score_predictions(task, empty, annotations).headline
    assert scores.headline == score_predictions(task, dets, kept).headline
    assert scores.missed_headline < scores.headline
    summary = {"headline": {"metric": task.metric_name}, **scores_summary(task, scores)}
    policy = summary["skipped_images_policy"]
    assert policy["comparable_to_published"] is False and policy["images_skipped"] == 2
    lines = policy_lines(summary)
    assert "2 images skipped" in lines[0] and f"{scores.missed_headline:.2f}" in lines[0]
    assert "NOT comparable to the published figure" in lines[1]
    # --skip-bad with nothing skipped: the policy is recorded, one figure, comparable
    clean = score_predictions(task, dets, annotations, skip_bad=True)
    summary = {"headline": {"metric": task.metric_name}, **scores_summary(task, clean)}
    policy = summary["skipped_images_policy"]
    assert policy["images_skipped"] == 0 and policy["comparable_to_published"] is True
    assert policy["skipped_excluded"] == policy["skipped_counted_as_missed"] == clean.headline
    assert "no image was skipped" in policy_lines(summary)[0]
    assert "skipped_images_policy" not in scores_summary(task, score_predictions(task, dets, annotations))


def test_eval_writes_the_contract_and_score_reproduces_it(tmp_path, refinedet_spec, refinedet_loaded, synthetic_voc):
    """eval's detections.json: file_name is the file, image_id the dataset's id; `score` on it gives eval's
    figures; --skip-bad records both figures; --resume and the skipped image still work."""
    from deployzoo.pipeline import evaluate_dataset, open_engine
    from deployzoo.score import policy_lines

    root = tmp_path / "VOCdevkit"
    shutil.copytree(synthetic_voc, root)
    (root / "VOC2007" / "JPEGImages" / "000004.jpg").unlink()
    out = tmp_path / "eval"
    engine = open_engine(refinedet_spec, "pytorch", 4, loaded=refinedet_loaded)

    def run(resume: bool = False):
        return evaluate_dataset(refinedet_spec, root, engine.infer, 4, out, {"backend": "pytorch"}, skip_bad=True,
                                resume=resume, workers=0, progress=False)

    outcome = run()
    metrics = json.loads((out / "metrics.json").read_text())
    policy = metrics["skipped_images_policy"]
    assert policy["images_skipped"] == 1 and policy["comparable_to_published"] is False
    assert policy["skipped_excluded"] == metrics["headline"]["value"] == outcome.headline
    assert policy["skipped_counted_as_missed"] <= policy["skipped_excluded"]
    assert "NOT comparable" in policy_lines(metrics)[1]
    detections = json.loads((out / "detections.json").read_text())
    assert {d["image_id"] for d in detections} <= {"000001", "000002", "000003", "000005", "000006", "000007"}
    assert all(d["file_name"] == d["image_id"] + ".jpg" for d in detections)
    assert main(["score", "--data", str(root), "--predictions", str(out / "detections.json"),
                 "--protocol", metrics["protocol"], "--out", str(tmp_path / "score")]) == 0
    scored = json.loads((tmp_path / "score" / "metrics.json").read_text())
    # score takes every image of the split: 000004 (no detections here) counts as missed, as eval's second figure
    assert scored["headline"]["value"] == pytest.approx(policy["skipped_counted_as_missed"], abs=1e-12)
    again = run(resume=True)
    assert again.run.resumed == 6 and again.run.computed == 0
    assert json.loads((out / "metrics.json").read_text())["skipped_images_policy"] == policy


def test_faster_coco_eval_gives_pycocotools_figures(coco_root, tmp_path):
    """12 stats and per-class APs, bbox and segm, on a generated set (skipped where it is not installed)."""
    pytest.importorskip("faster_coco_eval", reason="faster-coco-eval not installed (pip install 'deployzoo[fastcoco]')")
    from deployzoo.data.coco import COCODetection
    from deployzoo.eval.coco_eval import evaluate_coco_records

    coco = COCODetection(coco_root).coco
    ids = [c["id"] for c in coco.dataset["categories"]]
    names = [c["name"] for c in coco.dataset["categories"]]
    for seed in (0, 1):
        records = _coco_results(coco_root, seed=seed)
        ref = evaluate_coco_records(coco, records, ids, names, ("bbox", "segm"))
        fast = evaluate_coco_records(coco, records, ids, names, ("bbox", "segm"), evaluator="faster-coco-eval")
        for t in ("bbox", "segm"):
            assert fast.by_type[t].stats == pytest.approx(ref.by_type[t].stats, abs=1e-12)
            a = [c.ap for c in ref.by_type[t].per_category]
            b = [c.ap for c in fast.by_type[t].per_category]
            assert all((math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, abs=1e-12) for x, y in zip(a, b))
    out = tmp_path / "o"
    (tmp_path / "r.json").write_text(json.dumps(_coco_results(coco_root)))
    assert main(["score", "--data", str(coco_root), "--predictions", str(tmp_path / "r.json"),
                 "--coco-evaluator", "faster-coco-eval", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["coco_evaluator"] == "faster-coco-eval"


def test_a_segm_results_file_without_boxes_scores_mask_ap(coco_root, tmp_path):
    """eval's coco_results.segm.json holds no bbox: score gives mask AP alone, equal to pycocotools on it."""
    results = tmp_path / "r.json"
    results.write_text(json.dumps(_coco_results(coco_root, seed=2)))
    assert main(["score", "--data", str(coco_root), "--predictions", str(results), "--out", str(tmp_path / "a")]) == 0
    segm_file = tmp_path / "a" / "coco_results.segm.json"
    assert main(["score", "--data", str(coco_root), "--predictions", str(segm_file), "--out", str(tmp_path / "b")]) == 0
    both, masks = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("a", "b"))
    assert list(masks["metrics"]["iou_types"]) == ["segm"] and masks["headline"]["metric"] == "COCO mask AP"
    assert masks["metrics"]["iou_types"]["segm"] == both["metrics"]["iou_types"]["segm"]
    assert _metrics_stats(masks, "segm") == _pycocotools_stats(coco_root / "annotations" / "instances_val2017.json",
                                                               segm_file, "segm")


def test_score_needs_only_the_ground_truth_not_the_images(coco_root, synthetic_voc, tmp_path):
    coco = tmp_path / "coco"
    shutil.copytree(coco_root / "annotations", coco / "annotations")
    (tmp_path / "r.json").write_text(json.dumps(_coco_results(coco_root, masks=False)))
    assert main(["score", "--data", str(coco), "--predictions", str(tmp_path / "r.json"), "--out", str(tmp_path / "a")]) == 0
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    for part in ("Annotations", "ImageSets"):
        shutil.copytree(synthetic_voc / "VOC2007" / part, voc / part)
    (tmp_path / "v.json").write_text("[]")  # no detections at all: every class with ground truth scores 0
    assert main(["score", "--data", str(tmp_path / "VOCdevkit"), "--predictions", str(tmp_path / "v.json"),
                 "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["headline"]["value"] == 0.0


def test_score_a_voc_format_set_of_your_own_classes(synthetic_voc, tmp_path, capsys):
    """--classes: a VOC-format set whose objects are named from its own list scores like the task built for it."""
    from deployzoo.predictions import records_for, write_predictions
    from deployzoo.score import score_predictions
    from deployzoo.tasks.custom import CustomVOCTask

    names = ("boat", "car", "bus")
    root = CustomVOCTask(class_names=names).make_synthetic(tmp_path / "voc", num_images=4, seed=3)
    task = CustomVOCTask(class_names=names, protocol="voc-devkit")
    dataset = task.open(root)
    annotations, _ = task.load_ground_truth(dataset)
    rng = np.random.default_rng(0)
    from deployzoo.structures import Detections

    dets = {k: Detections((a.boxes - 1 + rng.normal(0, 3, a.boxes.shape)).astype(np.float32),
                          rng.uniform(size=len(a.labels)).astype(np.float32), a.labels.astype(np.int64))
            for k, a in annotations.items()}
    spec_like = type("S", (), {"class_names": names, "category_ids": None})
    write_predictions(tmp_path / "p.json", records_for(spec_like, [(dataset.image_path(k).name, d)
                                                                   for k, d in dets.items()]))
    args = ["score", "--data", str(root), "--predictions", str(tmp_path / "p.json"), "--protocol", "voc-devkit"]
    assert main(args + ["--out", str(tmp_path / "without")]) == 2  # the 20 VOC classes do not name them
    assert "boat" in capsys.readouterr().err
    assert main(args + ["--classes", ",".join(names), "--out", str(tmp_path / "o")]) == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    direct = score_predictions(task, dets, annotations, protocol="voc-devkit")
    assert metrics["headline"]["value"] == pytest.approx(direct.headline, abs=1e-12) and direct.headline > 0
    assert [r.get("name", r.get("class")) for r in metrics["metrics"]["per_class"]] == list(names)


def test_score_a_coco_file_outside_the_val2017_layout_with_its_own_ids(coco_root, tmp_path):
    """--annotations: any place, non-contiguous category ids; equal to pycocotools on the same files."""
    gt = _gt(coco_root)
    used = sorted({a["category_id"] for a in gt["annotations"]})[:3]
    new_id = {c: i for c, i in zip(used, (3, 17, 42))}
    gt["annotations"] = [dict(a, category_id=new_id[a["category_id"]]) for a in gt["annotations"]
                         if a["category_id"] in new_id]
    gt["categories"] = [dict(c, id=new_id[c["id"]]) for c in gt["categories"] if c["id"] in new_id]
    gt_file = tmp_path / "labels" / "mine.json"
    gt_file.parent.mkdir()
    gt_file.write_text(json.dumps(gt))
    results = [dict(r, category_id=new_id[r["category_id"]]) for r in _coco_results(coco_root, masks=False)
               if r["category_id"] in new_id]
    (tmp_path / "r.json").write_text(json.dumps(results))
    assert main(["score", "--data", str(tmp_path), "--annotations", str(gt_file), "--predictions",
                 str(tmp_path / "r.json"), "--out", str(tmp_path / "o")]) == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["dataset_kind"] == "coco"
    assert _metrics_stats(metrics, "bbox") == _pycocotools_stats(gt_file, tmp_path / "r.json", "bbox")
