"""Mask R-CNN against mmdetection 3.3's own outputs on the fixture weights (tests/fixtures/mmdet-mask-rcnn-r50-fpn-1x)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from deployzoo.compare import match_detections, tensor_diff
from deployzoo.structures import Detections

pytestmark = pytest.mark.slow


def _reference_input(case) -> np.ndarray:
    """The reference network input: its uint8 BGR resize, normalised as DetDataPreprocessor does."""
    bgr = case["arrays"]["input_bgr_chw"].astype(np.float32)[::-1]
    mean = np.asarray([123.675, 116.28, 103.53], np.float32).reshape(3, 1, 1)
    std = np.asarray([58.395, 57.12, 57.375], np.float32).reshape(3, 1, 1)
    return (bgr - mean) / std


@pytest.fixture(scope="module")
def prepared(mask_rcnn_spec, mask_rcnn_case):
    bgr = cv2.imread(str(mask_rcnn_case["image"]), cv2.IMREAD_COLOR)
    array, meta = mask_rcnn_spec.preprocess(bgr)
    feeds = mask_rcnn_spec.make_feeds([array], [meta], 1)
    return array, meta, feeds


@pytest.fixture(scope="module")
def intermediates(mask_rcnn_loaded, prepared):
    model = mask_rcnn_loaded.model
    _, _, feeds = prepared
    image, img_hw = torch.from_numpy(feeds["image"]), torch.from_numpy(feeds["img_hw"])
    with torch.inference_mode():
        features = model.features(image)
        proposals, scores, valid = model.propose(features, img_hw)
    return {"features": features, "proposals": proposals[0], "scores": scores[0], "valid": valid[0], "img_hw": img_hw}


def test_preprocessing_is_bit_identical(prepared, mask_rcnn_case):
    array, meta, feeds = prepared
    assert list(meta.resized_hw) == mask_rcnn_case["json"]["preprocessing"]["resized_hw"]
    assert list(feeds["image"].shape[2:]) == mask_rcnn_case["json"]["preprocessing"]["padded_hw"]
    assert np.array_equal(array, _reference_input(mask_rcnn_case))
    assert feeds["img_hw"].tolist() == [[800.0, 1067.0]]


def test_checkpoint_loads_strictly(mask_rcnn_loaded):
    counts = mask_rcnn_loaded.mapping_report.counts
    assert counts.get("copied", 0) + counts.get("renamed", 0) == 360, counts
    assert counts.get("renamed") == 24, counts  # FPN and mask-head ConvModule convs


def test_fpn_features(intermediates, mask_rcnn_case):
    a = mask_rcnn_case["arrays"]
    p2, p5, p6 = intermediates["features"][0], intermediates["features"][3], intermediates["features"][4]
    for name, ours in (("fpn_p2_c0_16", p2[0, :16]), ("fpn_p5", p5[0]), ("fpn_p6", p6[0])):
        diff = tensor_diff(name, ours.numpy(), a[name])
        assert diff.ok, diff


def test_rpn_proposals(intermediates, mask_rcnn_case):
    a = mask_rcnn_case["arrays"]
    assert bool(intermediates["valid"].all())
    scores = intermediates["scores"].numpy()
    assert tensor_diff("rpn_scores", np.sort(scores), np.sort(a["rpn_scores"])).ok
    diff, unpaired = _proposals_diff(intermediates["proposals"].numpy(), scores, a["rpn_proposals"], a["rpn_scores"])
    assert diff.ok and unpaired == 0, (diff, unpaired)


def _proposals_diff(boxes: np.ndarray, scores: np.ndarray, ref_boxes: np.ndarray, ref_scores: np.ndarray):
    """Proposals against the reference's, rows paired as the fixtures' rules allow: in score order, swaps only
    between proposals whose scores differ by less than 1e-5. Saturated sigmoids tie exactly, and near-tied
    scores sort differently across CPUs (AVX2 and AVX-512 convolutions round differently), so each reference
    row takes the closest box among our unused rows within 1e-5 of its score. Returns the TensorDiff of the
    paired boxes and the number of reference rows left without a partner."""
    order, ref_order = np.argsort(-scores, kind="stable"), np.argsort(-ref_scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    ref_boxes, ref_scores = ref_boxes[ref_order], ref_scores[ref_order]
    close = np.abs(ref_scores[:, None].astype(np.float64) - scores[None, :]) < 1e-5
    used = np.zeros(len(scores), dtype=bool)
    paired = np.full(len(ref_scores), -1)
    for i in range(len(ref_scores)):
        candidates = np.flatnonzero(close[i] & ~used)
        if candidates.size:
            best = candidates[np.argmin(np.abs(boxes[candidates] - ref_boxes[i]).max(1))]
            paired[i], used[best] = best, True
    found = paired >= 0
    return tensor_diff("rpn_proposals", boxes[paired[found]], ref_boxes[found]), int((~found).sum())


def test_box_head_on_reference_proposals(mask_rcnn_loaded, intermediates, mask_rcnn_case):
    a = mask_rcnn_case["arrays"]
    model = mask_rcnn_loaded.model
    with torch.inference_mode():
        logits, deltas = model.roi_head.box_outputs(intermediates["features"][:4], torch.from_numpy(a["rpn_proposals"])[None])
    assert tensor_diff("roi_cls_logits", logits[0].numpy(), a["roi_cls_logits"]).ok
    assert tensor_diff("roi_bbox_deltas", deltas[0].numpy(), a["roi_bbox_deltas"]).ok


def _reference_detections(mask_rcnn_case) -> tuple[Detections, np.ndarray]:
    a = mask_rcnn_case["arrays"]
    n, h, w = a["masks_shape"].tolist()
    masks = np.unpackbits(a["masks_packed"], axis=1, count=h * w).reshape(n, h, w).astype(bool)
    return Detections(a["boxes"], a["scores"], a["labels"]), masks


def _check_predictions(records, mask_rcnn_case):
    from deployzoo.ops.mask_paste import decode_rle

    reference, reference_masks = _reference_detections(mask_rcnn_case)
    boxes = np.asarray([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in records)], np.float32).reshape(-1, 4)
    from deployzoo.data.coco import COCO_CATEGORY_IDS

    labels = np.asarray([COCO_CATEGORY_IDS.index(r["category_id"]) for r in records], np.int64)
    ours = Detections(boxes, np.asarray([r["score"] for r in records], np.float32), labels)
    match = match_detections(ours, reference)
    assert match.matched == len(reference) == len(ours), match
    masks = decode_rle([r["segmentation"] for r in records])
    for i, j in match.pairs:
        agreement = float((masks[i] == reference_masks[j]).mean())
        assert agreement > 0.999, (i, j, agreement)


@pytest.mark.parametrize("backend", ["pytorch", "onnxruntime"])
def test_predict_reproduces_reference_detections_and_masks(backend, tmp_path, mask_rcnn_checkpoint, mask_rcnn_onnx,
                                                            mask_rcnn_case):
    from deployzoo.cli import main

    args = ["predict", "mmdet-mask-rcnn-r50-fpn-1x", str(mask_rcnn_case["image"]), "--backend", backend,
            "--out", str(tmp_path)]
    args += ["--checkpoint", str(mask_rcnn_checkpoint)] if backend == "pytorch" else ["--onnx", str(mask_rcnn_onnx)]
    assert main(args) == 0
    records = json.loads((tmp_path / "predictions.json").read_text())
    _check_predictions(records, mask_rcnn_case)


def test_mask_probabilities(mask_rcnn_loaded, prepared, mask_rcnn_case):
    a = mask_rcnn_case["arrays"]
    _, _, feeds = prepared
    with torch.inference_mode():
        boxes, scores, labels, num, masks = mask_rcnn_loaded.model(torch.from_numpy(feeds["image"]),
                                                                   torch.from_numpy(feeds["img_hw"]))
    n = int(num[0])
    assert n == 100
    assert np.array_equal(labels[0, :n].numpy(), a["labels"])
    assert tensor_diff("scores", scores[0, :n].numpy(), a["scores"]).ok
    assert tensor_diff("mask_probs_28x28", masks[0, :n].numpy(), a["mask_probs_28x28"]).ok


class _FeaturesAndProposals(torch.nn.Module):
    """The graph up to the RPN, exported on its own so ONNX Runtime's intermediates can be checked too."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image, img_hw):
        features = self.model.features(image)
        proposals, scores, _ = self.model.propose(features, img_hw)
        return features[0][:, :16], features[3], features[4], proposals, scores


def test_onnxruntime_features_and_proposals(mask_rcnn_loaded, prepared, mask_rcnn_case, tmp_path):
    import warnings

    import onnx
    import onnxruntime as ort

    _, _, feeds = prepared
    path = tmp_path / "rpn.onnx"
    small = {k: torch.from_numpy(v) for k, v in mask_rcnn_loaded.spec.make_example_inputs(1).items()}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_FeaturesAndProposals(mask_rcnn_loaded.model).eval(), (small["image"], small["img_hw"]),
                          str(path), input_names=["image", "img_hw"], opset_version=17, dynamo=False,
                          dynamic_axes={"image": {2: "h", 3: "w"}})
    proto = onnx.load(str(path))
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    onnx.save(proto, str(path))
    p2, p5, p6, proposals, scores = ort.InferenceSession(str(path)).run(None, feeds)
    a = mask_rcnn_case["arrays"]
    for name, ours in (("fpn_p2_c0_16", p2[0]), ("fpn_p5", p5[0]), ("fpn_p6", p6[0])):
        diff = tensor_diff(name, ours, a[name])
        assert diff.ok, diff
    assert tensor_diff("rpn_scores", np.sort(scores[0]), np.sort(a["rpn_scores"])).ok
    diff, unpaired = _proposals_diff(proposals[0], scores[0], a["rpn_proposals"], a["rpn_scores"])
    assert diff.ok and unpaired == 0, (diff, unpaired)


def test_checkpoint_problems_are_reported_together(mask_rcnn_checkpoint, tmp_path):
    from deployzoo.checkpoints import load_into_model
    from deployzoo.errors import CheckpointError
    from deployzoo.models.mask_rcnn import CHECKPOINT_RULES, build_mask_rcnn

    state = torch.load(mask_rcnn_checkpoint, weights_only=True)
    weights = state["state_dict"]
    del weights["roi_head.mask_head.conv_logits.bias"]
    weights["neck.fpn_convs.1.conv.weight"] = weights["neck.fpn_convs.1.conv.weight"][:, :128]
    weights["roi_head.semantic_head.conv.weight"] = torch.zeros(1)
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    with pytest.raises(CheckpointError) as error:
        load_into_model(build_mask_rcnn(), broken, CHECKPOINT_RULES)
    message = str(error.value)
    for key in ("roi_head.mask_head.conv_logits.bias", "neck.fpn_convs.1.conv.weight", "roi_head.semantic_head.conv.weight"):
        assert key in message, message
