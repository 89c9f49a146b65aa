"""VOC segmentation data: palette, label PNG reading/writing, dataset discovery, synthetic generator."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deployzoo.data.synthetic_voc import make_synthetic_voc
from deployzoo.data.synthetic_voc_seg import make_synthetic_voc_seg
from deployzoo.data.voc_seg import (
    IGNORE_INDEX,
    VOC_SEG_CLASSES,
    VOCSegmentation,
    label_png_size,
    read_label_png,
    voc_palette,
    write_label_png,
)
from deployzoo.errors import BadInputError


@pytest.fixture(scope="module")
def devkit(tmp_path_factory) -> Path:
    return make_synthetic_voc_seg(tmp_path_factory.mktemp("vocseg"), num_images=8, seed=0)


# ---------------------------------------------------------------- classes and palette


def test_classes():
    assert len(VOC_SEG_CLASSES) == 21 and IGNORE_INDEX == 255
    assert VOC_SEG_CLASSES[0] == "background" and VOC_SEG_CLASSES[15] == "person"
    assert VOC_SEG_CLASSES[20] == "tvmonitor"


def test_palette_known_colours():
    pal = voc_palette()
    assert pal.dtype == np.uint8 and pal.shape == (256, 3)
    known = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128),
             15: (192, 128, 128), 20: (0, 64, 128), 255: (224, 224, 192)}
    for index, rgb in known.items():
        assert tuple(pal[index]) == rgb, index
    assert len({tuple(c) for c in pal}) == 256  # the map is a bijection


def test_palette_matches_bitwise_rule():
    # The devkit rule, one label at a time with Python ints.
    for i in range(256):
        rgb = [0, 0, 0]
        value = i
        for j in range(8):
            for c in range(3):
                rgb[c] |= ((value >> c) & 1) << (7 - j)
            value >>= 3
        assert tuple(voc_palette()[i]) == tuple(rgb)


# ---------------------------------------------------------------- label PNGs


def test_png_round_trip_keeps_indices(tmp_path):
    labels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    labels = np.concatenate([labels, labels[:3]])  # 19 x 16: not square
    path = write_label_png(tmp_path / "deep" / "er" / "x.png", labels)
    assert path == tmp_path / "deep" / "er" / "x.png"
    with Image.open(path) as image:
        assert image.mode == "P" and image.format == "PNG"
        np.testing.assert_array_equal(np.asarray(image.getpalette()[:768], np.uint8).reshape(256, 3), voc_palette())
    back = read_label_png(path)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, labels)
    assert label_png_size(path) == (19, 16)


def test_write_rejects_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_label_png(tmp_path / "a.png", np.zeros((4, 4), np.int64))
    with pytest.raises(ValueError, match="uint8"):
        write_label_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))


def test_l_mode_png_gives_values(tmp_path):
    values = np.array([[0, 1, 2], [20, 255, 7]], np.uint8)
    Image.fromarray(values).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_label_png(tmp_path / "grey.png"), values)


def test_bad_pngs_name_the_file(tmp_path):
    rgb = tmp_path / "colour.png"
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(rgb)
    for reader in (read_label_png, label_png_size):
        with pytest.raises(BadInputError, match=r"colour\.png.*mode 'RGB'"):
            reader(rgb)

    good = write_label_png(tmp_path / "good.png", np.random.default_rng(0).integers(0, 21, (60, 80), np.uint8))
    data = good.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match=r"cut\.png.*truncated or corrupt"):
        read_label_png(cut)

    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(BadInputError, match=r"junk\.png.*not a readable PNG"):
        read_label_png(junk)

    jpeg = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(jpeg, format="JPEG")
    with pytest.raises(BadInputError, match=r"photo\.png.*expected a PNG.*JPEG"):
        read_label_png(jpeg)

    with pytest.raises(BadInputError, match=r"nope\.png.*not found"):
        read_label_png(tmp_path / "nope.png")
    with pytest.raises(BadInputError, match="directory"):
        read_label_png(tmp_path)


# ---------------------------------------------------------------- dataset


def test_discovery_from_three_levels(devkit):
    year_dir = devkit / "VOC2012"
    for root in (devkit.parent, devkit, year_dir):
        ds = VOCSegmentation(root)
        assert ds.year_dir == year_dir
        assert ds.split_file == year_dir / "ImageSets" / "Segmentation" / "val.txt"
        assert ds.year == "2012" and ds.split == "val"
        assert ds.ids == [f"2012_{i:06d}" for i in range(1, 9)] and len(ds) == 8
    ds = VOCSegmentation(devkit)
    assert ds.image_path("2012_000003") == year_dir / "JPEGImages" / "2012_000003.jpg"
    assert ds.label_path("2012_000003") == year_dir / "SegmentationClass" / "2012_000003.png"


def test_discovery_errors(devkit, tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        VOCSegmentation(tmp_path / "missing")
    with pytest.raises(BadInputError, match="ImageSets/Segmentation/train.txt"):
        VOCSegmentation(devkit, split="train")
    # A detection-only tree (ImageSets/Main) is not a segmentation set.
    det = make_synthetic_voc(tmp_path / "det", num_images=1, year="2012", split="val")
    with pytest.raises(BadInputError, match=r"no ImageSets/Segmentation/val\.txt.*VOC2012"):
        VOCSegmentation(det)


def test_missing_label_names_file_and_split(devkit, tmp_path):
    copy = Path(shutil.copytree(devkit, tmp_path / "VOCdevkit"))
    ds = VOCSegmentation(copy)
    ds.label_path("2012_000002").unlink()
    for call in (ds.read_label, ds.label_size):
        with pytest.raises(BadInputError, match=r"2012_000002\.png.*listed in .*val\.txt"):
            call("2012_000002")
    ds.image_path("2012_000004").unlink()
    with pytest.raises(BadInputError, match=r"2012_000004\.jpg.*listed in"):
        ds.read_image("2012_000004")


# ---------------------------------------------------------------- synthetic generator


def test_synthetic_contents(devkit):
    ds = VOCSegmentation(devkit)
    sizes = [(375, 500), (500, 375), (333, 500), (281, 499)]
    allowed = set(range(21)) | {255}
    for index, image_id in enumerate(ds.ids):
        image, labels = ds.read_image(image_id), ds.read_label(image_id)
        assert labels.shape == sizes[index % 4] and image.shape == (*labels.shape, 3)
        assert ds.label_size(image_id) == labels.shape
        values = set(np.unique(labels).tolist())
        assert values <= allowed
        assert {0, 255} <= values and values - {0, 255}, values  # background, void and some object
        # Void is a thin band along outlines, not a large area.
        assert 0 < np.mean(labels == 255) < 0.2


def test_synthetic_is_deterministic(devkit, tmp_path):
    again = make_synthetic_voc_seg(tmp_path / "a", num_images=8, seed=0)
    other = make_synthetic_voc_seg(tmp_path / "b", num_images=8, seed=1)
    files = sorted(p.relative_to(devkit) for p in devkit.rglob("*") if p.is_file())
    assert len(files) == 17
    differ = 0
    for rel in files:
        assert (again / rel).read_bytes() == (devkit / rel).read_bytes(), rel
        differ += (other / rel).read_bytes() != (devkit / rel).read_bytes()
    assert differ >= 16  # every image and label changes with the seed; the split file need not


def test_synthetic_year_split_and_count(tmp_path):
    root = make_synthetic_voc_seg(tmp_path, num_images=1, seed=3, split="train")
    ds = VOCSegmentation(root, split="train")
    assert ds.ids == ["2012_000001"]
    with pytest.raises(ValueError, match="at least 1"):
        make_synthetic_voc_seg(tmp_path / "none", num_images=0)
