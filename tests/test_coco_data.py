"""COCO data: class tables, the synthetic generator round trip, and every bad-input case."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from coco_json import coco_json_path as _json_path
from coco_json import edit_coco_json as _rewrite
from pycocotools import mask as mask_utils

from deployzoo.data.coco import COCO_CATEGORY_IDS, COCO_CLASSES, COCODetection
from deployzoo.data.synthetic_coco import make_synthetic_coco
from deployzoo.errors import BadInputError
from deployzoo.tasks.coco_detection import COCODetectionTask

# pycocotools calls np.array(copy=False) on its own objects (annToMask, decode); numpy 2 warns.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    return make_synthetic_coco(tmp_path_factory.mktemp("coco"), num_images=8, seed=0)


@pytest.fixture
def copy_of_root(coco_root, tmp_path) -> Path:
    """A private copy for tests that damage files."""
    return Path(shutil.copytree(coco_root, tmp_path / "coco"))


# ---------------------------------------------------------------- tables


def test_coco_tables():
    assert len(COCO_CLASSES) == 80 and len(set(COCO_CLASSES)) == 80
    assert len(COCO_CATEGORY_IDS) == 80 and list(COCO_CATEGORY_IDS) == sorted(set(COCO_CATEGORY_IDS))
    assert COCO_CLASSES[0] == "person" and COCO_CLASSES[79] == "toothbrush"
    assert dict(zip(COCO_CLASSES, COCO_CATEGORY_IDS))["stop sign"] == 13
    assert COCO_CATEGORY_IDS[:12] == (*range(1, 12), 13)
    assert set(range(1, 91)) - set(COCO_CATEGORY_IDS) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}


# ---------------------------------------------------------------- generator + reader


def test_synthetic_layout_and_round_trip(coco_root):
    ds = COCODetection(coco_root, check_categories=True)
    data = json.loads(_json_path(coco_root).read_text())
    assert {"info", "licenses", "images", "annotations", "categories"} <= set(data)
    assert len(data["categories"]) == 80 and all("supercategory" in c for c in data["categories"])
    assert ds.split_file == _json_path(coco_root)
    assert len(ds) == 8 and ds.ids == [str(i) for i in sorted(int(i) for i in ds.ids)]
    assert [img["id"] for img in data["images"]] != sorted(img["id"] for img in data["images"])  # written shuffled

    orientations, crowd, polygons, classes = set(), 0, 0, set()
    for image_id in ds.ids:
        info = ds.image_info(image_id)
        assert ds.image_path(image_id) == coco_root / "val2017" / f"{int(image_id):012d}.jpg"
        image = ds.read_image(image_id)
        assert image.shape == (info["height"], info["width"], 3)
        assert 160 <= min(image.shape[:2]) and max(image.shape[:2]) <= 400
        orientations.add(info["width"] > info["height"])
        anns = ds.annotations(image_id)
        assert 1 <= sum(1 for a in anns if not a["iscrowd"]) <= 5
        for ann in anns:
            classes.add(ann["category_id"])
            mask = ds.coco.annToMask(ann).astype(bool)
            ys, xs = np.nonzero(mask)
            assert ann["area"] == mask.sum() > 0
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            np.testing.assert_allclose(mask_utils.toBbox(ds.coco.annToRLE(ann)), ann["bbox"])
            # The object is painted with one flat colour where its mask is (away from JPEG-blurred edges).
            inside = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            assert inside.any() and image[inside].std(axis=0).max() < 6
            if ann["iscrowd"]:
                crowd += 1
                assert isinstance(ann["segmentation"], dict) and isinstance(ann["segmentation"]["counts"], list)
            else:
                polygons += 1
                assert isinstance(ann["segmentation"], list)
    assert orientations == {True, False}
    assert crowd >= 1 and polygons > crowd
    assert len(classes) >= 3


def test_synthetic_is_deterministic(tmp_path, coco_root):
    again = make_synthetic_coco(tmp_path / "a", num_images=8, seed=0)
    other = make_synthetic_coco(tmp_path / "b", num_images=8, seed=1)
    assert _json_path(again).read_bytes() == _json_path(coco_root).read_bytes()
    assert _json_path(other).read_bytes() != _json_path(coco_root).read_bytes()
    for path in sorted((coco_root / "val2017").iterdir()):
        assert (again / "val2017" / path.name).read_bytes() == path.read_bytes()


def test_open_is_quiet_and_missing_images_are_not_an_error(copy_of_root, capsys):
    first = min((copy_of_root / "val2017").iterdir())
    first.unlink()
    ds = COCODetection(copy_of_root)
    assert capsys.readouterr().out == ""
    image_id = str(int(first.stem))
    assert image_id in ds.ids
    with pytest.raises(BadInputError) as err:
        ds.read_image(image_id)
    assert str(first) in str(err.value)


def test_annotation_file_override(copy_of_root, tmp_path):
    moved = tmp_path / "elsewhere.json"
    shutil.move(_json_path(copy_of_root), moved)
    ds = COCODetection(copy_of_root, annotation_file=moved)
    assert ds.split_file == moved and len(ds) == 8


# ---------------------------------------------------------------- bad input


def test_missing_root_and_file(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        COCODetection(tmp_path / "nowhere")
    with pytest.raises(BadInputError) as err:
        COCODetection(tmp_path)
    assert err.value.path == str(_json_path(tmp_path)) and "not found" in err.value.problem


def test_broken_json(copy_of_root):
    path = _json_path(copy_of_root)
    path.write_text(path.read_text()[:500])
    with pytest.raises(BadInputError) as err:
        COCODetection(copy_of_root)
    assert err.value.path == str(path) and "not valid JSON" in err.value.problem


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("annotations"), "missing top-level key(s) 'annotations'"),
    (lambda d: d.__setitem__("images", {}), "'images' must be a list"),
    (lambda d: d["annotations"][3].__setitem__("image_id", 999999), "image_id 999999 is not in 'images'"),
    (lambda d: d["annotations"][0].__setitem__("category_id", 12), "category_id 12 is not in 'categories'"),
    (lambda d: d["annotations"][1].__setitem__("bbox", [1, 2, 3]), "bbox must be 4 numbers"),
    (lambda d: d["annotations"][1].__setitem__("bbox", [1, 2, "3", 4]), "bbox must be 4 numbers"),
    (lambda d: d["annotations"][1].__setitem__("bbox", [1, 2, -3, 4]), "negative width"),
    (lambda d: d["annotations"][2].pop("iscrowd"), "'iscrowd' must be 0 or 1"),
    (lambda d: d["annotations"][2].pop("area"), "'area' must be a number"),
    (lambda d: d["annotations"][2].__setitem__("segmentation", [[1, "a"]]), "polygon 0 is not a list of numbers"),
    (lambda d: d["annotations"][2].__setitem__("id", d["annotations"][1]["id"]), "duplicate annotation id"),
    (lambda d: d["images"].append(dict(d["images"][0])), "duplicate image id"),
    (lambda d: d["images"][0].__setitem__("height", 0), "'height' must be a positive integer"),
    (lambda d: d["images"][0].pop("file_name"), "missing 'file_name'"),
])
def test_bad_annotation_file(copy_of_root, change, message):
    path = _rewrite(copy_of_root, change)
    with pytest.raises(BadInputError) as err:
        COCODetection(copy_of_root)
    assert err.value.path == str(path)
    assert message in err.value.problem


def test_check_categories(copy_of_root):
    def rename(d):
        d["categories"][2]["name"] = "automobile"
        d["categories"].pop()

    path = _rewrite(copy_of_root, rename)
    assert len(COCODetection(copy_of_root)) == 8  # not checked by default
    with pytest.raises(BadInputError) as err:
        COCODetection(copy_of_root, check_categories=True)
    assert err.value.path == str(path)
    assert "missing category ids [90]" in err.value.problem and "'automobile'" in err.value.problem
    with pytest.raises(BadInputError):
        COCODetectionTask().open(copy_of_root)  # the task asks for the official categories


# ---------------------------------------------------------------- task


def test_task_ground_truth(tmp_path):
    task = COCODetectionTask()
    root = task.make_synthetic(tmp_path, num_images=4, seed=2)
    ds = task.open(root)
    annotations, skipped = task.load_ground_truth(ds)
    assert skipped == [] and list(annotations) == ds.ids
    for image_id, gt in annotations.items():
        assert gt.image_id == int(image_id) and gt.dataset is ds
        assert (gt.height, gt.width) == (ds.image_info(image_id)["height"], ds.image_info(image_id)["width"])
        assert gt.num_annotations == len(ds.annotations(image_id))
    assert task.dataset_name == "COCO val2017"


def test_task_needs_segmentation_for_mask_ap(copy_of_root):
    path = _rewrite(copy_of_root, lambda d: d["annotations"][0].pop("segmentation"))
    task = COCODetectionTask()
    ds = task.open(copy_of_root)
    bad_image = str(json.loads(path.read_text())["annotations"][0]["image_id"])
    with pytest.raises(BadInputError, match="no 'segmentation'"):
        task.load_ground_truth(ds)
    annotations, skipped = task.load_ground_truth(ds, skip_bad=True)
    assert [s[0] for s in skipped] == [bad_image] and bad_image not in annotations
    assert len(annotations) == 7
    boxes_only = COCODetectionTask(iou_types=("bbox",))
    assert len(boxes_only.load_ground_truth(ds)[0]) == 8


def test_task_arguments():
    with pytest.raises(ValueError, match="class names"):
        COCODetectionTask(class_names=("a", "b"))
    with pytest.raises(ValueError, match="bbox"):
        COCODetectionTask(iou_types=("segm",))
