"""torch.export of the ops whose eager code runs on the host (RoIAlign's RoI loop, the numpy NMS passes): an exported
program holds them as ``deployzoo::`` custom ops and gives eager's results, and top-k's selection has a static
size there (an AOTInductor package would otherwise assert a guess about it at run time)."""
from __future__ import annotations

import torch

from deployzoo.ops.batched_nms import nms_keep_mask, nms_keep_mask_per_class
from deployzoo.ops.roi_align import roi_align
from deployzoo.ops.roi_extractor import MultiLevelRoIAlign, per_roi_head
from deployzoo.ops.topk import topk_clamped


class _Ops(torch.nn.Module):
    def forward(self, features, boxes, scores):
        rois = boxes[0]
        pooled = roi_align(features, rois, torch.zeros(rois.shape[0], dtype=torch.int64), 7, 0.25, 0, True)
        keep = nms_keep_mask(boxes, scores[:, 0], 0.5, 0.05)
        keep_per_class = nms_keep_mask_per_class(boxes, scores, 0.5, 0.05)
        ranked = torch.where(keep_per_class, scores, -1.0).reshape(scores.shape[0], -1)
        top_scores, top_index = topk_clamped(ranked, 20, dim=1)
        # a size after the top-k: static once the selection's length is known
        return pooled, keep, keep_per_class, top_scores, top_index, top_index.new_zeros(top_index.shape[1] + 1)


def _inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(1, 8, 40, 48, generator=g)
    xy = torch.rand(1, 30, 2, generator=g) * 150
    wh = torch.rand(1, 30, 2, generator=g) * 60 + 1
    boxes = torch.cat([xy, xy + wh], dim=2)
    # ties on purpose: top-k must take the lowest index first in both forms
    scores = (torch.rand(1, 3, 30, generator=g) * 4).round() / 4
    return features, boxes, scores


def test_exported_program_holds_the_custom_ops_and_matches_eager():
    model = _Ops().eval()
    exported = torch.export.export(model, _inputs(0))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    for op in ("deployzoo.roi_align.default", "deployzoo.nms_keep_mask.default",
               "deployzoo.nms_keep_mask_per_class.default"):
        assert op in targets, f"{op} not in the exported graph"
    assert "aten.nonzero.default" in targets  # top-k's selection is still nonzero, with its length stated
    output = next(node for node in exported.graph.nodes if node.op == "output")
    shapes = [tuple(value.meta["val"].shape) for value in output.args[0]]
    assert all(isinstance(d, int) for shape in shapes for d in shape), shapes  # no size left free
    for seed in (0, 1, 2):  # inputs other than the traced ones: no guess about the data is baked in
        args = _inputs(seed)
        with torch.no_grad():
            got, want = exported.module()(*args), model(*args)
        for a, b in zip(got, want):
            assert a.shape == b.shape and a.dtype == b.dtype
            assert torch.equal(a, b)
    assert want[5].shape == (21,)


class _Pooled(torch.nn.Module):
    """A box head on RoIs pooled over FPN levels (each level a nonzero of its own), as the R-CNN models run it."""

    def __init__(self):
        super().__init__()
        self.pooler = MultiLevelRoIAlign(7, (4, 8, 16, 32), level_rule="detectron2")
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 49, 6))

    def forward(self, p2, p3, p4, p5, boxes):
        rois = boxes[0]
        scores = per_roi_head(self.head, self.pooler, [p2, p3, p4, p5], rois,
                              torch.zeros(rois.shape[0], dtype=torch.int64))
        scores = scores.reshape(boxes.shape[0], -1, 6)  # shapes built on the levels' total
        return scores, topk_clamped(scores.reshape(boxes.shape[0], -1), 100, dim=1)[0]


def _levels(seed: int):
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(1, 8, 256 // s, 320 // s, generator=g) for s in (4, 8, 16, 32)]
    xy = torch.rand(1, 50, 2, generator=g) * 200
    wh = torch.rand(1, 50, 2, generator=g) ** 2 * 300 + 2  # small to large: every level gets RoIs
    return (*maps, torch.cat([xy, xy + wh], dim=2))


def test_exported_pooler_keeps_the_rois_count_static():
    torch.manual_seed(0)
    model = _Pooled().eval()
    exported = torch.export.export(model, _levels(0))
    output = next(node for node in exported.graph.nodes if node.op == "output")
    assert [tuple(value.meta["val"].shape) for value in output.args[0]] == [(1, 50, 6), (1, 100)]
    for seed in (0, 1, 2):
        args = _levels(seed)
        with torch.no_grad():
            got, want = exported.module()(*args), model(*args)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
