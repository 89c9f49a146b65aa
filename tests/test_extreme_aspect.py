"""An image whose aspect ratio is so extreme that the model's keep-ratio resize gives a side of 0 pixels (1 x 5000):
named as unusable before anything is built, or left out with --skip-bad; never a cv2/PIL traceback."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from deployzoo.registry import get_spec

KEEP_RATIO = ["d2-cascade-mask-rcnn-r50-fpn-3x", "mmdet-mask-rcnn-r50-fpn-1x", "mmdet-fsaf-r50-fpn-1x",
              "mmseg-pspnet-r50-d8-voc12aug"]


def _image(path, h, w):
    cv2.imwrite(str(path), np.full((h, w, 3), 128, np.uint8))
    return str(path)


class _Built(Exception):
    """Raised by a stand-in open_engine / load_model: the command got as far as building."""


@pytest.mark.parametrize("model", KEEP_RATIO)
def test_the_loader_names_the_image_instead_of_failing(tmp_path, model):
    from deployzoo.data.loader import BadImage, ImageItem, prepare

    spec = get_spec(model)
    for h, w in [(1, 5000), (9000, 1)]:
        got = prepare(ImageItem("strip", _image(tmp_path / f"strip-{h}x{w}.png", h, w)), spec.preprocess)
        assert isinstance(got, BadImage) and f"an image of {h}x{w} (H x W) resizes to" in got.problem
    assert not isinstance(prepare(ImageItem("ok", _image(tmp_path / "ok.png", 480, 640)), spec.preprocess), BadImage)


def test_unresizable_tries_only_extreme_sizes(monkeypatch):
    from deployzoo import fixed_size

    spec = get_spec("mmdet-fsaf-r50-fpn-1x")
    tried = []
    real = fixed_size.network_input_hw
    monkeypatch.setattr(fixed_size, "network_input_hw", lambda s, hw, memo=None: tried.append(hw) or real(s, hw, memo))
    sizes = {"a.jpg": (480, 640), "b.jpg": (640, 480), "wide.jpg": (100, 700), "strip.png": (1, 5000)}
    bad = fixed_size.unresizable(spec, sizes)
    assert [b["path"] for b in bad] == ["strip.png"] and tried == [(1, 5000)]
    assert fixed_size.unresizable(get_spec("refinedet320-vgg16-voc"), {"strip.png": (1, 5000)}) == []  # 320x320 warp


def test_predict_and_compare_refuse_before_building(tmp_path, monkeypatch, capsys):
    from deployzoo import engine as engine_module, pipeline
    from deployzoo.cli import main

    monkeypatch.setattr(pipeline, "open_engine", lambda *a, **k: (_ for _ in ()).throw(_Built()))
    monkeypatch.setattr(engine_module, "load_model", lambda *a, **k: (_ for _ in ()).throw(_Built()))
    ok = _image(tmp_path / "ok.png", 480, 640)
    strip = _image(tmp_path / "strip.png", 1, 5000)
    for backend in ("onnxruntime", "pytorch", "pytorch-aoti"):
        assert main(["predict", "mmdet-fsaf-r50-fpn-1x", "--backend", backend, "--out", str(tmp_path / "out"),
                     "--no-draw", ok, strip]) == 2
        message = capsys.readouterr().err
        assert message.startswith(f"error: {strip}: an image of 1x5000 (H x W) resizes to 0x1333")
        assert "nothing was built or run (--skip-bad leaves it out)" in message
    assert main(["compare", "d2-cascade-mask-rcnn-r50-fpn-3x", "--out", str(tmp_path / "cmp"), "--images", ok,
                 strip]) == 2
    message = capsys.readouterr().err
    assert strip in message and "resizes to 0x1333" in message and "--skip-bad" not in message
    assert main(["bench", "mmdet-fsaf-r50-fpn-1x", "--e2e", "--backends", "onnxruntime", "--images", ok, strip,
                 "--out", str(tmp_path / "e2e")]) == 2
    assert f"{strip}: an image of 1x5000" in capsys.readouterr().err


def test_predict_skip_bad_leaves_it_out_and_lists_it(tmp_path, monkeypatch):
    from deployzoo import pipeline
    from deployzoo.cli import main
    from deployzoo.pipeline import Engine
    from test_fixed_size_engines import _FixedSize

    ok = _image(tmp_path / "ok.png", 480, 640)
    strip = _image(tmp_path / "strip.png", 1, 5000)
    seen = {}
    monkeypatch.setattr(pipeline, "open_engine", lambda *a, **k: Engine(get_spec("mmdet-fsaf-r50-fpn-1x"),
                                                                       _FixedSize({}), None, None, "stand-in"))
    monkeypatch.setattr(pipeline, "predict_files", lambda engine, images, **k: seen.setdefault("images", list(images)) and [])
    assert main(["predict", "mmdet-fsaf-r50-fpn-1x", "--out", str(tmp_path / "out"), "--no-draw", "--skip-bad",
                 strip, ok]) == 0
    assert seen["images"] == [ok]
    info = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert [s["path"] for s in info["images_skipped"]] == [strip]
    # nothing left to run: refused, without offering --skip-bad again
    assert main(["predict", "mmdet-fsaf-r50-fpn-1x", "--out", str(tmp_path / "out2"), "--no-draw", "--skip-bad",
                 strip]) == 2



def test_named_with_unreadable_files_in_one_error_and_by_eval_before_building(tmp_path, monkeypatch, capsys):
    from deployzoo import engine as engine_module, pipeline
    from deployzoo.cli import main
    from deployzoo.data.coco import COCODetection
    from deployzoo.data.synthetic_coco import make_synthetic_coco

    monkeypatch.setattr(pipeline, "open_engine", lambda *a, **k: (_ for _ in ()).throw(_Built()))
    monkeypatch.setattr(engine_module, "load_model", lambda *a, **k: (_ for _ in ()).throw(_Built()))
    ok = _image(tmp_path / "ok.png", 480, 640)
    strip = _image(tmp_path / "strip.png", 1, 5000)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    for backend in ("onnxruntime", "pytorch-aoti"):
        assert main(["predict", "mmdet-fsaf-r50-fpn-1x", "--backend", backend, "--out", str(tmp_path / "o"),
                     "--no-draw", str(broken), strip, ok]) == 2
        message = capsys.readouterr().err
        assert str(broken) in message and "and besides, 1 of the 3 images does not survive the model's resize" in message
        assert f"{strip}: an image of 1x5000" in message
    # eval: a dataset whose image (and annotation) is 1 x 5000 is named before the engine is built
    root = make_synthetic_coco(tmp_path / "coco", num_images=3)
    dataset = COCODetection(root)
    path = dataset.image_path(dataset.ids[0])
    _image(path, 1, 5000)
    listing = root / "annotations" / "instances_val2017.json"
    data = json.loads(listing.read_text())
    entry = next(i for i in data["images"] if i["file_name"] == path.name)
    entry["height"], entry["width"] = 1, 5000
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != entry["id"]]  # none fit in 1 pixel
    listing.write_text(json.dumps(data))
    assert main(["eval", "mmdet-fsaf-r50-fpn-1x", "--data", str(root), "--out", str(tmp_path / "e")]) == 2
    message = capsys.readouterr().err
    assert f"{path}: an image of 1x5000" in message and "(--skip-bad leaves it out)" in message
