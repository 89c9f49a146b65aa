"""Pictures of results (deployzoo.draw, deployzoo.pictures): sizes, where things are drawn, what captions say,
and the predict / eval commands writing them for real photos (scikit-image's sample photos)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deployzoo import draw
from deployzoo.cli import main
from deployzoo.structures import Detections, LabelMap

REFINEDET = "refinedet320-vgg16-voc"


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


def _photo(h: int = 120, w: int = 200) -> np.ndarray:
    return np.full((h, w, 3), 100, np.uint8)


def test_detections_are_drawn_at_the_photo_size_with_masks_and_boxes_where_they_are():
    photo = _photo()
    mask = np.zeros((120, 200), bool)
    mask[60:100, 120:180] = True
    dets = Detections(np.array([[10, 20, 80, 90], [120, 60, 180, 100]], np.float32), np.array([0.9, 0.8], np.float32),
                      np.array([1, 2], np.int64), [_rle(np.zeros((120, 200), bool)), _rle(mask)])
    picture = np.asarray(draw.draw_detections(photo, dets, ["a", "b", "c"]))
    assert picture.shape == photo.shape
    colour = np.array(draw.class_colour(2), np.float32)
    tinted = 100 * (1 - draw.MASK_ALPHA) + colour * draw.MASK_ALPHA
    assert np.abs(picture[85, 150].astype(np.float32) - tinted).max() <= 1  # inside the mask, off the box edge
    assert (picture[5, 150] == 100).all()  # nothing drawn outside every box, mask and tag
    assert tuple(picture[88, 10]) == draw.class_colour(1)  # the left edge of box 1 in its class colour


def test_a_mask_of_another_size_is_refused():
    dets = Detections(np.zeros((1, 4), np.float32), np.ones(1, np.float32), np.zeros(1, np.int64),
                      [_rle(np.zeros((10, 10), bool))])
    with pytest.raises(ValueError, match="mask 0 is 10x10, the photo 120x200"):
        draw.draw_detections(_photo(), dets, ["a"])


def test_chosen_says_when_nothing_reaches_the_threshold():
    dets = Detections(np.tile(np.array([[0, 0, 5, 5]], np.float32), (8, 1)),
                      np.linspace(0.01, 0.08, 8, dtype=np.float32), np.zeros(8, np.int64))
    shown, note = draw.chosen(dets, 0.3)
    assert len(shown) == draw.FALLBACK_SHOWN and "no detection scores >= 0.3" in note and "best score 0.080" in note
    shown, note = draw.chosen(dets, 0.05)
    assert len(shown) == 4 and note.startswith("4 of 8 detections shown")


def test_label_map_is_blended_at_the_photo_size_with_a_legend():
    photo = _photo(200, 300)
    labels = np.zeros((200, 300), np.uint8)
    labels[:, 150:] = 8  # cat
    labels[0:10, 0:10] = 255  # ignore: left as the photo
    picture = np.asarray(draw.draw_label_map(photo, labels, [f"c{i}" for i in range(21)]))
    assert picture.shape == photo.shape
    assert (picture[5, 5] == 100).all()
    palette = draw._palette(21)
    assert np.abs(picture[20, 250].astype(np.float32) - (100 * 0.5 + palette[8] * 0.5)).max() <= 1
    assert not np.array_equal(picture[195, 2], picture[195, 149])  # the legend panel in the lower-left corner


def test_side_by_side_keeps_both_pictures():
    a, b = Image.new("RGB", (100, 60), (255, 0, 0)), Image.new("RGB", (100, 60), (0, 0, 255))
    both = draw.side_by_side(a, b, ("engine", "reference"))
    assert both.size[1] == 60 and both.size[0] > 200 and both.getpixel((50, 55)) == (255, 0, 0)


def test_eval_disagreement_counts_missed_and_unmatched(refinedet_spec):
    from deployzoo.pictures import detection_disagreement, label_disagreement

    gt = (np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float64), np.array([1, 2]))
    dets = Detections(np.array([[0, 0, 10, 10], [100, 100, 110, 110]], np.float32), np.array([0.9, 0.9], np.float32),
                      np.array([0, 0], np.int64))  # label 0 = category 1: the first matches, the second matches none
    assert detection_disagreement(refinedet_spec, dets, gt) == 2
    predicted, truth = np.array([[1, 2], [3, 4]], np.uint8), np.array([[1, 2], [0, 255]], np.uint8)
    assert label_disagreement(LabelMap(predicted), truth) == pytest.approx(100 / 3)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    data = pytest.importorskip("skimage.data", reason="scikit-image (the test extra) gives the sample photos")
    from PIL import Image as PILImage

    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("astronaut", "chelsea"):
        path = folder / f"{name}.jpg"
        PILImage.fromarray(getattr(data, name)()).save(path, quality=92)
        paths.append(path)
    return paths


def test_predict_draws_one_picture_per_photo_at_its_size(tmp_path, photos, capsys):
    out = tmp_path / "out"
    assert main(["predict", REFINEDET, *map(str, photos), "--backend", "pytorch", "--out", str(out)]) == 0
    assert "2 pictures ->" in capsys.readouterr().out
    for photo in photos:
        with Image.open(photo) as src, Image.open(out / "pictures" / f"{photo.stem}.png") as picture:
            assert picture.size == src.size and picture.mode == "RGB"
    assert main(["predict", REFINEDET, str(photos[0]), "--backend", "pytorch", "--no-draw", "--out",
                 str(tmp_path / "plain")]) == 0
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["predict.json", "predictions.json"]


def test_eval_draws_the_first_and_the_most_disagreeing(tmp_path, synthetic_voc, capsys):
    out = tmp_path / "eval"
    assert main(["eval", REFINEDET, "--data", str(synthetic_voc), "--backend", "pytorch", "--batch", "1",
                 "--workers", "0", "--limit", "4", "--pictures", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 pictures" in printed
    measured = next(line for line in printed.splitlines() if line.startswith("VOC07 11-point mAP ("))
    assert "79.81" not in measured  # the published figure has a line of its own, after the stand-in remark
    assert "says nothing about the trained model" in printed
    assert "published figure of the trained model: 79.81" in printed
    pictures = sorted((out / "pictures").iterdir())
    assert [p.name.split("-")[0] for p in pictures] == ["disagree", "first"]
    assert len({p.name.split("-", 2)[2] for p in pictures}) == 2  # two different images
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images_evaluated"] == 4
    report = (out / "report.md").read_text()  # eval's report embeds its pictures by relative paths
    assert "stand-in weights" in report and "### Published figure" in report and "How it is computed" in report
    assert sorted(f"pictures/{p.name}" for p in pictures) == sorted(
        line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("!["))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mmdet-mask-rcnn-r50-fpn-1x", "mmseg-pspnet-r50-d8-voc12aug"])
def test_masks_and_label_maps_are_drawn_on_a_photo(tmp_path, photos, model):
    """The two other kinds of picture through predict (RefineDet's boxes are drawn above; every model was looked
    at by eye on the sample photos, with stand-in weights)."""
    out = tmp_path / model
    assert main(["predict", model, str(photos[1]), "--backend", "pytorch", "--out", str(out)]) == 0
    with Image.open(photos[1]) as src, Image.open(out / "pictures" / f"{photos[1].stem}.png") as picture:
        assert picture.size == src.size


def test_compare_draws_engine_and_reference_side_by_side_only_where_they_differ(tmp_path, photos, capsys):
    args = ["compare", REFINEDET, "--images", str(photos[1]), "--backend", "pytorch"]
    assert main([*args, "--out", str(tmp_path / "same")]) == 0  # eager PyTorch against itself: identical
    assert "0 side-by-side pictures" in capsys.readouterr().out
    assert not (tmp_path / "same" / "pictures").exists()
    assert main([*args, "--draw", "all", "--out", str(tmp_path / "all")]) == 0
    with Image.open(photos[1]) as src, Image.open(tmp_path / "all" / "pictures" / f"{photos[1].stem}.png") as both:
        assert both.size[1] == src.size[1] and both.size[0] > 2 * src.size[0]


def test_compare_pictures_find_the_images_that_differ(refinedet_spec, photos, tmp_path):
    from deployzoo.pictures import compare_pictures

    same = Detections(np.array([[10, 10, 50, 50]], np.float32), np.array([0.9], np.float32), np.array([3], np.int64))
    moved = Detections(np.array([[20, 10, 60, 50]], np.float32), np.array([0.9], np.float32), np.array([3], np.int64))
    results = [("a", str(photos[0]), same, same), ("b", str(photos[1]), moved, same)]
    written = compare_pictures(refinedet_spec, results, tmp_path, "engine", "reference")
    assert [p.name for p in written] == [f"{photos[1].stem}.png"]
