"""ONNX export contract, metadata, and engine shape checks."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from deployzoo.cli import main
from deployzoo.errors import BadInputError
from deployzoo.export.onnx_export import read_metadata


def test_dynamic_export_is_clean_and_described(refinedet_onnx, refinedet_spec):
    proto = onnx.load(str(refinedet_onnx))
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert inputs == {"image": ["batch", 3, 320, 320]}
    outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
    assert list(outputs) == ["arm_loc", "arm_conf", "odm_loc", "odm_conf"]
    assert outputs["odm_conf"][1:] == [6375, 21] and outputs["arm_loc"][1:] == [6375, 4]
    meta = read_metadata(refinedet_onnx)
    assert meta["deployzoo.model"] == "refinedet320-vgg16-voc"
    assert json.loads(meta["deployzoo.class_names"])[0] == "aeroplane"
    assert "104,117,123" in meta["deployzoo.preprocessing"]


def test_onnxruntime_runs_any_batch_and_softmaxes(refinedet_onnx, refinedet_spec, refinedet_loaded):
    from deployzoo.engine import make_backend

    rng = np.random.default_rng(5)  # a different input than the export's trace input
    x = (rng.standard_normal((3, 3, 320, 320)) * 60).astype(np.float32)
    ort = make_backend("onnxruntime", refinedet_spec, 3, onnx_path=refinedet_onnx)
    torch_backend = make_backend("pytorch", refinedet_spec, 3, model=refinedet_loaded.model)
    a, b = ort.infer({"image": x}), torch_backend.infer({"image": x})
    for name in refinedet_spec.output_names:
        assert a[name].shape == b[name].shape
        assert np.abs(a[name] - b[name]).max() <= 1e-4 * max(1.0, np.abs(b[name]).max())
    assert np.allclose(a["odm_conf"].sum(-1), 1.0, atol=1e-5)
    assert np.allclose(a["arm_conf"].sum(-1), 1.0, atol=1e-5)


def test_fixed_batch_file_refuses_another_batch(tmp_path, refinedet_spec, capsys):
    path = tmp_path / "b2.onnx"
    assert main(["export", "refinedet320-vgg16-voc", "--batch", "2", "--out", str(path)]) == 0
    assert "default-domain ops only" in capsys.readouterr().out
    from deployzoo.engine import make_backend

    with pytest.raises(BadInputError, match="fixed to batch 2"):
        make_backend("onnxruntime", refinedet_spec, 1, onnx_path=path)
    engine = make_backend("onnxruntime", refinedet_spec, 2, onnx_path=path)
    with pytest.raises(BadInputError, match=r"shape \(1, 3, 320, 320\)"):
        engine.infer({"image": np.zeros((1, 3, 320, 320), np.float32)})
    # bench on that file: batch 1 is refused before any timing, naming the file's batch; batch 2 alone runs
    out = tmp_path / "bench"
    code = main(["bench", str(path), "--batch", "1,2", "--iters", "2", "--warmup", "1", "--min-seconds", "0.01",
                 "--out", str(out)])
    assert code == 2 and "batch 2" in capsys.readouterr().err and not (out / "bench-onnxruntime-fp32.json").exists()
    assert main(["bench", str(path), "--batch", "2", "--iters", "2", "--warmup", "1", "--min-seconds", "0.01",
                 "--out", str(out)]) == 0
    report = json.loads((out / "bench-onnxruntime-fp32.json").read_text())
    (cell,) = report["results"]
    assert cell["batch_size"] == 2 and cell["error"] is None and cell["stats"]["throughput"] > 0


def test_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "refinedet320-vgg16-voc" in out and "VOC2007 test" in out and "79.81" in out and "320x320" in out
