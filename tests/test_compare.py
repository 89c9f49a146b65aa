"""Engine-vs-PyTorch verdicts: PASS on a faithful engine, FAIL on a wrong one."""
from __future__ import annotations

import json

from deployzoo.cli import main
from deployzoo.data.loader import items_from_paths
from deployzoo.engine import load_model
from deployzoo.pipeline import export_model, open_engine
from deployzoo.verify import compare_engines


def test_compare_command_passes_on_the_exported_engine(tmp_path, refinedet_checkpoint, refinedet_onnx, refinedet_case):
    out = tmp_path / "cmp"
    assert main(["compare", "refinedet320-vgg16-voc", "--checkpoint", str(refinedet_checkpoint), "--onnx",
                 str(refinedet_onnx), "--out", str(out), "--images", str(refinedet_case["image"])]) == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["verdict"] == "PASS" and report["images"] == 1
    assert report["detections"]["matched"] == 9602
    assert "1e-4" in report["tolerances"]["outputs"]


def test_compare_fails_when_the_engine_has_other_weights(tmp_path, refinedet_spec, refinedet_loaded, refinedet_case):
    other = load_model(refinedet_spec, seed=1)
    path = export_model(other, tmp_path / "other.onnx", batch_size=1).path
    engine = open_engine(refinedet_spec, "onnxruntime", 1, onnx_path=path)
    reference = open_engine(refinedet_spec, "pytorch", 1, loaded=refinedet_loaded)
    agreement = compare_engines(engine, reference, items_from_paths([refinedet_case["image"]]))
    assert not agreement.ok
    assert "FAIL" in agreement.table()
    assert agreement.detections.unmatched_reference > 0
