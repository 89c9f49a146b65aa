"""Mask pasting (mmdet 3.x CPU semantics) and COCO RLE coding."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from deployzoo.ops.mask_paste import decode_rle, encode_rle, paste_masks

# pycocotools calls np.array(copy=False) on its own objects (annToMask, decode); numpy 2 warns.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

MMDET_CASE = Path(__file__).parent / "fixtures" / "mmdet-mask-rcnn-r50-fpn-1x" / "case-1.npz"


def _paste_full_image(mask_probs: np.ndarray, boxes: np.ndarray, hw: tuple[int, int],
                      threshold: float = 0.5) -> np.ndarray:
    """Independent re-computation: sample every mask over the WHOLE image at once (mmdet's GPU path).

    For threshold >= 0.5 this gives the same binary masks as the per-box region (outside the box
    grown by a pixel, bilinear weights against the zero padding stay below one half).
    """
    h, w = hw
    m = torch.from_numpy(mask_probs)[:, None]
    b = torch.from_numpy(boxes)
    x0, y0, x1, y1 = torch.split(b, 1, dim=1)
    gy = (torch.arange(h).float() + 0.5 - y0) / (y1 - y0) * 2 - 1
    gx = (torch.arange(w).float() + 0.5 - x0) / (x1 - x0) * 2 - 1
    gx[torch.isinf(gx)] = 0
    gy[torch.isinf(gy)] = 0
    n = m.shape[0]
    grid = torch.stack([gx[:, None, :].expand(n, h, w), gy[:, :, None].expand(n, h, w)], dim=3)
    return (F.grid_sample(m, grid, align_corners=False)[:, 0] >= threshold).numpy()


def test_paste_matches_full_image_recomputation():
    rng = np.random.default_rng(0)
    h, w, n = 97, 131, 40
    x1 = rng.uniform(-20, w, n)
    y1 = rng.uniform(-20, h, n)
    boxes = np.stack([x1, y1, x1 + rng.uniform(0.3, 90, n), y1 + rng.uniform(0.3, 90, n)], axis=1).astype(np.float32)
    boxes[:5] = np.round(boxes[:5])  # integer corners too
    probs = rng.uniform(0, 1, (n, 28, 28)).astype(np.float32)
    probs[::3] = (probs[::3] > 0.3).astype(np.float32)  # some hard masks with exact 0/1 values
    out = paste_masks(probs, boxes, (h, w))
    assert out.dtype == bool and out.shape == (n, h, w)
    np.testing.assert_array_equal(out, _paste_full_image(probs, boxes, (h, w)))
    assert out.any()


def test_paste_matches_mmdet_reference():
    """The mmdet 3.3 Mask R-CNN fixture: 100 masks pasted by FCNMaskHead on CPU."""
    if not MMDET_CASE.is_file():
        pytest.skip("mmdet reference fixture not present")
    with np.load(MMDET_CASE) as data:
        probs, boxes = data["mask_probs_28x28"], data["boxes"]
        n, h, w = (int(v) for v in data["masks_shape"])
        ref = np.unpackbits(data["masks_packed"], axis=1, count=h * w).reshape(n, h, w).astype(bool)
    np.testing.assert_array_equal(paste_masks(probs, boxes, (h, w)), ref)


def test_all_ones_fills_exactly_an_integer_box():
    out = paste_masks(np.ones((2, 28, 28), np.float32), np.array([[10, 20, 30, 25], [0, 0, 3, 2]], np.float32),
                      (40, 50))
    want = np.zeros((2, 40, 50), bool)
    want[0, 20:25, 10:30] = True
    want[1, 0:2, 0:3] = True
    np.testing.assert_array_equal(out, want)


def test_box_partly_outside_is_clipped():
    out = paste_masks(np.ones((1, 14, 14), np.float32), np.array([[-5, 30, 12, 60]], np.float32), (40, 50))
    want = np.zeros((1, 40, 50), bool)
    want[0, 30:40, 0:12] = True
    np.testing.assert_array_equal(out, want)


def test_degenerate_boxes_do_not_crash():
    probs = np.ones((4, 28, 28), np.float32)
    boxes = np.array([
        [10, 5, 10, 15],        # zero width: the +-inf grid goes to the mask centre
        [3, 8, 9, 8],           # zero height
        [100, 100, 120, 130],   # entirely outside the image
        [np.nan, 0, 5, 5],      # not finite
    ], np.float32)
    out = paste_masks(probs, boxes, (30, 40))
    assert out.shape == (4, 30, 40)
    # Zero width: only the region columns (floor(x1) - 1 .. ceil(x2) + 1) are sampled, at the centre column.
    want = np.zeros((30, 40), bool)
    want[5:15, 9:11] = True
    np.testing.assert_array_equal(out[0], want)
    want = np.zeros((30, 40), bool)
    want[7:9, 3:9] = True
    np.testing.assert_array_equal(out[1], want)
    assert not out[2].any() and not out[3].any()


def test_empty_and_threshold():
    assert paste_masks(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32), (5, 6)).shape == (0, 5, 6)
    probs = np.full((1, 28, 28), 0.4, np.float32)
    box = np.array([[2, 2, 12, 12]], np.float32)
    assert not paste_masks(probs, box, (20, 20)).any()
    low = paste_masks(probs, box, (20, 20), threshold=0.39)[0]
    assert low[2:12, 2:12].all() and low.sum() == 100
    assert not paste_masks(probs, box, (20, 20), threshold=0.41).any()
    with pytest.raises(ValueError):
        paste_masks(np.zeros((2, 28, 28), np.float32), np.zeros((3, 4), np.float32), (5, 5))


def test_rle_round_trip():
    rng = np.random.default_rng(1)
    masks = rng.random((5, 23, 31)) > 0.6
    masks[0] = False
    masks[1] = True
    rles = encode_rle(masks)
    assert len(rles) == 5
    for rle, m in zip(rles, masks):
        assert rle["size"] == [23, 31] and isinstance(rle["counts"], str)
        assert int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()})) == int(m.sum())
    np.testing.assert_array_equal(decode_rle(rles), masks)
    # The same RLE with bytes counts, and pycocotools' own encoding, decode the same.
    ref = mask_utils.encode(np.asfortranarray(masks[2].astype(np.uint8)))
    assert ref["counts"].decode() == rles[2]["counts"]
    np.testing.assert_array_equal(decode_rle([ref])[0], masks[2])
    assert encode_rle(np.zeros((0, 4, 4), bool)) == []
    assert decode_rle([], image_hw=(4, 6)).shape == (0, 4, 6)


def test_pasted_layout_codes_as_a_c_ordered_copy_does():
    """paste_masks hands back a view of column-major storage so encode_rle needs no copy; the RLEs must be
    those of the same masks laid out plainly, and 0/1 integer masks of any order must code the same too."""
    rng = np.random.default_rng(3)
    probs = rng.random((7, 28, 28)).astype(np.float32)
    boxes = np.array([[3, 4, 40, 30], [0, 0, 63, 47], [10.5, 2.2, 11.0, 9.9], [-5, -5, 20, 20],
                      [50, 40, 90, 90], [1, 1, 1, 1], [20, 10, 35, 44]], np.float32)
    masks = paste_masks(probs, boxes, (48, 64))
    assert masks.shape == (7, 48, 64) and masks.dtype == bool
    plain = np.ascontiguousarray(masks)
    assert encode_rle(masks) == encode_rle(plain) == encode_rle(plain.astype(np.uint8))
    assert encode_rle(masks) == encode_rle(np.asfortranarray(plain).astype(np.int64))
    np.testing.assert_array_equal(decode_rle(encode_rle(masks)), plain)
    empty = paste_masks(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32), (5, 6))
    assert empty.shape == (0, 5, 6) and encode_rle(empty) == []


def test_decode_uncompressed_rle():
    mask = np.zeros((4, 3), bool)
    mask[1:3, 1] = True  # column-major runs: 4 zeros (col 0), 1 zero, 2 ones, 1 zero, 4 zeros
    np.testing.assert_array_equal(decode_rle([{"size": [4, 3], "counts": [5, 2, 5]}])[0], mask)
