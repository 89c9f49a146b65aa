"""VOC data: synthetic generator round trip, image reading and every bad-input case."""
from __future__ import annotations

import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from deployzoo.data.images import jpeg_is_complete, read_image_bgr, write_jpeg
from deployzoo.data.synthetic_voc import make_synthetic_voc
from deployzoo.data.voc import VOC_CLASSES, VOCDetection, parse_voc_xml
from deployzoo.errors import BadInputError


@pytest.fixture(scope="module")
def devkit(tmp_path_factory) -> Path:
    return make_synthetic_voc(tmp_path_factory.mktemp("voc"), num_images=16, seed=0)


@pytest.fixture
def copy_of_devkit(devkit, tmp_path) -> Path:
    """A private copy for tests that damage files."""
    return Path(shutil.copytree(devkit, tmp_path / "VOCdevkit"))


def _xml_boxes(xml_path: Path) -> list[tuple[str, list[float], int]]:
    root = ET.parse(xml_path).getroot()
    return [(o.findtext("name"), [float(o.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")],
             int(o.findtext("difficult"))) for o in root.findall("object")]


# ---------------------------------------------------------------- generator + parser


def test_voc_classes():
    assert len(VOC_CLASSES) == 20
    assert list(VOC_CLASSES) == sorted(VOC_CLASSES)
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[14] == "person" and VOC_CLASSES[19] == "tvmonitor"


def test_generator_layout_and_round_trip(devkit):
    assert devkit.name == "VOCdevkit"
    year = devkit / "VOC2007"
    ds = VOCDetection(devkit)
    assert ds.ids == [f"{i:06d}" for i in range(1, 17)]
    assert len(ds) == 16
    shapes = set()
    for image_id in ds.ids:
        ann = ds.annotation(image_id)
        img = ds.read_image(image_id)
        assert img.dtype == np.uint8 and img.shape == (ann.height, ann.width, 3)
        shapes.add(ann.width > ann.height)
        written = _xml_boxes(year / "Annotations" / f"{image_id}.xml")
        assert 1 <= len(written) <= 4
        assert [VOC_CLASSES[i] for i in ann.labels] == [w[0] for w in written]
        np.testing.assert_array_equal(ann.boxes, [w[1] for w in written])
        np.testing.assert_array_equal(ann.difficult, [bool(w[2]) for w in written])
        assert ann.boxes.dtype == np.float64 and ann.labels.dtype == np.int64 and ann.difficult.dtype == bool
        # 1-based inclusive boxes inside the image
        assert (ann.boxes[:, :2] >= 1).all()
        assert (ann.boxes[:, 2] <= ann.width).all() and (ann.boxes[:, 3] <= ann.height).all()
        assert (ann.boxes[:, 2:] > ann.boxes[:, :2]).all()
        root = ET.parse(year / "Annotations" / f"{image_id}.xml").getroot()
        assert root.find("size/depth").text == "3"
        for obj in root.findall("object"):
            assert obj.find("pose") is not None and obj.find("truncated") is not None
    assert shapes == {True, False}  # both landscape and portrait


def test_generator_deterministic_and_fast(tmp_path):
    t0 = time.perf_counter()
    a = make_synthetic_voc(tmp_path / "a", num_images=16, seed=3)
    elapsed = time.perf_counter() - t0
    b = make_synthetic_voc(tmp_path / "b", num_images=16, seed=3)
    c = make_synthetic_voc(tmp_path / "c", num_images=16, seed=4)
    assert elapsed < 2.0
    for rel in ("VOC2007/Annotations/000005.xml", "VOC2007/JPEGImages/000005.jpg"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert (a / "VOC2007/Annotations/000005.xml").read_bytes() != (c / "VOC2007/Annotations/000005.xml").read_bytes()


def test_generator_marks_some_difficult(tmp_path):
    ds = VOCDetection(make_synthetic_voc(tmp_path, num_images=60, seed=1, min_size=64, max_size=96))
    diff = np.concatenate([ds.annotation(i).difficult for i in ds.ids])
    assert 0 < diff.mean() < 0.3


def test_root_may_be_year_dir_or_devkit(devkit):
    assert VOCDetection(devkit / "VOC2007").ids == VOCDetection(devkit).ids
    ds = VOCDetection(devkit / "VOC2007")
    assert ds.image_path("000001") == devkit / "VOC2007" / "JPEGImages" / "000001.jpg"


def test_split_file_blank_lines_and_order(copy_of_devkit):
    split = copy_of_devkit / "VOC2007/ImageSets/Main/test.txt"
    split.write_text("000003\n\n  000001  \n\n000002\n")
    assert VOCDetection(copy_of_devkit).ids == ["000003", "000001", "000002"]


def test_missing_difficult_is_zero_and_float_coords(tmp_path):
    xml = tmp_path / "x.xml"
    xml.write_text("""<annotation><size><width>500</width><height>375</height><depth>3</depth></size>
      <object><name>dog</name><bndbox><xmin>273.0</xmin><ymin>10</ymin><xmax>400.5</xmax><ymax>300</ymax></bndbox></object>
      <object><name> person </name><difficult>1</difficult>
        <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></object>
    </annotation>""")
    ann = parse_voc_xml(xml)
    assert ann.image_id == "x" and (ann.width, ann.height) == (500, 375)
    np.testing.assert_array_equal(ann.boxes, [[273.0, 10, 400.5, 300], [1, 2, 3, 4]])
    np.testing.assert_array_equal(ann.labels, [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")])
    np.testing.assert_array_equal(ann.difficult, [False, True])


def test_no_objects_gives_empty_arrays(tmp_path):
    xml = tmp_path / "e.xml"
    xml.write_text("<annotation><size><width>5</width><height>6</height></size></annotation>")
    ann = parse_voc_xml(xml)
    assert ann.boxes.shape == (0, 4) and ann.labels.shape == (0,) and ann.difficult.shape == (0,)


# ---------------------------------------------------------------- bad inputs

_GOOD_OBJ = "<object><name>cat</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>"
_SIZE = "<size><width>50</width><height>60</height></size>"


@pytest.mark.parametrize("body, words", [
    ("<annotation>" + _SIZE + _GOOD_OBJ, ["malformed XML"]),
    ("<annotation>" + _GOOD_OBJ + "</annotation>", ["<size>"]),
    ("<annotation><size><height>60</height></size></annotation>", ["<width>"]),
    ("<annotation><size><width>50</width></size></annotation>", ["<height>"]),
    ("<annotation>" + _SIZE + _GOOD_OBJ + "<object><bndbox/></object></annotation>", ["<name>", "object[1]"]),
    ("<annotation>" + _SIZE + _GOOD_OBJ + "<object><name>unicorn</name></object></annotation>",
     ["unicorn", "object[1]"]),
    ("<annotation>" + _SIZE + "<object><name>cat</name></object></annotation>", ["<bndbox>", "object[0]"]),
    ("<annotation>" + _SIZE + _GOOD_OBJ.replace("<ymax>40</ymax>", "") + "</annotation>", ["<ymax>", "object[0]"]),
    ("<annotation>" + _SIZE + _GOOD_OBJ.replace("<xmin>1</xmin>", "<xmin>abc</xmin>") + "</annotation>",
     ["<xmin>", "object[0]", "abc"]),
    ("<annotation>" + _SIZE + _GOOD_OBJ.replace("<difficult>0", "<difficult>yes") + "</annotation>",
     ["<difficult>", "object[0]"]),
])
def test_bad_xml(tmp_path, body, words):
    xml = tmp_path / "000042.xml"
    xml.write_text(body)
    with pytest.raises(BadInputError) as err:
        parse_voc_xml(xml)
    assert "000042.xml" in str(err.value) and err.value.path == str(xml)
    for word in words:
        assert word in str(err.value)


def test_missing_annotation_file(copy_of_devkit):
    (copy_of_devkit / "VOC2007/Annotations/000002.xml").unlink()
    with pytest.raises(BadInputError, match="000002.xml"):
        VOCDetection(copy_of_devkit).annotation("000002")


def test_missing_image_names_split_file(copy_of_devkit):
    (copy_of_devkit / "VOC2007/JPEGImages/000002.jpg").unlink()
    with pytest.raises(BadInputError) as err:
        VOCDetection(copy_of_devkit).read_image("000002")
    assert "000002.jpg" in str(err.value) and "test.txt" in str(err.value)


def test_not_a_voc_root(tmp_path):
    with pytest.raises(BadInputError, match="ImageSets/Main/test.txt"):
        VOCDetection(tmp_path)
    with pytest.raises(BadInputError, match="does not exist"):
        VOCDetection(tmp_path / "nope")


def test_wrong_split_name(devkit):
    with pytest.raises(BadInputError, match="trainval.txt"):
        VOCDetection(devkit, split="trainval")


def test_empty_split_file(copy_of_devkit):
    split = copy_of_devkit / "VOC2007/ImageSets/Main/test.txt"
    split.write_text("\n\n")
    with pytest.raises(BadInputError, match="test.txt"):
        VOCDetection(copy_of_devkit)


# ---------------------------------------------------------------- images


def _jpeg_bytes(h: int = 64, w: int = 80) -> bytes:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def test_read_matches_imread_and_non_ascii_path(devkit, tmp_path):
    src = devkit / "VOC2007/JPEGImages/000001.jpg"
    expected = cv2.imread(str(src), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(read_image_bgr(src), expected)
    odd = tmp_path / "bildér_图像.jpg"
    odd.write_bytes(src.read_bytes())
    np.testing.assert_array_equal(read_image_bgr(odd), expected)


def test_write_jpeg_round_trip(tmp_path):
    img = np.zeros((20, 30, 3), np.uint8)
    img[:, :15] = (255, 0, 0)
    out = write_jpeg(tmp_path / "ü.jpg", img, quality=95)
    back = read_image_bgr(out)
    assert back.shape == img.shape and np.abs(back.astype(int) - img).mean() < 5  # chroma subsampling blurs the edge


def test_grayscale_png_becomes_three_channels(tmp_path):
    path = tmp_path / "g.png"
    cv2.imwrite(str(path), np.full((7, 9), 100, np.uint8))
    img = read_image_bgr(path)
    assert img.shape == (7, 9, 3) and img.dtype == np.uint8


def test_missing_empty_and_undecodable(tmp_path):
    with pytest.raises(BadInputError, match="nope.jpg.*not found"):
        read_image_bgr(tmp_path / "nope.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(BadInputError, match="empty.jpg.*empty"):
        read_image_bgr(tmp_path / "empty.jpg")
    (tmp_path / "text.jpg").write_bytes(b"this is not an image at all")
    with pytest.raises(BadInputError, match="text.jpg.*not a decodable image"):
        read_image_bgr(tmp_path / "text.jpg")


def test_truncated_jpeg_detected(tmp_path):
    data = _jpeg_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) * 2 // 3])
    # cv2 alone would accept it
    assert cv2.imread(str(path)) is not None
    with pytest.raises(BadInputError, match="cut.jpg.*truncated"):
        read_image_bgr(path)
    # cut just before the final FF D9, and truncated then zero padded
    path.write_bytes(data[:-2])
    with pytest.raises(BadInputError, match="truncated"):
        read_image_bgr(path)
    path.write_bytes(data[:-500] + bytes(500))
    with pytest.raises(BadInputError, match="truncated"):
        read_image_bgr(path)


def test_corrupt_jpeg_header_detected(tmp_path):
    path = tmp_path / "bad.jpg"
    path.write_bytes(b"\xff\xd8" + bytes(range(256)) * 4)
    with pytest.raises(BadInputError, match="bad.jpg"):
        read_image_bgr(path)


def test_trailing_bytes_after_eoi_are_fine(tmp_path):
    data = _jpeg_bytes()
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    for tail in (bytes(1000), b"garbage" * 100, b"\xff\xd8" + bytes(50)):
        path = tmp_path / "tail.jpg"
        path.write_bytes(data + tail)
        np.testing.assert_array_equal(read_image_bgr(path), expected)


def test_jpeg_walker_skips_embedded_thumbnail_eoi():
    data = _jpeg_bytes()
    thumb = _jpeg_bytes(8, 8)  # a whole JPEG (with its own FF D9) inside an APP1 segment
    payload = b"Exif\x00\x00" + thumb
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    full = data[:2] + app1 + data[2:]
    assert jpeg_is_complete(np.frombuffer(full, np.uint8))
    cut = full[: len(app1) + len(data) // 2]
    assert not jpeg_is_complete(np.frombuffer(cut, np.uint8))


def test_progressive_jpeg_complete():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8)
    data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1]
    assert jpeg_is_complete(data)
    assert not jpeg_is_complete(data[: data.size // 2])
