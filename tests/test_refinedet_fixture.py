"""RefineDet320 against the reference computed by RefineDet.PyTorch on the fixture's weights."""
from __future__ import annotations

import json

import cv2
import numpy as np
import torch

from deployzoo.cli import main
from deployzoo.compare import match_detections, tensor_diff
from deployzoo.heads.refinedet_detect import refinedet_detect
from deployzoo.models.refinedet import OUTPUT_NAMES, RefineDetConfig
from deployzoo.structures import Detections


def _reference_detections(arrays) -> Detections:
    flat = arrays["dets_flat"]  # rows (label 1..20, score, x1, y1, x2, y2) in original pixels
    return Detections(flat[:, 2:6], flat[:, 1], flat[:, 0].astype(np.int64) - 1)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_checkpoint_in_official_container_loads_strictly(refinedet_loaded):
    report = refinedet_loaded.mapping_report
    assert report is not None
    assert report.counts.get("copied") == 98
    assert "98" in report.format(verbose=False)


def test_preprocessing_and_priors_are_bit_exact(refinedet_spec, refinedet_case):
    image = cv2.imread(str(refinedet_case["image"]))
    array, meta = refinedet_spec.preprocess(image)
    assert np.array_equal(array, refinedet_case["arrays"]["input_1x3x320x320"][0])
    assert meta.orig_hw == (480, 640)
    assert np.array_equal(RefineDetConfig().priors(), refinedet_case["arrays"]["priors"])


def test_head_outputs_match_reference(refinedet_loaded, refinedet_case):
    x = torch.from_numpy(refinedet_case["arrays"]["input_1x3x320x320"])
    with torch.no_grad():
        raw = refinedet_loaded.model.forward_raw(x)
    for name, value in zip(OUTPUT_NAMES, raw):
        diff = tensor_diff(name, value.numpy(), refinedet_case["arrays"][name])
        assert diff.ok, diff


def test_host_detection_output_reproduces_detect_refinedet(refinedet_case):
    """The numpy decode + NMS fed the reference's own head outputs gives the reference's detections."""
    a = refinedet_case["arrays"]
    boxes, scores, labels = refinedet_detect(
        a["arm_loc"][0], _softmax(a["arm_conf"][0]), a["odm_loc"][0], _softmax(a["odm_conf"][0]), a["priors"]
    )
    detect = a["detect_output"][0]  # [21, 1000, 5] (score, x1, y1, x2, y2), zero rows where empty
    ref_rows = [(c, row) for c in range(1, 21) for row in detect[c] if row[0] > 0]
    assert len(ref_rows) == len(scores)
    reference = Detections(np.array([r[1:] for _, r in ref_rows]), np.array([r[0] for _, r in ref_rows]),
                           np.array([c for c, _ in ref_rows]))
    result = match_detections(Detections(boxes, scores, labels), reference)
    assert result.ok, result


def _predict(tmp_path, backend, checkpoint, image, extra=()):
    out = tmp_path / backend
    assert main(["predict", "refinedet320-vgg16-voc", "--checkpoint", str(checkpoint), "--backend", backend,
                 "--out", str(out), str(image), *extra]) == 0
    return json.loads((out / "predictions.json").read_text())


def _as_detections(records, spec) -> Detections:
    boxes = np.array([[r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]]
                      for r in records], dtype=np.float32).reshape(-1, 4)
    return Detections(boxes, np.array([r["score"] for r in records], np.float32),
                      np.array([r["category_id"] - 1 for r in records], np.int64))


def test_predict_reproduces_reference_detections_on_both_backends(tmp_path, refinedet_checkpoint, refinedet_case,
                                                                   refinedet_spec):
    reference = _reference_detections(refinedet_case["arrays"])
    for backend in ("pytorch", "onnxruntime"):
        records = _predict(tmp_path, backend, refinedet_checkpoint, refinedet_case["image"])
        assert len(records) == len(reference) == 9602  # every per-class NMS survivor, as the original keeps
        assert {r["file_name"] for r in records} == {"case-1.png"}
        assert all(r["category"] == refinedet_spec.class_names[r["category_id"] - 1] for r in records[:50])
        result = match_detections(_as_detections(records, refinedet_spec), reference)
        assert result.ok, (backend, result)


def test_predict_max_dets_and_score_threshold(tmp_path, refinedet_checkpoint, refinedet_case):
    records = _predict(tmp_path, "pytorch", refinedet_checkpoint, refinedet_case["image"],
                       ["--max-dets", "100", "--score-thr", "0.2"])
    assert 0 < len(records) <= 100
    assert min(r["score"] for r in records) >= 0.2
    top = np.sort(refinedet_case["arrays"]["dets_flat"][:, 1])[::-1][:100]
    assert np.allclose(sorted((r["score"] for r in records), reverse=True), top[top >= 0.2][: len(records)], atol=1e-4)


def test_stand_in_weights_are_the_fixture_rule(refinedet_spec, refinedet_keys):
    """The default run's weights (our dz-init-v1 implementation + the spec's gains) equal the fixture's."""
    import sys

    from deployzoo.engine import load_model

    make_state_dict = sys.modules["dzinit"].make_state_dict
    reference = make_state_dict(refinedet_keys["tensors"], seed=0)
    state = load_model(refinedet_spec).model.state_dict()
    assert list(state) == list(reference)
    for name, value in reference.items():
        assert np.array_equal(state[name].numpy(), value), name


def test_onnxruntime_head_outputs_match_reference(refinedet_spec, refinedet_onnx, refinedet_case):
    """The engine's outputs (softmaxed confidences) against the reference's raw heads."""
    from deployzoo.engine import make_backend

    a = refinedet_case["arrays"]
    engine = make_backend("onnxruntime", refinedet_spec, 1, onnx_path=refinedet_onnx)
    out = engine.infer({"image": a["input_1x3x320x320"]})
    expected = {"arm_loc": a["arm_loc"], "odm_loc": a["odm_loc"],
                "arm_conf": _softmax(a["arm_conf"]), "odm_conf": _softmax(a["odm_conf"])}
    for name, reference in expected.items():
        diff = tensor_diff(name, out[name], reference)
        assert diff.ok, diff
