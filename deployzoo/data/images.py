"""Read and write images the way the reference pipelines see them (BGR uint8, as cv2.imread).

Files are read through numpy and decoded with ``cv2.imdecode`` so that paths with
non-ASCII characters work on every platform. Unusable files raise
:class:`~deployzoo.errors.BadInputError` naming the file.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from deployzoo.errors import BadInputError

_SOI = 0xD8  # start of image
_EOI = 0xD9  # end of image
_SOS = 0xDA  # start of scan: entropy-coded data follows its header
# Markers that stand alone (no length field): TEM, RST0-7, SOI, EOI.
_STANDALONE = {0x01, *range(0xD0, 0xD8), _SOI, _EOI}


def _read_bytes(path: Path) -> np.ndarray:
    """Return the file's bytes, raising BadInputError for missing/unreadable/empty files."""
    if not path.exists():
        raise BadInputError(path, "image file not found")
    if path.is_dir():
        raise BadInputError(path, "expected an image file, found a directory")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise BadInputError(path, f"cannot read image file ({exc.strerror or exc})") from exc
    if data.size == 0:
        raise BadInputError(path, "image file is empty (0 bytes)")
    return data


def _next_marker(data: np.ndarray, start: int) -> int:
    """Index of the next real marker's 0xFF at or after ``start`` in entropy-coded data, or -1.

    Inside scan data a 0xFF byte is followed by 0x00 (byte stuffing), an RSTn marker
    or more 0xFF fill bytes; anything else is a real marker that ends the scan.
    """
    ff = np.flatnonzero(data[start:-1] == 0xFF) + start
    if ff.size == 0:
        return -1
    nxt = data[ff + 1]
    real = (nxt != 0x00) & (nxt != 0xFF) & ((nxt < 0xD0) | (nxt > 0xD7))
    hits = np.flatnonzero(real)
    return int(ff[hits[0]]) if hits.size else -1


def jpeg_is_complete(data: np.ndarray) -> bool:
    """True when a JPEG byte stream reaches its end-of-image (FF D9) marker.

    Walks the marker segments (skipping length-delimited segments such as EXIF
    thumbnails, which carry their own EOI) and the entropy-coded scans, so trailing
    bytes after the real EOI of any length are allowed, while a file cut short
    (which cv2 silently decodes with a grey bottom) is reported as incomplete.
    """
    n = int(data.size)
    if n < 4 or data[0] != 0xFF or data[1] != _SOI:
        return False
    pos = 2
    while pos < n - 1:
        if data[pos] != 0xFF:
            # Tolerate stray bytes between segments, as libjpeg does (with a warning).
            pos = _next_marker(data, pos)
            if pos < 0:
                return False
            continue
        marker = int(data[pos + 1])
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == _EOI:
            return True
        if marker in _STANDALONE:
            pos += 2
            continue
        if pos + 3 >= n:
            return False
        seg_len = (int(data[pos + 2]) << 8) | int(data[pos + 3])
        end = pos + 2 + seg_len
        if seg_len < 2 or end > n:
            return False  # segment runs past the end of the file: truncated
        pos = end
        if marker == _SOS:
            pos = _next_marker(data, pos)
            if pos < 0:
                return False  # scan data never ends: truncated
    return False


def read_image_bgr(path: str | Path) -> np.ndarray:
    """Read an image as uint8 HxWx3 BGR, exactly as ``cv2.imread(path, cv2.IMREAD_COLOR)``.

    Raises:
        BadInputError: the file is missing, empty, not a decodable image, or a
            truncated JPEG (no end-of-image marker).
    """
    path = Path(path)
    data = _read_bytes(path)
    # Check before decoding: cv2 would fill the missing part grey and only warn.
    if data.size >= 2 and data[0] == 0xFF and data[1] == _SOI and not jpeg_is_complete(data):
        raise BadInputError(path, "truncated or corrupt JPEG (no end-of-image marker); "
                                  "re-download or re-extract the file")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise BadInputError(path, f"not a decodable image ({data.size} bytes)")
    return image


def write_jpeg(path: str | Path, bgr: np.ndarray, quality: int = 95) -> Path:
    """Write a uint8 HxWx3 BGR image as JPEG (works with non-ASCII paths). Returns the path."""
    path = Path(path)
    if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"expected uint8 HxWx3 BGR image, got {bgr.dtype} {bgr.shape}")
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"cv2 failed to encode a JPEG for {path}")
    buf.tofile(str(path))
    return path


def read_image_bgr_pil(path: str | Path) -> np.ndarray:
    """Read an image as uint8 HxWx3 BGR the way detectron2 does: PIL decode, EXIF orientation applied,
    converted to RGB, channels reversed (``transforms.decode_bgr_pil``).

    Raises:
        BadInputError: as :func:`read_image_bgr`, for files PIL cannot decode too.
    """
    from deployzoo.transforms import decode_bgr_pil

    path = Path(path)
    data = _read_bytes(path)
    if data.size >= 2 and data[0] == 0xFF and data[1] == _SOI and not jpeg_is_complete(data):
        raise BadInputError(path, "truncated or corrupt JPEG (no end-of-image marker); "
                                  "re-download or re-extract the file")
    try:
        return decode_bgr_pil(data.tobytes())
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, ValueError, SyntaxError... for bad files
        raise BadInputError(path, f"not a decodable image ({data.size} bytes): {exc}") from exc


def image_size_hw(path: str | Path) -> tuple[int, int] | None:
    """(H, W) from the file header without decoding (PIL reads lazily); None if unreadable. Used only to
    order images so that equal sizes batch together: a wrong or missing answer costs speed, not results."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return int(image.height), int(image.width)
    except Exception:  # noqa: BLE001 - the loader reports bad files properly later
        return None
