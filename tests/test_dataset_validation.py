"""The whole dataset is checked before the expensive part: empty splits, impossible ground truth, broken
annotations and bad image files fail in seconds, naming the file, before any weights are loaded or exported;
with skip_bad a bad image is left out and counted."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from coco_json import edit_coco_json as _edit_coco
from PIL import Image

from deployzoo.cli import main
from deployzoo.data.checks import box_problem, image_header_hw
from deployzoo.data.voc_seg import write_label_png
from deployzoo.errors import BadInputError, DeployzooError
from deployzoo.pipeline import evaluate_dataset
from deployzoo.registry import get_spec

MODELS = {"voc": "refinedet320-vgg16-voc", "coco": "mmdet-mask-rcnn-r50-fpn-1x", "seg": "mmseg-pspnet-r50-d8-voc12aug"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    """Two-image synthetic sets of each reader, never modified (tests corrupt copies)."""
    base = tmp_path_factory.mktemp("pristine")
    return {kind: get_spec(model).evaluation.make_synthetic(base / kind, num_images=2) for kind, model in MODELS.items()}


@pytest.fixture
def copy_of(pristine, tmp_path):
    def make(kind: str) -> Path:
        root = pristine[kind]
        return Path(shutil.copytree(root, tmp_path / "data" / kind / root.name))

    return make


def _voc_xml(root: Path, image_id: str = "000001") -> Path:
    return root / "VOC2007" / "Annotations" / f"{image_id}.xml"


def _edit_xml(root: Path, pattern: str, replacement: str, image_id: str = "000001") -> Path:
    path = _voc_xml(root, image_id)
    text, n = re.subn(pattern, replacement, path.read_text(), count=1, flags=re.S)
    assert n == 1, pattern
    path.write_text(text)
    return path


def _first_image(kind: str, root: Path) -> Path:
    task = get_spec(MODELS[kind]).evaluation
    dataset = task.open(root)
    return dataset.image_path(dataset.ids[0])


# ---------------------------------------------------------------- corruptions, each naming the file to blame


def _size_mismatch(kind: str, root: Path) -> str:
    """Ground truth whose image size is not the image file's."""
    if kind == "voc":
        _edit_xml(root, r"<width>(\d+)</width>", "<width>451</width>")
        return "000001.xml"
    if kind == "coco":
        _edit_coco(root, lambda d: d["images"][0].update(height=d["images"][0]["height"] + 7))
        return "instances_val2017.json"
    year = root / "VOC2012"
    write_label_png(year / "SegmentationClass" / "2012_000001.png", np.zeros((376, 500), np.uint8))
    return "2012_000001.png"


def _broken_annotation(kind: str, root: Path) -> str:
    if kind == "voc":
        _edit_xml(root, r"<size>.*?</size>", "")  # the example: an XML without <size>
        return "000001.xml"
    if kind == "coco":
        _edit_coco(root, lambda d: d["annotations"][0].update(iscrowd="no"))
        return "instances_val2017.json"
    (root / "VOC2012" / "SegmentationClass" / "2012_000002.png").write_bytes(b"not a png at all")
    return "2012_000002.png"


def _missing_image(kind: str, root: Path) -> str:
    path = _first_image(kind, root)
    path.unlink()
    return path.name


def _truncated_image(kind: str, root: Path) -> str:
    path = _first_image(kind, root)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path.name


CORRUPTIONS = {"size": _size_mismatch, "broken": _broken_annotation, "missing": _missing_image,
               "truncated": _truncated_image}


@pytest.fixture
def no_model(monkeypatch):
    """Loading weights, exporting or writing .bin files fails the test: the check must come first."""
    import deployzoo.engine
    import deployzoo.job
    import deployzoo.pipeline

    def boom(*args, **kwargs):
        raise AssertionError("the expensive part started before the dataset was checked")

    for module, name in ((deployzoo.engine, "load_model"), (deployzoo.pipeline, "load_model"),
                         (deployzoo.job, "load_model"), (deployzoo.pipeline, "export_model"),
                         (deployzoo.job, "cached_onnx"), (deployzoo.pipeline, "export_onnx"),
                         (deployzoo.pipeline, "write_bins")):
        monkeypatch.setattr(module, name, boom)


def _command(command: str, model: str, root: Path, out: Path, *extra: str) -> list[str]:
    return {
        "eval": ["eval", model, "--data", str(root), "--out", str(out), "--workers", "0"],
        "run": ["run", model, "--data", str(root), "--out", str(out)],
        "to-bin": ["data", "to-bin", model, "--data", str(root), "--out", str(out)],
        "compare": ["compare", model, "--data", str(root), "--out", str(out)],
    }[command] + list(extra)


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
@pytest.mark.parametrize("command", ["eval", "run", "to-bin", "compare"])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_command_checks_the_dataset_before_the_model(kind, command, corruption, copy_of, no_model, tmp_path,
                                                           capsys):
    root = copy_of(kind)
    blamed = CORRUPTIONS[corruption](kind, root)
    out = tmp_path / "out"
    assert main(_command(command, MODELS[kind], root, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and blamed in err, err
    assert "Traceback" not in err
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not [p for p in written if p.suffix in (".onnx", ".bin", ".info", ".json", ".npz")], written


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_a_clean_set_passes_the_check(kind, pristine):
    checked = get_spec(MODELS[kind]).evaluation.validate(pristine[kind])
    assert len(checked.ids) == 2 and not checked.skipped
    assert all(h > 0 and w > 0 for h, w in checked.sizes.values())


# ---------------------------------------------------------------- empty splits


def test_coco_with_no_images_is_an_error(copy_of):
    root = copy_of("coco")
    _edit_coco(root, lambda d: d.update(images=[], annotations=[]))
    task = get_spec(MODELS["coco"]).evaluation
    with pytest.raises(BadInputError, match=r"instances_val2017\.json.*'images' is empty"):
        task.open(root)


def test_eval_of_an_empty_coco_split_fails_before_the_model(copy_of, no_model, tmp_path, capsys):
    root = copy_of("coco")
    _edit_coco(root, lambda d: d.update(images=[], annotations=[]))
    assert main(_command("eval", MODELS["coco"], root, tmp_path / "out")) == 2
    assert "'images' is empty" in capsys.readouterr().err
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.parametrize("command", ["eval", "to-bin"])
def test_limit_zero_is_an_error_not_everything(command, pristine, no_model, tmp_path, capsys):
    args = _command(command, MODELS["voc"], pristine["voc"], tmp_path / "out", "--limit", "0")
    with pytest.raises(SystemExit) as exc:  # the parser refuses it, before any file is read
        main(args)
    assert exc.value.code == 2
    assert "--limit: the number of images must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_a_split_whose_every_image_is_skipped_is_an_error(kind, copy_of, no_model, tmp_path, capsys):
    root = copy_of(kind)
    task = get_spec(MODELS[kind]).evaluation
    dataset = task.open(root)
    for image_id in dataset.ids:
        dataset.image_path(image_id).unlink()
    with pytest.raises(DeployzooError, match="no image .* left to run: all 2 were skipped"):
        task.validate(root, skip_bad=True)
    assert main(_command("eval", MODELS[kind], root, tmp_path / "out", "--skip-bad")) == 2
    assert "all 2 were skipped" in capsys.readouterr().err


def test_library_evaluation_checks_too(copy_of, tmp_path):
    """evaluate_dataset validates by itself: the issue's COCO image 502 whose height is wrong fails before
    inference (it used to end in 'mask size ... is not the image size' after the whole run)."""
    root = copy_of("coco")
    _edit_coco(root, lambda d: [img.update(height=img["height"] + 1) for img in d["images"] if img["id"] == 502])

    def never(feeds, ids):
        raise AssertionError("inference must not start")

    spec = get_spec(MODELS["coco"])
    with pytest.raises(BadInputError, match=r"instances_val2017\.json.*id 502.*000000000502\.jpg"):
        evaluate_dataset(spec, root, never, 1, tmp_path / "o", {}, workers=0, progress=False)
    assert not (tmp_path / "o" / "partial").exists()


# ---------------------------------------------------------------- skip_bad: one image left out, counted


@pytest.mark.parametrize("corruption", ["size", "missing", "truncated"])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_skip_bad_leaves_out_and_counts_the_image(kind, corruption, copy_of, no_model, tmp_path, capsys):
    root = copy_of(kind)
    blamed = CORRUPTIONS[corruption](kind, root)
    task = get_spec(MODELS[kind]).evaluation
    with pytest.raises(BadInputError, match=re.escape(blamed)):
        task.validate(root)
    checked = task.validate(root, skip_bad=True)
    assert len(checked.ids) == 1 and len(checked.skipped) == 1
    skipped = checked.skipped[0]
    assert skipped["image_id"] not in checked.ids and blamed in skipped["path"] + skipped["problem"]


# ---------------------------------------------------------------- impossible ground truth, one rule


@pytest.mark.parametrize("box, words", [
    ((50, 10, 40, 20), "negative width"), ((10, 50, 20, 40), "negative width or height"),
    ((600, 10, 700, 20), "outside"), ((-60, 10, 20, 20), "outside"), ((10, 10, 20, 460), "outside"),
])
def test_box_rule_refuses_impossible_boxes(box, words):
    assert words in box_problem(box, 500, 375)


@pytest.mark.parametrize("box", [(1, 1, 500, 375), (0, 0, 501, 376), (-1.5, 0, 502, 375), (10, 10, 10, 10)])
def test_box_rule_allows_what_real_annotations_hold(box):
    assert box_problem(box, 500, 375) is None


@pytest.mark.parametrize("pattern, replacement, words", [
    (r"<xmax>\d+(\.\d+)?</xmax>", "<xmax>0</xmax>", "negative width"),
    (r"<ymin>\d+(\.\d+)?</ymin>", "<ymin>-400</ymin>", "outside"),
    (r"<xmax>\d+(\.\d+)?</xmax>", "<xmax>5000</xmax>", "outside"),
    (r"<width>\d+</width>", "<width>0</width>", "must be positive"),
])
def test_voc_impossible_boxes_name_file_and_object(copy_of, pattern, replacement, words):
    root = copy_of("voc")
    xml = _edit_xml(root, pattern, replacement)
    task = get_spec(MODELS["voc"]).evaluation
    with pytest.raises(BadInputError, match=rf"000001\.xml: .*{words}") as exc:
        task.validate(root)
    if words != "must be positive":
        assert re.search(r"object\[0\] \(\w+\) <bndbox>", str(exc.value)), exc.value
    # with skip_bad the image is left out and counted, the other one kept
    checked = task.validate(root, skip_bad=True)
    assert checked.ids == ["000002"] and str(xml) in checked.skipped[0]["problem"]


@pytest.mark.parametrize("change, words", [
    (lambda a, img: a.update(bbox=[img["width"] + 50, 5, 10, 10]), "outside"),
    (lambda a, img: a.update(bbox=[5, -100, 10, 10]), "outside"),
    (lambda a, img: a.update(bbox=[5, 5, 10, img["height"] * 2]), "outside"),
])
def test_coco_boxes_far_outside_the_image_name_the_annotation(copy_of, change, words):
    root = copy_of("coco")

    def edit(data):
        ann = data["annotations"][0]
        change(ann, next(i for i in data["images"] if i["id"] == ann["image_id"]))

    _edit_coco(root, edit)
    with pytest.raises(BadInputError, match=rf"instances_val2017\.json: annotations\[0\] \(id \d+\).*{words}"):
        get_spec(MODELS["coco"]).evaluation.validate(root)


def test_coco_box_a_fraction_past_the_border_is_fine(copy_of):
    root = copy_of("coco")

    def edit(data):
        ann = data["annotations"][0]
        img = next(i for i in data["images"] if i["id"] == ann["image_id"])
        x, y, w, h = ann["bbox"]
        ann["bbox"] = [x, y, img["width"] - x + 0.5, h]

    _edit_coco(root, edit)
    assert len(get_spec(MODELS["coco"]).evaluation.validate(root).ids) == 2


def test_segmentation_label_values_are_checked_before_inference(copy_of):
    root = copy_of("seg")
    label = root / "VOC2012" / "SegmentationClass" / "2012_000002.png"
    h, w = Image.open(label).size[::-1]
    write_label_png(label, np.full((h, w), 77, np.uint8))
    with pytest.raises(BadInputError, match=r"2012_000002\.png.*77"):
        get_spec(MODELS["seg"]).evaluation.validate(root)


# ---------------------------------------------------------------- the same image listed twice


@pytest.mark.parametrize("kind, split", [("voc", "VOC2007/ImageSets/Main/test.txt"),
                                         ("seg", "VOC2012/ImageSets/Segmentation/val.txt")])
def test_split_file_listing_an_id_twice_is_an_error(kind, split, copy_of):
    root = copy_of(kind)
    path = root / split
    ids = path.read_text().split()
    path.write_text("\n".join(ids + [ids[0]]) + "\n")
    with pytest.raises(BadInputError, match=rf"{re.escape(path.name)}: line 3: image id '{ids[0]}' is listed twice"):
        get_spec(MODELS[kind]).evaluation.open(root)


def test_coco_two_entries_for_one_file_is_an_error(copy_of):
    root = copy_of("coco")
    _edit_coco(root, lambda d: d["images"][1].update(file_name=d["images"][0]["file_name"]))
    with pytest.raises(BadInputError, match=r"images\[1\] .*is also images\[0\]"):
        get_spec(MODELS["coco"]).evaluation.open(root)


# ---------------------------------------------------------------- image headers


def test_header_size_follows_exif_orientation_as_the_decoders_do(tmp_path):
    from deployzoo.data.images import read_image_bgr, read_image_bgr_pil

    image = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees: the decoders return 20 x 10
    path = tmp_path / "rotated.jpg"
    image.save(path, "JPEG", exif=exif.tobytes())
    assert image_header_hw(path) == read_image_bgr(path).shape[:2] == read_image_bgr_pil(path).shape[:2] == (20, 10)


def test_header_check_refuses_unreadable_files(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello, not an image")
    for name, words in (("empty.jpg", "empty"), ("text.jpg", "not a decodable image"), ("absent.jpg", "not found")):
        with pytest.raises(BadInputError, match=rf"{name}: .*{words}"):
            image_header_hw(tmp_path / name)
    png = tmp_path / "ok.png"
    Image.fromarray(np.zeros((7, 9), np.uint8)).save(png)
    assert image_header_hw(png) == (7, 9)
