"""Images whose decoding to 8-bit BGR loses information (16-bit values, transparency, CMYK): both readers (cv2 and
detectron2's PIL reader) keep their original pixels and warn once, naming the file; ordinary files say nothing.
Unreadable files are named in the error, never as PIL's in-memory buffer."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from deployzoo.data.images import ImageDecodeWarning, read_image_bgr, read_image_bgr_pil
from deployzoo.errors import BadInputError
from deployzoo.transforms import decode_bgr_pil

READERS = {"cv2": read_image_bgr, "pil": read_image_bgr_pil}


def _rgba(opaque: bool = False) -> np.ndarray:
    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 3] = 200, np.arange(32, dtype=np.uint8) * 8, 255
    if not opaque:
        rgba[:6, :8, 3] = 0  # a transparent corner
    return rgba


def _save_pil(path: Path, image: Image.Image, **kw) -> Path:
    image.save(path, **kw)
    return path


def _make(kind: str, root: Path) -> Path:
    """One file per kind of input; every name is distinct so each warning is new to the warnings registry."""
    gray16 = np.full((24, 32), 1000, np.uint16)
    gray16[:4] = 100
    if kind == "gray16-png":
        path = root / "depth-16bit.png"
        cv2.imwrite(str(path), gray16)
    elif kind == "gray16-low-png":  # every value below 256: cv2 keeps the high byte -> all black
        path = root / "low-16bit.png"
        cv2.imwrite(str(path), np.full((24, 32), 100, np.uint16))
    elif kind == "colour16-png":
        path = root / "colour-16bit.png"
        cv2.imwrite(str(path), np.stack([gray16, gray16 * 2, gray16 * 3], -1))
    elif kind == "gray16-tiff":
        path = _save_pil(root / "scan-16bit.tif", Image.fromarray(gray16))
    elif kind == "rgba-png":
        path = _save_pil(root / "cutout.png", Image.fromarray(_rgba(), "RGBA"))
    elif kind == "la-png":
        rgba = _rgba()
        path = _save_pil(root / "grey-alpha.png", Image.fromarray(np.stack([rgba[..., 1], rgba[..., 3]], -1), "LA"))
    elif kind == "palette-trns-png":
        palette = Image.fromarray(_rgba()[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
        index = np.asarray(palette)[0, 0]
        path = _save_pil(root / "palette-transparent.png", palette, transparency=int(index))
    elif kind == "rgba-webp":
        path = _save_pil(root / "sticker.webp", Image.fromarray(_rgba(), "RGBA"), lossless=True)
    elif kind == "cmyk-jpeg":
        path = _save_pil(root / "print-cmyk.jpg", Image.fromarray(_rgba()[..., :3]).convert("CMYK"))
    elif kind == "rgb-png":
        path = _save_pil(root / "plain.png", Image.fromarray(_rgba()[..., :3]))
    elif kind == "opaque-rgba-png":
        path = _save_pil(root / "opaque-alpha.png", Image.fromarray(_rgba(opaque=True), "RGBA"))
    elif kind == "gray-jpeg":
        path = _save_pil(root / "grey.jpg", Image.fromarray(_rgba()[..., 1]))
    elif kind == "rgb-jpeg":
        path = root / "photo.jpg"
        cv2.imwrite(str(path), _rgba()[..., :3])
    else:
        raise ValueError(kind)
    return path


# kind -> {reader: words the warning must hold}; a reader missing from the dict must stay silent
LOSSY = {
    "gray16-png": {"cv2": ["16-bit", "high byte", "100..1000 become 0..3"], "pil": ["saturate to 255", "83.3%"]},
    "gray16-low-png": {"cv2": ["16-bit", "decodes all black"]},  # PIL keeps values below 256 exactly
    "colour16-png": {"cv2": ["16-bit", "high byte"], "pil": ["16-bit", "high byte"]},
    "gray16-tiff": {"cv2": ["16-bit", "high byte"], "pil": ["saturate to 255", "83.3%"]},
    "rgba-png": {"cv2": ["transparency dropped", "6.2%"], "pil": ["transparency dropped", "6.2%"]},
    "la-png": {"cv2": ["transparency dropped"], "pil": ["transparency dropped"]},
    "palette-trns-png": {"cv2": ["transparency dropped"], "pil": ["transparency dropped"]},
    "rgba-webp": {"cv2": ["transparency dropped"], "pil": ["transparency dropped"]},
    "cmyk-jpeg": {"cv2": ["CMYK", "colour profile"], "pil": ["CMYK", "colour profile"]},
    "rgb-png": {},
    "opaque-rgba-png": {},  # an alpha channel that is all 255 loses nothing
    "gray-jpeg": {},
    "rgb-jpeg": {},
}


def _decode_reference(path: Path, reader: str) -> np.ndarray:
    """What the original frameworks' readers give (cv2.imread's flags; detectron2's PIL conversion)."""
    data = np.fromfile(str(path), np.uint8)
    if reader == "cv2":
        return cv2.imdecode(data, cv2.IMREAD_COLOR)
    return decode_bgr_pil(data.tobytes())


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("kind", list(LOSSY))
def test_lossy_decoding_warns_once_naming_the_file_and_keeps_the_pixels(kind, reader, tmp_path):
    path = _make(kind, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        first = READERS[reader](path)
        again = READERS[reader](path)  # the same file read twice (a guard, then the evaluation): one warning
    ours = [w for w in caught if issubclass(w.category, ImageDecodeWarning)]
    expected = LOSSY[kind].get(reader)
    if expected is None:
        assert not ours, [str(w.message) for w in ours]
    else:
        assert len(ours) == 1, [str(w.message) for w in ours]
        message = str(ours[0].message)
        assert message.startswith(f"{path}: ")
        for words in expected:
            assert words in message, message
    np.testing.assert_array_equal(first, _decode_reference(path, reader))  # faithful: nothing changed
    np.testing.assert_array_equal(again, first)


def test_pil_reader_16bit_grey_is_white_as_in_detectron2_and_says_so(tmp_path):
    path = _make("gray16-tiff", tmp_path)
    with pytest.warns(ImageDecodeWarning, match="scan-16bit.tif.*saturate"):
        image = read_image_bgr_pil(path)
    assert (image[4:] == 255).all() and (image[:4] == 100).all()  # as detectron2's reader: 1000 -> white


def test_warning_comes_through_the_data_loader(tmp_path):
    from deployzoo.data.loader import ImageItem, PreparedImage, prepared_images
    from deployzoo.registry import get_spec

    path = _make("gray16-png", tmp_path)
    spec = get_spec("refinedet320-vgg16-voc")
    with pytest.warns(ImageDecodeWarning, match="depth-16bit.png: 16-bit image reduced to 8 bits"):
        prepared = list(prepared_images([ImageItem("depth", str(path))], spec.preprocess, workers=0))
    assert isinstance(prepared[0], PreparedImage)


def test_worker_processes_show_the_warning_as_one_line(tmp_path, capfd):
    """A spawned worker prints ``warning: <file>: ...`` on its stderr, as the command line does."""
    from deployzoo.data.loader import ImageItem, PreparedImage, prepared_images
    from deployzoo.registry import get_spec

    path = _make("gray16-png", tmp_path)
    spec = get_spec("refinedet320-vgg16-voc")
    prepared = list(prepared_images([ImageItem("depth", str(path))], spec.preprocess, workers=1))
    assert isinstance(prepared[0], PreparedImage)
    err = capfd.readouterr().err
    assert f"warning: {path}: 16-bit image reduced to 8 bits" in err and "warnings.warn" not in err


def test_command_line_shows_the_warning_as_one_line():
    from deployzoo.data.images import show_decode_warnings_plainly

    show_decode_warnings_plainly()
    line = warnings.formatwarning(ImageDecodeWarning("a.png: lost"), ImageDecodeWarning, "images.py", 1)
    assert line == "warning: a.png: lost\n"


def test_d2_reader_through_its_preprocess(tmp_path):
    """detectron2's model reads with PIL: the loader uses that reader, and its warning names the file."""
    from deployzoo.data.loader import ImageItem, prepare
    from deployzoo.registry import get_spec

    path = _make("rgba-png", tmp_path)
    spec = get_spec("d2-cascade-mask-rcnn-r50-fpn-3x")
    with pytest.warns(ImageDecodeWarning, match=r"cutout\.png.*transparency dropped.*PIL"):
        prepare(ImageItem("cutout", str(path)), spec.preprocess)


def test_predict_command_warns_for_a_16bit_png(tmp_path, capsys):
    from deployzoo.cli import main

    path = _make("gray16-low-png", tmp_path)
    with pytest.warns(ImageDecodeWarning, match="low-16bit.png: 16-bit image .* decodes all black"):
        assert main(["predict", "refinedet320-vgg16-voc", "--backend", "pytorch", "--out", str(tmp_path / "o"),
                     str(path)]) == 0


@pytest.mark.parametrize("reader", list(READERS))
def test_undecodable_file_is_named_not_the_memory_buffer(reader, tmp_path):
    path = tmp_path / "notes.png"
    path.write_bytes(b"these are not the pixels you are looking for" * 4)
    with pytest.raises(BadInputError) as info:
        READERS[reader](path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "BytesIO" not in message and "0x" not in message


def test_pil_message_without_buffer_for_a_damaged_png(tmp_path):
    data = io.BytesIO()
    Image.fromarray(_rgba()[..., :3]).save(data, format="PNG")
    path = tmp_path / "damaged.png"
    path.write_bytes(data.getvalue()[:60])  # header fine, pixel data cut
    with pytest.raises(BadInputError) as info:
        read_image_bgr_pil(path)
    assert str(info.value).startswith(f"{path}: ") and "BytesIO" not in str(info.value)
