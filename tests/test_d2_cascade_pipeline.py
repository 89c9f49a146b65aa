"""Cascade Mask R-CNN through the pipeline: standard-op export, ONNX Runtime vs PyTorch AP on a synthetic COCO set."""
from __future__ import annotations

import json

import numpy as np
import pytest

from deployzoo.export.onnx_export import DEFAULT_DOMAINS

pytest_plugins = ["d2_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.heavy]


@pytest.fixture(scope="module")
def synthetic_coco(tmp_path_factory):
    from deployzoo.data.synthetic_coco import make_synthetic_coco

    return make_synthetic_coco(tmp_path_factory.mktemp("coco"), num_images=3, seed=5)


def test_export_uses_standard_ops_only(d2_onnx):
    import onnx

    proto = onnx.load(str(d2_onnx))
    assert {n.domain for n in proto.graph.node} <= set(DEFAULT_DOMAINS)
    ops = {n.op_type for n in proto.graph.node}
    assert {"RoiAlign", "NonMaxSuppression", "TopK", "Softmax"} <= ops
    roi_modes = {a.s.decode() for n in proto.graph.node if n.op_type == "RoiAlign" for a in n.attribute
                 if a.name == "coordinate_transformation_mode"}
    assert roi_modes == {"half_pixel"}  # ROIAlignV2 = aligned=True
    names = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert names == {"image": ["batch", 3, "image_height", "image_width"], "img_hw": ["batch", 2]}
    outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
    assert outputs == {"boxes": ["batch", 100, 4], "scores": ["batch", 100], "labels": ["batch", 100],
                       "num_dets": ["batch"], "masks": ["batch", 100, 28, 28]}


@pytest.fixture(scope="module")
def outcomes(d2_spec, d2_loaded, d2_onnx, synthetic_coco, tmp_path_factory):
    """Both engines at batch 2: the synthetic set mixes portrait and landscape, so a batch shares a padded
    canvas and every clip must use each image's own size."""
    from deployzoo.pipeline import evaluate_dataset, open_engine

    root = tmp_path_factory.mktemp("eval")
    results = {}
    for backend in ("onnxruntime", "pytorch"):
        engine = open_engine(d2_spec, backend, 2, onnx_path=d2_onnx if backend != "pytorch" else None, loaded=d2_loaded)
        results[backend] = evaluate_dataset(d2_spec, synthetic_coco, engine.infer, 2, root / backend,
                                            {"backend": backend}, progress=False)
    return results


def _pseudo_ground_truth(dataset_root, results, out_root):
    """A COCO set whose annotations are one engine's most confident detections, so AP is high and
    sensitive to every disagreement (the stand-in weights score ~0 AP on the drawn objects)."""
    from pycocotools import mask as mask_util

    from deployzoo.data.coco import COCO_CATEGORY_IDS

    source = json.loads((dataset_root / "annotations" / "instances_val2017.json").read_text())
    # One threshold for the whole set (the 60 best detections), so no non-ground-truth detection outranks one.
    threshold = np.sort(np.concatenate([d.scores for d in results.values()]))[::-1][:60][-1]
    annotations = []
    for image_id, dets in results.items():
        for k in np.flatnonzero(dets.scores >= threshold):
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


def test_onnxruntime_and_pytorch_give_identical_ap(outcomes, d2_spec, synthetic_coco, tmp_path):
    ort, torch_ = outcomes["onnxruntime"], outcomes["pytorch"]
    assert ort.metrics.num_images == torch_.metrics.num_images == 3
    for iou_type in ("bbox", "segm"):
        assert round(ort.metrics.by_type[iou_type].ap, 3) == round(torch_.metrics.by_type[iou_type].ap, 3)
    # Against pseudo ground truth made from PyTorch's detections AP is high, and must still agree.
    task = d2_spec.evaluation
    dataset = task.open(_pseudo_ground_truth(synthetic_coco, torch_.run.results, tmp_path / "pseudo"))
    annotations, _ = task.load_ground_truth(dataset)
    ap = {name: task.evaluate(o.run.results, annotations) for name, o in (("ort", ort), ("torch", torch_))}
    # The stand-in's detections are ~10 px boxes whose pasted masks hold a few pixels, some none: an empty
    # mask matches nothing, not even itself, which bounds segm AP (0.61 here) well below box AP (1.0).
    assert ap["torch"].by_type["bbox"].ap > 0.9 and ap["torch"].by_type["segm"].ap > 0.5
    for iou_type in ("bbox", "segm"):
        assert round(ap["ort"].by_type[iou_type].ap, 3) == round(ap["torch"].by_type[iou_type].ap, 3)


def test_eval_writes_coco_results_with_masks(outcomes):
    outcome = outcomes["onnxruntime"]
    records = json.loads((outcome.out_dir / "coco_results.bbox.json").read_text())
    assert records and {"image_id", "category_id", "bbox", "score"} <= set(records[0])
    masks = json.loads((outcome.out_dir / "coco_results.segm.json").read_text())
    assert len(masks) == len(records) and "segmentation" in masks[0] and "bbox" not in masks[0]
    assert all(r["bbox"][2] > 0 and r["bbox"][3] > 0 for r in records)  # detector_postprocess drops empty boxes
    assert "Average Precision" in outcome.metrics.table()
