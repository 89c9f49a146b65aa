"""Cheap checks that let a dataset fail in seconds, before any model is loaded or exported.

``image_header_hw`` reads an image's size from its header (PIL opens lazily), so checking every image
of COCO val2017 costs seconds; ``box_problem`` is the one rule every ground-truth reader applies to a box.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from deployzoo.data.images import jpeg_is_complete, read_image_bgr
from deployzoo.errors import BadInputError

# A ground-truth box may overhang the image by this fraction of the side (at least BOX_MARGIN_PX pixels):
# annotation tools round and clip loosely (VOC is 1-based, COCO boxes end a fraction past the border),
# but a box further out than that cannot belong to the image.
BOX_MARGIN = 0.02
BOX_MARGIN_PX = 2.0

_EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees: the decoders swap H and W


def box_problem(box: tuple[float, float, float, float], width: float, height: float) -> str | None:
    """What is impossible about ground-truth box ``(x1, y1, x2, y2)`` in a ``width`` x ``height`` image, or None.

    Refused: a negative width or height (x2 < x1 or y2 < y1), and any side further outside the image than
    ``max(BOX_MARGIN * side, BOX_MARGIN_PX)`` pixels. Zero-size boxes are left to the metric's own rules.
    """
    x1, y1, x2, y2 = box
    if x2 < x1 or y2 < y1:
        return f"box {_shown(box)} (x1, y1, x2, y2) has a negative width or height"
    mx = max(BOX_MARGIN * width, BOX_MARGIN_PX)
    my = max(BOX_MARGIN * height, BOX_MARGIN_PX)
    if x1 < -mx or y1 < -my or x2 > width + mx or y2 > height + my:
        return f"box {_shown(box)} (x1, y1, x2, y2) lies outside the {width:g}x{height:g} (width x height) image"
    return None


def _shown(box) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in box) + "]"


def _tail_is_eoi(path: Path) -> bool:
    """True when a JPEG file ends with its end-of-image marker (the common case: no need to walk it)."""
    with open(path, "rb") as f:
        f.seek(-2, 2)
        return f.read(2) == b"\xff\xd9"


_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last chunk of every PNG: length 0, type, CRC


def _png_is_complete(path: Path) -> bool:
    """True when a PNG's chunks run on to its IEND chunk (the file was not cut short).

    Fast path: the file ends with IEND. Otherwise walk the chunk headers (8 bytes each, data skipped): a
    file that ends before IEND is truncated. (libpng's decoder fails on it only at decode time, after the
    other images' work, with a raw "PNG input buffer is incomplete" line that names no file.)"""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(size - len(_PNG_IEND), 0))
        if f.read() == _PNG_IEND:
            return True
        f.seek(8)  # past the signature
        while True:
            header = f.read(8)
            if len(header) < 8:
                return False
            length, kind = int.from_bytes(header[:4], "big"), header[4:]
            if kind == b"IEND":
                return True
            if f.tell() + length + 4 > size:
                return False
            f.seek(length + 4, 1)  # chunk data and CRC


def image_header_hw(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image as the decoders will return it (EXIF orientation applied), from its header.

    Also refuses a JPEG or PNG cut short (looked at only when its last bytes are not the end-of-image marker
    or the IEND chunk).
    A file PIL cannot identify is decoded with OpenCV instead (slower, but the same rules as inference).

    Raises:
        BadInputError: missing, a directory, empty, truncated, or not a readable image.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file() or path.stat().st_size < 4:
        read_image_bgr(path)  # raises the reader's own message (not found, directory, empty, ...)
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = None
            if image.format == "JPEG" or "exif" in image.info:  # a PNG would decode itself to find EXIF
                try:
                    orientation = image.getexif().get(_EXIF_ORIENTATION)
                except Exception:  # noqa: BLE001 - a broken EXIF block is ignored by both decoders
                    orientation = None
            is_jpeg = image.format == "JPEG"
            is_png = image.format == "PNG"
    except Exception:  # noqa: BLE001 - PIL raises many kinds; OpenCV decides below
        return tuple(read_image_bgr(path).shape[:2])  # type: ignore[return-value]
    if is_jpeg and not _tail_is_eoi(path) and not jpeg_is_complete(np.fromfile(str(path), dtype=np.uint8)):
        raise BadInputError(path, "truncated or corrupt JPEG (no end-of-image marker); "
                                  "re-download or re-extract the file")
    if is_png and not _png_is_complete(path):
        raise BadInputError(path, "truncated PNG (the file ends before its IEND chunk); "
                                  "re-download or re-extract the file")
    if orientation in _SWAPS_SIDES:
        width, height = height, width
    return int(height), int(width)
