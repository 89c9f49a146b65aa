"""ONNX ``RoiAlign`` (avg mode) rewritten as standard ops that ONNX Runtime's CPU provider runs fast.

Why: ONNX Runtime 1.2x's CPU RoiAlign kernel walks every channel of every bin with scalar code. On the
Cascade Mask R-CNN graph it took 1.11 s of a 4.3 s image on a 2-core AVX2 EPYC, where OpenVINO's kernel took
0.12 s for the same RoIs (README, "Where the fp32 time goes"). The maths here is deployzoo.ops.roi_align's
separable form: bilinear sampling then averaging is, per RoI, ``bins = Wy @ crop @ Wx^T`` with ``Wy`` [out,
h_crop] and ``Wx`` [out, w_crop] holding each sample's two taps divided by its axis's sample count, over the
crop of the map that the samples touch. Crops are gathered from a channels-last copy of the map, so both
contractions are GEMMs over all channels at once.

Graph: the per-axis weights of all RoIs are built at once (ScatterElements with add); the RoIs are sorted
by crop size and cut into chunks of ``CHUNK`` RoIs, and a Loop gathers each chunk's crops (padded to the
chunk's largest, pads read a zero row with weight 0) and runs the two batched MatMuls. Results are
put back in RoI order by one Gather. Only the arithmetic's summation order differs from the kernel's
(float32 rounding; the fixtures' 1e-4 tolerance is four orders wider).

Semantics follow the ONNX RoiAlign operator (opset 16), as onnxruntime's CPU kernel computes it
(onnxruntime/core/providers/cpu/object_detection/roialign.cc): sample y = start + p * bin + (i + 0.5) * bin /
grid with grid = sampling_ratio or ceil(roi_height / out); samples outside [-1, size] count zero; positions
clamp at 0 and at size - 1; ``output_half_pixel`` (legacy, not aligned) forces lengths to at least 1.

The rewritten graph is for ONNX Runtime only: OpenVINO keeps the single node, which its CPU plugin runs fast.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# RoIs per Loop iteration. Their crops, [CHUNK, h, w, C] at about 20 x 20 x 256 floats for a box stage, stay
# a few MB, and 1000 RoIs take about 30 iterations (each costs some tens of microseconds of Loop overhead).
CHUNK = 32
# With adaptive sampling, a RoI longer than this many samples per bin (x output size, in map pixels) goes to
# onnxruntime's kernel: the lowered form's sample tensors grow with the longest RoI ([R, out, samples]).
MAX_GRID = 64


def lower_roi_align(model: onnx.ModelProto, chunk: int = CHUNK) -> int:
    """Replace every avg-mode, square-output ``RoiAlign`` node of ``model``'s main graph in place; returns how many.

    Each becomes an If: the lowered form when its inputs fit (finite RoIs, batch indices in range, channels,
    RoIs not absurdly long), else the original node, so that bad inputs meet onnxruntime's own checks.
    Max-mode and non-square nodes, and nodes inside subgraphs, are left as they are. Raises ValueError for
    a model whose default-domain opset is below 16 (Loop and ScatterElements-with-add need it).
    """
    graph = model.graph
    # Max mode and non-square bins are left to the kernel (each node on its own: the others are still lowered).
    targets = [n for n in graph.node if n.op_type == "RoiAlign" and n.domain in ("", "ai.onnx")
               and _attr(n, "mode", b"avg") == b"avg"
               and int(_attr(n, "output_height", 1)) == int(_attr(n, "output_width", 1))]
    if not targets:
        return 0
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 16:
        raise ValueError(f"RoiAlign lowering needs opset >= 16, the model has {opset}")
    nodes = []
    for index, node in enumerate(graph.node):
        if node in targets:
            nodes += _Lowering(node, f"roialign{index}", opset, chunk).nodes()
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(targets)


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class _Lowering:
    """The nodes replacing one RoiAlign node; every name is prefixed so several lowerings can coexist."""

    def __init__(self, node: onnx.NodeProto, prefix: str, opset: int, chunk: int):
        self.node, self.prefix, self.opset, self.chunk = node, prefix, opset, chunk
        self.out = int(_attr(node, "output_height", 1))  # square: lower_roi_align leaves the others
        self.ratio = int(_attr(node, "sampling_ratio", 0))
        self.scale = float(_attr(node, "spatial_scale", 1.0))
        mode = _attr(node, "coordinate_transformation_mode", b"half_pixel")
        self.aligned = (mode.decode() if isinstance(mode, bytes) else mode) == "half_pixel"
        self.list: list[onnx.NodeProto] = []
        self.count = 0

    # -- small builders ------------------------------------------------------------------------------------

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}/{hint}_{self.count}"

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, outputs: int = 1, into=None, **attrs):
        names = [self.name(hint or op_type) for _ in range(outputs)]
        (into if into is not None else self.list).append(
            helper.make_node(op_type, inputs, names, name=self.name(op_type), **attrs))
        return names[0] if outputs == 1 else names

    def const(self, value, dtype=np.float32, into=None) -> str:
        out = self.name("const")
        tensor = numpy_helper.from_array(np.asarray(value, dtype=dtype), out)
        (into if into is not None else self.list).append(
            helper.make_node("Constant", [], [out], name=self.name("Constant"), value=tensor))
        return out

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: int = 0, into=None) -> str:
        if self.opset >= 18:
            return self.op(op_type, [x, self.const(axes, np.int64, into)], keepdims=keepdims, into=into)
        return self.op(op_type, [x], axes=axes, keepdims=keepdims, into=into)

    def unsqueeze(self, x: str, axes: list[int], into=None) -> str:
        return self.op("Unsqueeze", [x, self.const(axes, np.int64, into)], into=into)

    # -- the graph -----------------------------------------------------------------------------------------

    def axis(self, c1: str, c2: str, size: str) -> tuple[str, str, str]:
        """Per-RoI weights along one axis: W [R, out, L+1] (column k = map index first + k, column L a spare
        with weight 0), ``first`` [R] int64 and crop length [R] int64 (0 when no sample lands on the map).
        ``size`` is the map's length on this axis (float scalar)."""
        f32, i64 = TensorProto.FLOAT, TensorProto.INT64
        offset = self.const(0.5 if self.aligned else 0.0)
        scale = self.const(self.scale)
        start = self.op("Sub", [self.op("Mul", [c1, scale]), offset])
        end = self.op("Sub", [self.op("Mul", [c2, scale]), offset])
        length = self.op("Sub", [end, start])
        if not self.aligned:
            length = self.op("Max", [length, self.const(1.0)])  # the legacy kernel forces 1 pixel
        out = self.const(float(self.out))
        bin_size = self.op("Div", [length, out])
        if self.ratio > 0:
            grid = self.op("Expand", [self.const(float(self.ratio)), self.op("Shape", [length])])
        else:
            grid = self.op("Max", [self.op("Ceil", [self.op("Div", [length, out])]), self.const(0.0)])
        # G = the largest sample count: steps 0..G-1, those past a RoI's own count are unused.
        g_max = self.op("Cast", [self.reduce("ReduceMax", grid, [0])], to=i64)
        g_max = self.op("Max", [g_max, self.const(0, np.int64)])  # no RoIs: ReduceMax of nothing
        steps = self.op("Cast", [self.op("Range", [self.const(0, np.int64), g_max, self.const(1, np.int64)])], to=f32)
        bins = self.const(np.arange(self.out, dtype=np.float32).reshape(1, self.out, 1))
        start3 = self.unsqueeze(start, [1, 2])
        bin3 = self.unsqueeze(bin_size, [1, 2])
        grid3 = self.unsqueeze(grid, [1, 2])
        grid_f = self.op("Max", [grid3, self.const(1.0)])
        # pos = (start + p * bin) + ((i + 0.5) * bin) / grid, in the kernel's order
        half = self.op("Add", [steps, self.const(0.5)])
        pos = self.op("Add", [self.op("Add", [start3, self.op("Mul", [bins, bin3])]),
                              self.op("Div", [self.op("Mul", [half, bin3]), grid_f])])  # [R, out, G]
        used = self.op("And", [self.op("Less", [steps, grid3]),
                               self.op("And", [self.op("GreaterOrEqual", [pos, self.const(-1.0)]),
                                               self.op("LessOrEqual", [pos, size])])])
        pos = self.op("Max", [pos, self.const(0.0)])
        low = self.op("Floor", [pos])
        last_index = self.op("Sub", [size, self.const(1.0)])
        at_edge = self.op("GreaterOrEqual", [low, last_index])
        low = self.op("Where", [at_edge, last_index, low])
        high = self.op("Where", [at_edge, low, self.op("Add", [low, self.const(1.0)])])
        pos = self.op("Where", [at_edge, low, pos])
        frac = self.op("Sub", [pos, low])
        weight = self.op("Div", [self.op("Cast", [used], to=f32), grid_f])
        w_low = self.op("Mul", [self.op("Sub", [self.const(1.0), frac]), weight])
        w_high = self.op("Mul", [frac, weight])
        low_i = self.op("Cast", [low], to=i64)
        high_i = self.op("Cast", [high], to=i64)
        big = self.const(np.iinfo(np.int64).max, np.int64)
        first = self.reduce("ReduceMin", self.op("Where", [used, low_i, big]), [1, 2])  # [R]
        last = self.reduce("ReduceMax", self.op("Where", [used, self.op("Add", [high_i, self.const(1, np.int64)]),
                                                          self.const(0, np.int64)]), [1, 2])
        zero_i = self.const(0, np.int64)
        first = self.op("Where", [self.op("Less", [first, big]), first, zero_i])  # RoIs with no sample
        # last > 0 exactly where some sample of the RoI lands on the map
        crop = self.op("Where", [self.op("Greater", [last, zero_i]), self.op("Max", [self.op("Sub", [last, first]), zero_i]),
                                 zero_i])  # [R]
        width = self.op("Max", [self.reduce("ReduceMax", crop, [0]), zero_i])  # L (0 when there are no RoIs)
        first3 = self.unsqueeze(first, [1, 2])
        spare = self.unsqueeze(width, [0])
        taps = self.op("Concat", [self.op("Where", [used, self.op("Sub", [low_i, first3]), spare]),
                                  self.op("Where", [used, self.op("Sub", [high_i, first3]), spare])], axis=2)
        tap_weights = self.op("Concat", [w_low, w_high], axis=2)
        rois = self.op("Shape", [c1])
        shape = self.op("Concat", [rois, self.const([self.out], np.int64),
                                   self.unsqueeze(self.op("Add", [width, self.const(1, np.int64)]), [0])], axis=0)
        zeros = self.op("ConstantOfShape", [shape], value=numpy_helper.from_array(np.zeros(1, np.float32)))
        weights = self.op("ScatterElements", [zeros, taps, tap_weights], axis=2, reduction="add")
        return weights, first, crop

    def nodes(self) -> list[onnx.NodeProto]:
        f32 = TensorProto.FLOAT
        features, rois, batch = self.node.input[:3]
        out = self.out
        # Map sizes and the channels-last map with one zero row at the end, [N*H*W + 1, C]. Outside the If
        # below, so that onnxruntime computes it once for all the poolers that read the same FPN level.
        shape = self.op("Shape", [features])
        n, c, h, w = (self.op("Gather", [shape, self.const(k, np.int64)], axis=0) for k in range(4))
        pad_row = self.op("Mul", [self.op("Mul", [n, h]), w])  # N*H*W: index of the zero row
        flat = self.op("Reshape", [self.op("Transpose", [features], perm=[0, 2, 3, 1]),
                                   self.op("Concat", [self.unsqueeze(pad_row, [0]), self.unsqueeze(c, [0])], axis=0)],
                       allowzero=1)  # C may be 0: a 0 in the shape means 0 here, not "copy this dimension"
        zero_row = self.op("ConstantOfShape", [self.op("Concat", [self.const([1], np.int64), self.unsqueeze(c, [0])],
                                                       axis=0)], value=numpy_helper.from_array(np.zeros(1, np.float32)))
        flat = self.op("Concat", [flat, zero_row], axis=0)
        # batch_indices is int64 by the operator's definition: no Cast (onnxruntime would drop a no-op Cast and
        # warn that it cannot rename its uses inside the If's subgraphs).
        condition = self.inputs_fit(rois, batch, n, c)
        outer, self.list = self.list, []
        result = self.lowered(rois, batch, flat, c, h, w, pad_row)
        then_branch = helper.make_graph(self.list, self.name("lowered"), [],
                                        [helper.make_tensor_value_info(result, f32, [None, None, out, out])])
        kernel_out = self.name("kernel")
        kernel = helper.make_node("RoiAlign", list(self.node.input), [kernel_out], name=self.name("RoiAlign"),
                                  domain=self.node.domain)
        kernel.attribute.extend(self.node.attribute)
        else_branch = helper.make_graph([kernel], self.name("kernel"), [],
                                        [helper.make_tensor_value_info(kernel_out, f32, [None, None, out, out])])
        self.list = outer
        self.list.append(helper.make_node("If", [condition], [self.node.output[0]], name=self.name("If"),
                                          then_branch=then_branch, else_branch=else_branch))
        return self.list

    def inputs_fit(self, rois: str, batch: str, n: str, c: str) -> str:
        """True when the lowered form gives the kernel's answer at a sane cost: every RoI coordinate finite,
        every batch index in [0, N), at least one channel and, with adaptive sampling, no RoI longer than
        64 bins' worth of samples per bin. Otherwise the If runs onnxruntime's own kernel, which refuses
        non-finite RoIs and out-of-range indices with its own error (the lowered Gathers would wrap a
        negative index, and an infinite length would leave no sample for any RoI)."""
        i64 = TensorProto.INT64
        def with_zero_i(x: str) -> str:  # the values flattened, plus a 0, so that no RoIs reduce to 0
            return self.op("Concat", [self.op("Reshape", [x, self.const([-1], np.int64)]), self.const([0], np.int64)],
                           axis=0)

        bad = self.op("Cast", [self.op("Or", [self.op("IsNaN", [rois]), self.op("IsInf", [rois])])], to=i64)
        finite = self.op("Equal", [self.reduce("ReduceMax", with_zero_i(bad), [0]), self.const(0, np.int64)])
        low = self.op("GreaterOrEqual", [self.reduce("ReduceMin", with_zero_i(batch), [0]), self.const(0, np.int64)])
        high = self.op("Less", [self.reduce("ReduceMax", with_zero_i(batch), [0]), n])
        channels = self.op("Greater", [c, self.const(0, np.int64)])
        fits = self.op("And", [self.op("And", [finite, channels]), self.op("And", [low, high])])
        if self.ratio > 0:
            return fits
        lengths = self.op("Sub", [self.op("Gather", [rois, self.const([2, 3], np.int64)], axis=1),
                                  self.op("Gather", [rois, self.const([0, 1], np.int64)], axis=1)])
        longest = self.reduce("ReduceMax", self.op("Concat", [self.op("Reshape", [lengths, self.const([-1], np.int64)]),
                                                              self.const([0.0])], axis=0), [0])
        short = self.op("LessOrEqual", [self.op("Mul", [longest, self.const(self.scale)]),
                                        self.const(float(MAX_GRID * self.out))])
        return self.op("And", [fits, short])

    def lowered(self, rois: str, batch: str, flat: str, c: str, h: str, w: str, pad_row: str) -> str:
        """The lowered computation (into self.list); returns the name of its [R, C, out, out] result."""
        f32 = TensorProto.FLOAT
        out = self.out
        coords = [self.op("Gather", [rois, self.const(k, np.int64)], axis=1) for k in range(4)]  # [R] each
        h_f, w_f = self.op("Cast", [h], to=f32), self.op("Cast", [w], to=f32)
        wy, y0, crop_h = self.axis(coords[1], coords[3], h_f)
        wx, x0, crop_w = self.axis(coords[0], coords[2], w_f)
        # Sort by crop height rounded up to steps of 1/4 of its power of two (at most 25% padding), then by
        # width, so that a chunk's crops are alike in both; pad the order to whole chunks.
        r = self.op("Gather", [self.op("Shape", [coords[0]]), self.const(0, np.int64)], axis=0)
        key = self.op("Add", [self.op("Mul", [self.rounded_up(crop_h), self.const(1 << 20, np.int64)]), crop_w])
        _, order = self.op("TopK", [key, self.unsqueeze(r, [0])], outputs=2, axis=0, largest=0, sorted=1)
        chunk = self.const(self.chunk, np.int64)
        chunks = self.op("Div", [self.op("Add", [r, self.const(self.chunk - 1, np.int64)]), chunk])
        padded = self.op("Mul", [chunks, chunk])
        extra = self.op("Sub", [padded, r])
        order = self.op("Concat", [order, self.op("Expand", [self.const([0], np.int64), self.unsqueeze(extra, [0])])],
                        axis=0)
        body = self.loop_body(flat, wy, wx, y0, x0, crop_h, crop_w, batch, order, h, w, pad_row)
        loop_out = self.name("loop_bins")
        self.list.append(helper.make_node("Loop", [chunks, ""], [loop_out], name=self.name("Loop"), body=body))
        # [chunks, CHUNK, out, out, C] -> [padded, out, out, C] -> RoI order -> [R, C, out, out]
        bins = self.op("Reshape", [loop_out, self.op("Concat", [self.const([-1, out, out], np.int64),
                                                                  self.unsqueeze(c, [0])], axis=0)])
        position = self.op("ScatterElements", [self.op("Expand", [self.const([0], np.int64), self.unsqueeze(r, [0])]),
                                               self.op("Slice", [order, self.const([0], np.int64),
                                                                 self.unsqueeze(r, [0])]),
                                               self.op("Range", [self.const(0, np.int64), r, self.const(1, np.int64)])],
                           axis=0)
        ordered = self.op("Gather", [bins, position], axis=0)
        return self.op("Transpose", [ordered], perm=[0, 3, 1, 2])

    def rounded_up(self, length: str) -> str:
        """int64 lengths rounded up to a step of 2^(floor(log2(length)) - 2), at least 1: the graph form of
        deployzoo.ops.roi_align._round_up, which groups the eager batched form's crops the same way."""
        f32, i64 = TensorProto.FLOAT, TensorProto.INT64
        value = self.op("Max", [self.op("Cast", [length], to=f32), self.const(1.0)])
        power = self.op("Floor", [self.op("Div", [self.op("Log", [value]), self.const(np.log(2.0))])])
        step = self.op("Max", [self.op("Pow", [self.const(2.0), self.op("Sub", [power, self.const(2.0)])]),
                               self.const(1.0)])
        return self.op("Cast", [self.op("Mul", [self.op("Ceil", [self.op("Div", [value, step])]), step])], to=i64)

    def loop_body(self, flat, wy, wx, y0, x0, crop_h, crop_w, batch, order, h, w, pad_row):
        """One chunk: gather its crops [K, hc, wc * C] and run the two batched MatMuls -> [K, out, out, C]."""
        f32, i64 = TensorProto.FLOAT, TensorProto.INT64
        body: list[onnx.NodeProto] = []
        it, cond_in, cond_out = self.name("iter"), self.name("cond_in"), self.name("cond_out")
        body.append(helper.make_node("Identity", [cond_in], [cond_out], name=self.name("Identity")))
        start = self.op("Mul", [it, self.const(self.chunk, np.int64, body)], into=body)
        stop = self.op("Add", [start, self.const(self.chunk, np.int64, body)], into=body)
        idx = self.op("Slice", [order, self.unsqueeze(start, [0], body), self.unsqueeze(stop, [0], body)], into=body)
        ch, cw, oy, ox, b, wy, wx = (self.op("Gather", [x, idx], axis=0, into=body)
                                     for x in (crop_h, crop_w, y0, x0, batch, wy, wx))
        one = self.const(1, np.int64, body)
        hc = self.op("Max", [self.reduce("ReduceMax", ch, [0], into=body), one], into=body)
        wc = self.op("Max", [self.reduce("ReduceMax", cw, [0], into=body), one], into=body)
        zero = self.const(0, np.int64, body)
        starts, axes = self.const([0], np.int64, body), self.const([2], np.int64, body)
        wyc = self.op("Slice", [wy, starts, self.unsqueeze(hc, [0], body), axes], into=body)  # [K, out, hc]
        wxc = self.op("Slice", [wx, starts, self.unsqueeze(wc, [0], body), axes], into=body)  # [K, out, wc]
        dy = self.op("Range", [zero, hc, one], into=body)
        dx = self.op("Range", [zero, wc, one], into=body)
        in_y = self.op("Less", [self.unsqueeze(dy, [0], body), self.unsqueeze(ch, [1], body)], into=body)  # [K, hc]
        in_x = self.op("Less", [self.unsqueeze(dx, [0], body), self.unsqueeze(cw, [1], body)], into=body)  # [K, wc]
        rows = self.op("Add", [self.unsqueeze(self.op("Mul", [b, h], into=body), [1], body),
                               self.op("Add", [self.unsqueeze(oy, [1], body), self.unsqueeze(dy, [0], body)], into=body)],
                       into=body)  # [K, hc]: b * H + y
        cols = self.op("Add", [self.unsqueeze(ox, [1], body), self.unsqueeze(dx, [0], body)], into=body)  # [K, wc]
        index = self.op("Add", [self.op("Mul", [self.unsqueeze(rows, [2], body), w], into=body),
                                self.unsqueeze(cols, [1], body)], into=body)  # [K, hc, wc]
        inside = self.op("And", [self.unsqueeze(in_y, [2], body), self.unsqueeze(in_x, [1], body)], into=body)
        index = self.op("Where", [inside, index, pad_row], into=body)
        crops = self.op("Gather", [flat, index], axis=0, into=body)  # [K, hc, wc, C]
        k = self.const([self.chunk], np.int64, body)
        crops = self.op("Reshape", [crops, self.op("Concat", [k, self.unsqueeze(hc, [0], body), self.const([-1], np.int64,
                                                                                                             body)],
                                                           axis=0, into=body)], into=body)
        first = self.op("MatMul", [wyc, crops], into=body)  # [K, out, wc * C]
        first = self.op("Reshape", [first, self.op("Concat", [k, self.const([self.out], np.int64, body),
                                                              self.unsqueeze(wc, [0], body), self.const([-1], np.int64, body)],
                                                           axis=0, into=body)], into=body)  # [K, out, wc, C]
        bins = self.op("MatMul", [self.unsqueeze(wxc, [1], body), first], into=body)  # [K, out(i), out(j), C]
        graph = helper.make_graph(
            body, self.name("body"),
            [helper.make_tensor_value_info(it, i64, []), helper.make_tensor_value_info(cond_in, TensorProto.BOOL, [])],
            [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
             helper.make_tensor_value_info(bins, f32, [self.chunk, self.out, self.out, None])],
        )
        return graph
