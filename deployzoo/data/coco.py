"""COCO detection / instance segmentation data in the official layout (one JSON file + an image folder).

Layout::

    <root>/annotations/instances_<split>.json
    <root>/<split>/<file_name>          (file_name as the JSON's "images" entries give it)

The JSON is validated once when the dataset is opened, so a broken file stops a run before any
inference: every problem raises :class:`~deployzoo.errors.BadInputError` naming the file and, where
there is one, the offending entry. Image files are not looked at here: the task's ``validate``
checks them (exist, readable header, the size the file gives) before inference.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from deployzoo.data.checks import box_problem
from deployzoo.data.images import read_image_bgr
from deployzoo.errors import BadInputError

# Contiguous label order used by mmdetection and detectron2 (label i = COCO_CLASSES[i]).
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave",
    "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)

# Contiguous label -> official COCO category id (the 2014/2017 files skip 10 of 1..90).
COCO_CATEGORY_IDS: tuple[int, ...] = (
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
    *range(72, 83), *range(84, 91),
)

_REQUIRED_KEYS = ("images", "annotations", "categories")


def _is_number(value: Any) -> bool:
    """A finite int or float (bool excluded: JSON true is not a coordinate)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_segmentation(path: Path, seg: Any, where: str) -> None:
    """A list of polygons (lists of numbers) or an RLE dict with size [h, w] and counts (str or list).

    (Whether an RLE's size is its image's is checked per image, against the real file, by
    ``COCODetectionTask.check_image``.) A polygon list that pycocotools cannot read is refused:
    ``frPyObjects`` (pycocotools 2.0, coco.py ``annToRLE`` -> _mask.pyx) looks only at the first
    polygon's length and fails on an empty list (IndexError) or a first polygon of fewer than 4 numbers
    ("input type is not supported"), which would otherwise surface only at scoring time, after the whole
    run. (A first polygon of exactly 4 numbers is read as a box, as the official evaluation reads it.)"""
    if isinstance(seg, list):
        for k, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                raise BadInputError(path, f"{where}: segmentation polygon {k} is not a list of numbers")
        if not seg:
            raise BadInputError(path, f"{where}: segmentation is an empty list of polygons (pycocotools cannot "
                                      f"read it; give the polygons or drop the key)")
        if len(seg[0]) < 4:
            raise BadInputError(path, f"{where}: segmentation polygon 0 has {len(seg[0])} numbers; a polygon is "
                                      f"x, y pairs of at least 3 points (pycocotools cannot read it)")
        return
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v >= 0 for v in size)):
            raise BadInputError(path, f"{where}: RLE segmentation needs 'size' [height, width], got {size!r}")
        if not (isinstance(counts, str) or (isinstance(counts, list) and all(_is_int(v) for v in counts))):
            raise BadInputError(path, f"{where}: RLE segmentation 'counts' must be a string or a list of ints")
        return
    raise BadInputError(path, f"{where}: segmentation must be a list of polygons or an RLE dict, "
                              f"got {type(seg).__name__}")


def validate_coco_dict(path: Path, data: Any, box_problems: dict[int, str] | None = None) -> None:
    """Check the parts of a COCO instances file that evaluation relies on.

    Images: unique int ``id``, unique str ``file_name``, positive int ``height``/``width``. Categories:
    unique int ``id``, str ``name``. Annotations: ``image_id`` and ``category_id`` that exist,
    ``bbox`` of 4 finite numbers with w, h >= 0, inside its image (``checks.box_problem``), numeric ``area``,
    ``iscrowd`` 0/1, and, when present, a well-formed ``segmentation``. (``iscrowd`` and ``area`` are required because COCOeval reads them.)

    ``box_problems``: when given, an impossible box (negative size, far outside its image) is recorded there
    (image id -> the message of its first such box) instead of raised, so that a per-image ``--skip-bad``
    can leave that image out, as the VOC reader does with its objects.

    Raises:
        BadInputError: naming ``path``, the entry (by index and id) and the problem.
    """
    if not isinstance(data, dict):
        raise BadInputError(path, f"expected a JSON object at the top level, got {type(data).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in data]
    if missing:
        raise BadInputError(path, f"missing top-level key(s) {', '.join(repr(k) for k in missing)}; "
                                  f"a COCO instances file has 'images', 'annotations' and 'categories'")
    for key in _REQUIRED_KEYS:
        if not isinstance(data[key], list):
            raise BadInputError(path, f"'{key}' must be a list, got {type(data[key]).__name__}")

    image_ids: set[int] = set()
    sizes: dict[int, tuple[int, int]] = {}  # id -> (width, height)
    file_names: dict[str, int] = {}  # file_name -> index of its first entry
    for i, img in enumerate(data["images"]):
        where = f"images[{i}]"
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            raise BadInputError(path, f"{where}: missing or non-integer 'id'")
        where = f"images[{i}] (id {img['id']})"
        if img["id"] in image_ids:
            raise BadInputError(path, f"{where}: duplicate image id")
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            raise BadInputError(path, f"{where}: missing 'file_name'")
        if img["file_name"] in file_names:
            first = file_names[img["file_name"]]
            raise BadInputError(path, f"{where}: file_name {img['file_name']!r} is also images[{first}] "
                                      f"(id {data['images'][first]['id']}): two entries for one image file")
        for key in ("height", "width"):
            if not (_is_int(img.get(key)) and img[key] > 0):
                raise BadInputError(path, f"{where}: '{key}' must be a positive integer, got {img.get(key)!r}")
        image_ids.add(img["id"])
        file_names[img["file_name"]] = i
        sizes[img["id"]] = (img["width"], img["height"])

    category_ids: set[int] = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            raise BadInputError(path, f"categories[{i}]: missing or non-integer 'id'")
        if cat["id"] in category_ids:
            raise BadInputError(path, f"categories[{i}]: duplicate category id {cat['id']}")
        if not isinstance(cat.get("name"), str):
            raise BadInputError(path, f"categories[{i}] (id {cat['id']}): missing 'name'")
        category_ids.add(cat["id"])

    annotation_ids: set[int] = set()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not _is_int(ann.get("id")):
            raise BadInputError(path, f"annotations[{i}]: missing or non-integer 'id'")
        where = f"annotations[{i}] (id {ann['id']})"
        if ann["id"] in annotation_ids:
            raise BadInputError(path, f"{where}: duplicate annotation id")
        annotation_ids.add(ann["id"])
        for key, known, section in (("image_id", image_ids, "images"), ("category_id", category_ids, "categories")):
            value = ann.get(key)
            if not _is_int(value):
                raise BadInputError(path, f"{where}: missing or non-integer '{key}': {value!r}")
            if value not in known:
                raise BadInputError(path, f"{where}: {key} {value} is not in '{section}'")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise BadInputError(path, f"{where}: bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
        x, y, w, h = bbox
        problem = box_problem((x, y, x + w, y + h), *sizes[ann["image_id"]])
        message = (f"{where}: bbox has negative width or height: {bbox!r}" if w < 0 or h < 0 else
                   f"{where}: bbox {bbox!r} of image {ann['image_id']}: {problem}" if problem else None)
        if message and box_problems is None:
            raise BadInputError(path, message)
        if message:
            box_problems.setdefault(ann["image_id"], message)
        if not _is_number(ann.get("area")):
            raise BadInputError(path, f"{where}: 'area' must be a number, got {ann.get('area')!r}")
        if not (_is_int(ann.get("iscrowd")) and ann["iscrowd"] in (0, 1)):
            raise BadInputError(path, f"{where}: 'iscrowd' must be 0 or 1, got {ann.get('iscrowd')!r}")
        if "segmentation" in ann:
            _check_segmentation(path, ann["segmentation"], where)


def check_coco_categories(path: Path, categories: list[dict]) -> None:
    """Raise unless ``categories`` are exactly the 80 official COCO ids with their official names."""
    found = {int(c["id"]): c["name"] for c in categories}
    expected = dict(zip(COCO_CATEGORY_IDS, COCO_CLASSES))
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    renamed = [f"{i}: {found[i]!r} (expected {expected[i]!r})"
               for i in sorted(set(found) & set(expected)) if found[i] != expected[i]]
    problems = []
    if missing:
        problems.append(f"missing category ids {missing}")
    if extra:
        problems.append(f"unexpected category ids {extra}")
    if renamed:
        problems.append("different names for " + "; ".join(renamed[:5]) + (" ..." if len(renamed) > 5 else ""))
    if problems:
        raise BadInputError(path, "categories are not the 80 official COCO categories: " + ", ".join(problems))


def quiet_coco(data: dict):
    """A pycocotools ``COCO`` built from an already-parsed dict, without its progress prints."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class COCODetection:
    """One split of COCO (``val2017`` by default): ids, image paths and the ground truth as a pycocotools COCO.

    Args:
        root: the directory holding ``annotations/`` and ``<split>/``.
        split: image folder name, also the annotation file suffix ("val2017", "val2014", ...).
        annotation_file: a JSON file to use instead of ``root/annotations/instances_<split>.json``.
        check_categories: require the 80 official categories (ids and names).

    Attributes:
        ids: str(image id) of every image in the file, sorted by numeric id.
        split_file: the annotation JSON path.
        coco: the ``pycocotools.coco.COCO`` of the file.
    """

    def __init__(self, root: str | Path, split: str = "val2017", annotation_file: str | Path | None = None,
                 check_categories: bool = False, defer_box_problems: bool = False):
        self.root = Path(root)
        self.split = split
        self.image_dir = self.root / split
        if annotation_file is None:
            if not self.root.is_dir():
                raise BadInputError(self.root, "COCO root directory does not exist")
            annotation_file = self.root / "annotations" / f"instances_{split}.json"
        self.split_file = Path(annotation_file)
        if not self.split_file.is_file():
            raise BadInputError(self.split_file, f"COCO annotation file not found (expected "
                                                 f"<root>/annotations/instances_{split}.json)")
        try:
            with open(self.split_file, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise BadInputError(self.split_file, f"not valid JSON ({exc})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInputError(self.split_file, f"cannot read annotation file ({exc})") from exc
        # image id -> its first impossible ground-truth box, kept for the task to raise or skip per image
        self.box_problems: dict[str, str] = {}
        found: dict[int, str] | None = {} if defer_box_problems else None
        validate_coco_dict(self.split_file, data, found)
        self.box_problems = {str(k): v for k, v in (found or {}).items()}
        if not data["images"]:
            raise BadInputError(self.split_file, "'images' is empty: the split has no images to evaluate")
        if check_categories:
            check_coco_categories(self.split_file, data["categories"])
        self.coco = quiet_coco(data)
        self.ids: list[str] = [str(i) for i in sorted(self.coco.imgs)]

    def __len__(self) -> int:
        return len(self.ids)

    def _key(self, image_id: str | int) -> int:
        try:
            key = int(image_id)
        except (TypeError, ValueError):
            raise KeyError(f"not a COCO image id: {image_id!r}") from None
        if key not in self.coco.imgs:
            raise KeyError(f"image id {image_id!r} is not in {self.split_file}")
        return key

    def image_info(self, image_id: str | int) -> dict:
        """The file's ``images`` entry (id, file_name, height, width, ...)."""
        return self.coco.imgs[self._key(image_id)]

    def image_path(self, image_id: str | int) -> Path:
        """``root/<split>/<file_name>`` (not checked for existence)."""
        return self.image_dir / self.image_info(image_id)["file_name"]

    def annotations(self, image_id: str | int) -> list[dict]:
        """The file's annotation dicts of one image, in file order (crowd regions included)."""
        return self.coco.imgToAnns.get(self._key(image_id), [])

    def read_image(self, image_id: str | int) -> np.ndarray:
        """The image as uint8 HxWx3 BGR (as cv2.imread)."""
        path = self.image_path(image_id)
        if not path.is_file():
            raise BadInputError(path, f"image not found, but id {image_id} is listed in {self.split_file}")
        return read_image_bgr(path)
