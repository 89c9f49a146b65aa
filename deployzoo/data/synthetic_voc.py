"""A tiny, deterministic VOCdevkit tree for tests and smoke runs (no real VOC data needed).

Each image has a noisy textured background and 1-4 filled shapes whose colour and
shape depend on the class, so a detector could in principle learn them. Boxes are
written 1-based and inclusive, as the real VOC XML files are.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

from deployzoo.data.images import write_jpeg
from deployzoo.data.synthetic_draw import class_colour, textured_background
from deployzoo.data.voc import VOC_CLASSES

_DIFFICULT_RATE = 0.1


def _class_colour(label: int) -> tuple[int, int, int]:
    return class_colour(label, len(VOC_CLASSES))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return textured_background(rng, height, width, grid=6, noise=25)


def _draw_object(image: np.ndarray, rng: np.random.Generator, label: int,
                 box: tuple[int, int, int, int]) -> None:
    """Draw class ``label`` filling the 0-based inclusive ``box`` (shape = label % 3)."""
    x1, y1, x2, y2 = box
    colour = _class_colour(label)
    kind = label % 3
    if kind == 0:
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, thickness=-1)
    elif kind == 1:
        centre = ((x1 + x2) // 2, (y1 + y2) // 2)
        axes = ((x2 - x1) // 2, (y2 - y1) // 2)
        cv2.ellipse(image, centre, axes, 0, 0, 360, colour, thickness=-1)
    else:
        # A polygon touching all four box sides, so the box stays tight.
        top = int(rng.integers(x1, x2 + 1))
        bottom = int(rng.integers(x1, x2 + 1))
        left = int(rng.integers(y1, y2 + 1))
        right = int(rng.integers(y1, y2 + 1))
        pts = np.array([[top, y1], [x2, right], [bottom, y2], [x1, left]], dtype=np.int32)
        cv2.fillPoly(image, [pts], colour)


def _random_box(rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int]:
    """A 0-based inclusive box covering roughly 15%-60% of each image side."""
    bw = int(rng.integers(max(8, width * 15 // 100), max(9, width * 60 // 100)))
    bh = int(rng.integers(max(8, height * 15 // 100), max(9, height * 60 // 100)))
    x1 = int(rng.integers(0, width - bw + 1))
    y1 = int(rng.integers(0, height - bh + 1))
    return x1, y1, x1 + bw - 1, y1 + bh - 1


def _sub(parent: ET.Element, tag: str, text: str | int | None = None) -> ET.Element:
    node = ET.SubElement(parent, tag)
    if text is not None:
        node.text = str(text)
    return node


def _annotation_xml(folder: str, filename: str, width: int, height: int,
                    objects: list[tuple[int, tuple[int, int, int, int], bool]]) -> ET.ElementTree:
    """Build the XML tree in the real VOC format; ``objects`` boxes are 1-based inclusive."""
    root = ET.Element("annotation")
    _sub(root, "folder", folder)
    _sub(root, "filename", filename)
    source = _sub(root, "source")
    _sub(source, "database", "deployzoo synthetic VOC")
    size = _sub(root, "size")
    _sub(size, "width", width)
    _sub(size, "height", height)
    _sub(size, "depth", 3)
    _sub(root, "segmented", 0)
    for label, (x1, y1, x2, y2), difficult in objects:
        obj = _sub(root, "object")
        _sub(obj, "name", VOC_CLASSES[label])
        _sub(obj, "pose", "Unspecified")
        _sub(obj, "truncated", 0)
        _sub(obj, "difficult", int(difficult))
        bndbox = _sub(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (x1, y1, x2, y2)):
            _sub(bndbox, tag, value)
    tree = ET.ElementTree(root)
    ET.indent(tree, space="\t")
    return tree


def make_synthetic_voc(root: str | Path, num_images: int = 16, seed: int = 0, year: str = "2007",
                       split: str = "test", min_size: int = 160, max_size: int = 500) -> Path:
    """Write a small VOCdevkit tree at ``root/VOCdevkit/VOC<year>`` and return the VOCdevkit path.

    Deterministic for a given seed. Even-numbered images are landscape, odd ones
    portrait; about 10% of objects are marked difficult.
    """
    if num_images < 1:
        raise ValueError("num_images must be at least 1")
    if not 32 <= min_size <= max_size:
        raise ValueError(f"need 32 <= min_size <= max_size, got {min_size}, {max_size}")
    rng = np.random.default_rng(seed)
    devkit = Path(root) / "VOCdevkit"
    year_dir = devkit / f"VOC{year}"
    folders = {name: year_dir / name for name in ("JPEGImages", "Annotations", "ImageSets/Main")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)

    ids = []
    for index in range(num_images):
        image_id = f"{index + 1:06d}"
        long_side = int(rng.integers(min_size, max_size + 1))
        short_side = int(rng.integers(min_size, long_side + 1))
        width, height = (long_side, short_side) if index % 2 == 0 else (short_side, long_side)
        image = _background(rng, height, width)
        objects = []
        for _ in range(int(rng.integers(1, 5))):
            label = int(rng.integers(len(VOC_CLASSES)))
            box = _random_box(rng, width, height)
            _draw_object(image, rng, label, box)
            one_based = (box[0] + 1, box[1] + 1, box[2] + 1, box[3] + 1)
            objects.append((label, one_based, bool(rng.random() < _DIFFICULT_RATE)))
        write_jpeg(folders["JPEGImages"] / f"{image_id}.jpg", image, quality=95)
        _annotation_xml(f"VOC{year}", f"{image_id}.jpg", width, height, objects).write(
            folders["Annotations"] / f"{image_id}.xml", encoding="utf-8")
        ids.append(image_id)

    (folders["ImageSets/Main"] / f"{split}.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    return devkit
