"""FSAF against mmdetection 3.3's own outputs on the fixture weights (tests/fixtures/mmdet-fsaf-r50-fpn-1x).

The fixture was made by mmdetection 3.3, i.e. post-processing algorithm B: the ``-v3post`` model."""
from __future__ import annotations

import json
import warnings

import cv2
import numpy as np
import pytest
import torch

from deployzoo.compare import match_detections, tensor_diff
from deployzoo.structures import Detections

pytestmark = pytest.mark.slow

LEVELS = 5


def _reference_input(case) -> np.ndarray:
    """The reference network input: its uint8 BGR resize, normalised as DetDataPreprocessor does."""
    bgr = case["arrays"]["input_bgr_chw"].astype(np.float32)[::-1]
    mean = np.asarray([123.675, 116.28, 103.53], np.float32).reshape(3, 1, 1)
    std = np.asarray([58.395, 57.12, 57.375], np.float32).reshape(3, 1, 1)
    return (bgr - mean) / std


def _head_names(level: int) -> tuple[str, str]:
    return (f"head_cls_l{level}_c0_16" if level < 2 else f"head_cls_l{level}"), f"head_reg_l{level}"


@pytest.fixture(scope="module")
def prepared(fsaf_spec, fsaf_case):
    bgr = cv2.imread(str(fsaf_case["image"]), cv2.IMREAD_COLOR)
    array, meta = fsaf_spec.preprocess(bgr)
    feeds = fsaf_spec.make_feeds([array], [meta], 1)
    return array, meta, feeds


@pytest.fixture(scope="module")
def intermediates(fsaf_loaded, prepared):
    model = fsaf_loaded.model
    _, _, feeds = prepared
    with torch.inference_mode():
        features = model.features(torch.from_numpy(feeds["image"]))
        logits, tblr = model.head_outputs(features)
    return {"features": features, "logits": logits, "tblr": tblr}


def test_preprocessing_is_bit_identical(prepared, fsaf_case):
    array, meta, feeds = prepared
    assert list(meta.resized_hw) == fsaf_case["json"]["preprocessing"]["resized_hw"]
    assert list(feeds["image"].shape[2:]) == fsaf_case["json"]["preprocessing"]["padded_hw"]
    assert np.array_equal(array, _reference_input(fsaf_case))
    assert feeds["img_hw"].tolist() == [[800.0, 1067.0]]


def test_checkpoint_loads_strictly(fsaf_loaded):
    counts = fsaf_loaded.mapping_report.counts
    assert counts.get("copied", 0) + counts.get("renamed", 0) == 354, counts
    assert counts.get("renamed") == 32, counts  # FPN and head-tower ConvModule convs


def test_fpn_features(intermediates, fsaf_case):
    a = fsaf_case["arrays"]
    p3, p6, p7 = intermediates["features"][0], intermediates["features"][3], intermediates["features"][4]
    assert [tuple(f.shape[2:]) for f in intermediates["features"]] == [(100, 136), (50, 68), (25, 34), (13, 17), (7, 9)]
    for name, ours in (("fpn_p3_c0_16", p3[0, :16]), ("fpn_p6", p6[0]), ("fpn_p7", p7[0])):
        diff = tensor_diff(name, ours.numpy(), a[name])
        assert diff.ok, diff


@pytest.mark.parametrize("level", range(LEVELS))
def test_head_outputs(intermediates, fsaf_case, level):
    a = fsaf_case["arrays"]
    cls_name, reg_name = _head_names(level)
    logits, tblr = intermediates["logits"][level][0], intermediates["tblr"][level][0]
    diff = tensor_diff(cls_name, logits[: a[cls_name].shape[0]].numpy(), a[cls_name])
    assert diff.ok, diff
    diff = tensor_diff(reg_name, tblr.numpy(), a[reg_name])
    assert diff.ok, diff


def _check_predictions(records, fsaf_case):
    from deployzoo.data.coco import COCO_CATEGORY_IDS

    a = fsaf_case["arrays"]
    reference = Detections(a["boxes"], a["scores"], a["labels"])
    boxes = np.asarray([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in records)], np.float32).reshape(-1, 4)
    labels = np.asarray([COCO_CATEGORY_IDS.index(r["category_id"]) for r in records], np.int64)
    ours = Detections(boxes, np.asarray([r["score"] for r in records], np.float32), labels)
    match = match_detections(ours, reference)
    assert match.matched == len(reference) == len(ours) == 64, match
    assert "segmentation" not in records[0]


@pytest.mark.parametrize("backend", ["pytorch", "onnxruntime"])
def test_predict_reproduces_reference_detections(backend, tmp_path, fsaf_checkpoint, fsaf_onnx, fsaf_case):
    from deployzoo.cli import main

    args = ["predict", "mmdet-fsaf-r50-fpn-1x-v3post", str(fsaf_case["image"]), "--backend", backend,
            "--out", str(tmp_path)]
    args += ["--checkpoint", str(fsaf_checkpoint)] if backend == "pytorch" else ["--onnx", str(fsaf_onnx)]
    assert main(args) == 0
    records = json.loads((tmp_path / "predictions.json").read_text())
    _check_predictions(records, fsaf_case)


def test_graph_outputs_before_rescaling(fsaf_loaded, prepared, fsaf_case):
    """The graph's own rows: scores and labels in the reference order, boxes = reference x resize factors."""
    a = fsaf_case["arrays"]
    _, meta, feeds = prepared
    with torch.inference_mode():
        dets, labels, num = fsaf_loaded.model(torch.from_numpy(feeds["image"]), torch.from_numpy(feeds["img_hw"]))
    n = int(num[0])
    assert n == 64 and bool((labels[0, n:] == -1).all()) and bool((dets[0, n:] == 0).all())
    assert np.array_equal(labels[0, :n].numpy(), a["labels"])
    assert tensor_diff("scores", dets[0, :n, 4].numpy(), a["scores"]).ok
    (h, w), (rh, rw) = meta.orig_hw, meta.resized_hw
    resized = a["boxes"] * np.asarray([rw / w, rh / h] * 2, np.float32)
    assert tensor_diff("boxes (resized pixels)", dets[0, :n, :4].numpy(), resized).ok


class _FeaturesAndHead(torch.nn.Module):
    """The graph up to the head, exported on its own so ONNX Runtime's intermediates can be checked too."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        features = self.model.features(image)
        logits, tblr = self.model.head_outputs(features)
        return (features[0][:, :16], features[3], features[4], *logits, *tblr)


def test_onnxruntime_features_and_head_outputs(fsaf_loaded, prepared, fsaf_case, tmp_path):
    import onnx
    import onnxruntime as ort

    _, _, feeds = prepared
    path = tmp_path / "head.onnx"
    small = torch.from_numpy(fsaf_loaded.spec.make_example_inputs(1)["image"][:, :, :256, :320])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_FeaturesAndHead(fsaf_loaded.model).eval(), (small,), str(path), input_names=["image"],
                          opset_version=17, dynamo=False, dynamic_axes={"image": {2: "h", 3: "w"}})
    proto = onnx.load(str(path))
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    onnx.save(proto, str(path))
    outputs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": feeds["image"]})
    a = fsaf_case["arrays"]
    for name, ours in zip(("fpn_p3_c0_16", "fpn_p6", "fpn_p7"), outputs[:3]):
        diff = tensor_diff(name, ours[0], a[name])
        assert diff.ok, diff
    for level in range(LEVELS):
        cls_name, reg_name = _head_names(level)
        logits, tblr = outputs[3 + level][0], outputs[3 + LEVELS + level][0]
        assert tensor_diff(cls_name, logits[: a[cls_name].shape[0]], a[cls_name]).ok
        assert tensor_diff(reg_name, tblr, a[reg_name]).ok


def test_algorithm_a_on_the_fixture_keeps_other_detections(fsaf_loaded, intermediates, prepared, fsaf_case):
    """Report, not reference: mmdet v2.0's selection (A) on the same head outputs. The stand-in weights make
    many distance predictions exactly 0 (the head's ReLU), so A, which keeps zero-area boxes, returns 100
    detections led by degenerate ones, while B (the fixture) drops them and returns 64."""
    _, _, feeds = prepared
    img_hw = torch.from_numpy(feeds["img_hw"])
    with torch.inference_mode():
        boxes, scores, labels, num = fsaf_loaded.model.detect_locations(intermediates["logits"], intermediates["tblr"], img_hw)
    assert int(num[0]) == 100
    area = (boxes[0, :, 2] - boxes[0, :, 0]) * (boxes[0, :, 3] - boxes[0, :, 1])
    assert bool((area == 0).any())
    a = fsaf_case["arrays"]
    reference = {(int(l), round(float(s), 5)) for l, s in zip(a["labels"], a["scores"])}
    ours = {(int(l), round(float(s), 5)) for l, s in zip(labels[0], scores[0])}
    assert reference - ours  # not a superset either: B's detections are not simply A's minus the empty boxes
