"""Lower precisions that are checked: OpenVINO bf16 and NNCF int8 through the accuracy guard, and
``--precision auto`` measuring its candidates (speed + guard) and keeping the fastest that holds."""
from __future__ import annotations

import json

import numpy as np
import pytest

from deployzoo.cli import main
from deployzoo.errors import DeployzooError
from deployzoo.pipeline import open_engine
from deployzoo.precision import UnsupportedPrecision, check_precision
from deployzoo.precision_auto import auto_candidates, choose_precision
from deployzoo.precision_guard import GuardResult, run_guard

MODEL = "refinedet320-vgg16-voc"


def _openvino_bf16_refusal() -> str | None:
    try:
        from deployzoo.backends.openvino_backend import precision_refusal
        return precision_refusal("bf16")
    except DeployzooError as exc:  # OpenVINO missing
        return str(exc)


def _nncf_missing() -> bool:
    from deployzoo.backends.openvino_int8 import nncf_available

    return not nncf_available()


needs_bf16 = pytest.mark.skipif(_openvino_bf16_refusal() is not None,
                                reason=f"OpenVINO bf16 not available here: {_openvino_bf16_refusal()}")
needs_nncf = pytest.mark.skipif(_nncf_missing(), reason="NNCF is not installed (pip install 'deployzoo[int8]'); "
                                                        "it brings scipy and scikit-learn, so the test extra leaves it out")


def test_int8_is_openvino_only_and_refused_by_name_elsewhere():
    check_precision("openvino", "int8")
    for backend in ("onnxruntime", "pytorch"):
        with pytest.raises(UnsupportedPrecision, match="int8 for OpenVINO only"):
            check_precision(backend, "int8")


def test_bf16_refusal_names_the_missing_capability():
    pytest.importorskip("openvino", reason="OpenVINO is not installed")
    from deployzoo.backends.openvino_backend import precision_refusal

    assert precision_refusal("bf16", ("FP32", "BF16", "INT8")) is None
    assert "BF16 is missing" in precision_refusal("bf16", ("FP32", "INT8"))
    assert "FP16 is missing" in precision_refusal("fp16", ("FP32", "BF16", "INT8"))
    assert precision_refusal("fp16", ("FP32", "FP16", "INT8")) is None
    assert precision_refusal("fp32", ()) is None


@needs_bf16
def test_openvino_bf16_goes_through_the_guard(tmp_path, refinedet_spec, refinedet_loaded, refinedet_onnx, synthetic_voc):
    def engine(precision):
        return open_engine(refinedet_spec, "openvino", 1, onnx_path=refinedet_onnx, loaded=refinedet_loaded,
                           precision=precision)

    bf16 = engine("bf16")
    import openvino

    assert bf16.backend.compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.bf16
    bf16.backend.close()
    result = run_guard(refinedet_spec, engine, "bf16", synthetic_voc, tmp_path, num_images=2)
    assert result.precision == "bf16" and result.images == 2 and getattr(result, "non_finite", None) is None
    assert result.agreement is not None and result.agreement > 50.0  # bf16 keeps most of fp32's detections


@needs_nncf
def test_openvino_int8_quantizes_once_and_its_guard_runs(tmp_path, refinedet_spec, refinedet_loaded, synthetic_voc, capsys):
    from deployzoo.backends.openvino_int8 import Calibration
    from deployzoo.pipeline import export_model

    onnx = export_model(refinedet_loaded, tmp_path / "refinedet-b1-fp32.onnx", batch_size=1).path
    calibration = Calibration(synthetic_voc, images=2)

    def engine(precision):
        return open_engine(refinedet_spec, "openvino", 1, onnx_path=onnx, loaded=refinedet_loaded, precision=precision,
                           calibration=calibration)

    result = run_guard(refinedet_spec, engine, "int8", synthetic_voc, tmp_path / "guard", num_images=2)
    assert result.precision == "int8" and result.images == 2 and getattr(result, "non_finite", None) is None
    assert result.agreement is not None
    said = capsys.readouterr().out
    assert "quantizing" in said and "2 calibration images (dataset)" in said and "NonMaxSuppression" not in said
    from deployzoo.cache import kind_dir

    irs = list(kind_dir("int8").glob(f"{onnx.stem.replace('-fp32', '')}-int8-*.xml"))
    assert len(irs) == 1  # the guard's engine and any later one share the IR in the engine cache
    recipe = json.loads(irs[0].with_suffix(".json").read_text())
    assert recipe["calibration"]["images"] == 2 and recipe["calibration"]["source"] == "dataset"
    import openvino as ov

    model = ov.Core().read_model(str(irs[0]))
    quantized = {t.get_node().get_type_name() for n in model.get_ordered_ops() if n.get_type_name() == "FakeQuantize"
                 for t in n.output(0).get_target_inputs()}
    assert quantized and quantized <= {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul"}
    again = engine("int8")  # from the cache: no second quantization
    assert "quantizing" not in capsys.readouterr().out and again.backend.precision == "int8"
    again.backend.close()


@needs_nncf
def test_int8_cache_key_covers_the_calibration_images(tmp_path, monkeypatch, refinedet_spec, refinedet_onnx,
                                                      synthetic_voc, capsys):
    import nncf

    from deployzoo.backends.openvino_int8 import Calibration, quantized_ir

    monkeypatch.setattr(nncf, "quantize", lambda model, dataset, **kw: model)  # the key is under test, not NNCF
    first = quantized_ir(refinedet_spec, refinedet_onnx, tmp_path, Calibration(synthetic_voc, 2))
    assert quantized_ir(refinedet_spec, refinedet_onnx, tmp_path, Calibration(synthetic_voc, 2)) == first
    assert quantized_ir(refinedet_spec, refinedet_onnx, tmp_path, Calibration(synthetic_voc, 1)) != first
    generated = quantized_ir(refinedet_spec, refinedet_onnx, tmp_path, Calibration(None, 1))
    said = capsys.readouterr().out
    assert "generated synthetic images" in said and generated != first  # a generated set, and it says so
    assert len(list(tmp_path.glob("*-int8-*.xml"))) == 3


@needs_nncf
def test_int8_cache_key_and_record_cover_the_1x1_forms(tmp_path, monkeypatch, refinedet_spec, refinedet_onnx,
                                                       synthetic_voc, capsys):
    import nncf

    from deployzoo.backends.openvino_int8 import Calibration, quantized_ir

    # NNCF as identity: nothing gets a FakeQuantize, so the rewritten upsamplings count as left in fp32 and the
    # IR is built again without them (the fallback), and it says so
    monkeypatch.setattr(nncf, "quantize", lambda model, dataset, **kw: model)
    forms = quantized_ir(refinedet_spec, refinedet_onnx, tmp_path, Calibration(synthetic_voc, 1), as_1x1=True)
    plain = quantized_ir(refinedet_spec, refinedet_onnx, tmp_path, Calibration(synthetic_voc, 1), as_1x1=False)
    assert forms != plain
    said = capsys.readouterr().out
    assert "rewriting 3 matrix products and transposed convolutions" in said
    assert "NNCF left 3 of those convolutions in fp32" in said
    record = json.loads(forms.with_suffix(".json").read_text())
    assert record["as_1x1_convolutions"] is True and record["as_1x1_convolutions_applied"] is False
    assert json.loads(plain.with_suffix(".json").read_text())["as_1x1_convolutions"] is False


# --- auto, with fake engines: the choice logic ---

class _FakeBackend:
    batch_size = 1

    def __init__(self, seconds: float, nan: bool = False):
        self.seconds, self.nan, self.closed = seconds, nan, False

    def infer(self, inputs):
        import time

        time.sleep(self.seconds)
        out = np.zeros((1, 4), np.float32)
        if self.nan:
            out[0, 0] = np.nan
        return {"scores": out}

    def close(self):
        self.closed = True


class _FakeEngine:
    def __init__(self, backend):
        self.backend = backend


def _guard_result(precision: str, drop: float, non_finite: dict | None = None) -> GuardResult:
    extra = {"non_finite": non_finite} if non_finite else {}
    return GuardResult("openvino", precision, "mAP", 40.0, None if non_finite else 40.0 - drop, 0.5, 2, "data",
                       agreement=None if non_finite else 99.0, **extra)


def _choose(speeds: dict, drops: dict, nan: tuple = (), non_finite_guard: tuple = ()):
    opened = []

    def open_engine(p):
        if p == "broken":
            raise UnsupportedPrecision("openvino cannot run broken: no")
        engine = _FakeEngine(_FakeBackend(speeds[p], nan=p in nan))
        opened.append((p, engine))
        return engine

    def guard(p, opener):
        assert opener(p).backend.seconds == speeds[p]  # the guard gets the very engine that was timed
        problem = {"precision": p, "problem": "NaN"} if p in non_finite_guard else None
        return _guard_result(p, drops[p], problem)

    said: list[str] = []
    choice = choose_precision("openvino", list(speeds), open_engine, guard, {"image": np.zeros((1, 3, 4, 4), np.float32)},
                              notes={"fp16": "not tried: reason"}, rounds=2, say=said.append)
    assert all(e.backend.closed for _, e in opened)
    return choice, said


def test_auto_keeps_the_fastest_precision_whose_guard_holds():
    choice, said = _choose({"fp32": 0.03, "bf16": 0.01, "int8": 0.005}, {"bf16": 0.1, "int8": 3.0})
    assert choice.chosen == "bf16"  # int8 is faster but its guard fails
    rows = {c.precision: c for c in choice.candidates}
    assert rows["int8"].fails == "accuracy guard" and rows["bf16"].holds and rows["fp32"].holds
    assert rows["bf16"].images_per_s > rows["fp32"].images_per_s
    assert rows["fp16"].skipped == "not tried: reason"
    table = "\n".join(said)
    assert "| precision | images/s | guard (vs fp32) | non-finite | verdict |" in table
    assert "| bf16 |" in table and "(chosen)" in table and "precision auto: bf16 for openvino" in said[-1]
    recorded = choice.to_dict()
    assert recorded["chosen"] == "bf16"
    assert {c["precision"] for c in recorded["candidates"]} == {"fp32", "bf16", "int8", "fp16"}
    assert json.dumps(recorded)  # JSON-ready


def test_auto_falls_back_to_fp32_when_nothing_faster_holds():
    choice, _ = _choose({"fp32": 0.01, "bf16": 0.02}, {"bf16": 0.0})
    assert choice.chosen == "fp32" and choice.guard is None  # bf16 holds but is slower


def test_a_candidate_with_nan_outputs_fails():
    # NaN in its timed outputs (fp32 has none): fails even where the guard's images happened to be fine.
    choice, _ = _choose({"fp32": 0.03, "bf16": 0.005}, {"bf16": 0.0}, nan=("bf16",))
    rows = {c.precision: c for c in choice.candidates}
    assert choice.chosen == "fp32" and rows["bf16"].non_finite == 1 and "non-finite" in rows["bf16"].fails


@pytest.mark.skipif("non_finite" not in GuardResult.__dataclass_fields__,
                    reason="the guard's own non-finite reporting (GuardResult.non_finite) is not in this tree yet")
def test_a_candidate_whose_guard_images_give_nan_fails():
    # NaN on the guard's images: the guard fails (precision_guard reports it), and auto says so.
    choice, _ = _choose({"fp32": 0.03, "int8": 0.005}, {"int8": 0.0}, non_finite_guard=("int8",))
    rows = {c.precision: c for c in choice.candidates}
    assert choice.chosen == "fp32" and rows["int8"].fails == "accuracy guard"
    assert rows["int8"].guard_text() == "non-finite outputs"


def test_auto_lists_what_it_did_not_try_and_why():
    candidates, notes = auto_candidates("onnxruntime")
    assert candidates == ["fp32"] and "not offered" in notes["bf16"] and "not offered" in notes["int8"]
    candidates, notes = auto_candidates("openvino", bf16_native=lambda: True, int8_available=lambda: False)
    assert candidates == ["fp32", "bf16"] and "NNCF" in notes["int8"] and "--auto-precisions" in notes["fp16"]
    candidates, _ = auto_candidates("openvino", ["fp16"], bf16_native=lambda: True)
    assert candidates == ["fp32", "fp16"]  # asked for: tried
    with pytest.raises(DeployzooError, match="unknown precision int4"):
        auto_candidates("openvino", ["int4"])


# --- auto, for real ---

@needs_bf16
def test_cli_bench_auto_prints_and_records_its_table(tmp_path, capsys, refinedet_checkpoint, synthetic_voc):
    code = main(["bench", MODEL, "--checkpoint", str(refinedet_checkpoint), "--backend", "openvino", "--precision", "auto",
                 "--auto-precisions", "bf16", "--data", str(synthetic_voc), "--guard-images", "2", "--batch", "1",
                 "--iters", "1", "--warmup", "1", "--min-seconds", "0", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "precision auto for openvino" in out and "| fp32 |" in out and "| bf16 |" in out
    recorded = json.loads((tmp_path / "precision-auto.json").read_text())
    rows = {c["precision"]: c for c in recorded["candidates"]}
    chosen = recorded["chosen"]
    assert rows[chosen]["holds"] and rows[chosen]["images_per_s"] > 0
    assert all(rows[chosen]["images_per_s"] >= c["images_per_s"] for c in rows.values() if c["holds"])
    payload = json.loads((tmp_path / f"bench-openvino-{chosen}.json").read_text())
    assert payload["precision"] == chosen and payload["accuracy_guard"]["auto"]["chosen"] == chosen


def test_openvino_fp16_engine_is_fp16_or_refused(refinedet_spec, refinedet_loaded, refinedet_onnx):
    """On a CPU without native f16 OpenVINO compiled an fp16 engine at f32 without a word: 'fp16' rows, guards
    and auto choices were fp32 under another name. Now the engine is f16 or refused, saying what it would be."""
    ov = pytest.importorskip("openvino", reason="OpenVINO is not installed")
    try:
        engine = open_engine(refinedet_spec, "openvino", 1, onnx_path=refinedet_onnx, loaded=refinedet_loaded,
                             precision="fp16")
    except UnsupportedPrecision as exc:
        # refused up front (the plugin does not report FP16) or after compiling (it compiled at f32)
        assert "FP16 is missing" in str(exc) or "f32 under the name fp16" in str(exc), str(exc)
    else:
        assert engine.backend.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f16


def test_auto_does_not_try_openvino_precisions_this_cpu_lacks():
    """OpenVINO fp16/bf16 the CPU plugin does not report are left out with the plugin's reason, asked for or not
    (the engine would refuse them after auto had exported and timed fp32)."""
    lacks = {"bf16": "this CPU has no native bf16 for OpenVINO (test)", "fp16": None}
    candidates, notes = auto_candidates("openvino", ["bf16", "fp16"], int8_available=lambda: False,
                                        openvino_refusal=lacks.get)
    assert candidates == ["fp32", "fp16"] and "no native bf16" in notes["bf16"]
    candidates, notes = auto_candidates("openvino", ["bf16"], openvino_refusal=lambda p: "missing (test)")
    assert candidates == ["fp32"] and "missing (test)" in notes["bf16"]


@pytest.mark.parametrize("backend, listed", [("onnxruntime", None), ("onnxruntime", "bf16,int8"), ("pytorch", "int8")])
def test_auto_with_nothing_below_fp32_is_refused_before_any_work(backend, listed, tmp_path, monkeypatch, capsys):
    import deployzoo.cache
    import deployzoo.engine
    from deployzoo.cli import main

    def _no_work(*args, **kwargs):
        raise AssertionError("work began before auto's candidates were checked")

    monkeypatch.setattr(deployzoo.engine, "load_model", _no_work)
    monkeypatch.setattr(deployzoo.cache, "cached_onnx", _no_work)
    out = tmp_path / "o"
    args = ["bench", MODEL, "--backend", backend, "--precision", "auto", "--out", str(out)]
    assert main(args + (["--auto-precisions", listed] if listed else [])) == 2
    assert "--precision auto has nothing below fp32 to choose from" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("listed, message", [("BF16", "unknown precision BF16"), (",", "names nothing"),
                                             ("int8,int8", "names int8 more than once")])
def test_auto_precisions_are_checked_when_parsed(listed, message, capsys):
    from deployzoo.cli import main

    with pytest.raises(SystemExit):
        main(["predict", MODEL, "a.png", "--precision", "auto", "--auto-precisions", listed])
    assert message in capsys.readouterr().err
