"""ONNX RoiAlign lowered to standard ops (deployzoo.export.roi_align_lowering) against onnxruntime's own kernel."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from deployzoo.backends.onnxruntime_backend import OnnxRuntimeBackend
from deployzoo.export.roi_align_lowering import lower_roi_align


def _model(out=7, ratio=0, scale=0.25, mode="half_pixel", opset=17, pool="avg") -> onnx.ModelProto:
    modes = {"coordinate_transformation_mode": mode} if opset >= 16 else {}  # opset 10's RoiAlign has none
    node = helper.make_node("RoiAlign", ["X", "rois", "batch"], ["Y"], mode=pool, output_height=out, output_width=out,
                            sampling_ratio=ratio, spatial_scale=scale, **modes)
    graph = helper.make_graph(
        [node], "roi_align",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", "c", "h", "w"]),
         helper.make_tensor_value_info("rois", TensorProto.FLOAT, ["r", 4]),
         helper.make_tensor_value_info("batch", TensorProto.INT64, ["r"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["r", "c", out, out])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, feeds) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _case(seed: int):
    rng = np.random.default_rng(seed)
    n, c = 1 + seed % 2, int(rng.integers(1, 9))
    h, w = (int(v) for v in rng.integers(1, 40, 2))
    r = 0 if seed % 7 == 0 else int(rng.integers(1, 70))
    xy = rng.random((r, 2)) * [w * 4 + 40, h * 4 + 40] - 20  # some RoIs partly or wholly off the map
    wh = rng.random((r, 2)) ** 2 * [w * 6, h * 6]
    if seed % 5 == 0:
        wh = -0.1 * wh  # malformed: x2 < x1
    return {"X": rng.standard_normal((n, c, h, w)).astype(np.float32),
            "rois": np.concatenate([xy, xy + wh], 1).astype(np.float32),
            "batch": rng.integers(0, n, r).astype(np.int64)}


@pytest.mark.parametrize("seed", range(15))
@pytest.mark.parametrize("out, ratio, mode, opset", [(7, 0, "half_pixel", 17), (14, 0, "half_pixel", 17),
                                                      (7, 2, "half_pixel", 17), (7, 0, "output_half_pixel", 17),
                                                      (7, 0, "half_pixel", 18)])
def test_lowered_graph_gives_onnxruntimes_roi_align(seed, out, ratio, mode, opset):
    """Random maps and RoIs (none, off the map, malformed, two images), both coordinate modes, fixed and
    adaptive sampling, chunks of 8 so that the Loop runs several times with a padded last chunk."""
    feeds = _case(seed)
    want = _run(_model(out, ratio, 0.25, mode, opset), feeds)
    lowered = _model(out, ratio, 0.25, mode, opset)
    assert lower_roi_align(lowered, chunk=8) == 1
    onnx.checker.check_model(lowered)
    assert not any(n.op_type == "RoiAlign" for n in lowered.graph.node)
    got = _run(lowered, feeds)
    assert got.shape == want.shape == (feeds["rois"].shape[0], feeds["X"].shape[1], out, out)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def test_box_stage_sized_rois_on_a_p2_sized_map():
    """1000 RoIs on a [1, 32, 200, 272] map (a box stage on FPN level p2, fewer channels), default chunks."""
    rng = np.random.default_rng(3)
    xy = rng.random((1000, 2)) * [1000, 700]
    wh = 8 + rng.random((1000, 2)) ** 2 * [400, 300]
    feeds = {"X": rng.standard_normal((1, 32, 200, 272)).astype(np.float32),
             "rois": np.concatenate([xy, xy + wh], 1).astype(np.float32), "batch": np.zeros(1000, np.int64)}
    lowered = _model()
    lower_roi_align(lowered)
    np.testing.assert_allclose(_run(lowered, feeds), _run(_model(), feeds), rtol=0, atol=2e-6)


def test_max_mode_and_graphs_without_roi_align_are_left_alone():
    model = _model(pool="max")
    assert lower_roi_align(model) == 0 and model.graph.node[0].op_type == "RoiAlign"
    with pytest.raises(ValueError, match="opset >= 16"):
        lower_roi_align(_model(opset=16 - 1))


def test_onnxruntime_backend_lowers_in_memory_and_says_so(tmp_path):
    """The backend runs the lowered graph (describe() says so), the file on disk keeps its RoiAlign node,
    and ``lower_roi_align=False`` runs the kernel: both give the same bins."""
    path = tmp_path / "roi.onnx"
    onnx.save(_model(), str(path))
    feeds = _case(4)
    lowered = OnnxRuntimeBackend(path)
    native = OnnxRuntimeBackend(path, lower_roi_align=False)
    assert "1 RoiAlign node run as" in lowered.describe()["roi_align"] and "roi_align" not in native.describe()
    assert [n.op_type for n in onnx.load(str(path)).graph.node] == ["RoiAlign"]
    np.testing.assert_allclose(lowered.session.run(None, feeds)[0], native.session.run(None, feeds)[0], rtol=0, atol=2e-6)


def test_a_graph_it_cannot_lower_runs_on_the_kernel(tmp_path):
    path = tmp_path / "old.onnx"
    onnx.save(_model(opset=15), str(path))
    backend = OnnxRuntimeBackend(path)
    assert backend.lowered == 0 and "roi_align" not in backend.describe()
    feeds = _case(4)
    assert backend.session.run(None, feeds)[0].shape == (feeds["rois"].shape[0], feeds["X"].shape[1], 7, 7)


def test_a_graph_the_rewrite_does_not_fit_runs_on_the_kernel(tmp_path):
    """fp16 maps: the rewrite's float32 arithmetic would not type-check, so the file runs as it is."""
    model = _model()
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    model.graph.input[1].type.tensor_type.elem_type = TensorProto.FLOAT16
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    path = tmp_path / "half.onnx"
    onnx.save(model, str(path))
    backend = OnnxRuntimeBackend(path)
    assert backend.lowered == 0
    feeds = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in _case(4).items()}
    want = _run(_model(), {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in feeds.items()})
    np.testing.assert_allclose(backend.session.run(None, feeds)[0].astype(np.float32), want, atol=2e-2)


def test_a_damaged_file_is_still_named(tmp_path):
    from deployzoo.errors import BadInputError

    path = tmp_path / "broken.onnx"
    path.write_bytes(_model().SerializeToString()[:-40] + b"RoiAlign")
    with pytest.raises(BadInputError, match="broken.onnx.*onnxruntime cannot load it"):
        OnnxRuntimeBackend(path)


def _both(model: onnx.ModelProto, feeds, tmp_path):
    """(lowered backend result or its error text, kernel result or its error text)."""
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    results = []
    for lower in (True, False):
        backend = OnnxRuntimeBackend(path, lower_roi_align=lower)
        assert backend.lowered == (1 if lower else 0)
        try:
            results.append(backend.session.run(None, feeds)[0])
        except Exception as exc:  # noqa: BLE001  onnxruntime's own error types
            results.append(str(exc))
    return results


# Not tried: a coordinate of 1e30, which onnxruntime 1.32's own kernel refuses with an integer-overflow error
# in a plain process but crashed the interpreter (segmentation fault) inside pytest.
@pytest.mark.parametrize("problem", ["inf", "nan", "negative index", "index past N"])
def test_inputs_the_kernel_refuses_still_meet_its_check(problem, tmp_path):
    """Non-finite or absurd RoIs and out-of-range batch indices run on onnxruntime's kernel, which refuses
    them; the lowered form would wrap a negative index, and an infinite length would zero every RoI."""
    feeds = _case(3)
    feeds["X"] = np.concatenate([feeds["X"], feeds["X"]])[:2]
    if problem in ("inf", "nan"):
        feeds["rois"][1, 2] = {"inf": np.inf, "nan": np.nan}[problem]
    else:
        feeds["batch"][0] = -1 if problem == "negative index" else 2
    lowered, kernel = _both(_model(), feeds, tmp_path)
    assert isinstance(kernel, str), "the kernel accepted it"
    assert isinstance(lowered, str) and "RoiAlign" in lowered, lowered


def test_a_long_roi_takes_the_kernel_and_the_others_are_unchanged(tmp_path):
    feeds = _case(3)
    feeds["rois"][0] = [-5.0, -5.0, 70000.0, 60.0]  # 70000 * 0.25 / 7 = 2500 samples per bin, over MAX_GRID
    lowered, kernel = _both(_model(), feeds, tmp_path)
    np.testing.assert_allclose(lowered, kernel, rtol=0, atol=2e-6)


def test_zero_channels_give_the_kernels_empty_bins(tmp_path):
    feeds = _case(3)
    feeds["X"] = feeds["X"][:, :0]
    lowered, kernel = _both(_model(), feeds, tmp_path)
    assert not isinstance(kernel, str) and lowered.shape == kernel.shape == (feeds["rois"].shape[0], 0, 7, 7)


def test_non_square_nodes_stay_and_the_square_ones_are_still_lowered():
    model, odd = _model(), _model()
    node = odd.graph.node[0]
    for a in node.attribute:
        if a.name == "output_width":
            a.i = 3
    node.output[0] = "Y2"
    model.graph.node.append(node)
    model.graph.output.append(helper.make_tensor_value_info("Y2", TensorProto.FLOAT, ["r", "c", 7, 3]))
    assert lower_roi_align(model) == 1
    assert [n.op_type for n in model.graph.node].count("RoiAlign") == 1  # the 7x3 one, on the kernel
    feeds = _case(4)
    y, y2 = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert y.shape[2:] == (7, 7) and y2.shape[2:] == (7, 3)
