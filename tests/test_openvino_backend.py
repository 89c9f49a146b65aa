"""OpenVINO (CPU) against ONNX Runtime and PyTorch on the same exported graphs."""
from __future__ import annotations

import numpy as np
import pytest

from deployzoo.compare import tensor_diff
from deployzoo.errors import BadInputError

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'deployzoo[openvino]')")

from deployzoo.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from deployzoo.backends.openvino_backend import OpenVINOBackend  # noqa: E402


def test_refinedet_outputs_agree_with_onnxruntime(refinedet_spec, refinedet_onnx, tmp_path):
    feeds = refinedet_spec.make_example_inputs(2)
    engine = OpenVINOBackend(refinedet_onnx, batch_size=2, ir_cache=tmp_path / "ir")
    reference = OnnxRuntimeBackend(refinedet_onnx, batch_size=2).infer(feeds)
    outputs = engine.infer(feeds)
    for name in refinedet_spec.output_names:
        diff = tensor_diff(name, outputs[name], reference[name])
        assert diff.ok, diff
    # fp32 means f32 arithmetic: OpenVINO's CPU default is bf16 on CPUs that support it.
    import openvino

    assert engine.compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
    assert engine.describe()["precision"] == "fp32"
    assert len(list((tmp_path / "ir").glob("*.xml"))) == 1
    again = OpenVINOBackend(refinedet_onnx, batch_size=2, ir_cache=tmp_path / "ir")  # read from the IR cache
    assert np.array_equal(again.infer(feeds)["odm_conf"], outputs["odm_conf"])


def test_bad_model_files_and_shapes_are_refused(refinedet_spec, refinedet_onnx, tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        OpenVINOBackend(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    with pytest.raises(BadInputError, match="OpenVINO cannot read"):
        OpenVINOBackend(broken)
    engine = OpenVINOBackend(refinedet_onnx, batch_size=1)
    with pytest.raises(BadInputError, match="shape"):
        engine.infer({"image": np.zeros((1, 3, 300, 300), np.float32)})


@pytest.mark.slow
def test_pspnet_label_maps_agree_with_pytorch(pspnet_spec, pspnet_loaded, pspnet_onnx, pspnet_case):
    from deployzoo.data.loader import ImageItem
    from deployzoo.pipeline import open_engine
    from deployzoo.verify import compare_engines

    engine = open_engine(pspnet_spec, "openvino", 1, onnx_path=pspnet_onnx, loaded=pspnet_loaded)
    reference = open_engine(pspnet_spec, "pytorch", 1, loaded=pspnet_loaded)
    agreement = compare_engines(engine, reference, [ImageItem("case-1", str(pspnet_case["image"]))])
    assert agreement.ok, agreement.table()


@pytest.mark.slow
def test_mask_rcnn_detections_and_masks_agree_with_pytorch(mask_rcnn_spec, mask_rcnn_loaded, mask_rcnn_onnx, mask_rcnn_case):
    from deployzoo.data.loader import ImageItem
    from deployzoo.pipeline import open_engine
    from deployzoo.verify import compare_engines

    engine = open_engine(mask_rcnn_spec, "openvino", 1, onnx_path=mask_rcnn_onnx, loaded=mask_rcnn_loaded)
    reference = open_engine(mask_rcnn_spec, "pytorch", 1, loaded=mask_rcnn_loaded)
    agreement = compare_engines(engine, reference, [ImageItem("case-1", str(mask_rcnn_case["image"]))])
    assert agreement.ok, agreement.table()
    assert agreement.detections.matched == 100
