"""Precisions: which backend offers which, PyTorch fp16/bf16 engines, the accuracy guard and auto's choice."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from native_precision import emulated_reason, native, native_half_precision

from deployzoo.cli import main
from deployzoo.engine import make_backend
from deployzoo.errors import DeployzooError
from deployzoo.pipeline import artifact_name, open_engine
from deployzoo.precision import UnsupportedPrecision, check_precision, supports
from deployzoo.precision_guard import GuardResult, resolve_precision, run_guard


def test_precision_support_table():
    assert supports("onnxruntime", "fp32") and not supports("onnxruntime", "fp16")
    assert supports("openvino", "fp16") and supports("pytorch", "bf16")
    with pytest.raises(UnsupportedPrecision, match="onnxruntime cannot run fp16"):
        check_precision("onnxruntime", "fp16")
    with pytest.raises(DeployzooError, match="precision must be one of"):
        check_precision("pytorch", "int4")


def test_artifact_names_carry_precision(refinedet_spec):
    assert artifact_name(refinedet_spec, 4, "fp16", ".onnx") == "refinedet320-vgg16-voc-b4-fp16.onnx"
    assert artifact_name(refinedet_spec, None, "fp32", ".onnx") == "refinedet320-vgg16-voc-bdyn-fp32.onnx"


@pytest.mark.parametrize("precision, tolerance", [("fp16", 0.05), ("bf16", 0.3)])
def test_pytorch_reduced_precision_is_close_and_leaves_the_reference_alone(refinedet_spec, refinedet_loaded,
                                                                           precision, tolerance):
    if not native(precision):
        pytest.skip(emulated_reason(precision))
    inputs = refinedet_spec.make_example_inputs(2)
    reference = make_backend("pytorch", refinedet_spec, 2, model=refinedet_loaded.model).infer(inputs)
    engine = make_backend("pytorch", refinedet_spec, 2, model=refinedet_loaded.model, precision=precision)
    outputs = engine.infer(inputs)
    assert engine.precision == precision and engine.describe()["precision"] == precision
    for name, ref in reference.items():
        assert outputs[name].dtype == np.float32  # the host post-processing always gets fp32
        scale = max(1.0, float(np.abs(ref).max()))
        assert np.abs(outputs[name] - ref).max() <= tolerance * scale
        assert np.abs(outputs[name] - ref).max() > 0  # it really ran in reduced precision
    # The caller's module is the fp32 reference and must stay so.
    assert next(refinedet_loaded.model.parameters()).dtype == torch.float32


def test_unsupported_precision_is_refused_by_name(refinedet_spec, refinedet_onnx):
    with pytest.raises(UnsupportedPrecision, match="onnxruntime cannot run bf16"):
        make_backend("onnxruntime", refinedet_spec, 1, onnx_path=refinedet_onnx, precision="bf16")


def _guard(fp32: float, candidate: float, tolerance: float = 0.5) -> GuardResult:
    return GuardResult("pytorch", "fp16", "mAP", fp32, candidate, tolerance, 8, "data")


def test_guard_verdict_is_a_drop_within_tolerance():
    assert _guard(40.0, 39.6).holds and _guard(40.0, 41.0).holds
    assert not _guard(40.0, 39.4).holds
    assert _guard(40.0, 39.4).delta == pytest.approx(-0.6)
    assert "FAILS" in _guard(40.0, 39.4).describe() and "delta -0.60" in _guard(40.0, 39.4).describe()
    assert "delta +0.00" in _guard(40.0, 39.999).describe()  # no "-0.00" for a drop that rounds away


def test_named_precision_is_kept_and_guarded():
    said: list[str] = []
    assert resolve_precision("fp32", "pytorch", lambda p: pytest.fail("fp32 needs no guard"), said.append) == ("fp32", None)
    with pytest.raises(ValueError, match="precision_auto"):  # auto is measured (tests/test_low_precision.py)
        resolve_precision("auto", "pytorch", lambda p: _guard(40.0, 39.9), said.append)
    # Asked for by name: kept (no flipping behind the user's back) and still guarded.
    chosen, result = resolve_precision("fp16", "pytorch", lambda p: _guard(40.0, 30.0), said.append)
    assert chosen == "fp16" and not result.holds


@pytest.mark.skipif(native_half_precision() is None, reason=emulated_reason("fp16 and bf16"))
def test_guard_evaluates_both_precisions_on_the_same_images(tmp_path, refinedet_spec, refinedet_loaded, synthetic_voc):
    def engine(precision):
        return open_engine(refinedet_spec, "pytorch", 1, loaded=refinedet_loaded, precision=precision)

    precision = native_half_precision()
    result = run_guard(refinedet_spec, engine, precision, synthetic_voc, tmp_path, num_images=2)
    assert result.images == 2 and result.metric == refinedet_spec.evaluation.metric_name
    assert (tmp_path / "pytorch-fp32" / "metrics.json").is_file()
    assert (tmp_path / f"pytorch-{precision}" / "metrics.json").is_file()
    assert result.holds == (result.delta >= -0.5)
    # The candidate scored against fp32's own predictions: a real figure (the stand-in weights' detections are not
    # all below the 0.05 threshold), and fp32 against itself agrees fully.
    assert result.agreement is not None and 0.0 < result.agreement <= 100.0 + 1e-9
    assert "agreement with fp32" in result.describe() and result.to_dict()["agreement"] == result.agreement
    assert run_guard(refinedet_spec, engine, "fp32", synthetic_voc, tmp_path, num_images=2).agreement == pytest.approx(100.0)


def test_cli_unsupported_precision_is_a_clear_error(tmp_path, capsys):
    code = main(["bench", "refinedet320-vgg16-voc", "--backend", "onnxruntime", "--precision", "fp16",
                 "--batch", "1", "--out", str(tmp_path)])
    assert code == 2
    assert "onnxruntime cannot run fp16" in capsys.readouterr().err


@pytest.mark.skipif(not native("bf16"), reason=emulated_reason("bf16"))
def test_cli_eval_auto_says_what_it_chose(tmp_path, capsys, refinedet_checkpoint, synthetic_voc):
    code = main(["eval", "refinedet320-vgg16-voc", "--checkpoint", str(refinedet_checkpoint), "--backend", "pytorch",
                 "--data", str(synthetic_voc), "--precision", "auto", "--auto-precisions", "bf16", "--guard-images", "2",
                 "--limit", "2", "--batch", "2", "--workers", "0", "--out", str(tmp_path / "eval")])
    out = capsys.readouterr().out
    assert code == 0
    assert "accuracy guard" in out and "precision auto for pytorch" in out and "| bf16 |" in out
    chosen = out.split("precision auto: ")[1].split()[0]
    assert chosen in ("fp32", "bf16") and f"pytorch, {chosen}, batch 2" in out
    assert (tmp_path / "eval" / "precision-auto.json").is_file()
