"""PASCAL VOC semantic segmentation data in the VOCdevkit layout (ids, JPEGs, palette PNG labels).

Layout::

    VOCdevkit/VOC2012/ImageSets/Segmentation/<split>.txt
    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png

A label PNG is a palette ("P" mode) image whose pixel values are class indices
(0 = background, 1..20 the classes, 255 = void/ignore); the palette only colours
them for viewing. Labels are read as the stored indices, never through the palette.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from deployzoo.data.images import read_image_bgr
from deployzoo.data.voc import _find_year_dir, _read_ids
from deployzoo.errors import BadInputError

# Index = label value, as in the VOC devkit and mmsegmentation's PascalVOCDataset.
VOC_SEG_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
IGNORE_INDEX = 255

# Modes whose stored values are the labels: palette indices, or plain 8-bit grey.
_LABEL_MODES = ("P", "L")


def voc_palette() -> np.ndarray:
    """The VOC devkit colour map (``labelcolormap``) as uint8 [256, 3] RGB.

    Label i's bits are dealt three at a time to R, G, B, filling each channel from
    its high bit down: bit 0 of i -> R bit 7, bit 1 -> G bit 7, bit 2 -> B bit 7,
    bit 3 -> R bit 6, and so on.
    """
    index = np.arange(256, dtype=np.int64)
    rgb = np.zeros((256, 3), dtype=np.int64)
    for j in range(8):
        for channel in range(3):
            rgb[:, channel] |= ((index >> (3 * j + channel)) & 1) << (7 - j)
    return rgb.astype(np.uint8)


def write_label_png(path: str | Path, labels: np.ndarray) -> Path:
    """Write uint8 [H, W] class indices as a palette PNG with the VOC colours (parents created)."""
    path = Path(path)
    labels = np.asarray(labels)
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise ValueError(f"expected uint8 [H, W] labels, got {labels.dtype} {labels.shape}")
    # The raw bytes become the palette indices directly: no colour conversion can remap them.
    image = Image.frombytes("P", (labels.shape[1], labels.shape[0]), np.ascontiguousarray(labels).tobytes())
    image.putpalette(voc_palette().reshape(-1).tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def _open_label(path: Path) -> Image.Image:
    """Open a label PNG lazily (header only) and check it stores labels; BadInputError otherwise."""
    if not path.exists():
        raise BadInputError(path, "label PNG not found")
    if path.is_dir():
        raise BadInputError(path, "expected a label PNG, found a directory")
    try:
        image = Image.open(path)
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError... for bad files
        raise BadInputError(path, f"not a readable PNG ({exc})") from exc
    if image.format != "PNG":
        image.close()
        raise BadInputError(path, f"expected a PNG label file, found {image.format or 'an unknown format'}")
    if image.mode not in _LABEL_MODES:
        image.close()
        raise BadInputError(path, f"label PNG has mode {image.mode!r}; expected a palette ('P') or "
                                  f"grey ('L') PNG whose values are class indices (an RGB colour "
                                  f"rendering cannot be read as labels)")
    return image


def label_png_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of a label PNG, checking from its header only that it is a P or L mode PNG.

    Raises:
        BadInputError: missing, not a PNG, unreadable header, or another mode.
    """
    with _open_label(Path(path)) as image:
        width, height = image.size
    return height, width


def read_label_png(path: str | Path) -> np.ndarray:
    """The stored values of a label PNG as uint8 [H, W]: palette indices for "P", grey values for "L".

    Same values as mmsegmentation's ``imfrombytes(..., flag='unchanged', backend='pillow')``.

    Raises:
        BadInputError: missing, not a PNG, another mode (RGB, ...), truncated or corrupt.
    """
    path = Path(path)
    with _open_label(path) as image:
        try:
            image.load()
        except Exception as exc:  # truncated data raises OSError, bad chunks SyntaxError...
            raise BadInputError(path, f"truncated or corrupt PNG ({exc})") from exc
        labels = np.asarray(image, dtype=np.uint8)
    return labels


class VOCSegmentation:
    """One split of a VOC year's segmentation set: ids, image and label paths, read lazily.

    Args:
        root: the VOC<year> directory, the VOCdevkit directory, or its parent.
        year: "2012" (the segmentation year mmsegmentation evaluates).
        split: name of the file in ImageSets/Segmentation without ".txt" ("val", "train", ...).
    """

    def __init__(self, root: str | Path, year: str = "2012", split: str = "val"):
        self.year = str(year)
        self.split = split
        self.year_dir = _find_year_dir(Path(root), self.year, split, subdir="Segmentation")
        self.split_file = self.year_dir / "ImageSets" / "Segmentation" / f"{split}.txt"
        self.ids: list[str] = _read_ids(self.split_file)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, image_id: str) -> Path:
        """Path of the JPEG for ``image_id`` (not checked for existence)."""
        return self.year_dir / "JPEGImages" / f"{image_id}.jpg"

    def label_path(self, image_id: str) -> Path:
        """Path of the label PNG for ``image_id`` (not checked for existence)."""
        return self.year_dir / "SegmentationClass" / f"{image_id}.png"

    def read_image(self, image_id: str) -> np.ndarray:
        """The image as uint8 [H, W, 3] BGR (as cv2.imread)."""
        path = self.image_path(image_id)
        if not path.is_file():
            raise BadInputError(path, f"image not found, but id {image_id!r} is listed in {self.split_file}")
        return read_image_bgr(path)

    def _existing_label(self, image_id: str) -> Path:
        path = self.label_path(image_id)
        if not path.exists():
            raise BadInputError(path, f"label PNG not found, but id {image_id!r} is listed in {self.split_file}")
        return path

    def label_size(self, image_id: str) -> tuple[int, int]:
        """(height, width) of ``image_id``'s label PNG, checked from its header only."""
        return label_png_size(self._existing_label(image_id))

    def read_label(self, image_id: str) -> np.ndarray:
        """Class indices of ``image_id`` as uint8 [H, W] (255 = void)."""
        return read_label_png(self._existing_label(image_id))
