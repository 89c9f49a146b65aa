"""Cascade Mask R-CNN against detectron2's own outputs on the fixture weights
(tests/fixtures/d2-cascade-mask-rcnn-r50-fpn-3x): our PyTorch model and the ONNX Runtime engine."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from deployzoo.compare import match_detections, tensor_diff
from deployzoo.structures import Detections

pytest_plugins = ["d2_fixtures"]
pytestmark = pytest.mark.slow

MEAN_BGR = np.asarray([103.530, 116.280, 123.675], np.float32).reshape(3, 1, 1)
NEAR_TIE = 1e-5  # the fixtures' rule: only entries whose scores differ by less than this may swap places


@pytest.fixture(scope="module")
def prepared(d2_spec, d2_case):
    bgr = d2_spec.preprocess.read_image(d2_case["image"])
    array, meta = d2_spec.preprocess(bgr)
    feeds = d2_spec.make_feeds([array], [meta], 1)
    return array, meta, feeds


@pytest.fixture(scope="module")
def outputs(d2_loaded, prepared, d2_case):
    """Our PyTorch model on the case: features, proposals, the cascade on the REFERENCE proposals (so each
    stage is checked on its own inputs), and the full forward."""
    model = d2_loaded.model
    _, _, feeds = prepared
    image, img_hw = torch.from_numpy(feeds["image"]), torch.from_numpy(feeds["img_hw"])
    reference_proposals = torch.from_numpy(d2_case["arrays"]["rpn_proposals"])[None]
    with torch.inference_mode():
        features = model.features(image)
        proposals, logits, valid = model.propose(features, img_hw)
        stages = model.roi_heads.run_stages(features[:4], reference_proposals, img_hw)
        final = model(image, img_hw)
    return {"features": features, "proposals": proposals[0].numpy(), "logits": logits[0].numpy(),
            "valid": valid[0].numpy(), "stages": stages, "final": [o[0].numpy() for o in final]}


def test_preprocessing_is_bit_identical(prepared, d2_case):
    array, meta, feeds = prepared
    pre = d2_case["json"]["preprocessing"]
    assert list(meta.orig_hw) == pre["orig_hw"] and list(meta.resized_hw) == pre["resized_hw"]
    assert list(feeds["image"].shape[2:]) == pre["padded_hw"]
    assert np.array_equal(array, d2_case["arrays"]["input_bgr_chw"].astype(np.float32) - MEAN_BGR)
    assert feeds["img_hw"].tolist() == [[800.0, 1067.0]]


def test_checkpoint_is_the_official_container_and_loads_strictly(d2_loaded):
    report = d2_loaded.mapping_report
    assert "format: pkl-detectron2" in report.notes
    counts = report.counts
    assert counts["checkpoint_tensors"] == counts["model_tensors"] == 323, counts
    assert counts["renamed"] == 323 and counts["ignored"] == 0 and counts["kept_init"] == 0, counts


def test_fpn_features(outputs, d2_case):
    a = d2_case["arrays"]
    p2, p5, p6 = outputs["features"][0], outputs["features"][3], outputs["features"][4]
    for name, ours in (("fpn_p2_c0_16", p2[0, :16]), ("fpn_p5", p5[0]), ("fpn_p6", p6[0])):
        diff = tensor_diff(name, ours.numpy(), a[name])
        assert diff.ok, diff


def check_proposals(boxes: np.ndarray, logits: np.ndarray, d2_case) -> None:
    """Proposals match the reference one to one (same box, logit within the tolerance), in the same order,
    except where two candidates' logits are within NEAR_TIE: which of such a pair survives the level's NMS
    depends on the last bits of the logits (the case has one such pair)."""
    a = d2_case["arrays"]
    reference = Detections(a["rpn_proposals"], a["rpn_objectness_logits"], np.zeros(1000, np.int64))
    ours = Detections(boxes, logits, np.zeros(len(logits), np.int64))
    scale = max(1.0, float(np.abs(reference.scores).max()))
    match = match_detections(ours, reference, score_tolerance=1e-4 * scale)
    assert len(ours) == len(reference) == 1000
    assert match.unmatched_reference == match.unmatched_engine <= 2, match
    paired = {r for _, r in match.pairs}
    lost = sorted(set(range(1000)) - paired)
    extra = sorted(set(range(1000)) - {e for e, _ in match.pairs})
    for r, e in zip(lost, extra):
        assert abs(float(reference.scores[r]) - float(ours.scores[e])) < NEAR_TIE, (r, e)
    # Both lists are ranked by logit: rank by rank, the logits agree within the tolerance.
    assert tensor_diff("rpn_logits", logits, reference.scores).ok


def test_rpn_proposals(outputs, d2_case):
    assert outputs["valid"].all()
    check_proposals(outputs["proposals"], outputs["logits"], d2_case)


def test_cascade_stages_on_reference_proposals(outputs, d2_case):
    a = d2_case["arrays"]
    for k, stage in enumerate(outputs["stages"]):
        if k > 0:
            diff = tensor_diff(f"stage{k}_proposals", stage.proposals[0].numpy(), a[f"stage{k}_proposals"])
            assert diff.ok, diff
        for name, ours in ((f"stage{k}_cls_logits", stage.logits), (f"stage{k}_box_deltas", stage.deltas)):
            diff = tensor_diff(name, ours[0].numpy(), a[name])
            assert diff.ok, diff


def test_final_detections_and_mask_probabilities(outputs, d2_case):
    a = d2_case["arrays"]
    boxes, scores, labels, num_dets, masks = outputs["final"]
    n = int(num_dets)
    assert n == 100
    assert np.array_equal(labels[:n], a["labels"])
    for name, ours in (("pre_boxes_resized", boxes[:n]), ("scores", scores[:n]), ("mask_probs_28x28", masks[:n])):
        diff = tensor_diff(name, ours, a[name])
        assert diff.ok, diff


def _reference_detections(d2_case) -> tuple[Detections, np.ndarray]:
    a = d2_case["arrays"]
    n, h, w = a["masks_shape"].tolist()
    masks = np.unpackbits(a["masks_packed"], axis=1, count=h * w).reshape(n, h, w).astype(bool)
    return Detections(a["boxes"], a["scores"], a["labels"]), masks


def _check_predictions(records, d2_case):
    from deployzoo.data.coco import COCO_CATEGORY_IDS
    from deployzoo.ops.mask_paste import decode_rle

    reference, reference_masks = _reference_detections(d2_case)
    boxes = np.asarray([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in records)], np.float32).reshape(-1, 4)
    labels = np.asarray([COCO_CATEGORY_IDS.index(r["category_id"]) for r in records], np.int64)
    ours = Detections(boxes, np.asarray([r["score"] for r in records], np.float32), labels)
    match = match_detections(ours, reference)
    assert match.matched == len(reference) == len(ours), match
    masks = decode_rle([r["segmentation"] for r in records])
    for i, j in match.pairs:
        agreement = float((masks[i] == reference_masks[j]).mean())
        assert agreement > 0.999, (i, j, agreement)


@pytest.mark.parametrize("backend", ["pytorch", "onnxruntime"])
def test_predict_reproduces_reference_detections_and_masks(backend, tmp_path, d2_spec, d2_checkpoint, d2_onnx, d2_case):
    from deployzoo.cli import main

    args = ["predict", d2_spec.name, str(d2_case["image"]), "--backend", backend, "--out", str(tmp_path)]
    args += ["--checkpoint", str(d2_checkpoint)] if backend == "pytorch" else ["--onnx", str(d2_onnx)]
    assert main(args) == 0
    records = json.loads((tmp_path / "predictions.json").read_text())
    _check_predictions(records, d2_case)


def test_onnxruntime_graph_outputs(d2_onnx, prepared, d2_case, outputs):
    """The engine's raw outputs (before host post-processing) against detectron2's and our model's."""
    import onnxruntime as ort

    _, _, feeds = prepared
    boxes, scores, labels, num_dets, masks = (o[0] for o in ort.InferenceSession(str(d2_onnx)).run(None, feeds))
    a = d2_case["arrays"]
    n = int(num_dets)
    assert n == 100 and np.array_equal(labels[:n], a["labels"])
    for name, ours in (("pre_boxes_resized", boxes[:n]), ("scores", scores[:n]), ("mask_probs_28x28", masks[:n])):
        diff = tensor_diff(name, ours, a[name])
        assert diff.ok, diff


class _Intermediates(torch.nn.Module):
    """The graph up to the RPN, plus the cascade on given proposals, exported on its own so ONNX Runtime's
    intermediate tensors can be checked too."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image, img_hw, proposals):
        features = self.model.features(image)
        rpn_boxes, rpn_logits, _ = self.model.propose(features, img_hw)
        stages = self.model.roi_heads.run_stages(features[:4], proposals, img_hw)
        per_stage = [t for s in stages for t in (s.proposals, s.logits, s.deltas)]
        return (features[0][:, :16], features[3], features[4], rpn_boxes, rpn_logits, *per_stage)


def test_onnxruntime_intermediates(d2_loaded, prepared, d2_case, tmp_path):
    import onnx
    import onnxruntime as ort

    _, _, feeds = prepared
    a = d2_case["arrays"]
    path = tmp_path / "intermediates.onnx"
    small = {k: torch.from_numpy(v) for k, v in d2_loaded.spec.make_example_inputs(1).items()}
    example_proposals = torch.tensor([[[10.0, 20.0, 200.0, 300.0], [0.0, 0.0, 1000.0, 700.0]]])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Intermediates(d2_loaded.model).eval(), (small["image"], small["img_hw"], example_proposals),
                          str(path), input_names=["image", "img_hw", "proposals"], opset_version=17, dynamo=False,
                          dynamic_axes={"image": {2: "h", 3: "w"}, "proposals": {1: "rois"}})
    proto = onnx.load(str(path))
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    onnx.save(proto, str(path))
    results = ort.InferenceSession(str(path)).run(None, {**feeds, "proposals": a["rpn_proposals"][None]})
    p2, p5, p6, rpn_boxes, rpn_logits = results[:5]
    for name, ours in (("fpn_p2_c0_16", p2[0]), ("fpn_p5", p5[0]), ("fpn_p6", p6[0])):
        diff = tensor_diff(name, ours, a[name])
        assert diff.ok, diff
    check_proposals(rpn_boxes[0], rpn_logits[0], d2_case)
    for k in range(3):
        proposals, logits, deltas = results[5 + 3 * k: 8 + 3 * k]
        if k > 0:
            assert tensor_diff(f"stage{k}_proposals", proposals[0], a[f"stage{k}_proposals"]).ok
        assert tensor_diff(f"stage{k}_cls_logits", logits[0], a[f"stage{k}_cls_logits"]).ok
        assert tensor_diff(f"stage{k}_box_deltas", deltas[0], a[f"stage{k}_box_deltas"]).ok
