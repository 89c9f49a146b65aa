"""OpenVINO against ONNX Runtime on the same exported graph, for every model in the zoo, under the
project's fidelity rules (deployzoo.compare: outputs within 1e-4 relative, detections matched one to one
with IoU > 0.999 and |score difference| < 1e-4, masks, label maps identical except near-ties).

Also the two tie rules the graphs need: our top-k keeps equal values lowest index first in every engine
(ops/topk.py), and NonMaxSuppression suppresses only at IoU strictly above the threshold (OpenVINO's
suppresses at equality; the backend corrects it, ``openvino_backend.make_nms_strict``).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from deployzoo.registry import model_names

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'deployzoo[openvino]')")

from deployzoo.backends.onnxruntime_backend import OnnxRuntimeBackend
from deployzoo.backends.openvino_backend import OpenVINOBackend

pytest_plugins = ["d2_fixtures"]

# Model -> the session fixtures of its model (fixture weights) and its dynamic export, shared with the
# other tests so nothing is exported twice; batch size of the engines (PSPNet batches one size at a time).
CASES = {
    "refinedet320-vgg16-voc": ("refinedet_loaded", "refinedet_onnx", 2),
    "mmdet-mask-rcnn-r50-fpn-1x": ("mask_rcnn_loaded", "mask_rcnn_onnx", 2),
    "d2-cascade-mask-rcnn-r50-fpn-3x": ("d2_loaded", "d2_onnx", 2),
    "mmdet-fsaf-r50-fpn-1x": ("fsaf_a_loaded", "fsaf_a_onnx", 2),
    "mmdet-fsaf-r50-fpn-1x-v3post": ("fsaf_loaded", "fsaf_onnx", 2),
    "mmseg-pspnet-r50-d8-voc12aug": ("pspnet_loaded", "pspnet_onnx", 1),
    "mmseg-pspnet-r50-d8-voc12aug-labels": ("pspnet_labels_loaded", "pspnet_labels_onnx", 1),
}
LIGHT = {"refinedet320-vgg16-voc"}  # seconds; the others build a ResNet-50 model and export it
# Synthetic images per model: seed 5 is the pipeline tests' COCO set. Seed 0's COCO image 340 would fail
# Mask R-CNN for any two engines (ONNX Runtime against PyTorch too): its uniformly filled rectangle gives
# a plateau of RPN anchors whose scores are equal in exact arithmetic and differ by 0-4 float32 ulps of
# convolution rounding, differently in every engine, so greedy NMS keeps other proposals there and 7 to 12
# of the image's 100 detections differ. That is a genuine near-tie which no ordering rule removes.
NUM_IMAGES = 2
SEED = 5


@pytest.fixture(scope="module")
def synthetic_items(tmp_path_factory):
    """task adapter -> ImageItems of a small synthetic set in that task's official layout, made once."""
    from deployzoo.data.loader import ImageItem

    made: dict[str, list] = {}

    def items(spec) -> list:
        key = type(spec.evaluation).__name__ + spec.dataset
        if key not in made:
            root = spec.evaluation.make_synthetic(tmp_path_factory.mktemp("synthetic"), num_images=NUM_IMAGES, seed=SEED)
            dataset = spec.evaluation.open(root)
            made[key] = [ImageItem(i, str(dataset.image_path(i))) for i in dataset.ids]
        return made[key]

    return items


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in LIGHT else (pytest.mark.slow, pytest.mark.heavy))
                                  for n in model_names()])
def test_openvino_agrees_with_onnxruntime(name, request, synthetic_items):
    from deployzoo.pipeline import open_engine
    from deployzoo.verify import compare_engines

    if name not in CASES:
        pytest.fail(f"{name} is in the zoo but has no OpenVINO agreement case: add its fixtures to CASES")
    loaded_fixture, onnx_fixture, batch = CASES[name]
    loaded = request.getfixturevalue(loaded_fixture)
    onnx_path = request.getfixturevalue(onnx_fixture)
    spec = loaded.spec
    assert spec.name == name
    start = time.perf_counter()  # the shared model and export are not counted
    engine = open_engine(spec, "openvino", batch, onnx_path=onnx_path, loaded=loaded)
    reference = open_engine(spec, "onnxruntime", batch, onnx_path=onnx_path, loaded=loaded)
    agreement = compare_engines(engine, reference, synthetic_items(spec))
    print(f"{name}: OpenVINO vs ONNX Runtime, batch {batch}, engines built and compared in "
          f"{time.perf_counter() - start:.1f} s\n{agreement.table()}")
    assert agreement.ok, agreement.table()
    assert agreement.images == NUM_IMAGES
    if agreement.labels is None:
        assert agreement.detections.matched > 0  # something was compared


# ---------------------------------------------------------------------------------------------------
# The tie rules on small graphs: OpenVINO (through the backend) against ONNX Runtime and numpy.


def _one_node_model(path: Path, node, inputs, outputs, initializers=()) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph([node], "g", inputs, outputs, initializer=list(initializers))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


@pytest.mark.parametrize("k", [5, 1000])
def test_topk_keeps_equal_values_lowest_index_first(tmp_path, k):
    """Our exported top-k, on rows with ~250 copies of each value and -inf padding: every engine picks
    and orders ties as a stable sort does (OpenVINO's own TopK would not, see ops/topk.py)."""
    import torch

    from deployzoo.ops.topk import topk_clamped

    class TopK(torch.nn.Module):
        def forward(self, x):
            return topk_clamped(x, k, dim=1)

    path = tmp_path / "topk.onnx"
    torch.onnx.export(TopK(), (torch.zeros(2, 50),), str(path), input_names=["x"], output_names=["values", "indices"],
                      dynamic_axes={"x": {1: "n"}}, opset_version=17, dynamo=False)
    rng = np.random.default_rng(0)
    for n in (3, 5000):
        x = (rng.integers(0, 20, (2, n)) / 20).astype(np.float32)
        x[1, n // 2:] = -np.inf
        expected = np.argsort(-x, axis=1, kind="stable")[:, :k]
        for backend in (OnnxRuntimeBackend(path, batch_size=2), OpenVINOBackend(path, batch_size=2)):
            out = backend.infer({"x": x})
            assert np.array_equal(out["indices"], expected), backend.name
            assert np.array_equal(out["values"], np.take_along_axis(x, expected, 1)), backend.name


@pytest.mark.parametrize("iou_threshold", [0.5, 0.6, 0.7])
def test_nms_suppresses_only_above_the_threshold(tmp_path, iou_threshold):
    """Boxes on a coarse grid have many IoUs exactly at the threshold (a box and its left half: 0.5)."""
    from onnx import TensorProto, helper

    from deployzoo.ops.batched_nms import _keep_one_image

    model = _one_node_model(
        tmp_path / "nms.onnx",
        helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "score_thr"], ["selected"]),
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["b", "n", 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["b", 2, "n"])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, None)],
        [helper.make_tensor("max_out", TensorProto.INT64, [1], [2**31 - 1]),
         helper.make_tensor("iou", TensorProto.FLOAT, [1], [iou_threshold]),
         helper.make_tensor("score_thr", TensorProto.FLOAT, [1], [-0.5])],
    )
    rng = np.random.default_rng(1)
    corner = rng.integers(0, 12, (2, 400, 2)).astype(np.float32) * 4
    boxes = np.concatenate([corner, corner + rng.integers(1, 5, (2, 400, 2)).astype(np.float32) * 8], axis=-1)
    scores = (rng.integers(0, 4, (2, 2, 400)) / 4).astype(np.float32)  # exact score ties too
    feeds = {"boxes": boxes, "scores": scores}
    expected = {(b, c, int(i)) for b in range(2) for c in range(2)
                for i in np.flatnonzero(_keep_one_image(boxes[b], scores[b, c], iou_threshold, -0.5))}
    for backend in (OnnxRuntimeBackend(model, batch_size=2), OpenVINOBackend(model, batch_size=2)):
        selected = {tuple(row) for row in backend.infer(feeds)["selected"].tolist()}
        assert selected == expected, f"{backend.name}: {len(selected ^ expected)} boxes decided differently"


def test_strict_nms_survives_a_saved_ir_and_applies_once(tmp_path):
    """An IR saved after make_nms_strict ran keeps it; reading it again changes nothing (the threshold is
    raised by one float32 step once, not once per read)."""
    import openvino as ov
    from onnx import TensorProto, helper

    from deployzoo.backends.openvino_backend import make_nms_strict

    model = _one_node_model(
        tmp_path / "nms.onnx",
        helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou"], ["selected"]),
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, "n", 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, "n"])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, None)],
        [helper.make_tensor("max_out", TensorProto.INT64, [1], [10]),
         helper.make_tensor("iou", TensorProto.FLOAT, [1], [0.5])],
    )
    core = ov.Core()
    read = core.read_model(str(model))
    assert make_nms_strict(read) == 1
    ov.save_model(read, str(tmp_path / "nms.xml"), compress_to_fp16=False)
    again = core.read_model(str(tmp_path / "nms.xml"))
    assert make_nms_strict(again) == 0
    (nms,) = [n for n in again.get_ordered_ops() if n.get_type_name() == "NonMaxSuppression"]
    threshold = np.asarray(nms.input_value(3).get_node().get_data()).ravel()
    assert threshold.tolist() == [float(np.nextafter(np.float32(0.5), np.float32(1)))]
    boxes = np.array([[[0, 0, 128, 32], [0, 0, 64, 32]]], np.float32)  # IoU exactly 0.5: both kept
    selected = OpenVINOBackend(tmp_path / "nms.xml").infer({"boxes": boxes, "scores": np.array([[[0.9, 0.8]]], np.float32)})
    assert selected["selected"][:, 2].tolist() == [0, 1]
