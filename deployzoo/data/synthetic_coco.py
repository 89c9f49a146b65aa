"""A tiny, deterministic COCO tree for tests and smoke runs (no real COCO data needed).

Written in the official layout (``annotations/instances_<split>.json`` + ``<split>/<12-digit id>.jpg``)
with the official 80 categories. Each image has a textured background and 1-5 non-overlapping
objects of a handful of classes (rectangles, ellipses and polygons, one colour per class). Object
annotations are polygons; the first image also has a crowd region (several blobs of people) written
as an uncompressed RLE with ``iscrowd: 1``, as the real crowd annotations are. Every ``area`` and
``bbox`` is computed from the mask pycocotools decodes from the written segmentation, and the image
is painted with exactly that mask, so annotation, mask and pixels agree.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np

from deployzoo.data.coco import COCO_CATEGORY_IDS, COCO_CLASSES
from deployzoo.data.images import write_jpeg
from deployzoo.data.synthetic_draw import class_colour, textured_background
from deployzoo.ops.mask_paste import PYCOCOTOOLS_NUMPY2_WARNING

_SUPERCATEGORIES: tuple[tuple[str, int], ...] = (
    # (supercategory, number of consecutive classes in COCO_CLASSES order)
    ("person", 1), ("vehicle", 8), ("outdoor", 5), ("animal", 10), ("accessory", 5), ("sports", 10),
    ("kitchen", 7), ("food", 10), ("furniture", 6), ("electronic", 6), ("appliance", 5), ("indoor", 7),
)

# (contiguous label, shape) of the classes the generator draws.
_OBJECT_CLASSES: tuple[tuple[int, str], ...] = (
    (0, "ellipse"),     # person
    (2, "rectangle"),   # car
    (16, "polygon"),    # dog
    (39, "rectangle"),  # bottle
    (56, "polygon"),    # chair
    (62, "ellipse"),    # tv
)
_CROWD_LABEL = 0  # person
_CROWD_RATE = 0.15  # chance of an extra crowd region on images after the first


def coco_categories() -> list[dict]:
    """The official ``categories`` list: id, name and supercategory of the 80 classes."""
    supers = [name for name, count in _SUPERCATEGORIES for _ in range(count)]
    return [{"supercategory": s, "id": cid, "name": name}
            for s, cid, name in zip(supers, COCO_CATEGORY_IDS, COCO_CLASSES)]


def _class_colour(index: int) -> tuple[int, int, int]:
    return class_colour(index, len(_OBJECT_CLASSES))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return textured_background(rng, height, width, grid=5, noise=20)


def _polygon(rng: np.random.Generator, shape: str, box: tuple[float, float, float, float]) -> list[float]:
    """Flat [x1, y1, x2, y2, ...] outline of ``shape`` inside ``box`` (x, y, w, h), 2 decimals as COCO writes."""
    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    if shape == "rectangle":
        pts = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
    elif shape == "ellipse":
        t = np.linspace(0.0, 2 * np.pi, 24, endpoint=False)
        pts = list(zip(cx + w / 2 * np.cos(t), cy + h / 2 * np.sin(t)))
    else:  # an irregular star-convex polygon
        n = int(rng.integers(5, 9))
        t = np.sort(rng.uniform(0.0, 2 * np.pi, n))
        radius = rng.uniform(0.55, 1.0, n)
        pts = list(zip(cx + w / 2 * radius * np.cos(t), cy + h / 2 * radius * np.sin(t)))
    return [round(float(v), 2) for p in pts for v in p]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE of a binary mask: run lengths in column-major order, starting with 0s."""
    flat = mask.astype(np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _mask_of(segmentation, height: int, width: int) -> np.ndarray:
    """The binary mask pycocotools decodes from a polygon list or an (uncompressed) RLE."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.frPyObjects(segmentation, height, width)
    if isinstance(rle, list):
        rle = mask_utils.merge(rle)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PYCOCOTOOLS_NUMPY2_WARNING, category=DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def _bbox_of(mask: np.ndarray) -> list[float]:
    """Tight [x, y, w, h] of a mask in pixel-edge coordinates (as pycocotools' toBbox)."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]


def _free_box(rng: np.random.Generator, width: int, height: int, taken: list[tuple[float, ...]],
              tries: int = 30) -> tuple[float, float, float, float] | None:
    """A box (x, y, w, h) of 18%-45% of each side not touching earlier boxes (2 px margin), or None."""
    for _ in range(tries):
        w = float(rng.uniform(0.18, 0.45) * width)
        h = float(rng.uniform(0.18, 0.45) * height)
        x = float(rng.uniform(1.0, width - w - 1.0))
        y = float(rng.uniform(1.0, height - h - 1.0))
        if all(x + w + 2 < tx or tx + tw + 2 < x or y + h + 2 < ty or ty + th + 2 < y for tx, ty, tw, th in taken):
            return x, y, w, h
    return None


def _crowd_mask(rng: np.random.Generator, width: int, height: int,
                box: tuple[float, float, float, float]) -> np.ndarray:
    """Several small overlapping blobs inside ``box``: a crowd that no single polygon describes."""
    mask = np.zeros((height, width), dtype=np.uint8)
    x, y, w, h = box
    for _ in range(int(rng.integers(4, 8))):
        rx, ry = max(2, int(w * rng.uniform(0.08, 0.18))), max(3, int(h * rng.uniform(0.15, 0.3)))
        cx = int(rng.uniform(x + rx, x + w - rx))
        cy = int(rng.uniform(y + ry, y + h - ry))
        cv2.ellipse(mask, (cx, cy), (rx, ry), 0, 0, 360, 1, thickness=-1)
    return mask.astype(bool)


def make_synthetic_coco(root: str | Path, num_images: int = 8, seed: int = 0, split: str = "val2017",
                        min_size: int = 160, max_size: int = 400) -> Path:
    """Write ``root/annotations/instances_<split>.json`` and ``root/<split>/*.jpg``; return ``root``.

    Deterministic for a given seed. Even-numbered images are landscape, odd ones portrait. Image
    ids increase with irregular gaps (like COCO's), and the ``images`` list is written shuffled.
    """
    if num_images < 1:
        raise ValueError("num_images must be at least 1")
    if not 64 <= min_size <= max_size:
        raise ValueError(f"need 64 <= min_size <= max_size, got {min_size}, {max_size}")
    rng = np.random.default_rng(seed)
    root = Path(root)
    image_dir = root / split
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)

    images, annotations = [], []
    image_id = 0
    for index in range(num_images):
        image_id += int(rng.integers(1, 400))
        long_side = int(rng.integers(min_size, max_size + 1))
        short_side = int(rng.integers(min_size, long_side + 1))
        width, height = (long_side, short_side) if index % 2 == 0 else (short_side, long_side)
        image = _background(rng, height, width)
        taken: list[tuple[float, ...]] = []
        num_crowds = 1 if index == 0 or rng.random() < _CROWD_RATE else 0
        for k in range(int(rng.integers(1, 6)) + num_crowds):
            box = _free_box(rng, width, height, taken)
            if box is None:
                continue
            crowd = k < num_crowds
            if crowd:
                label, colour = _CROWD_LABEL, _class_colour(0)
                mask = _crowd_mask(rng, width, height, box)
                segmentation = _uncompressed_rle(mask)
            else:
                which = int(rng.integers(len(_OBJECT_CLASSES)))
                label, shape = _OBJECT_CLASSES[which]
                colour = _class_colour(which)
                segmentation = [_polygon(rng, shape, box)]
                mask = _mask_of(segmentation, height, width)
            if not mask.any():
                continue
            taken.append(box)
            image[mask] = colour
            annotations.append({
                "segmentation": segmentation,
                "area": float(mask.sum()),
                "iscrowd": int(crowd),
                "image_id": image_id,
                "bbox": _bbox_of(mask),
                "category_id": COCO_CATEGORY_IDS[label],
                "id": len(annotations) + 1,
            })
        file_name = f"{image_id:012d}.jpg"
        write_jpeg(image_dir / file_name, image, quality=95)
        images.append({"license": 1, "file_name": file_name, "height": height, "width": width,
                       "date_captured": "2017-01-01 00:00:00", "id": image_id})

    order = rng.permutation(len(images))
    data = {
        "info": {"description": "deployzoo synthetic COCO", "version": "1.0", "year": 2017,
                 "contributor": "deployzoo", "date_created": "2017/01/01"},
        "licenses": [{"url": "https://creativecommons.org/publicdomain/zero/1.0/", "id": 1, "name": "CC0 1.0"}],
        "images": [images[i] for i in order],
        "annotations": annotations,
        "categories": coco_categories(),
    }
    with open(root / "annotations" / f"instances_{split}.json", "w", encoding="utf-8") as f:
        json.dump(data, f, allow_nan=False)
    return root
