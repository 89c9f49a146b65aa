"""Mask R-CNN through the pipeline: export contract, ONNX Runtime vs PyTorch on a synthetic COCO set, dumps."""
from __future__ import annotations

import json

import numpy as np
import pytest

from deployzoo.export.onnx_export import DEFAULT_DOMAINS

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


@pytest.fixture(scope="module")
def synthetic_coco(tmp_path_factory):
    from deployzoo.data.synthetic_coco import make_synthetic_coco

    return make_synthetic_coco(tmp_path_factory.mktemp("coco"), num_images=3, seed=5)


def test_export_uses_standard_ops_only(mask_rcnn_onnx):
    import onnx

    proto = onnx.load(str(mask_rcnn_onnx))
    assert {n.domain for n in proto.graph.node} <= set(DEFAULT_DOMAINS)
    ops = {n.op_type for n in proto.graph.node}
    assert {"RoiAlign", "NonMaxSuppression", "TopK"} <= ops
    roi_modes = {a.s.decode() for n in proto.graph.node if n.op_type == "RoiAlign" for a in n.attribute
                 if a.name == "coordinate_transformation_mode"}
    assert roi_modes == {"half_pixel"}
    names = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert names == {"image": ["batch", 3, "image_height", "image_width"], "img_hw": ["batch", 2]}
    outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
    assert outputs == {"boxes": ["batch", 100, 4], "scores": ["batch", 100], "labels": ["batch", 100],
                       "num_dets": ["batch"], "masks": ["batch", 100, 28, 28]}


def _evaluate(spec, data, engine, batch, out):
    from deployzoo.pipeline import evaluate_dataset

    return evaluate_dataset(spec, data, engine.infer, batch, out, {"backend": engine.backend.name}, progress=False)


@pytest.fixture(scope="module")
def engines(mask_rcnn_spec, mask_rcnn_loaded, mask_rcnn_onnx):
    from deployzoo.pipeline import open_engine

    return {(backend, batch): open_engine(mask_rcnn_spec, backend, batch, onnx_path=mask_rcnn_onnx if backend != "pytorch" else None,
                                          loaded=mask_rcnn_loaded)
            for backend in ("onnxruntime", "pytorch") for batch in (1, 2)}


@pytest.fixture(scope="module")
def outcomes(mask_rcnn_spec, synthetic_coco, engines, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return {key: _evaluate(mask_rcnn_spec, synthetic_coco, engine, key[1], root / f"{key[0]}-b{key[1]}")
            for key, engine in engines.items()}


def _pseudo_ground_truth(dataset_root, results, out_root):
    """A COCO set whose annotations are one engine's confident detections, so AP is far from 0 and
    sensitive to every disagreement (the stand-in weights score ~0 AP on the drawn objects)."""
    from pycocotools import mask as mask_util

    source = json.loads((dataset_root / "annotations" / "instances_val2017.json").read_text())
    from deployzoo.data.coco import COCO_CATEGORY_IDS

    annotations = []
    for image_id, dets in results.items():
        for k in np.flatnonzero(dets.scores >= 0.2):
            rle = dict(dets.masks[k])
            area = float(mask_util.area({"size": rle["size"], "counts": rle["counts"].encode()}))
            x1, y1, x2, y2 = dets.boxes[k].tolist()
            annotations.append({"id": len(annotations) + 1, "image_id": int(image_id),
                                "category_id": COCO_CATEGORY_IDS[int(dets.labels[k])],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": area, "iscrowd": 0, "segmentation": rle})
    source["annotations"] = annotations
    (out_root / "annotations").mkdir(parents=True)
    (out_root / "annotations" / "instances_val2017.json").write_text(json.dumps(source))
    (out_root / "val2017").symlink_to(dataset_root / "val2017")
    return out_root


@pytest.mark.parametrize("batch", [1, 2])
def test_onnxruntime_and_pytorch_give_identical_ap(batch, outcomes, mask_rcnn_spec, synthetic_coco, tmp_path):
    ort, torch_ = outcomes[("onnxruntime", batch)], outcomes[("pytorch", batch)]
    assert ort.metrics.num_images == torch_.metrics.num_images == 3
    for iou_type in ("bbox", "segm"):
        assert round(ort.metrics.by_type[iou_type].ap, 3) == round(torch_.metrics.by_type[iou_type].ap, 3)
    # Against pseudo ground truth made from PyTorch's detections AP is high, and must still agree.
    task = mask_rcnn_spec.evaluation
    dataset = task.open(_pseudo_ground_truth(synthetic_coco, torch_.run.results, tmp_path / "pseudo"))
    annotations, _ = task.load_ground_truth(dataset)
    ap = {name: task.evaluate(o.run.results, annotations) for name, o in (("ort", ort), ("torch", torch_))}
    for iou_type in ("bbox", "segm"):
        assert ap["torch"].by_type[iou_type].ap > 0.9
        assert round(ap["ort"].by_type[iou_type].ap, 3) == round(ap["torch"].by_type[iou_type].ap, 3)


def test_eval_writes_coco_results_and_summary(outcomes):
    outcome = outcomes[("onnxruntime", 2)]
    records = json.loads((outcome.out_dir / "coco_results.bbox.json").read_text())
    assert records and {"image_id", "category_id", "bbox", "score"} <= set(records[0])
    assert "segmentation" not in records[0] and isinstance(records[0]["image_id"], int)
    masks = json.loads((outcome.out_dir / "coco_results.segm.json").read_text())
    assert len(masks) == len(records) and {"image_id", "category_id", "score", "segmentation"} <= set(masks[0])
    assert "bbox" not in masks[0]  # pycocotools then takes the mask area for small/medium/large
    assert not (outcome.out_dir / "coco_results.json").exists()
    metrics = json.loads((outcome.out_dir / "metrics.json").read_text())
    assert metrics["protocol"] == "standard"
    assert len(outcome.metrics.by_type["bbox"].summary) == 12
    assert "Average Precision" in outcome.metrics.table()


def test_score_and_pycocotools_on_evals_files_give_evals_figures(outcomes, synthetic_coco, tmp_path):
    """`deployzoo score` on eval's detections.json and on its coco_results.<type>.json, and pycocotools run
    directly on the latter, all give eval's 12 stats (bbox and segm)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from deployzoo.cli import main

    outcome = outcomes[("onnxruntime", 2)]
    eval_metrics = json.loads((outcome.out_dir / "metrics.json").read_text())["metrics"]["iou_types"]
    detections = json.loads((outcome.out_dir / "detections.json").read_text())
    assert isinstance(detections[0]["image_id"], int) and detections[0]["file_name"].endswith(".jpg")
    gt_file = synthetic_coco / "annotations" / "instances_val2017.json"
    for name in ("detections.json", "coco_results.segm.json"):
        out = tmp_path / name
        assert main(["score", "--data", str(synthetic_coco), "--predictions", str(outcome.out_dir / name),
                     "--out", str(out)]) == 0
        scored = json.loads((out / "metrics.json").read_text())["metrics"]["iou_types"]
        assert scored["segm"]["stats"] == eval_metrics["segm"]["stats"]
        if name == "detections.json":
            assert scored["bbox"]["stats"] == eval_metrics["bbox"]["stats"]
    for iou_type in ("bbox", "segm"):
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(gt_file))
            ev = COCOeval(gt, gt.loadRes(str(outcome.out_dir / f"coco_results.{iou_type}.json")), iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        ours = eval_metrics[iou_type]["stats"]
        assert [-1.0 if v is None else v for v in ours.values()] == [float(v) for v in ev.stats]


def test_batch_of_two_images_of_different_sizes_matches_pytorch(engines, mask_rcnn_spec, synthetic_coco):
    """Different-sized images share one padded canvas; every clip uses each image's own size."""
    from deployzoo.verify import compare_engines
    from deployzoo.data.loader import ImageItem

    dataset = mask_rcnn_spec.evaluation.open(synthetic_coco)
    sizes = {i: dataset.image_info(i)["height"] / dataset.image_info(i)["width"] for i in dataset.ids}
    assert min(sizes.values()) < 1 < max(sizes.values()), "the synthetic set should mix portrait and landscape"
    items = [ImageItem(i, str(dataset.image_path(i))) for i in dataset.ids]
    agreement = compare_engines(engines[("onnxruntime", 2)], engines[("pytorch", 1)], items)
    assert agreement.ok, agreement.table()
    assert agreement.detections.worst_mask_agreement > 0.999


def test_vendor_dumps_give_the_same_ap(outcomes, engines, mask_rcnn_spec, synthetic_coco, tmp_path):
    """Outputs dumped as <stem>_<k>.bin (labels and num_dets int64) evaluate to the engine's own AP."""
    from deployzoo.data.loader import BadImage, prepared_images
    from deployzoo.data.vendor_bin import write_bin
    from deployzoo.pipeline import dump_infer, evaluate_dataset

    dataset = mask_rcnn_spec.evaluation.open(synthetic_coco)
    engine = engines[("onnxruntime", 1)]
    from deployzoo.data.loader import ImageItem

    items = [ImageItem(i, str(dataset.image_path(i))) for i in dataset.ids]
    for p in prepared_images(items, mask_rcnn_spec.preprocess, workers=0):
        assert not isinstance(p, BadImage)
        outputs = engine.infer(mask_rcnn_spec.make_feeds([p.array], [p.meta], 1))
        for k, name in enumerate(mask_rcnn_spec.output_names):
            write_bin(tmp_path / "dumps" / f"{p.image_id}_{k + 1}.bin", outputs[name][0], outputs[name].dtype)
    infer = dump_infer(mask_rcnn_spec, tmp_path / "dumps", dataset.ids)
    outcome = evaluate_dataset(mask_rcnn_spec, synthetic_coco, infer, 1, tmp_path / "eval", {"engine": "dumps"},
                               progress=False)
    direct = outcomes[("onnxruntime", 1)].metrics
    for iou_type in ("bbox", "segm"):
        assert outcome.metrics.by_type[iou_type].ap == direct.by_type[iou_type].ap
