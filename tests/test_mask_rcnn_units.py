"""Fast Mask R-CNN pieces: the fixed-canvas variant, collation of mixed sizes, anchors and the box coder."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deployzoo.errors import DeployzooError
from deployzoo.registry import get_spec


def test_fixed_canvas_variant_fits_portrait_images():
    spec = get_spec("mmdet-mask-rcnn-r50-fpn-1x@800x1216")
    assert spec.graph_input_dims()["image"] == (3, 800, 1216)
    landscape, portrait = np.zeros((480, 640, 3), np.uint8), np.zeros((640, 480, 3), np.uint8)
    a, meta_a = spec.preprocess(landscape)
    b, meta_b = spec.preprocess(portrait)
    assert meta_a.resized_hw == (800, 1067)  # the official size: it fits
    assert meta_b.resized_hw == (800, 600)  # official 1067x800 does not fit 800 high: smaller, the accuracy cost
    feeds = spec.make_feeds([a, b], [meta_a, meta_b], 2)
    assert feeds["image"].shape == (2, 3, 800, 1216)
    assert feeds["img_hw"].tolist() == [[800, 1067], [800, 600]]
    with pytest.raises(DeployzooError):
        get_spec("mmdet-mask-rcnn-r50-fpn-1x@800x1200")


def test_dynamic_collate_pads_to_the_largest_multiple_of_32():
    spec = get_spec("mmdet-mask-rcnn-r50-fpn-1x")
    a, meta_a = spec.preprocess(np.full((480, 640, 3), 7, np.uint8))
    b, meta_b = spec.preprocess(np.full((300, 200, 3), 7, np.uint8))
    assert meta_b.resized_hw == (1200, 800)
    feeds = spec.make_feeds([a, b], [meta_a, meta_b], 3)
    assert feeds["image"].shape == (3, 3, 1216, 1088)
    assert np.all(feeds["image"][0, :, 800:] == 0) and np.all(feeds["image"][0, :, :, 1067:] == 0)
    assert np.array_equal(feeds["image"][1, :, :1200, :800], b)
    assert feeds["img_hw"][:2].tolist() == [[800, 1067], [1200, 800]]


def test_anchors_follow_mmdet_layout():
    from deployzoo.ops.anchors import base_anchors, grid_anchors

    base = base_anchors(4, [8.0], [0.5, 1.0, 2.0])
    # ratio = h / w; area (4 * 8)^2 for every ratio, centred on the origin
    w, h = base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]
    assert torch.allclose(h / w, torch.tensor([0.5, 1.0, 2.0]))
    assert torch.allclose(w * h, torch.full((3,), 1024.0))
    anchors = grid_anchors(base, torch.zeros(1, 1, 2, 3), 4)
    assert anchors.shape == (18, 4)
    assert torch.equal(anchors[3], base[0] + torch.tensor([4.0, 0, 4, 0]))  # next x first (row-major)
    assert torch.equal(anchors[9], base[0] + torch.tensor([0.0, 4, 0, 4]))


def test_delta_coder_identity_clamp_and_clip():
    from deployzoo.ops.box_coder import SCALE_CLAMP, DeltaBoxCoder

    priors = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    coder = DeltaBoxCoder(stds=(0.1, 0.1, 0.2, 0.2))
    assert torch.equal(coder.decode(priors, torch.zeros(1, 4)), priors)
    huge = coder.decode(priors, torch.tensor([[0.0, 0.0, 100.0, -100.0]]))
    w, h = huge[0, 2] - huge[0, 0], huge[0, 3] - huge[0, 1]
    assert torch.isclose(w, 20 * torch.exp(torch.tensor(SCALE_CLAMP)))
    assert torch.isclose(h, 40 * torch.exp(torch.tensor(-SCALE_CLAMP)))
    clipped = coder.decode(priors, torch.tensor([[0.0, 0.0, 100.0, 0.0]]), torch.tensor([50.0, 25.0]))
    assert clipped[0].tolist() == [0.0, 20.0, 25.0, 50.0]
    d2 = DeltaBoxCoder(weights=(10.0, 10.0, 5.0, 5.0), clamp_both_sides=False, center_from_corners=False)
    assert torch.allclose(d2.decode(priors, torch.tensor([[1.0, 1.0, 0.5, 0.5]])),
                          coder.decode(priors, torch.tensor([[1.0, 1.0, 0.5, 0.5]])))
    with pytest.raises(ValueError):
        DeltaBoxCoder()


def test_to_bin_writes_each_graph_input(tmp_path):
    from deployzoo.cli import main
    from deployzoo.data.synthetic_coco import make_synthetic_coco
    from deployzoo.data.vendor_bin import read_bin, read_info

    data = make_synthetic_coco(tmp_path / "coco", num_images=2, seed=1)
    assert main(["data", "to-bin", "mmdet-mask-rcnn-r50-fpn-1x", "--data", str(data), "--out", str(tmp_path / "bins")]) == 0
    for row, original in zip(read_info(tmp_path / "bins" / "input.info"), read_info(tmp_path / "bins" / "images.info")):
        assert row.width % 32 == 0 and row.height % 32 == 0
        stem = row.path.rsplit("/", 1)[-1][: -len(".bin")]
        img_hw = read_bin(tmp_path / "bins" / "img_hw" / f"{stem}.bin", (2,))
        assert row.height - 32 < img_hw[0] <= row.height and row.width - 32 < img_hw[1] <= row.width
        assert min(img_hw) == 800 or max(img_hw) == 1333  # the keep-ratio rule
        assert read_bin(row.path, (3, row.height, row.width)).shape == (3, row.height, row.width)
        assert original.width > 0


def test_stand_in_weights_are_the_fixture_weights():
    """The default run's stand-in equals the fixture's weights: generated under the official names."""
    import json
    import sys
    from pathlib import Path

    from deployzoo.checkpoints import remap_state_dict
    from deployzoo.engine import load_model

    spec = get_spec("mmdet-mask-rcnn-r50-fpn-1x")
    keys = json.loads((Path(__file__).parent / "fixtures" / spec.name / "keys.json").read_text())
    official = {k: torch.from_numpy(np.asarray(v)) for k, v in sys.modules["dzinit"].make_state_dict(keys["tensors"], 0).items()}
    model = load_model(spec).model
    expected, _ = remap_state_dict(official, model.state_dict(), spec.checkpoint_rules)
    state = model.state_dict()
    assert set(state) == set(expected)
    for name, value in expected.items():
        assert torch.equal(state[name], value), name
