"""The fine-tuned Cascade Mask R-CNN case (tests/fixtures/d2-cascade-mask-rcnn-r50-fpn-3x-3class: detectron2 with
ROI_HEADS.NUM_CLASSES=3) reproduced through `deployzoo predict --checkpoint FILE --classes a,b,c`, matched by class
name, on PyTorch, ONNX Runtime and OpenVINO (the fixtures' matching rules)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from d2_fixtures import FIXTURES, write_d2_pkl
from dzinit import make_state_dict

pytestmark = pytest.mark.slow

CASE = FIXTURES / "d2-cascade-mask-rcnn-r50-fpn-3x-3class"


@pytest.fixture(scope="module")
def case() -> dict:
    meta = json.loads((CASE / "case-1.json").read_text())
    return {"json": meta, "arrays": dict(np.load(CASE / "case-1.npz")), "image": CASE / "case-1.png"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, case) -> Path:
    keys = json.loads((CASE / "keys.json").read_text())
    weights = make_state_dict(keys["tensors"], seed=case["json"]["weights"]["seed"])
    return write_d2_pkl(tmp_path_factory.mktemp("ft") / "model_final.pkl", weights)


def _check(records: list[dict], case: dict) -> None:
    from deployzoo.compare import match_detections
    from deployzoo.ops.mask_paste import decode_rle
    from deployzoo.structures import Detections

    names = case["json"]["class_names_for_test"]
    a = case["arrays"]
    n, h, w = a["masks_shape"].tolist()
    reference_masks = np.unpackbits(a["masks_packed"], axis=1, count=h * w).reshape(n, h, w).astype(bool)
    reference = Detections(a["boxes"], a["scores"], a["labels"])
    assert {r["category"] for r in records} <= set(names)
    assert [r["category_id"] for r in records] == [names.index(r["category"]) + 1 for r in records]
    boxes = np.asarray([[x, y, x + bw, y + bh] for x, y, bw, bh in (r["bbox"] for r in records)], np.float32)
    labels = np.asarray([names.index(r["category"]) for r in records], np.int64)
    ours = Detections(boxes.reshape(-1, 4), np.asarray([r["score"] for r in records], np.float32), labels)
    match = match_detections(ours, reference)
    assert match.matched == len(reference) == len(ours) == 100, match
    masks = decode_rle([r["segmentation"] for r in records])
    for i, j in match.pairs:
        assert float((masks[i] == reference_masks[j]).mean()) > 0.999, (i, j)


@pytest.mark.parametrize("backend", ["pytorch", "onnxruntime", "openvino"])
def test_predict_reproduces_the_3_class_fixture(backend, tmp_path, checkpoint, case, capsys):
    from deployzoo.cli import main

    if backend == "openvino":
        pytest.importorskip("openvino")
    names = ",".join(case["json"]["class_names_for_test"])
    args = ["predict", case["json"]["model"], str(case["image"]), "--backend", backend, "--out", str(tmp_path),
            "--checkpoint", str(checkpoint), "--classes", names]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "3 classes, inferred from roi_heads.box_predictor.0.cls_score.weight [4, 1024]" in printed
    _check(json.loads((tmp_path / "predictions.json").read_text()), case)
