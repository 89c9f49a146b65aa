"""PASCAL VOC detection data in the VOCdevkit layout (image ids, JPEGs, XML annotations).

Layout::

    VOCdevkit/VOC2007/ImageSets/Main/<split>.txt
    VOCdevkit/VOC2007/JPEGImages/<id>.jpg
    VOCdevkit/VOC2007/Annotations/<id>.xml

Boxes are kept exactly as the XML writes them (1-based, inclusive pixel coordinates);
the evaluation protocol decides how to shift them.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deployzoo.data.checks import box_problem
from deployzoo.data.images import read_image_bgr
from deployzoo.errors import BadInputError

# Alphabetical, as in py-faster-rcnn and RefineDet.PyTorch (label i = VOC_CLASSES[i]).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
_CLASS_INDEX = {name: i for i, name in enumerate(VOC_CLASSES)}
_COORDS = ("xmin", "ymin", "xmax", "ymax")


@dataclass
class VOCAnnotation:
    """Ground truth of one image.

    Attributes:
        image_id: the id from the split file.
        width, height: image size from ``<size>``.
        boxes: float64 [N, 4] x1, y1, x2, y2 as written in the XML (1-based pixels).
        labels: int64 [N], 0-based index into ``VOC_CLASSES``.
        difficult: bool [N].
    """

    image_id: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


def _number(xml_path: Path, node: ET.Element, tag: str, where: str) -> float:
    """Parse ``node/<tag>`` as a number, raising BadInputError naming the field if absent or bad."""
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise BadInputError(xml_path, f"missing <{tag}> in {where}")
    try:
        value = float(child.text.strip())
    except ValueError:
        raise BadInputError(xml_path, f"<{tag}> in {where} is not a number: {child.text.strip()!r}") from None
    if not np.isfinite(value):
        raise BadInputError(xml_path, f"<{tag}> in {where} is not finite: {child.text.strip()!r}")
    return value


def parse_voc_xml(xml_path: str | Path, image_id: str | None = None,
                  class_names: tuple[str, ...] = VOC_CLASSES) -> VOCAnnotation:
    """Parse one VOC annotation XML file.

    A missing ``<difficult>`` counts as 0, as in the VOC devkit. Coordinates written
    as floats ("273.0") are accepted. ``class_names``: the names objects may have (label = index);
    a VOC-format set of your own gives its own list.

    Raises:
        BadInputError: missing file, malformed XML, a missing or non-numeric field, a non-positive
            ``<size>``, an unknown class name, or an impossible box (``checks.box_problem``: negative size,
            or far outside ``<size>``); the message names the file, field and object.
    """
    xml_path = Path(xml_path)
    if image_id is None:
        image_id = xml_path.stem
    if not xml_path.is_file():
        raise BadInputError(xml_path, f"annotation file not found for image id {image_id!r}")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise BadInputError(xml_path, f"malformed XML ({exc})") from None
    except OSError as exc:
        raise BadInputError(xml_path, f"cannot read annotation file ({exc.strerror or exc})") from exc

    size = root.find("size")
    if size is None:
        raise BadInputError(xml_path, "missing <size>")
    width = int(_number(xml_path, size, "width", "<size>"))
    height = int(_number(xml_path, size, "height", "<size>"))
    if width <= 0 or height <= 0:
        raise BadInputError(xml_path, f"<size> gives {width}x{height} (width x height): sides must be positive")

    boxes: list[list[float]] = []
    labels: list[int] = []
    difficult: list[bool] = []
    for i, obj in enumerate(root.findall("object")):
        where = f"object[{i}]"
        name_node = obj.find("name")
        if name_node is None or name_node.text is None or not name_node.text.strip():
            raise BadInputError(xml_path, f"missing <name> in {where}")
        name = name_node.text.strip()
        index = _CLASS_INDEX if class_names is VOC_CLASSES else {n: k for k, n in enumerate(class_names)}
        if name not in index:
            expected = "the 20 VOC classes" if class_names is VOC_CLASSES else f"{', '.join(class_names)} (--classes)"
            raise BadInputError(xml_path, f"unknown class name {name!r} in {where}; expected one of {expected}")
        where = f"object[{i}] ({name})"
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise BadInputError(xml_path, f"missing <bndbox> in {where}")
        box = [_number(xml_path, bndbox, tag, f"{where} <bndbox>") for tag in _COORDS]
        problem = box_problem(box, width, height)
        if problem:
            raise BadInputError(xml_path, f"{where} <bndbox>: {problem}")
        boxes.append(box)
        labels.append(index[name])
        diff_node = obj.find("difficult")
        if diff_node is None or diff_node.text is None or not diff_node.text.strip():
            difficult.append(False)
        else:
            difficult.append(bool(_number(xml_path, obj, "difficult", where)))

    return VOCAnnotation(
        image_id=image_id,
        width=width,
        height=height,
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        difficult=np.asarray(difficult, dtype=bool),
    )


def _find_year_dir(root: Path, year: str, split: str, subdir: str = "Main") -> Path:
    """Accept the VOC<year> directory itself, the VOCdevkit directory, or its parent.

    ``subdir`` is the ImageSets folder holding the split file ("Main" for detection,
    "Segmentation" for semantic segmentation).
    """
    rel = Path("ImageSets", subdir, f"{split}.txt")
    candidates = [root, root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"]
    for cand in candidates:
        if (cand / rel).is_file():
            return cand
    if not root.exists():
        raise BadInputError(root, "VOC root directory does not exist")
    raise BadInputError(
        root,
        f"not a VOC{year} or VOCdevkit directory: no {rel.as_posix()} in it or in "
        f"VOC{year}/ below it (pass VOCdevkit/ or VOCdevkit/VOC{year}/)",
    )


def _read_ids(split_file: Path) -> list[str]:
    """Image ids of a split file, in file order, blank lines ignored; an id listed twice is an error."""
    try:
        lines = split_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(split_file, f"cannot read split file ({exc})") from exc
    ids = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        if len(text.split()) != 1:
            raise BadInputError(split_file, f"line {lineno}: expected one image id per line, got {text!r}")
        if text in first_line:
            raise BadInputError(split_file, f"line {lineno}: image id {text!r} is listed twice (also on line "
                                            f"{first_line[text]}); each image must be listed once")
        first_line[text] = lineno
        ids.append(text)
    if not ids:
        raise BadInputError(split_file, "split file lists no image ids")
    return ids


class VOCDetection:
    """One split of a VOC year: ids, image paths, images and annotations (read lazily).

    Args:
        root: the VOCdevkit directory or the VOC<year> directory itself.
        year: "2007" or "2012".
        split: name of the file in ImageSets/Main without ".txt" ("test", "trainval", ...).
        class_names: the class list the XML files name objects from (default the 20 VOC classes).
    """

    def __init__(self, root: str | Path, year: str = "2007", split: str = "test",
                 class_names: tuple[str, ...] = VOC_CLASSES):
        self.class_names = class_names
        self.year = str(year)
        self.split = split
        self.year_dir = _find_year_dir(Path(root), self.year, split)
        self.split_file = self.year_dir / "ImageSets" / "Main" / f"{split}.txt"
        self.ids: list[str] = _read_ids(self.split_file)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, image_id: str) -> Path:
        """Path of the JPEG for ``image_id`` (not checked for existence)."""
        return self.year_dir / "JPEGImages" / f"{image_id}.jpg"

    def annotation_path(self, image_id: str) -> Path:
        """Path of the annotation XML for ``image_id`` (not checked for existence)."""
        return self.year_dir / "Annotations" / f"{image_id}.xml"

    def read_image(self, image_id: str) -> np.ndarray:
        """The image as uint8 HxWx3 BGR (as cv2.imread)."""
        path = self.image_path(image_id)
        if not path.is_file():
            raise BadInputError(path, f"image not found, but id {image_id!r} is listed in "
                                      f"{self.split_file}")
        return read_image_bgr(path)

    def annotation(self, image_id: str) -> VOCAnnotation:
        """Ground truth of ``image_id`` parsed from its XML file."""
        return parse_voc_xml(self.annotation_path(image_id), image_id, self.class_names)
