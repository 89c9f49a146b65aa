"""The mask branch on the final detections (heads/mask_head.detection_mask_probs): only real detections are run,
and detections of one image on the very same box (Cascade's class-agnostic boxes) share one RoI of the head."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deployzoo.heads.mask_head import FCNMaskHead, detection_mask_probs
from deployzoo.ops.roi_extractor import MultiLevelRoIAlign, flatten_rois

STRIDES = (4, 8, 16, 32)


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    head = FCNMaskHead(16, 16, 4, 5).eval()
    pooler = MultiLevelRoIAlign(14, STRIDES, sampling_ratio=0, aligned=True)
    features = tuple(torch.randn(2, 16, 256 // s, 256 // s) for s in STRIDES)
    corner = torch.rand(2, 6, 2) * 150
    boxes = torch.cat([corner, corner + 20 + torch.rand(2, 6, 2) * 60], -1)
    boxes[0, 3] = boxes[0, 1]  # image 0: detections 1, 3 and 4 share a box (three classes of one proposal)
    boxes[0, 4] = boxes[0, 1]
    boxes[1, 2] = boxes[1, 0]  # image 1: 0 and 2 share one
    boxes[1, 5] = boxes[0, 0]  # the same coordinates in another image are another RoI
    boxes[0, 5] = boxes[0, 2]  # a padding row on a real detection's box
    labels = torch.tensor([[0, 1, 2, 3, 4, -1], [4, 3, 2, -1, -1, 1]])
    return head, pooler, features, boxes, labels


def one_by_one(head, pooler, features, boxes, labels) -> torch.Tensor:
    """Each real detection through RoIAlign and the head on its own; padding rows zero."""
    flat, batch_index = flatten_rois(boxes)
    flat_labels = labels.reshape(-1)
    out = torch.zeros(flat_labels.shape[0], 28, 28)
    for v in range(flat_labels.shape[0]):
        if flat_labels[v] >= 0:
            logits = head(pooler(features, flat[v : v + 1], batch_index[v : v + 1]))
            out[v] = logits[0, flat_labels[v]].sigmoid()
    return out.reshape(*labels.shape, 28, 28)


def test_each_detection_gets_its_own_class_mask_and_padding_gets_zeros(case):
    head, pooler, features, boxes, labels = case
    with torch.no_grad():
        got = detection_mask_probs(head, pooler, features, boxes, labels)
        want = one_by_one(head, pooler, features, boxes, labels)
    assert got.shape == (2, 6, 28, 28)
    assert torch.allclose(got, want, rtol=0, atol=1e-6)
    assert not got[0, 5].any() and not got[1, 3].any() and not got[1, 4].any()
    # detections sharing a box read different class channels of the same logits
    assert not torch.equal(got[0, 1], got[0, 3])


def test_the_head_runs_once_per_distinct_box_of_an_image(case):
    head, pooler, features, boxes, labels = case
    seen = []
    hook = head.convs[0].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    try:
        with torch.no_grad():
            detection_mask_probs(head, pooler, features, boxes, labels)
    finally:
        hook.remove()
    # 9 real detections: image 0 has 3 distinct boxes among its 5, image 1 has 3 among its 4
    assert seen == [6]


def test_no_detection_gives_zero_masks(case):
    head, pooler, features, boxes, _ = case
    with torch.no_grad():
        got = detection_mask_probs(head, pooler, features, boxes, torch.full((2, 6), -1))
    assert got.shape == (2, 6, 28, 28) and not got.any()


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_exported_graph_shares_boxes_as_eager_does(case, engine, tmp_path):
    head, pooler, features, boxes, labels = case
    if engine == "openvino":
        pytest.importorskip("openvino")
    import onnx

    class Branch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head, self.pooler = head, pooler

        def forward(self, p2, p3, p4, p5, boxes, labels):
            return detection_mask_probs(self.head, self.pooler, (p2, p3, p4, p5), boxes, labels)

    names = ["p2", "p3", "p4", "p5", "boxes", "labels"]
    path = tmp_path / "branch.onnx"
    torch.onnx.export(Branch(), (*features, boxes, labels), str(path), opset_version=17, dynamo=False,
                      input_names=names, dynamic_axes={"boxes": {1: "k"}, "labels": {1: "k"}})
    model = onnx.load(str(path))
    model.ir_version = 8  # onnx 1.23 writes an IR version onnxruntime refuses
    onnx.save(model, str(path))
    if engine == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        run = lambda feeds: session.run(None, feeds)[0]
    else:
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        run = lambda feeds: compiled(feeds)[0]
    for given in (labels, torch.full_like(labels, -1)):  # also no detection at all: zero masks, no error
        got = run({n: t.numpy() for n, t in zip(names, (*features, boxes, given))})
        with torch.no_grad():
            want = one_by_one(head, pooler, features, boxes, given).numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_a_label_outside_the_classes_is_an_error_not_another_rois_mask(case):
    head, pooler, features, boxes, labels = case
    bad = labels.clone()
    bad[0, 1] = 5  # 5 classes: channel 0 of the next distinct box would sit at this flat index
    with torch.no_grad(), pytest.raises(IndexError):
        detection_mask_probs(head, pooler, features, boxes, bad)


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_exported_grouping_equals_eager(case, engine, tmp_path):
    """The graph's own grouping (not only its values): which RoIs run the head, and the row each detection reads."""
    from deployzoo.heads.mask_head import _shared_boxes

    if engine == "openvino":
        pytest.importorskip("openvino")
    import onnx

    class Grouping(torch.nn.Module):
        def forward(self, rois, batch_index):
            return _shared_boxes(rois, batch_index)

    _, _, _, boxes, _ = case
    rois, batch_index = flatten_rois(boxes)
    path = tmp_path / "grouping.onnx"
    torch.onnx.export(Grouping(), (rois, batch_index), str(path), opset_version=17, dynamo=False,
                      input_names=["rois", "batch_index"], output_names=["row", "distinct"],
                      dynamic_axes={"rois": {0: "v"}, "batch_index": {0: "v"}})
    model = onnx.load(str(path))
    model.ir_version = 8
    onnx.save(model, str(path))
    if engine == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        run = lambda feeds: session.run(None, feeds)
    else:
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU")
        run = lambda feeds: [compiled(feeds)[k] for k in (0, 1)]
    for count in (12, 3, 0):  # one compiled graph, several sizes, none at all
        row, distinct = run({"rois": rois[:count].numpy(), "batch_index": batch_index[:count].numpy()})
        want_row, want_distinct = _shared_boxes(rois[:count], batch_index[:count])
        assert row.tolist() == want_row.tolist() and distinct.tolist() == want_distinct.tolist()
    # all 12 rows (padding included): image 0 has 3 distinct boxes among its 6, image 1 has 5 among its 6 (its
    # last box has image 0's coordinates, which is another RoI)
    assert want_distinct.numel() == 0 and _shared_boxes(rois, batch_index)[1].tolist() == [0, 1, 2, 6, 7, 9, 10, 11]
