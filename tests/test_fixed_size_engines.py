"""An engine built for one image size (an AOTInductor package, an ONNX file fixed to a size) meeting an image of
another size: the error names the image and says what takes every size, before the engine runs."""
from __future__ import annotations

import numpy as np
import pytest

from deployzoo.backends.base import Backend
from deployzoo.errors import BadInputError
from deployzoo.pipeline import Engine
from deployzoo.registry import get_spec


class _FixedSize(Backend):
    """Built for one input shape; records whether it ran."""

    name = "pytorch-aoti"

    def __init__(self, shapes):
        super().__init__()
        self.input_shapes = shapes
        self.ran = False

    def infer(self, inputs):
        self.check_inputs(inputs)
        self.ran = True
        batch = next(iter(inputs.values())).shape[0]
        # the image's mean as its one "score", so each result shows which image it came from
        return {"score": inputs["image"].reshape(batch, -1).mean(axis=1, keepdims=True)}

    def describe(self):
        return {"backend": self.name}


def _feeds(h, w, extra=None):
    feeds = {"image": np.zeros((1, 3, h, w), np.float32)}
    if extra:
        feeds[extra] = np.zeros((1, 2), np.float32)
    return feeds


@pytest.mark.parametrize("model, extra", [("d2-cascade-mask-rcnn-r50-fpn-3x", "img_hw"),
                                          ("mmdet-fsaf-r50-fpn-1x", "img_hw"),
                                          ("mmseg-pspnet-r50-d8-voc12aug", None)])
def test_an_image_of_another_size_is_named_with_the_canvas_variant(model, extra):
    spec = get_spec(model)
    shapes = {"image": (1, 3, 800, 1088), **({extra: (1, 2)} if extra else {})}
    backend = _FixedSize(shapes)
    engine = Engine(spec, backend, None, None, "stand-in")
    engine.infer(_feeds(800, 1088, extra), ["landscape.jpg"])
    assert backend.ran
    backend.ran = False
    with pytest.raises(BadInputError) as caught:
        engine.infer(_feeds(1088, 800, extra), ["portrait.jpg"])
    assert not backend.ran
    assert caught.value.path == "portrait.jpg"
    message = str(caught.value)
    assert "engine expects (1, 3, 800, 1088)" in message and "takes one network input size, 800x1088" in message
    assert f"{model}@HxW pads every image" in message


def _images(tmp_path, sizes):
    from PIL import Image

    paths = []
    for k, (w, h) in enumerate(sizes):
        path = tmp_path / f"img{k}.png"
        Image.fromarray(np.full((h, w, 3), 20 * (k + 1), np.uint8)).save(path)
        paths.append(path)
    return paths


def _run(spec, paths, batch_size, skip_bad):
    from deployzoo.data.loader import items_from_paths
    from deployzoo.runner import run_dataset
    from deployzoo.structures import Detections

    backend = _FixedSize({"image": (batch_size, 3, 800, 1088), "img_hw": (batch_size, 2)})
    engine = Engine(spec, backend, None, None, "stand-in")

    def postprocess(outputs, meta):
        return Detections(np.zeros((1, 4), np.float32), outputs["score"].astype(np.float32), np.zeros(1, np.int64))

    return run_dataset(items_from_paths(paths), spec.preprocess, engine.infer, postprocess, batch_size,
                       spec.make_feeds, skip_bad=skip_bad, progress=False)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_a_run_keeps_the_images_the_engine_takes_and_names_or_skips_the_others(tmp_path, batch_size):
    """640x480 images fit the engine's 800x1088; a portrait one and a 16:9 one do not. With --skip-bad those are
    skipped and listed and every other image has its own result; without, the run stops naming the first one's file
    after storing the images before it. At batch 2 the engine refuses a whole batch that holds one of them, and the
    batch's other image is then tried alone and kept."""
    spec = get_spec("mmdet-mask-rcnn-r50-fpn-1x")
    paths = _images(tmp_path, [(640, 480), (480, 640), (640, 480), (640, 360), (640, 480)])
    run = _run(spec, paths, batch_size, skip_bad=True)
    assert sorted(run.results) == ["img0", "img2", "img4"]
    assert [s["image_id"] for s in run.skipped] == ["img1", "img3"]
    assert all("takes one network input size, 800x1088" in s["problem"] and "@HxW" in s["problem"] for s in run.skipped)
    alone = _run(spec, [paths[2]], batch_size, skip_bad=True)  # each result is its own image's
    assert float(run.results["img2"].scores[0]) == float(alone.results["img2"].scores[0])
    assert float(run.results["img0"].scores[0]) != float(run.results["img2"].scores[0])
    with pytest.raises(BadInputError) as caught:
        _run(spec, paths, batch_size, skip_bad=False)
    assert caught.value.path == str(paths[1]) and "engine expects" in caught.value.problem


def test_no_canvas_variant_no_canvas_advice():
    spec = get_spec("mmseg-pspnet-r50-d8-voc12aug-labels")  # label maps: no fixed-canvas variant
    engine = Engine(spec, _FixedSize({"image": (1, 3, 512, 683), "orig_hw": (1, 2)}), None, None, "stand-in")
    with pytest.raises(BadInputError, match=r"^a\.jpg, b\.jpg: .*takes one network input size, 512x683 \(H x W\)\)$"):
        engine.infer(_feeds(683, 512, "orig_hw"), ["a.jpg", "b.jpg"])


def test_a_fixed_size_model_gets_no_advice():
    spec = get_spec("refinedet320-vgg16-voc")  # every image is resized to 320x320: its graph is fixed anyway
    engine = Engine(spec, _FixedSize({"image": (1, 3, 320, 320)}), None, None, "stand-in")
    with pytest.raises(BadInputError) as caught:
        engine.infer(_feeds(300, 300), ["x.jpg"])
    assert str(caught.value) == "x.jpg: input 'image' has shape (1, 3, 300, 300), engine expects (1, 3, 320, 320)"


# --- found before the engine is built (deployzoo.fixed_size) ---------------------------------------------------

def _image(path, h, w, seed=0):
    import cv2

    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    return str(path)


@pytest.mark.parametrize("model", ["d2-cascade-mask-rcnn-r50-fpn-3x", "mmdet-mask-rcnn-r50-fpn-1x",
                                   "mmdet-fsaf-r50-fpn-1x", "mmseg-pspnet-r50-d8-voc12aug", "refinedet320-vgg16-voc"])
def test_network_input_size_from_the_header_is_the_preprocessed_images(model):
    from deployzoo.fixed_size import network_input_hw

    spec = get_spec(model)
    rng = np.random.default_rng(1)
    for hw in [(480, 640), (640, 480), (375, 500), (300, 900), (33, 47)]:
        picture = rng.integers(0, 255, (*hw, 3), dtype=np.uint8)
        array, meta = spec.preprocess(picture)
        expected = spec.make_feeds([array], [meta], 1)[spec.input_name].shape[-2:]
        assert network_input_hw(spec, hw) == tuple(expected)


def test_which_engines_take_one_size(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from deployzoo.fixed_size import engine_input_hw

    fsaf = get_spec("mmdet-fsaf-r50-fpn-1x")
    example = fsaf.make_example_inputs(1)["image"].shape[-2:]
    assert engine_input_hw(fsaf, "pytorch-aoti") == tuple(example)
    assert engine_input_hw(fsaf, "pytorch") is None and engine_input_hw(fsaf, "onnxruntime") is None
    # a fixed-canvas variant pads every image to its canvas; RefineDet resizes every image to 320x320
    assert engine_input_hw(get_spec("mmdet-fsaf-r50-fpn-1x@800x1344"), "pytorch-aoti") is None
    assert engine_input_hw(get_spec("refinedet320-vgg16-voc"), "pytorch-aoti") is None

    def onnx_file(name, dims):
        graph = helper.make_graph([helper.make_node("Identity", ["image"], ["out"])], "g",
                                  [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
                                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, dims)])
        path = tmp_path / name
        onnx.save(helper.make_model(graph), path)
        return path

    fixed = onnx_file("fixed.onnx", [1, 3, 608, 800])
    assert engine_input_hw(fsaf, "onnxruntime", 1, fixed) == (608, 800)
    assert engine_input_hw(fsaf, "openvino", 1, fixed) == (608, 800)
    assert engine_input_hw(fsaf, "onnxruntime", 1, onnx_file("free.onnx", [1, 3, "h", "w"])) is None


def _predict_args(tmp_path, images, *extra):
    return ["predict", "mmdet-fsaf-r50-fpn-1x", "--backend", "pytorch-aoti", "--out", str(tmp_path / "out"),
            "--no-draw", *extra, *images]


class _Built(Exception):
    """Raised by the stand-in open_engine: the command got as far as building the engine."""


def test_predict_names_images_of_another_size_before_building(tmp_path, monkeypatch, capsys):
    from deployzoo import pipeline
    from deployzoo.cli import main

    opened = []

    def open_engine(*args, **kwargs):
        opened.append(True)
        raise _Built()

    monkeypatch.setattr(pipeline, "open_engine", open_engine)
    land = _image(tmp_path / "land.png", 480, 640)
    portrait = _image(tmp_path / "portrait.png", 640, 480)
    wide = _image(tmp_path / "wide.jpg", 300, 900)
    assert main(_predict_args(tmp_path, [land, portrait])) == 2
    message = capsys.readouterr().err
    assert message.startswith(f"error: {portrait}: ") and not opened
    assert "an image of 640x480 (H x W) becomes network input 1088x800" in message and "mmdet-fsaf-r50-fpn-1x@HxW" in message
    assert "nothing was built or run" in message
    assert main(_predict_args(tmp_path, [land, portrait, wide])) == 2
    message = capsys.readouterr().err
    assert not opened
    assert "2 of the 3 images" in message and portrait in message and wide in message and land + ":" not in message
    assert not (tmp_path / "out" / "predictions.json").exists()
    # --skip-bad: the fitting image goes on to the engine, the others are listed as skipped
    seen = {}

    def predict_files(engine, images, **kwargs):
        seen["images"] = list(images)
        raise _Built()

    monkeypatch.setattr(pipeline, "open_engine", lambda *a, **k: Engine(get_spec("mmdet-fsaf-r50-fpn-1x"),
                                                                       _FixedSize({}), None, None, "stand-in"))
    monkeypatch.setattr(pipeline, "predict_files", predict_files)
    with pytest.raises(_Built):
        main(_predict_args(tmp_path, [portrait, land, wide], "--skip-bad"))
    assert seen["images"] == [land]
    assert main(_predict_args(tmp_path, [portrait, wide], "--skip-bad")) == 2
    assert "2 of the 2 images do not fit" in capsys.readouterr().err


def test_eval_and_bench_e2e_name_images_of_another_size_before_building(tmp_path, monkeypatch, capsys):
    from deployzoo import pipeline
    from deployzoo.bench.e2e import open_runs
    from deployzoo.cli import main
    from deployzoo.data.loader import items_from_paths
    from deployzoo.data.synthetic_coco import make_synthetic_coco

    root = make_synthetic_coco(tmp_path / "coco", num_images=3)
    monkeypatch.setattr(pipeline, "open_engine", lambda *a, **k: (_ for _ in ()).throw(_Built()))
    assert main(["eval", "mmdet-fsaf-r50-fpn-1x", "--data", str(root), "--backend", "pytorch-aoti",
                 "--out", str(tmp_path / "eval")]) == 2
    message = capsys.readouterr().err
    assert "3 of the 3 images do not fit" in message and "nothing was built or run" in message
    # the same data through the canvas variant, whose engine takes every image: it gets as far as building
    with pytest.raises(_Built):
        main(["eval", "mmdet-fsaf-r50-fpn-1x@800x1344", "--data", str(root), "--backend", "pytorch-aoti",
              "--out", str(tmp_path / "eval2")])

    spec = get_spec("mmdet-fsaf-r50-fpn-1x")
    items = items_from_paths([_image(tmp_path / "land.png", 480, 640), _image(tmp_path / "portrait.png", 640, 480)])
    built = []
    monkeypatch.setattr(pipeline, "open_engine", lambda *a, **k: built.append(a[1]) or (_ for _ in ()).throw(_Built()))
    runs = open_runs(spec, ["pytorch-aoti"], ["fp32"], loaded=None, work_dir=tmp_path, items=items)
    aoti = [r for r in runs if r.backend == "pytorch-aoti"][0]
    assert aoti.status == "failed" and "1 of the 2 images does not fit" in aoti.error and "portrait.png" in aoti.error
    assert "pytorch-aoti" not in built


def test_bad_files_and_images_of_another_size_are_named_in_one_error(tmp_path, monkeypatch, capsys):
    from deployzoo import engine as engine_module, pipeline
    from deployzoo.cli import main

    built = []
    monkeypatch.setattr(pipeline, "open_engine", lambda *a, **k: built.append(True))
    monkeypatch.setattr(engine_module, "load_model", lambda *a, **k: built.append(True))
    land = _image(tmp_path / "land.png", 480, 640)
    portrait = _image(tmp_path / "portrait.png", 640, 480)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert main(_predict_args(tmp_path, [land, str(broken), portrait])) == 2
    message = capsys.readouterr().err
    assert str(broken) in message and "and besides, 1 of the 3 images does not fit" in message
    assert f"{portrait}: an image of 640x480" in message and "--skip-bad leaves it out" in message
    # every readable image misfits: --skip-bad would only refuse again, so it is not offered for them
    assert main(_predict_args(tmp_path, [str(broken), portrait])) == 2
    besides = capsys.readouterr().err.split("and besides, ")[1]
    assert besides.startswith("1 of the 2 images does not fit") and "--skip-bad" not in besides
    assert main(["compare", "mmdet-fsaf-r50-fpn-1x", "--backend", "pytorch-aoti", "--out", str(tmp_path / "cmp"),
                 "--images", land, str(broken), portrait]) == 2
    message = capsys.readouterr().err
    assert str(broken) in message and f"{portrait}: an image of 640x480" in message and "--skip-bad" not in message
    assert not built
    # an engine that takes every size: the bad file alone, as before
    assert main(["predict", "mmdet-fsaf-r50-fpn-1x", "--out", str(tmp_path / "out"), "--no-draw", land,
                 str(broken), portrait]) == 2
    message = capsys.readouterr().err
    assert str(broken) in message and "besides" not in message and not built
    # eval: a dataset with one unreadable image and others of a size the engine does not take
    from deployzoo.data.synthetic_coco import make_synthetic_coco
    from deployzoo.data.coco import COCODetection

    root = make_synthetic_coco(tmp_path / "coco", num_images=3)
    dataset = COCODetection(root)
    first = dataset.image_path(dataset.ids[0])
    first.write_bytes(b"not an image")
    assert main(["eval", "mmdet-fsaf-r50-fpn-1x", "--data", str(root), "--backend", "pytorch-aoti",
                 "--out", str(tmp_path / "eval")]) == 2
    message = capsys.readouterr().err
    assert str(first) in message and "and besides, 2 of the 3 images do not fit" in message and not built
    # no image of the set fits: --skip-bad would refuse again, so the second part does not offer it
    assert str(dataset.image_path(dataset.ids[1])) in message and "--skip-bad" not in message.split("besides")[1]


def test_predict_json_lists_the_images_left_out(tmp_path, monkeypatch):
    import json

    from deployzoo import pipeline
    from deployzoo.cli import main

    land = _image(tmp_path / "land.png", 480, 640)
    portrait = _image(tmp_path / "portrait.png", 640, 480)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    monkeypatch.setattr(pipeline, "open_engine", lambda *a, **k: Engine(get_spec("mmdet-fsaf-r50-fpn-1x"),
                                                                       _FixedSize({}), None, None, "stand-in"))

    def predict_files(engine, images, skipped, **kwargs):
        assert list(images) == [land]
        skipped.append({"path": land, "problem": "outputs not finite"})  # as the runner reports one
        return []

    monkeypatch.setattr(pipeline, "predict_files", predict_files)
    assert main(_predict_args(tmp_path, [portrait, str(broken), land], "--skip-bad")) == 0
    info = json.loads((tmp_path / "out" / "predict.json").read_text())
    listed = {s["path"]: s["problem"] for s in info["images_skipped"]}
    assert list(listed) == [str(broken), portrait, land]
    assert "becomes network input 1088x800" in listed[portrait] and listed[land] == "outputs not finite"


def test_compare_names_images_of_another_size_before_loading(tmp_path, monkeypatch, capsys):
    from deployzoo import engine as engine_module
    from deployzoo.cli import main

    monkeypatch.setattr(engine_module, "load_model", lambda *a, **k: (_ for _ in ()).throw(_Built()))
    land = _image(tmp_path / "land.png", 480, 640)
    portrait = _image(tmp_path / "portrait.png", 640, 480)
    assert main(["compare", "d2-cascade-mask-rcnn-r50-fpn-3x", "--backend", "pytorch-aoti", "--out",
                 str(tmp_path / "cmp"), "--images", land, portrait]) == 2
    message = capsys.readouterr().err
    assert "1 of the 2 images does not fit" in message and portrait in message and "d2-cascade-mask-rcnn-r50-fpn-3x@HxW" in message
    with pytest.raises(_Built):  # the images that fit go on to the model
        main(["compare", "d2-cascade-mask-rcnn-r50-fpn-3x", "--backend", "pytorch-aoti", "--out",
              str(tmp_path / "cmp"), "--images", land])


def test_half_fixed_onnx_concrete_canvas_and_onnx_advice(tmp_path, monkeypatch, capsys):
    import onnx
    from onnx import TensorProto, helper

    from deployzoo import pipeline
    from deployzoo.cli import main
    from deployzoo.data.synthetic_coco import make_synthetic_coco
    from deployzoo.fixed_size import engine_input_hw, misfits, refusal

    fsaf = get_spec("mmdet-fsaf-r50-fpn-1x")
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["out"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 800, "w"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 800, "w"])])
    half = tmp_path / "half.onnx"
    onnx.save(helper.make_model(graph), half)
    assert engine_input_hw(fsaf, "onnxruntime", 1, half) == (800, None)
    sizes = {"land.png": (480, 640), "wide.png": (300, 900), "portrait.png": (640, 480)}
    bad = misfits(fsaf, sizes, (800, None), "onnxruntime")  # only the height is checked
    assert [b["path"] for b in bad] == ["wide.png", "portrait.png"]
    message = refusal(fsaf, "onnxruntime", (800, None), bad, 3)
    assert "800xany (H x W)" in message and "deployzoo export mmdet-fsaf-r50-fpn-1x" in message and "@HxW" not in message
    # pytorch-aoti: a canvas that holds every refused image is named
    message = refusal(fsaf, "pytorch-aoti", (800, 1088), misfits(fsaf, sizes, (800, 1088), "pytorch-aoti"), 3)
    assert "mmdet-fsaf-r50-fpn-1x@1088x1344 holds all of these" in message
    assert "@HxW pads every image" in message
    # eval --skip-bad when no image fits: refused before building, not built and then every image skipped
    root = make_synthetic_coco(tmp_path / "coco", num_images=2)
    monkeypatch.setattr(pipeline, "open_engine", lambda *a, **k: (_ for _ in ()).throw(_Built()))
    assert main(["eval", "mmdet-fsaf-r50-fpn-1x", "--data", str(root), "--backend", "pytorch-aoti", "--skip-bad",
                 "--out", str(tmp_path / "eval")]) == 2
    assert "2 of the 2 images do not fit" in capsys.readouterr().err


def test_the_accuracy_guard_images_must_fit_a_fixed_size_engine(tmp_path, monkeypatch, capsys):
    """Below fp32 the guard runs the engine on its own images (generated, here): those are checked too, before
    any engine is built, and the message says they are the guard's."""
    from deployzoo import pipeline
    from deployzoo.cli import main

    monkeypatch.setattr(pipeline, "open_engine", lambda *a, **k: (_ for _ in ()).throw(_Built()))
    land = _image(tmp_path / "land.png", 480, 640)
    assert main(_predict_args(tmp_path, [land], "--precision", "fp16", "--guard-images", "2")) == 2
    message = capsys.readouterr().err
    assert "the accuracy guard below fp32 runs this engine on 2 images" in message
    assert "2 of the 2 images do not fit" in message and "--guard-data" in message
