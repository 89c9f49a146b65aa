"""PSPNet through the pipeline: export contract, ONNX Runtime vs PyTorch on a synthetic VOC2012 set (identical
mIoU, batches of one size), results on disk and resume, the fixed 500x500 canvas and vendor dumps."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from deployzoo.export.onnx_export import DEFAULT_DOMAINS

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


@pytest.fixture(scope="module")
def synthetic_voc_seg(tmp_path_factory):
    from deployzoo.data.synthetic_voc_seg import make_synthetic_voc_seg

    # Five images, two of them 375x500: sorted by size they make one full batch of two.
    return make_synthetic_voc_seg(tmp_path_factory.mktemp("voc"), num_images=5, seed=3)


def test_export_uses_standard_ops_and_dynamic_sizes(pspnet_onnx):
    import onnx

    proto = onnx.load(str(pspnet_onnx))
    assert {n.domain for n in proto.graph.node} <= set(DEFAULT_DOMAINS)
    ops = {n.op_type for n in proto.graph.node}
    assert "ReduceMean" in ops and "Resize" in ops and "AveragePool" not in ops
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert inputs == {"image": ["batch", 3, "image_height", "image_width"]}
    outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
    assert outputs == {"seg_logits": ["batch", 21, "seg_logits_dim2", "seg_logits_dim3"]}


@pytest.fixture(scope="module")
def engines(pspnet_spec, pspnet_loaded, pspnet_onnx):
    from deployzoo.pipeline import open_engine

    return {key: open_engine(pspnet_spec, key[0], key[1], onnx_path=pspnet_onnx if key[0] != "pytorch" else None,
                             loaded=pspnet_loaded)
            for key in (("onnxruntime", 1), ("onnxruntime", 2), ("pytorch", 1))}


@pytest.fixture(scope="module")
def outcomes(pspnet_spec, synthetic_voc_seg, engines, tmp_path_factory):
    from deployzoo.pipeline import evaluate_dataset

    root = tmp_path_factory.mktemp("eval")
    calls = {}
    out = {}
    for key, engine in engines.items():
        calls[key] = []

        def infer(feeds, ids, engine=engine, log=calls[key]):
            log.append(list(ids))
            return engine.infer(feeds, ids)

        out[key] = evaluate_dataset(pspnet_spec, synthetic_voc_seg, infer, key[1], root / f"{key[0]}-b{key[1]}",
                                    {"backend": key[0]}, progress=False)
    return out, calls


def _pseudo_ground_truth(dataset_root, results, out_root):
    """A copy of the set whose labels are one engine's predictions: mIoU near 100, so any disagreement shows
    (the stand-in weights score a few percent on the drawn objects)."""
    from deployzoo.data.voc_seg import write_label_png

    shutil.copytree(dataset_root, out_root)
    year_dir = out_root / "VOC2012"
    for image_id, result in results.items():
        write_label_png(year_dir / "SegmentationClass" / f"{image_id}.png", result.labels)
    return out_root


def test_onnxruntime_and_pytorch_give_identical_miou(outcomes, pspnet_spec, synthetic_voc_seg, tmp_path):
    out, _ = outcomes
    reference = out[("pytorch", 1)]
    for key in (("onnxruntime", 1), ("onnxruntime", 2)):
        assert out[key].metrics.num_images == 5
        assert out[key].headline == pytest.approx(reference.headline, abs=1e-9), key
        np.testing.assert_allclose(out[key].metrics.iou, reference.metrics.iou, rtol=0, atol=1e-9)
    task = pspnet_spec.evaluation
    dataset = task.open(_pseudo_ground_truth(synthetic_voc_seg, reference.run.results, tmp_path / "pseudo"))
    annotations, _ = task.load_ground_truth(dataset)
    torch_miou = task.headline(task.evaluate(reference.run.results, annotations))
    assert torch_miou == pytest.approx(100.0)
    for key in (("onnxruntime", 1), ("onnxruntime", 2)):
        assert task.headline(task.evaluate(out[key].run.results, annotations)) > 99.99, key


def test_batches_hold_only_images_of_one_size(outcomes, pspnet_spec, synthetic_voc_seg):
    from deployzoo.data.images import image_size_hw

    _, calls = outcomes
    dataset = pspnet_spec.evaluation.open(synthetic_voc_seg)
    sizes = {i: image_size_hw(dataset.image_path(i)) for i in dataset.ids}
    batches = calls[("onnxruntime", 2)]
    assert max(len(b) for b in batches) == 2, batches
    assert all(len({sizes[i] for i in b}) == 1 for b in batches)


def test_eval_writes_label_maps_predictions_and_resumes(outcomes, pspnet_spec, synthetic_voc_seg, engines):
    from deployzoo.data.voc_seg import read_label_png
    from deployzoo.pipeline import evaluate_dataset

    out, _ = outcomes
    outcome = out[("onnxruntime", 2)]
    records = json.loads((outcome.out_dir / "predictions.json").read_text())
    assert len(records) == 5
    for record in records:
        labels = read_label_png(outcome.out_dir / record["label_map"])
        assert np.array_equal(labels, outcome.run.results[record["image_id"]].labels)
        assert record["file_name"] == record["image_id"] + ".jpg"
        assert sum(record["pixels"].values()) == record["height"] * record["width"]
    metrics = json.loads((outcome.out_dir / "metrics.json").read_text())
    assert metrics["headline"]["metric"] == "mIoU" and metrics["headline"]["published"] == 76.78
    assert "| aAcc | mIoU | mAcc |" in outcome.metrics.table()
    again = evaluate_dataset(pspnet_spec, synthetic_voc_seg, engines[("onnxruntime", 2)].infer, 2, outcome.out_dir,
                             {"backend": "onnxruntime"}, resume=True, progress=False)
    assert again.run.resumed == 5 and again.run.computed == 0 and again.headline == outcome.headline


def test_fixed_canvas_graph_matches_pytorch_and_its_dumps_evaluate(pspnet_loaded, synthetic_voc_seg, tmp_path):
    """The 500x500 variant: fixed shapes (so vendor dumps can be read back) and ORT == PyTorch on it."""
    from deployzoo.data.loader import BadImage, ImageItem, prepared_images
    from deployzoo.data.vendor_bin import write_bin
    from deployzoo.engine import LoadedModel
    from deployzoo.pipeline import dump_infer, evaluate_dataset, open_engine
    from deployzoo.registry import get_spec
    from deployzoo.verify import compare_engines

    spec = get_spec("mmseg-pspnet-r50-d8-voc12aug@500x500")
    loaded = LoadedModel(spec, pspnet_loaded.model, pspnet_loaded.weights, pspnet_loaded.mapping_report)
    engine = open_engine(spec, "onnxruntime", 1, loaded=loaded, work_dir=tmp_path)
    dataset = spec.evaluation.open(synthetic_voc_seg)
    items = [ImageItem(i, str(dataset.image_path(i))) for i in dataset.ids]
    agreement = compare_engines(engine, open_engine(spec, "pytorch", 1, loaded=loaded), items[:2])
    assert agreement.ok, agreement.table()
    for p in prepared_images(items, spec.preprocess, workers=0):
        assert not isinstance(p, BadImage)
        outputs = engine.infer(spec.make_feeds([p.array], [p.meta], 1))
        write_bin(tmp_path / "dumps" / f"{p.image_id}_0.bin", outputs["seg_logits"][0])
    direct = evaluate_dataset(spec, synthetic_voc_seg, engine.infer, 1, tmp_path / "direct", {"e": 1}, progress=False)
    dumped = evaluate_dataset(spec, synthetic_voc_seg, dump_infer(spec, tmp_path / "dumps", dataset.ids), 1,
                              tmp_path / "dumps-eval", {"e": 2}, progress=False)
    assert dumped.headline == direct.headline
    np.testing.assert_array_equal(dumped.metrics.area_intersect, direct.metrics.area_intersect)
