"""PASCAL VOC detection AP, matching py-faster-rcnn's ``voc_eval`` (used by RefineDet.PyTorch).

Matching rules, per class: detections sorted by descending score; each one is
compared with every ground-truth box of its image and class (IoU without the
"+1 pixel" term) and takes the one with the highest IoU. If that IoU is > the
threshold (strictly): a difficult box makes the detection ignored (neither TP nor
FP), a not-yet-matched box makes it a TP, an already-matched box makes it a FP.
Otherwise it is a FP. Recall is over the non-difficult boxes.

Two protocols:

``"clean"``
    Detections as given (float scores, 0-based float boxes in original-image
    pixels); ground truth = XML coordinates - 1; ties in score broken by a
    stable sort (image order of ``annotations``, then detection order).

``"refinedet-pytorch"``
    What eval_refinedet.py effectively computes after writing its per-class
    results files and reading them back: detections with score <= 0 are dropped
    (its test loop keeps ``score > 0``), scores are quantised by ``'{:.3f}'``,
    each box coordinate becomes ``'{:.1f}'`` of (x + 1) while the ground truth is
    XML - 1, and the order comes from ``np.argsort(-confidence)`` (default,
    non-stable kind) over the class's detections in file order (images in
    ``annotations`` order, then detection order). A detection whose score rounds
    to 0.000 is still kept, as the original writes it. The +1 on detections is a
    systematic 1 px shift relative to the clean protocol and is part of the
    published numbers. Deviations from the original: a class with no detections
    gets AP 0 (the original returns -1), coordinates are shifted in float64
    (numpy 2 would add 1 in float32 for float32 inputs).

Classes without any non-difficult ground truth get AP NaN and are left out of
the mAP (the original divides by zero there; on VOC2007 test every class has
ground truth, so this never changes the published number).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from deployzoo.data.voc import VOC_CLASSES, VOCAnnotation

PROTOCOLS = ("clean", "refinedet-pytorch")


class ImageDetections(NamedTuple):
    """Detections of one image: boxes float [K, 4] x1, y1, x2, y2 (original pixels, 0-based),
    scores [K], labels int [K] (0-based class index)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass
class ClassAP:
    """Per-class result row."""

    name: str
    ap: float  # NaN when the class has no non-difficult ground truth
    num_gt: int  # non-difficult ground-truth boxes
    num_detections: int
    tp: int
    recall: float  # at the end of the ranked list; NaN when num_gt == 0


@dataclass
class VOCEvalResult:
    """mAP and per-class AP of one evaluation."""

    map: float
    per_class: list[ClassAP]
    protocol: str
    metric: str  # "VOC07 11-point" or "area"
    num_images: int
    iou_threshold: float = 0.5

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN written as None)."""
        def clean(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        return {
            "map": clean(self.map),
            "protocol": self.protocol,
            "metric": self.metric,
            "iou_threshold": self.iou_threshold,
            "num_images": self.num_images,
            "per_class": [
                {"class": r.name, "ap": clean(r.ap), "num_gt": r.num_gt,
                 "num_detections": r.num_detections, "tp": r.tp, "recall": clean(r.recall)}
                for r in self.per_class
            ],
        }

    def table(self) -> str:
        """Markdown table of per-class AP in percent (2 decimals) with a final mAP row."""
        def pct(x: float) -> str:
            return "n/a" if math.isnan(x) else f"{100.0 * x:.2f}"

        lines = ["| class | AP (%) | GT | detections | recall (%) |",
                 "|---|---:|---:|---:|---:|"]
        for r in self.per_class:
            lines.append(f"| {r.name} | {pct(r.ap)} | {r.num_gt} | {r.num_detections} | {pct(r.recall)} |")
        lines.append(f"| **mAP** | **{pct(self.map)}** | | | |")
        return "\n".join(lines)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = True) -> float:
    """AP from a precision/recall curve (VOC07 11-point, or the VOC2010+ area under the envelope)."""
    if use_07_metric:
        ap = 0.0
        # np.arange keeps the reference's thresholds bit for bit (0.30000000000000004, ...).
        for t in np.arange(0.0, 1.1, 0.1):
            above = recall >= t
            ap += (float(np.max(precision[above])) if above.any() else 0.0) / 11.0
        return ap
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    change = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[change + 1] - mrec[change]) * mpre[change + 1]))


def _round_like_format(values: np.ndarray, decimals: int) -> np.ndarray:
    """float(f"{v:.{decimals}f}") for every value, vectorised.

    ``np.round`` differs from Python's formatting when v * 10**decimals lands within
    float error of a half (0.1235 -> np.round 0.124, format 0.123); those few values
    are redone with the real formatting.
    """
    values = np.asarray(values, dtype=np.float64)
    scale = 10.0 ** decimals
    scaled = values * scale
    out = np.rint(scaled) / scale
    near_half = np.abs(np.abs(scaled - np.floor(scaled)) - 0.5) < 1e-6
    for i in np.flatnonzero(near_half):
        out.flat[i] = float(f"{values.flat[i]:.{decimals}f}")
    return out


def _as_arrays(image_id: str, dets, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate one image's detections and return (boxes float64 [K,4], scores [K], labels [K])."""
    try:
        boxes, scores, labels = dets
    except (TypeError, ValueError):
        raise ValueError(f"detections for image {image_id!r} must be (boxes, scores, labels)") from None
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    k = len(scores)
    if boxes.shape != (k, 4) or labels.shape != (k,):
        raise ValueError(f"detections for image {image_id!r}: boxes {boxes.shape}, scores ({k},), "
                         f"labels {labels.shape} do not agree (want [K,4], [K], [K])")
    if k and not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.mod(labels, 1) == 0):
            raise ValueError(f"detections for image {image_id!r}: labels must be integers")
    labels = labels.astype(np.int64)
    if k and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"detections for image {image_id!r}: label out of range 0..{num_classes - 1}")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError(f"detections for image {image_id!r}: non-finite box or score")
    return boxes, scores, labels


def _best_overlaps(det_key: np.ndarray, det_box: np.ndarray, gt_key: np.ndarray,
                   gt_box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every detection, max IoU with the GT of the same (image, class) key and its first argmax.

    Returns (ovmax float [D] (-inf without GT, NaN where an IoU is 0/0 as in the
    original), jmax int [D] index into the GT arrays or -1).
    """
    d = len(det_key)
    ovmax = np.full(d, -np.inf)
    jmax = np.full(d, -1, dtype=np.int64)
    if d == 0 or len(gt_key) == 0:
        return ovmax, jmax
    order = np.argsort(gt_key, kind="stable")  # GT of one key stay in XML order (argmax ties)
    sorted_keys = gt_key[order]
    start = np.searchsorted(sorted_keys, det_key, side="left")
    count = np.searchsorted(sorted_keys, det_key, side="right") - start
    has = np.flatnonzero(count)
    if has.size == 0:
        return ovmax, jmax
    cnt = count[has]
    seg_start = np.concatenate(([0], np.cumsum(cnt)[:-1]))
    pair_det = np.repeat(has, cnt)  # detection index of every (det, GT) pair
    within = np.arange(pair_det.size) - np.repeat(seg_start, cnt)
    pair_gt = order[np.repeat(start[has], cnt) + within]

    bb = det_box[pair_det]
    gt = gt_box[pair_gt]
    iw = np.maximum(np.minimum(gt[:, 2], bb[:, 2]) - np.maximum(gt[:, 0], bb[:, 0]), 0.0)
    ih = np.maximum(np.minimum(gt[:, 3], bb[:, 3]) - np.maximum(gt[:, 1], bb[:, 1]), 0.0)
    inter = iw * ih
    union = ((bb[:, 2] - bb[:, 0]) * (bb[:, 3] - bb[:, 1])
             + (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]) - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union

    seg_max = np.maximum.reduceat(iou, seg_start)  # NaN propagates, like np.max
    ovmax[has] = seg_max
    # First pair reaching the max in each segment = np.argmax's choice.
    hit = np.flatnonzero(iou == np.repeat(seg_max, cnt))
    first_det, first_pos = np.unique(pair_det[hit], return_index=True)
    jmax[first_det] = pair_gt[hit[first_pos]]
    return ovmax, jmax


def evaluate_voc(
    detections: Mapping[str, ImageDetections | tuple],
    annotations: Mapping[str, VOCAnnotation],
    class_names: Sequence[str] = VOC_CLASSES,
    protocol: str = "clean",
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> VOCEvalResult:
    """Per-class AP and mAP of ``detections`` against ``annotations``.

    Args:
        detections: image id -> (boxes [K,4] x1,y1,x2,y2 0-based original pixels,
            scores [K], labels [K] 0-based class index). Images without an entry
            have no detections.
        annotations: image id -> ground truth (XML 1-based boxes). Its order is the
            "file order" that the refinedet-pytorch protocol's tie-breaking follows;
            pass it in split-file order.
        class_names: names of the classes the labels index.
        protocol: "clean" or "refinedet-pytorch" (see the module docstring).
        iou_threshold: a match needs IoU strictly greater than this.
        use_07_metric: VOC07 11-point AP (default) or the area under the envelope.

    Raises:
        ValueError: unknown protocol, detections for an image not in ``annotations``,
            or malformed detection arrays.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    unknown = [k for k in detections if k not in annotations]
    if unknown:
        raise ValueError(f"detections for {len(unknown)} image(s) not in the annotations, "
                         f"e.g. {unknown[0]!r}")
    num_classes = len(class_names)
    refinedet = protocol == "refinedet-pytorch"

    # Ground truth, 0-based as parse_rec makes it (XML - 1).
    gt_img, gt_cls, gt_box, gt_diff = [], [], [], []
    det_img, det_cls, det_box, det_score = [], [], [], []
    for img, (image_id, ann) in enumerate(annotations.items()):
        n = len(ann.labels)
        if n and (ann.labels.min() < 0 or ann.labels.max() >= num_classes):
            raise ValueError(f"annotation of image {image_id!r}: label out of range for "
                             f"{num_classes} classes")
        gt_img.append(np.full(n, img, dtype=np.int64))
        gt_cls.append(np.asarray(ann.labels, dtype=np.int64))
        gt_box.append(np.asarray(ann.boxes, dtype=np.float64).reshape(-1, 4) - 1.0)
        gt_diff.append(np.asarray(ann.difficult, dtype=bool))
        if image_id in detections:
            boxes, scores, labels = _as_arrays(image_id, detections[image_id], num_classes)
            if refinedet:
                keep = scores > 0  # the original's test loop keeps score > 0 only
                boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            det_img.append(np.full(len(scores), img, dtype=np.int64))
            det_cls.append(labels)
            det_box.append(boxes)
            det_score.append(scores)

    def cat(parts: list[np.ndarray], dtype, shape=(0,)) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(shape, dtype=dtype)

    gt_img, gt_cls = cat(gt_img, np.int64), cat(gt_cls, np.int64)
    gt_box, gt_diff = cat(gt_box, np.float64, (0, 4)), cat(gt_diff, bool)
    det_img, det_cls = cat(det_img, np.int64), cat(det_cls, np.int64)
    det_box, det_score = cat(det_box, np.float64, (0, 4)), cat(det_score, np.float64)

    if refinedet:
        # Round trip through the results file: '{:.3f}' score, '{:.1f}' of (x + 1).
        det_score = _round_like_format(det_score, 3)
        det_box = _round_like_format(det_box + 1.0, 1)

    ovmax, jmax = _best_overlaps(det_img * num_classes + det_cls, det_box,
                                 gt_img * num_classes + gt_cls, gt_box)
    with np.errstate(invalid="ignore"):
        matched = ovmax > iou_threshold  # NaN and -inf compare False -> FP
    ignored = matched & gt_diff[np.maximum(jmax, 0)] if len(gt_diff) else np.zeros_like(matched)

    rows = []
    for c, name in enumerate(class_names):
        npos = int(np.count_nonzero((gt_cls == c) & ~gt_diff))
        idx = np.flatnonzero(det_cls == c)  # file order: image, then detection order
        nd = idx.size
        if refinedet:
            order = np.argsort(-det_score[idx])  # default kind, as the original
        else:
            order = np.argsort(-det_score[idx], kind="stable")
        idx = idx[order]
        m, ig, j = matched[idx], ignored[idx], jmax[idx]
        candidate = m & ~ig
        tp = np.zeros(nd)
        cand_pos = np.flatnonzero(candidate)
        _, first = np.unique(j[cand_pos], return_index=True)
        tp[cand_pos[first]] = 1.0  # first (highest-ranked) detection per GT box
        fp = (~m | candidate).astype(np.float64) - tp
        tp_cum, fp_cum = np.cumsum(tp), np.cumsum(fp)
        n_tp = int(tp_cum[-1]) if nd else 0
        if npos == 0:
            ap, rec_end = float("nan"), float("nan")
        elif nd == 0:
            ap, rec_end = 0.0, 0.0
        else:
            rec = tp_cum / float(npos)
            prec = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
            ap, rec_end = voc_ap(rec, prec, use_07_metric), float(rec[-1])
        rows.append(ClassAP(name=name, ap=float(ap), num_gt=npos, num_detections=int(nd),
                            tp=n_tp, recall=rec_end))

    aps = [r.ap for r in rows if not math.isnan(r.ap)]
    return VOCEvalResult(
        map=float(np.mean(aps)) if aps else float("nan"),
        per_class=rows,
        protocol=protocol,
        metric="VOC07 11-point" if use_07_metric else "area",
        num_images=len(annotations),
        iou_threshold=float(iou_threshold),
    )
