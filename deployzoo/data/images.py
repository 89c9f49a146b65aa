"""Read and write images the way the reference pipelines see them (BGR uint8, as cv2.imread).

Files are read through numpy and decoded with ``cv2.imdecode`` so that paths with
non-ASCII characters work on every platform. Unusable files raise
:class:`~deployzoo.errors.BadInputError` naming the file.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from deployzoo.errors import BadInputError


class ImageDecodeWarning(UserWarning):
    """Decoding an image to 8-bit BGR lost information a user would not expect (16-bit values cut to 8 bits,
    transparency dropped, CMYK converted without its profile). The pixels stay what the original framework's
    reader gives; the warning names the file, once per file."""

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
    if not path.is_file():  # a named pipe, socket or device: reading it could block forever
        raise BadInputError(path, "not a regular file (a named pipe, socket or device); give an image file")
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
    _warn_losses(path, data, "cv2")
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
        image = decode_bgr_pil(data.tobytes())
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, ValueError, SyntaxError... for bad files
        # PIL names the in-memory buffer (<_io.BytesIO object at 0x...>), not the file: say what it is instead.
        reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc)).strip()
        if type(exc).__name__ == "UnidentifiedImageError":
            reason = "PIL does not recognise its format"
        raise BadInputError(path, f"not a decodable image ({data.size} bytes): {reason or type(exc).__name__}") from exc
    _warn_losses(path, data, "pil")
    return image


# --------------------------------------------------------------------------- what 8-bit decoding loses

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SOF = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)


@dataclass(frozen=True)
class _Source:
    """What an image file stores, from its header: what decoding to 8-bit BGR may lose."""

    bits: int  # per sample
    gray: bool
    alpha: bool  # may hold transparency (alpha channel, or a PNG tRNS chunk)
    cmyk: bool


def _png_source(data: np.ndarray) -> _Source | None:
    """IHDR bit depth and colour type, and whether a tRNS chunk comes before the image data."""
    if data.size < 33:
        return None
    depth, colour = int(data[24]), int(data[25])
    transparency, pos = False, 8
    while pos + 8 <= data.size:
        length = int.from_bytes(data[pos:pos + 4].tobytes(), "big")
        kind = data[pos + 4:pos + 8].tobytes()
        if kind in (b"IDAT", b"IEND"):
            break
        transparency |= kind == b"tRNS"
        pos += 12 + length
    return _Source(depth, colour in (0, 4), colour in (4, 6) or transparency, False)


def _jpeg_source(data: np.ndarray) -> _Source | None:
    """Sample precision and component count from the first start-of-frame segment (4 components: CMYK/YCCK)."""
    pos, n = 2, int(data.size)
    while pos + 9 < n and data[pos] == 0xFF:
        marker = int(data[pos + 1])
        if marker == 0xFF:
            pos += 1
        elif marker in _STANDALONE:
            pos += 2
        elif marker in _SOF:
            components = int(data[pos + 9])
            return _Source(int(data[pos + 4]), components == 1, False, components == 4)
        elif marker == _SOS:
            return None
        else:
            pos += 2 + ((int(data[pos + 2]) << 8) | int(data[pos + 3]))
    return None


def _pil_source(data: np.ndarray) -> _Source | None:
    """Other formats (TIFF, WebP, BMP, GIF ...): PIL's mode, read from the header only."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data.tobytes())) as image:
            mode, info = image.mode, image.info
    except Exception:  # noqa: BLE001 - the decoder itself reports unreadable files
        return None
    bits = 16 if mode.startswith("I;16") else 32 if mode in ("I", "F") else 8
    alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in info)
    return _Source(bits, mode in ("L", "LA", "La", "I", "F") or mode.startswith("I;16"), alpha, mode == "CMYK")


def _source(data: np.ndarray) -> _Source | None:
    if data.size >= 8 and data[:8].tobytes() == _PNG_SIGNATURE:
        return _png_source(data)
    if data.size >= 2 and data[0] == 0xFF and data[1] == _SOI:
        return _jpeg_source(data)
    return _pil_source(data)


def _share(fraction: float) -> str:
    return f"{100 * fraction:.1f}%" if fraction >= 0.001 else "under 0.1%"


def decode_losses(data: np.ndarray, reader: str) -> list[str]:
    """What decoding the image file ``data`` (its bytes) to 8-bit BGR loses that a user would not expect, as
    ``reader`` decodes it: "cv2" (``cv2.imdecode(..., IMREAD_COLOR)``) or "pil" (detectron2's PIL reader).
    One phrase per kind of loss; empty for the usual 8-bit RGB or grey file. Only flagged files are decoded
    a second time (unchanged, for the numbers in the phrases)."""
    source = _source(data)
    if source is None or not (source.bits > 8 or source.alpha or source.cmyk):
        return []
    raw = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    by = "cv2" if reader == "cv2" else "PIL, as detectron2's reader"
    losses = []
    has_alpha_channel = raw is not None and raw.ndim == 3 and raw.shape[2] in (2, 4)
    if source.bits > 8:
        values = raw[..., :-1] if has_alpha_channel else raw
        if values is None or values.dtype != np.uint16:
            losses.append(f"{source.bits}-bit image reduced to 8 bits per sample ({by})")
        elif reader == "pil" and source.gray:  # PIL's I;16 -> RGB clips at 255
            above = float(np.mean(values > 255))
            if above > 0:
                losses.append(f"16-bit grey values above 255 saturate to 255 (white) in the 8-bit image ({by}): "
                              f"{_share(above)} of the pixels; largest value {int(values.max())}")
        else:  # cv2, and PIL for 16-bit colour: the high byte is kept
            low, high = int(values.min()), int(values.max())
            losses.append(f"16-bit image reduced to 8 bits per channel by keeping the high byte ({by}): values "
                          f"{low}..{high} become {low >> 8}..{high >> 8}"
                          + ("; the image decodes all black" if high < 256 else ""))
    if source.alpha and has_alpha_channel:
        alpha = raw[..., -1]
        transparent = float(np.mean(alpha < np.iinfo(alpha.dtype).max)) if alpha.dtype.kind in "ui" else 0.0
        if transparent > 0:
            losses.append(f"transparency dropped: {_share(transparent)} of the pixels are (partly) transparent "
                          f"and keep their stored colour, not blended with any background ({by})")
    if source.cmyk:
        losses.append(f"CMYK image converted to RGB without its colour profile ({by}); colours can differ from "
                      f"what an image viewer shows")
    return losses


_WARNED: set[str] = set()  # the warnings given in this process: once per file, wherever it is read from


def _warn_losses(path: Path, data: np.ndarray, reader: str) -> None:
    """One ImageDecodeWarning naming the file and everything its decoding lost; once per file and process."""
    losses = decode_losses(data, reader)
    message = f"{path}: {'; '.join(losses)}"
    if losses and message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(ImageDecodeWarning(message), stacklevel=3)


def show_decode_warnings_plainly() -> None:
    """Print ImageDecodeWarning as one line, ``warning: <file>: <what was lost>`` (the command line and its
    worker processes call this); other warnings keep their usual form."""
    original = warnings.formatwarning
    if getattr(original, "deployzoo_plain", False):
        return

    def plain(message, category, filename, lineno, line=None):
        if issubclass(category, ImageDecodeWarning):
            return f"warning: {message}\n"
        return original(message, category, filename, lineno, line)

    plain.deployzoo_plain = True
    warnings.formatwarning = plain


def image_size_hw(path: str | Path) -> tuple[int, int] | None:
    """(H, W) from the file header without decoding (PIL reads lazily); None if unreadable. Used only to
    order images so that equal sizes batch together: a wrong or missing answer costs speed, not results."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return int(image.height), int(image.width)
    except Exception:  # noqa: BLE001 - the loader reports bad files properly later
        return None
