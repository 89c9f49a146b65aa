"""A tiny, deterministic VOC2012 segmentation tree for tests and smoke runs (no real VOC data needed).

Each image has a textured background and 1-4 filled shapes in their class colour.
Its label PNG holds 0 for background, the class index inside each shape (later
shapes cover earlier ones) and a void (255) band a few pixels wide along each
shape's outline, as the real VOC annotations have.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from deployzoo.data.images import write_jpeg
from deployzoo.data.synthetic_draw import class_colour, textured_background
from deployzoo.data.voc_seg import IGNORE_INDEX, VOC_SEG_CLASSES, write_label_png

# (height, width) cycled through: VOC's common landscape/portrait sizes and an odd one,
# so resizing and padding code sees both orientations and odd sides.
_SIZES = ((375, 500), (500, 375), (333, 500), (281, 499))


def _random_box(rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
    """A 0-based inclusive x1, y1, x2, y2 box covering roughly 15%-60% of each image side."""
    bw = int(rng.integers(max(8, width * 15 // 100), max(9, width * 60 // 100)))
    bh = int(rng.integers(max(8, height * 15 // 100), max(9, height * 60 // 100)))
    x1 = int(rng.integers(0, width - bw + 1))
    y1 = int(rng.integers(0, height - bh + 1))
    return x1, y1, x1 + bw - 1, y1 + bh - 1


def _draw_shape(canvas: np.ndarray, kind: int, box: tuple[int, int, int, int], triangle: np.ndarray,
                value: int | tuple[int, int, int], thickness: int) -> None:
    """Draw shape ``kind`` (0 rectangle, 1 ellipse, 2 triangle) in ``box``; thickness -1 fills it.

    The image and the label map go through this one function so the filled areas agree pixel for pixel.
    """
    x1, y1, x2, y2 = box
    if kind == 0:
        cv2.rectangle(canvas, (x1, y1), (x2, y2), value, thickness=thickness)
    elif kind == 1:
        centre = ((x1 + x2) // 2, (y1 + y2) // 2)
        axes = ((x2 - x1) // 2, (y2 - y1) // 2)
        cv2.ellipse(canvas, centre, axes, 0, 0, 360, value, thickness=thickness)
    elif thickness < 0:
        cv2.fillPoly(canvas, [triangle], value)
    else:
        cv2.polylines(canvas, [triangle], isClosed=True, color=value, thickness=thickness)


def make_synthetic_voc_seg(root: str | Path, num_images: int = 8, seed: int = 0, year: str = "2012",
                           split: str = "val") -> Path:
    """Write a small segmentation tree at ``root/VOCdevkit/VOC<year>`` and return the VOCdevkit path.

    Ids look like VOC's ("2012_000001", ...); sizes cycle through 375x500, 500x375,
    333x500 and 281x499 (HxW). Deterministic for a given seed.
    """
    if num_images < 1:
        raise ValueError("num_images must be at least 1")
    rng = np.random.default_rng(seed)
    devkit = Path(root) / "VOCdevkit"
    year_dir = devkit / f"VOC{year}"
    image_dir = year_dir / "JPEGImages"
    label_dir = year_dir / "SegmentationClass"
    split_dir = year_dir / "ImageSets" / "Segmentation"
    for folder in (image_dir, label_dir, split_dir):
        folder.mkdir(parents=True, exist_ok=True)

    num_classes = len(VOC_SEG_CLASSES)
    ids = []
    for index in range(num_images):
        image_id = f"{year}_{index + 1:06d}"
        height, width = _SIZES[index % len(_SIZES)]
        image = textured_background(rng, height, width, grid=6, noise=25)
        labels = np.zeros((height, width), dtype=np.uint8)
        for _ in range(int(rng.integers(1, 5))):
            label = int(rng.integers(1, num_classes))
            box = _random_box(rng, height, width)
            x1, y1, x2, y2 = box
            # Drawn even when the shape is not a triangle, so the random stream does not depend on it.
            triangle = np.array([[rng.integers(x1, x2 + 1), y1], [x2, y2], [x1, y2]], dtype=np.int32)
            kind = label % 3
            void_width = int(rng.integers(3, 7))
            _draw_shape(image, kind, box, triangle, class_colour(label, num_classes), thickness=-1)
            _draw_shape(labels, kind, box, triangle, label, thickness=-1)
            _draw_shape(labels, kind, box, triangle, IGNORE_INDEX, thickness=void_width)
        write_jpeg(image_dir / f"{image_id}.jpg", image, quality=95)
        write_label_png(label_dir / f"{image_id}.png", labels)
        ids.append(image_id)

    (split_dir / f"{split}.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    return devkit
