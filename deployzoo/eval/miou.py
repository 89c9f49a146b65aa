"""Semantic segmentation mIoU, as mmsegmentation's ``IoUMetric`` defines it.

Per image, over the pixels whose ground truth is not ``ignore_index``, per class c:

    intersect_c = #pixels with pred == gt == c
    pred_c      = #pixels with pred == c
    label_c     = #pixels with gt == c
    union_c     = pred_c + label_c - intersect_c

The four areas are summed over the whole split (not averaged per image), then
IoU_c = intersect_c / union_c and Acc_c = intersect_c / label_c (NaN where the
denominator is 0, i.e. a class absent from both prediction and ground truth, or
from the ground truth), aAcc = sum(intersect) / sum(label), mIoU = nanmean(IoU),
mAcc = nanmean(Acc).

Deviations from mmsegmentation, none of which moves a published figure: areas are
counted exactly in int64 (mmseg sums float32 histograms, exact only below 2**24
pixels per class); a prediction or ground-truth value outside 0..num_classes-1
(other than the ignore value) is an error here, where ``torch.histc`` would drop
it silently; the figures are not rounded (mmseg reports round(100 * x, 2)).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN values; NaN (without numpy's warning) when there are none."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den as float64, NaN where den == 0."""
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


@dataclass
class MIoUResult:
    """mIoU, mAcc, aAcc and the per-class figures of one evaluation (fractions in 0..1).

    Attributes:
        class_names: C names, index = label value.
        iou, acc: float64 [C]; NaN where undefined (union or label area 0).
        area_intersect, area_union, area_pred, area_label: int64 [C] pixel counts over the split.
        miou, macc: NaN-skipping means of ``iou`` and ``acc`` (NaN if every class is undefined).
        aacc: overall pixel accuracy (NaN when no pixel was evaluated).
        num_images: images accumulated.
    """

    class_names: tuple[str, ...]
    iou: np.ndarray
    acc: np.ndarray
    area_intersect: np.ndarray
    area_union: np.ndarray
    area_pred: np.ndarray
    area_label: np.ndarray
    miou: float
    macc: float
    aacc: float
    num_images: int

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN written as None)."""
        def clean(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        return {
            "miou": clean(self.miou),
            "macc": clean(self.macc),
            "aacc": clean(self.aacc),
            "num_images": self.num_images,
            "per_class": [
                {"class": name, "iou": clean(float(self.iou[c])), "acc": clean(float(self.acc[c])),
                 "intersect": int(self.area_intersect[c]), "union": int(self.area_union[c]),
                 "pred": int(self.area_pred[c]), "label": int(self.area_label[c])}
                for c, name in enumerate(self.class_names)
            ],
        }

    def table(self) -> str:
        """Markdown like mmsegmentation's printout: per-class IoU/Acc, then aAcc/mIoU/mAcc, in percent."""
        def pct(x: float) -> str:
            return "nan" if math.isnan(x) else f"{100.0 * x:.2f}"

        lines = ["| Class | IoU | Acc |", "|---|---:|---:|"]
        for c, name in enumerate(self.class_names):
            lines.append(f"| {name} | {pct(float(self.iou[c]))} | {pct(float(self.acc[c]))} |")
        lines += ["", "| aAcc | mIoU | mAcc |", "|---:|---:|---:|",
                  f"| {pct(self.aacc)} | {pct(self.miou)} | {pct(self.macc)} |"]
        return "\n".join(lines)


class SegmentationAccumulator:
    """Running per-class areas over a split; memory stays at four [C] vectors whatever the split size.

    Args:
        num_classes: C; valid labels are 0..C-1.
        ignore_index: ground-truth value excluded from every count (VOC: 255, the void border).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is a valid class index (0..{num_classes - 1})")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.area_intersect = np.zeros(num_classes, dtype=np.int64)
        self.area_pred = np.zeros(num_classes, dtype=np.int64)
        self.area_label = np.zeros(num_classes, dtype=np.int64)
        self.num_images = 0

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Count one image: ``pred`` and ``gt`` integer arrays of one shape (normally [H, W]).

        Raises:
            ValueError: shapes differ, non-integer arrays, or a value outside 0..C-1
                (the ignore value excepted in ``gt``).
        """
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} does not match ground truth shape {gt.shape}")
        for name, arr in (("prediction", pred), ("ground truth", gt)):
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"{name} must hold integer labels, got dtype {arr.dtype}")
        valid = gt != self.ignore_index
        p = pred[valid].astype(np.int64)
        g = gt[valid].astype(np.int64)
        c = self.num_classes
        for name, arr in (("prediction", p), ("ground truth", g)):
            if arr.size and (arr.min() < 0 or arr.max() >= c):
                bad = arr[(arr < 0) | (arr >= c)]
                raise ValueError(f"{name} has label value(s) {np.unique(bad)[:5].tolist()} outside 0..{c - 1}")
        # One pass: the C x C confusion matrix (rows gt, columns pred) holds all three areas.
        confusion = np.bincount(g * c + p, minlength=c * c).reshape(c, c)
        self.area_intersect += np.diagonal(confusion)
        self.area_pred += confusion.sum(axis=0)
        self.area_label += confusion.sum(axis=1)
        self.num_images += 1

    def result(self, class_names: Sequence[str]) -> MIoUResult:
        """IoU, Acc and their summaries over everything added so far."""
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
        union = self.area_pred + self.area_label - self.area_intersect
        iou = _ratio(self.area_intersect, union)
        acc = _ratio(self.area_intersect, self.area_label)
        total_label = int(self.area_label.sum())
        aacc = float(self.area_intersect.sum()) / total_label if total_label else float("nan")
        return MIoUResult(
            class_names=tuple(class_names),
            iou=iou,
            acc=acc,
            area_intersect=self.area_intersect.copy(),
            area_union=union,
            area_pred=self.area_pred.copy(),
            area_label=self.area_label.copy(),
            miou=_nanmean(iou),
            macc=_nanmean(acc),
            aacc=aacc,
            num_images=self.num_images,
        )
