"""The batched eager RoIAlign against the per-RoI loop: same results on random and fixture RoIs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deployzoo.ops import roi_align as roi_align_module
from deployzoo.ops.roi_align import roi_align, roi_align_batched, roi_align_per_roi
from deployzoo.ops.roi_extractor import map_roi_levels

FIXTURES = Path(__file__).parent / "fixtures"


def _random_case(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 3, (), generator=g))
    c = int(torch.randint(1, 6, (), generator=g))
    h, w = (int(v) for v in torch.randint(1, 30, (2,), generator=g))
    features = torch.randn(n, c, h, w, generator=g)
    count = int(torch.randint(0, 40, (), generator=g))
    xy = torch.rand(count, 2, generator=g) * torch.tensor([w * 4 + 40.0, h * 4 + 40.0]) - 20
    wh = torch.rand(count, 2, generator=g) ** 2 * torch.tensor([w * 6.0, h * 6.0])
    if seed % 5 == 0:
        wh = -0.1 * wh  # malformed: x2 < x1
    return features, torch.cat([xy, xy + wh], 1), torch.randint(0, n, (count,), generator=g)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("output_size, sampling_ratio, aligned", [(7, 0, True), (14, 0, True), (7, 2, True), (7, 0, False)])
def test_batched_matches_loop_on_random_rois(seed, output_size, sampling_ratio, aligned):
    features, boxes, batch = _random_case(seed)
    args = (features, boxes, batch, output_size, 0.25, sampling_ratio, aligned)
    want = roi_align_per_roi(*args)
    got = roi_align_batched(*args)
    assert got.shape == want.shape == (boxes.shape[0], features.shape[1], output_size, output_size)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_batched_wide_crops_small_chunks_and_empty(monkeypatch):
    """Crops wider than the rounding keys assumed, several chunks per group, RoIs that touch no pixel."""
    g = torch.Generator().manual_seed(7)
    features = torch.randn(1, 3, 9, 300, generator=g)
    boxes = torch.tensor([[0.5, 2.0, 1119.0, 6.5], [3.0, 0.0, 400.0, 35.0], [-50.0, -50.0, -20.0, -20.0],
                          [10.0, 10.0, 10.0, 10.0]] + [[4.0 * k, 1.0, 4.0 * k + 30.0, 20.0] for k in range(20)])
    batch = torch.zeros(boxes.shape[0], dtype=torch.int64)
    monkeypatch.setattr(roi_align_module, "CHUNK_ELEMENTS", 1000)  # one RoI per chunk
    for size in (7, 14):
        got = roi_align_batched(features, boxes, batch, size, 0.25)
        torch.testing.assert_close(got, roi_align_per_roi(features, boxes, batch, size, 0.25), rtol=1e-6, atol=1e-6)
        assert torch.all(got[2:4] == 0)
    assert roi_align_batched(features, boxes[:0], batch[:0], 7, 0.25).shape == (0, 3, 7, 7)


def test_batched_low_precision_maps():
    features, boxes, batch = _random_case(3)
    for dtype in (torch.bfloat16, torch.float16):
        got = roi_align_batched(features.to(dtype), boxes, batch, 7, 0.25)
        assert got.dtype == dtype
        want = roi_align_per_roi(features.to(dtype), boxes, batch, 7, 0.25)
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("fixture, rule", [("mmdet-mask-rcnn-r50-fpn-1x", "mmdet"),
                                           ("d2-cascade-mask-rcnn-r50-fpn-3x", "detectron2")])
def test_batched_equals_loop_on_fixture_proposals(fixture, rule):
    """The fixture's 1000 RPN proposals on maps of its shapes (fewer channels, to stay fast): to float32
    rounding. Bit for bit on AVX-512 CPUs; on AVX2 the two forms' matmuls sum in another order (3.6e-7 seen)."""
    proposals = torch.from_numpy(np.load(FIXTURES / fixture / "case-1.npz")["rpn_proposals"])
    levels = map_roi_levels(proposals, 4, rule)
    g = torch.Generator().manual_seed(0)
    for level, stride in enumerate((4, 8, 16, 32)):
        index = torch.nonzero(levels == level).squeeze(1)
        features = torch.randn(1, 8, 800 // stride, 1088 // stride, generator=g)
        batch = torch.zeros(index.shape[0], dtype=torch.int64)
        args = (features, proposals[index], batch, 7, 1.0 / stride, 0, True)
        torch.testing.assert_close(roi_align_batched(*args), roi_align_per_roi(*args), rtol=1e-6, atol=1e-6,
                                   msg=lambda m: f"FPN level p{level + 2}: {m}")


def test_roi_align_runs_the_chosen_formulation(monkeypatch):
    features, boxes, batch = _random_case(4)
    calls = []
    for name in ("roi_align_batched", "roi_align_per_roi"):
        original = getattr(roi_align_module, name)
        monkeypatch.setattr(roi_align_module, name, lambda *a, _o=original, _n=name: calls.append(_n) or _o(*a))
    for choice in ("batched", "per-roi"):
        monkeypatch.setattr(roi_align_module, "EAGER", choice)
        roi_align(features, boxes, batch, 7, 0.25)
    assert calls == ["roi_align_batched", "roi_align_per_roi"]


def test_export_traces_the_loop_even_when_batched_is_chosen(monkeypatch):
    import io
    import warnings

    import onnx

    calls = []
    for name in ("roi_align_batched", "roi_align_per_roi"):
        original = getattr(roi_align_module, name)
        monkeypatch.setattr(roi_align_module, name, lambda *a, _o=original, _n=name: calls.append(_n) or _o(*a))
    monkeypatch.setattr(roi_align_module, "EAGER", "batched")

    class OneLevel(torch.nn.Module):
        def forward(self, features, boxes, batch):
            return roi_align(features, boxes, batch, 7, 0.25)

    features, boxes, batch = _random_case(6)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(OneLevel(), (features, boxes, batch), buffer, dynamo=False, opset_version=17)
    assert calls == ["roi_align_per_roi"]
    nodes = [n.op_type for n in onnx.load_from_string(buffer.getvalue()).graph.node if n.op_type != "Constant"]
    assert nodes == ["RoiAlign"]
