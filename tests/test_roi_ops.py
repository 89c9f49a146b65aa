"""RoIAlign and multi-level RoI pooling: eager vs a per-sample reference loop, and eager vs ONNX Runtime."""
from __future__ import annotations

import io
import math
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from deployzoo.ops.roi_align import roi_align
from deployzoo.ops.roi_extractor import MultiLevelRoIAlign, map_roi_levels

F32 = np.float32


def _reference_roi_align(features, boxes, batch_indices, out, scale, sampling_ratio, aligned):
    """mmcv's CPU RoIAlign (avg) written out sample by sample, float32 coordinates, float64 sums."""
    features = np.asarray(features, dtype=np.float32)
    c = features.shape[1]
    result = np.zeros((len(boxes), c, out, out), dtype=np.float64)
    offset = F32(0.5 if aligned else 0.0)
    for r, (box, b) in enumerate(zip(np.asarray(boxes, dtype=np.float32), batch_indices)):
        start_w, start_h, end_w, end_h = (F32(v * F32(scale)) - offset for v in box)
        roi_w, roi_h = F32(end_w - start_w), F32(end_h - start_h)
        if not aligned:
            roi_w, roi_h = max(roi_w, F32(1)), max(roi_h, F32(1))
        bin_w, bin_h = F32(roi_w / F32(out)), F32(roi_h / F32(out))
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / F32(out))
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / F32(out))
        count = max(grid_h * grid_w, 1)
        for ph in range(out):
            for pw in range(out):
                total = np.zeros(c)
                for iy in range(grid_h):
                    y = F32(start_h + F32(ph) * bin_h) + F32(F32(iy + 0.5) * bin_h) / F32(grid_h)
                    for ix in range(grid_w):
                        x = F32(start_w + F32(pw) * bin_w) + F32(F32(ix + 0.5) * bin_w) / F32(grid_w)
                        total += _bilinear(features[b], float(y), float(x))
                result[r, :, ph, pw] = total / count
    return result


def _bilinear(fmap, y, x):
    _, h, w = fmap.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= h - 1:
        y_low = y_high = h - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= w - 1:
        x_low = x_high = w - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    f = fmap.astype(np.float64)
    return (
        hy * hx * f[:, y_low, x_low]
        + hy * lx * f[:, y_low, x_high]
        + ly * hx * f[:, y_high, x_low]
        + ly * lx * f[:, y_high, x_high]
    )


# Map [2, 3, 13, 17] at scale 1/4: the image is 52 x 68 pixels.
BOXES = [
    [3.2, 4.1, 40.7, 30.3],  # ordinary, fractional corners
    [0.0, 0.0, 68.0, 52.0],  # the whole map
    [10.2, 11.3, 10.9, 11.6],  # sub-pixel
    [10.0, 10.0, 10.0, 10.0],  # zero size
    [-20.0, -10.0, 10.0, 8.0],  # partly outside, top-left
    [60.0, 45.0, 90.0, 80.0],  # partly outside, bottom-right
    [-30.0, -30.0, -9.0, -9.0],  # fully outside
    [66.0, 50.0, 68.0, 52.0],  # touching the last row and column
    [5.0, 40.0, 67.9, 51.99],  # reaching the last row and column
    [1.0, 1.0, 200.0, 3.0],  # long and thin, past the right edge
]
BATCH = [0, 1, 1, 0, 1, 0, 1, 0, 1, 1]


@pytest.fixture(scope="module")
def small_map():
    return torch.randn(2, 3, 13, 17, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_matches_reference(small_map, sampling_ratio, aligned):
    boxes = torch.tensor(BOXES)
    batch = torch.tensor(BATCH)
    got = roi_align(small_map, boxes, batch, 7, 0.25, sampling_ratio, aligned).numpy()
    want = _reference_roi_align(small_map.numpy(), BOXES, BATCH, 7, 0.25, sampling_ratio, aligned)
    assert got.shape == (len(BOXES), 3, 7, 7)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_roi_align_empty_cases(small_map):
    boxes = torch.tensor(BOXES)
    batch = torch.tensor(BATCH)
    out = roi_align(small_map, boxes, batch, 7, 0.25)
    assert torch.all(out[3] == 0)  # zero size: no samples at all
    assert torch.all(out[6] == 0)  # fully outside the map
    none = roi_align(small_map, boxes[:0], batch[:0], 7, 0.25)
    assert none.shape == (0, 3, 7, 7)


def test_roi_align_long_thin_and_large_grid():
    """A grid of 40 samples per bin along x; the other output sizes too."""
    fmap = torch.randn(1, 2, 9, 300, generator=torch.Generator().manual_seed(1))
    boxes = [[0.5, 2.0, 1119.0, 6.5], [3.0, 0.0, 400.0, 35.0]]
    for out in (7, 14):
        got = roi_align(fmap, torch.tensor(boxes), torch.tensor([0, 0]), out, 0.25).numpy()
        want = _reference_roi_align(fmap.numpy(), boxes, [0, 0], out, 0.25, 0, True)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_roi_align_many_random_boxes():
    g = torch.Generator().manual_seed(2)
    fmap = torch.randn(2, 4, 20, 24, generator=g)
    xy = torch.rand(40, 2, generator=g) * torch.tensor([110.0, 90.0]) - 10
    wh = torch.rand(40, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + wh], 1)
    batch = torch.randint(0, 2, (40,), generator=g)
    got = roi_align(fmap, boxes, batch, 7, 0.25).numpy()
    want = _reference_roi_align(fmap.numpy(), boxes.numpy(), batch.tolist(), 7, 0.25, 0, True)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def _export(module, args, names, dynamic_axes):
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module, args, buffer, dynamo=False, opset_version=17,
            input_names=names, output_names=["out"], dynamic_axes=dynamic_axes,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    onnx.checker.check_model(proto, full_check=True)
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return proto, session


class _OneLevel(torch.nn.Module):
    def __init__(self, sampling_ratio, aligned):
        super().__init__()
        self.sampling_ratio, self.aligned = sampling_ratio, aligned

    def forward(self, features, boxes, batch):
        return roi_align(features, boxes, batch, 7, 0.125, self.sampling_ratio, self.aligned)


@pytest.mark.parametrize("sampling_ratio, aligned", [(0, True), (2, True), (0, False)])
def test_roi_align_onnx_is_one_roialign_node(sampling_ratio, aligned):
    g = torch.Generator().manual_seed(3)
    fmap = torch.randn(2, 8, 15, 20, generator=g)
    boxes = torch.tensor([[3.0, 4.0, 50.0, 60.0], [0.0, 0.0, 160.0, 120.0]])
    names = ["features", "boxes", "batch"]
    dynamic = {"boxes": {0: "rois"}, "batch": {0: "rois"}, "out": {0: "rois"}}
    proto, session = _export(_OneLevel(sampling_ratio, aligned), (fmap, boxes, torch.tensor([0, 1])), names, dynamic)
    nodes = [n for n in proto.graph.node if n.op_type != "Constant"]
    assert [n.op_type for n in nodes] == ["RoiAlign"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs["coordinate_transformation_mode"] == (b"half_pixel" if aligned else b"output_half_pixel")
    assert attrs["mode"] == b"avg" and attrs["sampling_ratio"] == sampling_ratio
    assert attrs["output_height"] == attrs["output_width"] == 7
    assert attrs["spatial_scale"] == pytest.approx(0.125)
    # Other inputs than the export ones, with a different number of RoIs (BOXES scaled to this map).
    fmap = torch.randn(2, 8, 15, 20, generator=g)
    boxes = torch.tensor(BOXES) * 2.0
    batch = torch.tensor(BATCH)
    got = session.run(None, {"features": fmap.numpy(), "boxes": boxes.numpy(), "batch": batch.numpy()})[0]
    want = roi_align(fmap, boxes, batch, 7, 0.125, sampling_ratio, aligned).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_map_roi_levels_rules():
    sides = [8.0, 55.9, 56.0, 111.9, 112.0, 223.9, 224.0, 447.0, 448.0, 2000.0]
    boxes = torch.tensor([[10.0, 20.0, 10.0 + s, 20.0 + s] for s in sides])
    assert map_roi_levels(boxes, 4, "mmdet").tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]
    assert map_roi_levels(boxes, 4, "detectron2").tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]
    assert map_roi_levels(boxes, 3, "mmdet").max().item() == 2
    assert map_roi_levels(boxes, 3, "detectron2").max().item() == 2
    with pytest.raises(ValueError):
        map_roi_levels(boxes, 4, "mmdet2")


class _Pyramid(torch.nn.Module):
    def __init__(self, rule):
        super().__init__()
        self.pool = MultiLevelRoIAlign(7, [4, 8, 16, 32], sampling_ratio=0, aligned=True, level_rule=rule)

    def forward(self, p2, p3, p4, p5, boxes, batch):
        return self.pool([p2, p3, p4, p5], boxes, batch)


def _pyramid_inputs(seed, sides):
    g = torch.Generator().manual_seed(seed)
    features = [torch.randn(2, 6, 256 // s, 320 // s, generator=g) for s in (4, 8, 16, 32)]
    sides = torch.tensor(sides, dtype=torch.float32)
    xy = torch.rand(len(sides), 2, generator=g) * torch.tensor([300.0, 240.0]) - 20
    aspect = torch.rand(len(sides), generator=g) + 0.5
    wh = torch.stack([sides * aspect.sqrt(), sides / aspect.sqrt()], 1)
    boxes = torch.cat([xy, xy + wh], 1)
    batch = torch.randint(0, 2, (len(sides),), generator=g)
    return features, boxes, batch


def test_multilevel_matches_single_level_calls():
    features, boxes, batch = _pyramid_inputs(4, [20, 60, 100, 130, 250, 300, 500, 700, 40, 900])
    pool = MultiLevelRoIAlign(7, [4, 8, 16, 32])
    levels = map_roi_levels(boxes, 4)
    assert sorted(set(levels.tolist())) == [0, 1, 2, 3]
    got = pool(features, boxes, batch)
    for r in range(len(boxes)):
        level = int(levels[r])
        want = roi_align(features[level], boxes[r : r + 1], batch[r : r + 1], 7, 1.0 / (4 << level))
        np.testing.assert_allclose(got[r : r + 1].numpy(), want.numpy(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError):
        pool(features[:3], boxes, batch)
    # A non-finite box maps to no level: a clear error, not a short inverse (or another RoI's row)
    bad = boxes.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="1 of 10 RoIs map to no FPN level"):
        pool(features, bad, batch)


def test_heads_run_in_level_order_and_come_back_in_roi_order():
    """``level_major`` + the inverse is ``forward`` exactly, and a per-RoI head run by ``per_roi_head`` on the
    level-ordered features gives, row for row, what it gives on ``forward``'s. Not always bit for bit: PyTorch's CPU
    GEMM rounds a row in a short tail block differently (1 ulp at M = 10 here; on the Cascade and Mask R-CNN
    fixture images, 1000 RoIs, the outputs were identical in eager, ONNX Runtime and OpenVINO)."""
    from deployzoo.heads.box_head import Shared2FCBoxHead
    from deployzoo.ops.roi_extractor import per_roi_head

    torch.manual_seed(0)
    head = Shared2FCBoxHead(in_channels=6, fc_channels=32, num_classes=5).eval()
    pool = MultiLevelRoIAlign(7, [4, 8, 16, 32])
    for sides in ([20, 60, 100, 130, 250, 300, 500, 700, 40, 900], [300, 20, 30], [50], []):
        features, boxes, batch = _pyramid_inputs(21, sides)
        pooled, inverse = pool.level_major(features, boxes, batch)
        levels = map_roi_levels(boxes, 4)
        # level-major: each row's RoI is on a level no finer than the row before it
        assert torch.equal(levels[torch.argsort(inverse)], torch.sort(levels, stable=True).values)
        assert torch.equal(pooled.index_select(0, inverse), pool(features, boxes, batch))
        with torch.no_grad():
            got = per_roi_head(head, pool, features, boxes, batch)
            want = head(pool(features, boxes, batch))
        assert len(got) == 2, sides
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6, msg=str(sides))
        # a head with one output (not a tuple) gets one tensor back, not its rows one by one
        with torch.no_grad():
            fc6 = torch.nn.Sequential(torch.nn.Flatten(), head.shared_fcs[0])
            single = per_roi_head(fc6, pool, features, boxes, batch)
            torch.testing.assert_close(single, fc6(pool(features, boxes, batch)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rule", ["mmdet", "detectron2"])
def test_multilevel_onnx_dynamic_rois(rule):
    names = ["p2", "p3", "p4", "p5", "boxes", "batch"]
    dynamic = {"boxes": {0: "rois"}, "batch": {0: "rois"}, "out": {0: "rois"}}
    # Traced with one RoI on each of three levels and none on the fourth: none of that may stick in the graph.
    features, boxes, batch = _pyramid_inputs(5, [30, 150, 300])
    assert map_roi_levels(boxes, 4, rule).tolist() == [0, 1, 2]
    proto, session = _export(_Pyramid(rule).eval(), (*features, boxes, batch), names, dynamic)
    ops = {n.op_type for n in proto.graph.node}
    assert {"NonZero", "RoiAlign", "ScatterElements"} <= ops
    cases = {
        "all levels": [20, 60, 100, 130, 250, 300, 500, 700, 40, 900, 75, 180],
        "no p3": [20, 40, 50, 300, 400, 700],
        "one level": [30, 31, 32],
        "no rois": [],
    }
    for seed, (name, sides) in enumerate(cases.items()):
        features, boxes, batch = _pyramid_inputs(10 + seed, sides)
        feeds = dict(zip(names, [f.numpy() for f in features] + [boxes.numpy(), batch.numpy()]))
        got = session.run(None, feeds)[0]
        want = _Pyramid(rule)(*features, boxes, batch).numpy()
        assert got.shape == want.shape == (len(sides), 6, 7, 7), name
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(np.abs(want).max(initial=0), 1), err_msg=name)
