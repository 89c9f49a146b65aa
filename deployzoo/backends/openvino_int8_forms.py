"""Graph forms whose int8 kernels are the fast ones in OpenVINO on AVX2 CPUs without AVX-512 or VNNI: constant-weight
matrix products and non-overlapping transposed convolutions, both rewritten as 1x1 convolutions before NNCF
quantizes.

Why: without VNNI, OpenVINO's CPU plugin (2026.4) runs an int8 FullyConnected through a generic int8 GEMM that is
no faster than its fp32 one, and runs a transposed convolution in fp32 even when NNCF quantized its inputs, while
its int8 1x1 convolution has a kernel of its own. Measured 2026-12-01 on a 2-core AMD EPYC (AVX2/FMA, no VNNI),
2 threads, Cascade Mask R-CNN's fc6 ([1000, 12544] x [12544, 1024]): FullyConnected fp32 226 ms, int8 228-251 ms
(``jit_gemm_I8``); the same product as a 1x1 convolution over 1000 images of 12544 channels, int8: 124 ms
(``jit_avx2_1x1_I8``). The whole Cascade int8 graph went from 2.47-2.83 to 2.06-2.53 s per inference
(interleaved pairs, same calibration; RefineDet's three small upsamplings: no change either way). In fp32
that convolution form is ten times slower than FullyConnected (2.2 s), so the forms are for the int8 recipe only,
and each rewritten convolution must come out of NNCF quantized (``unquantized`` says which did not). Other CPUs
keep the graph as it is: with VNNI or AMX the int8 FullyConnected kernels are the fast ones, and AVX-512 CPUs
without VNNI and non-x86 machines were not measured (``wants_1x1_forms``).

Both rewrites compute the same sums as the original op (exact up to fp32 summation order):
- MatMul x [R, K] by a constant W [K, N] (or [N, K] with ``transpose_b``) -> Reshape [R, K, 1, 1] -> Convolution
  with weight [N, K, 1, 1] -> Reshape [R, N].
- ConvolutionBackpropData with kernel s x s, stride s, no padding (each output pixel from one input pixel, as the
  Mask R-CNN mask heads' 2x2 stride-2 upsampling) -> 1x1 Convolution to C_out*s*s channels -> DepthToSpace(s),
  output channel o at offset (a, b) of each s x s block taken from channel o*s*s + a*s + b (depth-first order).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

# x86 /proc/cpuinfo flags that give OpenVINO fast int8 FullyConnected kernels (int8 dot-product instructions).
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
SUFFIX = "/as_1x1_convolution"  # friendly-name suffix of each rewritten op's convolution


def wants_1x1_forms(cpuinfo: str | Path = "/proc/cpuinfo", machine: str | None = None) -> bool:
    """True on an x86-64 CPU (``machine``, default ``platform.machine()``) with AVX2 and neither AVX-512 nor any of
    ``INT8_DOT_FLAGS``: the kind of CPU where the forms were measured to pay. False elsewhere, also where the flags
    cannot be read (not Linux): AVX-512 CPUs without VNNI and other architectures were not measured."""
    import platform

    from deployzoo.doctor import cpu_flags

    if (machine or platform.machine()).lower() not in ("x86_64", "amd64"):
        return False
    flags = cpu_flags(cpuinfo)
    return bool(flags) and "avx2" in flags and "avx512f" not in flags and not (flags & INT8_DOT_FLAGS)


def as_1x1_convolutions(model) -> list[str]:
    """Rewrite, in place, the constant-weight matrix products and non-overlapping transposed convolutions of
    ``model`` (an ``openvino.Model``) as 1x1 convolutions; returns the new convolutions' friendly names (the
    original op's name + ``SUFFIX``)."""
    return _matmuls(model) + _deconvolutions(model)


def _conv1x1(x, weight: np.ndarray, name: str):
    from openvino import opset13 as ops

    conv = ops.convolution(x, ops.constant(np.ascontiguousarray(weight, dtype=np.float32)), strides=[1, 1],
                           pads_begin=[0, 0], pads_end=[0, 0], dilations=[1, 1])
    conv.set_friendly_name(name + SUFFIX)
    return conv


def _f32(*outputs) -> bool:
    from openvino import Type

    return all(output.get_element_type() == Type.f32 for output in outputs)


def _matmuls(model) -> list[str]:
    """fp32 MatMul with a computed rank-2 first input [R, K] (R may be dynamic) and a 2-D Constant second input;
    products with ``transpose_a``, a computed second input, a constant first one (NNCF quantizes no constant
    activation, and one unquantized form would undo them all), other ranks or element types are left as they are."""
    from openvino import opset13 as ops

    rewritten = []
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MatMul":
            continue
        x, weight = node.input_value(0), node.input_value(1)
        attributes = node.get_attributes()
        rank = x.get_partial_shape().rank
        if (weight.get_node().get_type_name() != "Constant" or x.get_node().get_type_name() == "Constant"
                or attributes["transpose_a"] or not rank.is_static or rank.get_length() != 2 or not _f32(x, weight)):
            continue
        w = weight.get_node().get_data()
        if w.ndim != 2:
            continue
        w = w if attributes["transpose_b"] else w.T  # [N, K]: output channels first, as a convolution holds them
        n, k = w.shape
        images = ops.reshape(x, ops.constant(np.array([-1, k, 1, 1], np.int64)), special_zero=False)
        conv = _conv1x1(images, w.reshape(n, k, 1, 1), node.get_friendly_name())
        node.output(0).replace(ops.reshape(conv, ops.constant(np.array([-1, n], np.int64)), special_zero=False)
                               .output(0))
        rewritten.append(conv.get_friendly_name())
    return rewritten


def _deconvolutions(model) -> list[str]:
    """fp32 ConvolutionBackpropData (2-D, no output-shape input) with a Constant weight [C_in, C_out, s, s],
    strides (s, s), no padding, output padding or dilation; anything else is left as it is."""
    from openvino import opset13 as ops

    rewritten = []
    for node in model.get_ordered_ops():
        if node.get_type_name() != "ConvolutionBackpropData" or node.get_input_size() != 2:
            continue
        weight = node.input_value(1).get_node()
        attributes = node.get_attributes()
        if weight.get_type_name() != "Constant" or not _f32(node.input_value(0), node.input_value(1)):
            continue
        w = weight.get_data()
        if w.ndim != 4 or w.shape[2] != w.shape[3]:
            continue
        s = w.shape[2]
        if (list(attributes["strides"]) != [s, s] or any(attributes["pads_begin"]) or any(attributes["pads_end"])
                or any(attributes["output_padding"]) or list(attributes["dilations"]) != [1, 1]
                or attributes["auto_pad"] not in ("explicit", "notset")):
            continue
        c_in, c_out = w.shape[:2]
        # row o*s*s + a*s + b of the 1x1 weight is W[:, o, a, b]: depth-first order for DepthToSpace
        conv = _conv1x1(node.input_value(0), w.transpose(1, 2, 3, 0).reshape(c_out * s * s, c_in, 1, 1),
                        node.get_friendly_name())
        node.output(0).replace(ops.depth_to_space(conv, "depth_first", s).output(0))
        rewritten.append(conv.get_friendly_name())
    return rewritten


def unquantized(model, names: list[str]) -> list[str]:
    """Those of the convolutions ``names`` in ``model`` (after NNCF) whose activation input does not come from a
    FakeQuantize node (directly or through the rewrite's Reshape, where NNCF may put it), i.e. that would run in
    fp32, where this form is slow."""
    fed = {}
    for node in model.get_ordered_ops():
        if node.get_friendly_name() in names:
            source = node.input_value(0).get_node()
            while source.get_type_name() == "Reshape":
                source = source.input_value(0).get_node()
            fed[node.get_friendly_name()] = source.get_type_name() == "FakeQuantize"
    return [name for name in names if not fed.get(name, False)]
