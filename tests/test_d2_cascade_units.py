"""Fast detectron2 Cascade Mask R-CNN pieces: safe .pkl loading, the checkpoint's ignored keys, the PIL
preprocessing rules, stand-in weights, the fixed 1344x1344 canvas, torchvision-style NMS, post-processing."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deployzoo.errors import BadInputError, CheckpointError
from deployzoo.registry import get_spec

pytest_plugins = ["d2_fixtures"]

NAME = "d2-cascade-mask-rcnn-r50-fpn-3x"
FIXTURE = Path(__file__).parent / "fixtures" / NAME


# ------------------------------------------------------------------------------- unsafe pickles


def _text(value: str) -> bytes:
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _calling_pickle(module: str, name: str, argument: str) -> bytes:
    """Protocol-2 pickle of {"model": {"w": module.name(argument)}, "__author__": "x"}, written opcode by
    opcode so that it names exactly ``module.name`` (pickle itself would write os.system as posix.system)."""
    call = b"c" + module.encode() + b"\n" + name.encode() + b"\n" + _text(argument) + b"\x85R"  # GLOBAL, TUPLE1, REDUCE
    inner = b"}(" + _text("w") + call + b"u"  # EMPTY_DICT, MARK, key, value, SETITEMS
    return b"\x80\x02}(" + _text("model") + inner + _text("__author__") + _text("x") + b"u."


def _payloads(canary: Path) -> dict[str, tuple[str, str, str]]:
    """Globals a hostile checkpoint may call, each with an argument that would create ``canary``."""
    return {
        "os.system": ("os", "system", f"touch {canary}"),
        "builtins.eval": ("builtins", "eval", f"open({str(canary)!r}, 'w').close()"),
        "posix.system": ("posix", "system", f"touch {canary}"),
    }


@pytest.mark.parametrize("which", ["os.system", "builtins.eval", "posix.system"])
def test_pkl_calling_code_is_refused_and_never_runs(which, tmp_path):
    from deployzoo.checkpoints import load_checkpoint
    from deployzoo.engine import load_model

    canary = tmp_path / "payload-ran"
    module, name, argument = _payloads(canary)[which]
    path = tmp_path / "model_final_480dd8.pkl"
    path.write_bytes(_calling_pickle(module, name, argument))
    for load in (load_checkpoint, lambda p: load_model(get_spec(NAME), p)):
        with pytest.raises(CheckpointError) as error:
            load(path)
        message = str(error.value)
        assert str(path) in message and f"{module}.{name}" in message and "refused" in message, message
        assert not canary.exists()
    # The file is a live payload: the plain unpickler, in a child process, does run it.
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))", str(path)],
                   check=False, capture_output=True, timeout=60)
    assert canary.exists()


def test_pkl_building_a_class_instance_is_refused(tmp_path):
    """A class outside the allow-list (here one that would start a process) is refused before it is built."""
    from deployzoo.checkpoints import load_checkpoint

    path = tmp_path / "model.pkl"
    path.write_bytes(_calling_pickle("subprocess", "Popen", "true"))
    with pytest.raises(CheckpointError, match=r"refused global subprocess\.Popen") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


def test_pkl_with_numpy_arrays_and_plain_data_loads(tmp_path):
    import pickle

    from deployzoo.checkpoints import load_checkpoint

    path = tmp_path / "ok.pkl"
    weights = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float64)}
    extra = {"__author__": "Detectron2 Model Zoo", "matching_heuristics": False, "steps": [1, 2.5, (3, "x")]}
    path.write_bytes(pickle.dumps({"model": weights, **extra}, protocol=2))
    raw = load_checkpoint(path)
    assert raw.format == "pkl-detectron2"
    assert raw.tensors["a"].dtype == torch.float32 and raw.tensors["b"].dtype == torch.float64
    assert raw.meta["__author__"] == "Detectron2 Model Zoo"


# ------------------------------------------------------------------------------- checkpoint mapping


def test_anchor_and_pixel_keys_are_ignored_by_name_and_reported(tmp_path, d2_weights):
    from d2_fixtures import write_d2_pkl

    from deployzoo.engine import load_model

    weights = dict(d2_weights)
    for level in range(5):
        weights[f"proposal_generator.anchor_generator.cell_anchors.{level}"] = np.zeros((3, 4), np.float32)
    weights["pixel_mean"] = np.asarray([103.53, 116.28, 123.675], np.float32).reshape(3, 1, 1)
    weights["pixel_std"] = np.ones((3, 1, 1), np.float32)
    loaded = load_model(get_spec(NAME), write_d2_pkl(tmp_path / "old-zoo.pkl", weights))
    report = loaded.mapping_report
    ignored = {e.checkpoint_key: e.action for e in report.entries if e.action.startswith("ignored")}
    assert set(ignored) == {*(f"proposal_generator.anchor_generator.cell_anchors.{i}" for i in range(5)),
                            "pixel_mean", "pixel_std"}
    assert report.counts["ignored"] == 7 and report.counts["renamed"] == 323
    text = report.format(verbose=True)
    assert "7 ignored" in text and "cell_anchors.3" in text and "pixel_mean" in text


def test_any_other_unknown_key_is_an_error(tmp_path, d2_weights):
    from d2_fixtures import write_d2_pkl

    from deployzoo.engine import load_model

    weights = dict(d2_weights)
    weights["proposal_generator.anchor_generator.cell_anchors_v2.0"] = np.zeros((3, 4), np.float32)
    weights["roi_heads.box_predictor.3.cls_score.weight"] = np.zeros((81, 1024), np.float32)
    del weights["roi_heads.mask_head.deconv.bias"]
    with pytest.raises(CheckpointError) as error:
        load_model(get_spec(NAME), write_d2_pkl(tmp_path / "odd.pkl", weights))
    message = str(error.value)
    for key in ("cell_anchors_v2.0", "roi_heads.box_predictor.3.cls_score.weight", "roi_heads.mask_head.upsample.bias"):
        assert key in message, message


def test_rename_rules_and_official_names_are_inverse():
    from deployzoo.models.d2_cascade_mask_rcnn import CHECKPOINT_RULES, build_cascade_mask_rcnn, official_key

    names = list(build_cascade_mask_rcnn().state_dict())
    keys = json.loads((FIXTURE / "keys.json").read_text())["tensors"]
    assert sorted(official_key(n) for n in names) == sorted(k[0] for k in keys)
    assert all(CHECKPOINT_RULES.rename(official_key(n)) == n for n in names)


def test_stand_in_weights_are_the_fixture_weights(d2_weights):
    """The default run's stand-in equals the fixture's weights: generated under the official names."""
    from deployzoo.checkpoints import remap_state_dict
    from deployzoo.engine import load_model

    spec = get_spec(NAME)
    official = {k: torch.from_numpy(np.asarray(v)) for k, v in d2_weights.items()}
    model = load_model(spec).model
    expected, _ = remap_state_dict(official, model.state_dict(), spec.checkpoint_rules)
    state = model.state_dict()
    assert set(state) == set(expected)
    for name, value in expected.items():
        assert torch.equal(state[name], value), name


# ------------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("orig_hw, expected", [
    ((480, 640), (800, 1067)),  # the fixture's image
    ((640, 480), (1067, 800)),
    ((500, 500), (800, 800)),
    ((427, 640), (800, 1199)),  # 1199.06 -> 1199
    ((300, 2000), (200, 1333)),  # long side capped: both sides shrink
    ((2000, 300), (1333, 200)),
    ((1600, 1200), (1067, 800)),  # downscaling
    ((600, 1000), (800, 1333)),  # 1333.33 > 1333: capped, the short side rounds back to 800
])
def test_shortest_edge_rule(orig_hw, expected):
    from deployzoo.transforms import shortest_edge_size

    assert shortest_edge_size(orig_hw, 800, 1333) == expected


def test_pil_bilinear_resize_on_uint8_not_cv2():
    import cv2
    from PIL import Image

    from deployzoo.models.d2_common import D2_PIXEL_MEAN_BGR, D2Preprocess
    from deployzoo.transforms import pil_resize

    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    ours = pil_resize(bgr, (800, 1067))
    assert np.array_equal(ours, np.asarray(Image.fromarray(bgr).resize((1067, 800), Image.Resampling.BILINEAR)))
    assert not np.array_equal(ours, cv2.resize(bgr, (1067, 800), interpolation=cv2.INTER_LINEAR))  # PIL antialiases
    array, meta = D2Preprocess()(bgr)
    assert meta.orig_hw == (1200, 1600) and meta.resized_hw == (800, 1067)
    expected = ours.transpose(2, 0, 1).astype(np.float32)
    expected -= np.asarray(D2_PIXEL_MEAN_BGR, np.float32).reshape(3, 1, 1)  # BGR kept, std 1
    assert array.dtype == np.float32 and np.array_equal(array, expected)


def test_decoding_applies_exif_orientation_like_detectron2(tmp_path):
    from PIL import Image

    from deployzoo.data.loader import ImageItem, prepare

    upright = np.zeros((40, 60, 3), np.uint8)
    upright[:10, :, 0] = 255  # a red top band (RGB)
    image = Image.fromarray(upright)
    exif = image.getexif()
    exif[0x0112] = 6  # stored rotated: the viewer must rotate 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    image.save(path, quality=100, exif=exif)
    spec = get_spec(NAME)
    bgr = spec.preprocess.read_image(path)
    assert bgr.shape == (60, 40, 3)
    assert bgr[:, -5:, 2].mean() > 200 and bgr[:, :5, 2].mean() < 50  # the top band is now on the right, red in BGR
    prepared = prepare(ImageItem("rotated", str(path)), spec.preprocess)  # the loader uses the model's decoder
    assert prepared.meta.orig_hw == (60, 40)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    with pytest.raises(BadInputError, match="broken.png"):
        spec.preprocess.read_image(broken)


def test_fixed_1344_canvas_fits_every_image_at_its_official_size():
    from deployzoo.transforms import shortest_edge_size

    spec = get_spec(NAME + "@1344x1344")
    assert spec.graph_input_dims()["image"] == (3, 1344, 1344)
    sides = [1, 2, 3, 7, 32, 100, 333, 480, 500, 512, 640, 799, 800, 801, 1000, 1333, 1344, 2000, 4000, 10000]
    for h in sides:
        for w in sides:
            rh, rw = shortest_edge_size((h, w), 800, 1333)
            assert rh <= 1344 and rw <= 1344 and max(rh, rw) <= 1333, (h, w)
    images = [np.zeros(hw + (3,), np.uint8) for hw in ((480, 640), (640, 480), (50, 2000), (2000, 50))]
    prepared = [spec.preprocess(image) for image in images]
    assert [m.resized_hw for _, m in prepared] == [shortest_edge_size(i.shape[:2]) for i in images]
    feeds = spec.make_feeds([a for a, _ in prepared], [m for _, m in prepared], 4)
    assert feeds["image"].shape == (4, 3, 1344, 1344)
    assert feeds["img_hw"].tolist() == [list(m.resized_hw) for _, m in prepared]
    # A smaller canvas cannot hold a portrait image at the official size: it is shrunk to fit.
    narrow = get_spec(NAME + "@800x1216")
    _, meta = narrow.preprocess(np.zeros((640, 480, 3), np.uint8))
    assert meta.resized_hw == (800, 600)


# ------------------------------------------------------------------------------- NMS and post-processing


def _greedy(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    keep = np.zeros(len(scores), bool)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    alive = np.ones(len(scores), bool)
    for i in order:
        if not alive[i]:
            continue
        keep[i] = True
        w = np.clip(np.minimum(boxes[i, 2], boxes[:, 2]) - np.maximum(boxes[i, 0], boxes[:, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[:, 3]) - np.maximum(boxes[i, 1], boxes[:, 1]), 0, None)
        alive &= ~((w * h) / (area[i] + area - w * h) > iou)
    return keep


@pytest.mark.parametrize("count", [300, 1500])  # offset trick below 1000 candidates, a loop over groups above
def test_torchvision_batched_nms_keeps_per_group_greedy_survivors(count):
    from deployzoo.heads.rpn import torchvision_batched_nms

    rng = np.random.default_rng(count)
    xy = rng.uniform(0, 400, (count, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(5, 80, (count, 2)).astype(np.float32)], axis=1)
    scores = rng.normal(0, 3, count).astype(np.float32)  # logits: negative values are real candidates
    groups = rng.integers(0, 5, count)
    candidate = rng.random(count) > 0.05
    keep = torchvision_batched_nms(torch.from_numpy(boxes)[None], torch.from_numpy(scores)[None],
                                   torch.from_numpy(groups).float()[None], 5, torch.from_numpy(candidate)[None], 0.7)[0]
    expected = np.zeros(count, bool)
    for g in range(5):
        members = np.flatnonzero((groups == g) & candidate)
        expected[members[_greedy(boxes[members], scores[members], 0.7)]] = True
    assert np.array_equal(keep.numpy(), expected)


def test_proposal_style_is_checked():
    from deployzoo.heads.rpn import ProposalConfig

    with pytest.raises(ValueError):
        ProposalConfig(style="detectron")
    with pytest.raises(ValueError):
        ProposalConfig(style="detectron2", drop_empty=False)


def test_postprocess_scales_clips_and_drops_empty_boxes_after_the_cut():
    from deployzoo.ops.mask_paste import decode_rle
    from deployzoo.transforms import ImageMeta

    postprocess = get_spec(NAME).make_postprocess()
    meta = ImageMeta(orig_hw=(480, 640), resized_hw=(800, 1067))
    boxes = np.zeros((100, 4), np.float32)
    boxes[:3] = [[100.0, 200.0, 300.0, 400.0], [1060.0, 10.0, 1067.0, 20.0], [1067.0, 10.0, 1067.0, 30.0]]
    outputs = {"boxes": boxes, "scores": np.linspace(0.9, 0.1, 100, dtype=np.float32),
               "labels": np.zeros(100, np.int64), "num_dets": np.asarray(3), "masks": np.ones((100, 28, 28), np.float32)}
    detections = postprocess(outputs, meta)
    assert len(detections) == 2  # the zero-width third box is dropped
    scale = np.float32(640 / 1067)
    assert np.array_equal(detections.boxes[0], boxes[0] * np.asarray([scale, np.float32(0.6)] * 2, np.float32))
    assert detections.boxes[1, 2] <= 640
    masks = decode_rle(detections.masks)
    assert masks.shape == (2, 480, 640) and masks[0, 150, 100] and not masks[0, 300, 100]


def test_detectron2_cell_anchors_equal_ours():
    """detectron2 builds each cell anchor in float64 (w = sqrt(size^2 / ratio), h = ratio * w) and stores it
    as float32; our float32 construction gives the same numbers, so one anchor generator serves both."""
    import math

    from deployzoo.ops.anchors import base_anchors

    for size, stride in zip((32, 64, 128, 256, 512), (4, 8, 16, 32, 64)):
        cells = []
        for ratio in (0.5, 1.0, 2.0):
            w = math.sqrt(size**2 / ratio)
            cells.append([-w / 2, -ratio * w / 2, w / 2, ratio * w / 2])
        assert torch.equal(torch.tensor(cells, dtype=torch.float32), base_anchors(stride, [8.0], [0.5, 1.0, 2.0]))
