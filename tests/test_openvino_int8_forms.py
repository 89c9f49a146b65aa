"""Constant-weight matrix products and non-overlapping transposed convolutions as 1x1 convolutions for OpenVINO int8
on CPUs without VNNI: the rewrites are exact in fp32, touch only what they can, are chosen by the CPU's flags, and
are undone where NNCF would leave them fp32."""
from __future__ import annotations

import numpy as np
import pytest

ov = pytest.importorskip("openvino")
from openvino import opset13 as ops

from deployzoo.backends import openvino_int8_forms as mc
from deployzoo.backends.openvino_int8 import nncf_available

needs_nncf = pytest.mark.skipif(not nncf_available(), reason="NNCF is not installed (pip install 'deployzoo[int8]')")

RNG = np.random.default_rng(0)
W1 = (RNG.standard_normal((64, 48)) * 0.1).astype(np.float32)  # [K, N]
W2 = (RNG.standard_normal((16, 48)) * 0.1).astype(np.float32)  # [N, K], used with transpose_b


def _model():
    """x [R, 64] (R dynamic) -> MatMul W1 -> ReLU -> MatMul W2^T (transpose_b) -> + (y @ y^T, computed, kept)."""
    x = ops.parameter([-1, 64], np.float32, name="x")
    h = ops.relu(ops.matmul(x, ops.constant(W1), False, False))
    y = ops.matmul(h, ops.constant(W2), False, True)
    gram = ops.matmul(y, y, False, True)  # second input computed: not a constant-weight product
    lifted = ops.matmul(ops.constant(W1), ops.constant(W1), True, False)  # transpose_a: left alone
    return ov.Model([y, gram, lifted], [x])


def _run(model, x):
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return [compiled({0: x})[out] for out in compiled.outputs]


def _types(model):
    return [node.get_type_name() for node in model.get_ordered_ops()]


def test_rewrite_is_exact_in_fp32_and_touches_only_constant_weight_products():
    x = RNG.standard_normal((7, 64)).astype(np.float32)
    before = _run(_model(), x)
    model = _model()
    names = mc.as_1x1_convolutions(model)
    assert len(names) == 2 and all(n.endswith(mc.SUFFIX) for n in names)
    assert _types(model).count("Convolution") == 2
    assert _types(model).count("MatMul") == 2  # the computed one and the transpose_a one
    assert mc.unquantized(model, names) == names  # no FakeQuantize in front: they would run in fp32
    after = _run(model, x)
    for a, b in zip(before, after):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(after[0], np.maximum(x @ W1, 0) @ W2.T, rtol=1e-4, atol=1e-5)
    # the first dimension stays dynamic: another number of rows runs through the same model
    assert _run(model, x[:3])[0].shape == (3, 16)


def test_products_that_are_not_fp32_or_have_a_constant_activation_are_left_alone():
    x16 = ops.parameter([-1, 64], np.float16, name="x16")
    half = ops.matmul(x16, ops.constant(W1.astype(np.float16)), False, False)
    xi = ops.parameter([-1, 64], np.int32, name="xi")
    integer = ops.matmul(xi, ops.constant(np.ones((64, 4), np.int32)), False, False)
    constant = ops.matmul(ops.constant(W1.T.copy()), ops.constant(W1), False, False)  # nothing for NNCF to quantize
    up16 = ops.convolution_backprop_data(ops.parameter([1, 8, 5, 6], np.float16, name="u16"),
                                         ops.constant(np.ones((8, 6, 2, 2), np.float16)), [2, 2])
    model = ov.Model([half, integer, constant, up16], [x16, xi] + [p for p in [up16.input_value(0).get_node()]])
    assert mc.as_1x1_convolutions(model) == []
    assert "Convolution" not in _types(model)


def _upsampling(stride=2, kernel=2, output_padding=(0, 0)):
    """x [N, 8, 5, 6] -> ConvolutionBackpropData [8, 6, k, k] stride s -> + bias -> ReLU."""
    x = ops.parameter([-1, 8, 5, 6], np.float32, name="x")
    w = ops.constant(np.random.default_rng(kernel * 10 + stride).standard_normal((8, 6, kernel, kernel))
                     .astype(np.float32) * 0.3)
    y = ops.convolution_backprop_data(x, w, [stride, stride], pads_begin=[0, 0], pads_end=[0, 0],
                                      output_padding=list(output_padding))
    bias = ops.constant(np.linspace(-1, 1, 6, dtype=np.float32).reshape(1, 6, 1, 1))
    return ov.Model([ops.relu(ops.add(y, bias))], [x])


@pytest.mark.parametrize("stride, kernel, output_padding, rewritten", [
    (2, 2, (0, 0), True), (3, 3, (0, 0), True),  # each output pixel from one input pixel
    (2, 3, (0, 0), False), (1, 2, (0, 0), False), (2, 2, (1, 1), False)])  # overlapping or padded: left alone
def test_transposed_convolution_rewrite_is_exact_and_only_where_pixels_do_not_overlap(stride, kernel, output_padding,
                                                                                       rewritten):
    x = RNG.standard_normal((3, 8, 5, 6)).astype(np.float32)
    before, = _run(_upsampling(stride, kernel, output_padding), x)
    model = _upsampling(stride, kernel, output_padding)
    names = mc.as_1x1_convolutions(model)
    assert bool(names) is rewritten
    assert ("ConvolutionBackpropData" in _types(model)) is not rewritten
    after, = _run(model, x)
    assert after.shape == before.shape
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flags, wanted", [
    ("fpu sse2 avx avx2 fma f16c", True),
    ("avx2 fma avx512f avx512_vnni", False),
    ("avx2 fma avx_vnni", False),
    ("avx2 avx512f amx_tile amx_int8", False),
    ("sse2 sse4_2", False),  # no AVX2: not what was measured
    ("avx2 fma avx512f avx512bw", False),  # AVX-512 without VNNI (Skylake-X): not measured either
])
def test_the_form_is_chosen_by_the_cpus_int8_dot_product_flags(tmp_path, flags, wanted):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n")
    assert mc.wants_1x1_forms(cpuinfo, machine="x86_64") is wanted


def test_the_form_is_not_chosen_where_the_flags_are_unknown_or_the_cpu_is_not_x86(tmp_path):
    assert mc.wants_1x1_forms(tmp_path / "absent", machine="x86_64") is False
    arm = tmp_path / "cpuinfo"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes sha1 asimddp\n")
    assert mc.wants_1x1_forms(arm, machine="aarch64") is False
    odd = tmp_path / "odd"
    odd.write_text("processor\t: 0\nflags\t\t: avx2 fma\n")
    assert mc.wants_1x1_forms(odd, machine="aarch64") is False  # not x86, whatever the file says
    odd.write_bytes(b"model name\t: \xff\xfe odd bytes\nflags\t\t: avx2 fma\n")  # not UTF-8: still read
    assert mc.wants_1x1_forms(odd, machine="x86_64") is True


def _mlp():
    """x [R, 64] -> MatMul W1 -> ReLU -> MatMul W2^T."""
    x = ops.parameter([-1, 64], np.float32, name="x")
    return ov.Model([ops.matmul(ops.relu(ops.matmul(x, ops.constant(W1), False, False)), ops.constant(W2),
                                False, True)], [x])


def _feeds(shape):
    return [{"x": RNG.standard_normal(shape).astype(np.float32)} for _ in range(4)]


@needs_nncf
@pytest.mark.parametrize("as_1x1", [True, False])
@pytest.mark.parametrize("build, shape, original, count", [(_mlp, (8, 64), "MatMul", 2),
                                                           (_upsampling, (2, 8, 5, 6), "ConvolutionBackpropData", 1)])
def test_quantized_ops_in_either_form_stay_close_to_fp32(as_1x1, build, shape, original, count):
    import nncf

    from deployzoo.backends.openvino_int8 import quantize_model

    said = []
    quantized, applied = quantize_model(nncf, build(), _feeds(shape), ["Relu", "Add"], as_1x1, build, "test",
                                        {"images": 4, "source": "test"}, said.append)
    assert applied is as_1x1
    kind = "Convolution" if as_1x1 else original
    ops_ = [n for n in quantized.get_ordered_ops() if n.get_type_name() == kind]
    assert len(ops_) == count and (original in _types(quantized)) is not as_1x1
    # NNCF holds the weights as int8 constants; the activations go through FakeQuantize
    assert mc.unquantized(quantized, [n.get_friendly_name() for n in ops_]) == []
    assert any("1x1 convolutions" in s for s in said) is as_1x1
    x = RNG.standard_normal(shape).astype(np.float32)
    reference, = _run(build(), x)
    got, = _run(quantized, x)
    assert np.abs(got - reference).max() < 0.15 * np.abs(reference).max()  # 8-bit steps, 4 calibration feeds


@needs_nncf
def test_a_convolution_left_in_fp32_by_nncf_means_the_products_stay_as_they_were(monkeypatch):
    import nncf

    from deployzoo.backends.openvino_int8 import quantize_model

    monkeypatch.setattr(mc, "unquantized", lambda model, names: list(names))
    said = []
    quantized, applied = quantize_model(nncf, _mlp(), _feeds((8, 64)), ["Relu"], True, _mlp, "mlp",
                                        {"images": 4, "source": "test"}, said.append)
    assert applied is False
    assert "Convolution" not in _types(quantized) and _types(quantized).count("MatMul") == 2
    assert any("left 2 of those convolutions in fp32 (" in s and "more" not in s for s in said)
