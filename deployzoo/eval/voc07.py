"""PASCAL VOC detection AP under named protocols, each equal to the implementation it is named for.

Every protocol scores the same inputs: detections in deployzoo's frame (0-based original-image pixels,
``x1, y1, x2, y2``; a box that covers XML pixels ``xmin..xmax`` is ``xmin - 1 .. xmax - 1``, the frame of
py-faster-rcnn's, RefineDet.PyTorch's and mmdetection 3.x's VOC loaders) against the XML ground truth (1-based).
What differs is each implementation's rules, which give different figures on the same detections:

(rule by rule in the README section "VOC07 protocols").

``voc-devkit``
    The official PASCAL VOC devkit, VOCevaldet.m (VOC2007 devkit: 11-point AP inline; VOC2010+ devkit:
    VOCap.m for the area), with VOCinit.m's ``VOCopts.minoverlap=0.5``. A detection is written +1 on every
    corner into the 1-based results file at full precision (the py-faster-rcnn writer, without its
    rounding) and compared with the XML boxes: overlap = (iw*ih)/ua with "+1" widths, counted only for
    ground truth with ``iw>0 && ih>0``; the first ground truth (XML order) with the highest overlap wins
    (``if ov>ovmax``); a match needs ``ovmax>=VOCopts.minoverlap`` (>= 0.5). Detections are ranked by
    ``[~,si]=sort(-confidence)``: MATLAB's sort is stable, so tied scores stay in file order (images in
    split order, then detection order). A match with a difficult box is neither TP nor FP; a second match
    of a box is a FP. ``prec=tp./(fp+tp)`` is NaN (0/0) while only difficult boxes have been matched and
    MATLAB's ``max`` skips NaN. 11-point AP over ``t=0:0.1:1`` as MATLAB's colon builds it (from both ends:
    0.6 and 0.7 are the doubles nearest 0.6 and 0.7, not numpy.arange's 0.6000000000000001 and
    0.7000000000000001, so a recall of exactly 0.6 or 0.7 counts at that point). A class without
    non-difficult ground truth gets what VOCevaldet returns for it: AP 0 in 11-point (NaN recall passes no
    threshold), NaN for the area. The devkit returns one AP per class; the mAP is the mean over all classes
    (as the challenge and the papers report it).

``refinedet-pytorch``
    RefineDet.PyTorch's eval_refinedet.py (luuuyi/RefineDet.PyTorch; its voc_eval is py-faster-rcnn's
    unofficial Python port) as it effectively computes after writing its per-class results files and reading
    them back: detections with score <= 0 are dropped (its test loop keeps ``score > 0``), scores are
    quantised by ``'{:.3f}'``, each box coordinate becomes ``'{:.1f}'`` of (x + 1) while the ground truth
    is XML - 1 (parse_rec), IoU without the "+1" term, a match needs IoU > 0.5 (strictly), and the order comes
    from ``np.argsort(-confidence)`` (numpy's default, non-stable kind) over the class's detections in file
    order. The +1 on detections is a systematic 1 px shift and is part of the published numbers. Tied
    scores (common after the 3-decimal rounding) are ordered by numpy's default sort, which changed between
    numpy versions: the same RefineDet code gives 48.2197 under numpy 1.23.5 and 48.1352 under numpy 2.4.6
    on one random set. This protocol uses the installed numpy's default sort, as the original does, so it
    equals the original run under the same numpy. Classes without non-difficult ground truth get the
    original's AP (0 in 11-point: ``tp / float(0)`` is NaN) and count in the mean (``np.mean(aps)`` over
    all classes). Deviations: a class with no detections gets AP 0 (the original returns the sentinel -1
    and averages it in); coordinates are shifted in float64 (numpy 2 would add 1 in float32 for float32
    inputs, which can move a '{:.1f}' rounding by 0.1 px in rare cases).

``detectron2``
    detectron2/evaluation/pascal_voc_evaluation.py (PascalVOCDetectionEvaluator, detectron2 main branch,
    also py-faster-rcnn's voc_eval), its "AP50". Detectron2's VOC models predict in its loader's frame
    (pascal_voc.py: ``xmin - 1, ymin - 1, xmax, ymax``), and its writer inverts that:
    ``xmin + 1, ymin + 1`` with x2, y2 unchanged, ``'{:.3f}'`` scores and ``'{:.1f}'`` coordinates. This
    protocol takes the detections as detectron2's ``pred_boxes`` (that frame) and applies the same writer;
    ground truth = XML integers (parse_rec). IoU with "+1" widths, a match needs IoU > 0.5 (strictly),
    ``np.argsort(-confidence)`` (numpy default sort, the same numpy-version caveat as above). A class
    without ground truth gets AP 0 (NaN recall; no detections: an empty file, AP 0); mAP = ``np.mean`` over
    all classes. 11-point for VOC2007 (``use_07_metric = year == 2007``).

``mmdet``
    mmdetection 3.x VOCMetric (mmdet/evaluation/metrics/voc_metric.py) -> eval_map
    (mmdet/evaluation/functional/mean_ap.py) with ``use_legacy_coordinate=True`` ("+1" widths, as VOCMetric
    always passes for VOC) and ``eval_mode='11points'`` (VOCMetric's default, the VOC2007 rule). Ground
    truth as mmdet 3.x's XMLDataset loads it: ``int(float(x)) - 1`` for every corner, difficult boxes in
    ``bboxes_ignore`` (stacked after the others, so argmax ties prefer a non-difficult box); detections as
    mmdet's ``pred_instances`` (that frame, float32). bbox_overlaps in float32 with the union clamped to
    1e-6; a match needs IoU >= 0.5; each image's detections are assigned in ``np.argsort(-scores)`` order
    of that image (TP/FP decided per image), then the class's detections are ranked by a global
    ``np.argsort(-scores)`` (both numpy default sorts). Precision in float32, recall = tp / max(num_gts,
    eps); AP accumulated in float32. The mAP is the mean over classes **with** ground truth (a class
    without any gets AP 0 and is left out of the mean).

Errors: ``evaluate_voc`` raises ValueError for an unknown protocol (``clean``, removed, names the protocol
to use instead), detections for an image not in the annotations, and malformed detection arrays.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from deployzoo.data.voc import VOC_CLASSES, VOCAnnotation


class ImageDetections(NamedTuple):
    """Detections of one image: boxes float [K, 4] x1, y1, x2, y2 (original pixels, 0-based),
    scores [K], labels int [K] (0-based class index)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class VOCProtocol:
    """The rules of one VOC AP implementation (see the module docstring for the sources).

    Boxes: ground truth = XML (truncated to int first when ``gt_truncate``) + ``gt_offset``; detections +
    ``det_offset`` per corner, then rounded to ``box_decimals`` (results-file round trip) when set.
    """

    name: str
    equals: str  # the implementation whose figures this reproduces (framework, file, version)
    gt_offset: float
    det_offset: tuple[float, float, float, float]
    plus_one: bool  # widths x2 - x1 + 1 ("legacy" pixel-index boxes)
    inclusive: bool  # a match needs IoU >= threshold (else > threshold)
    stable_sort: bool  # ties ranked in file order (MATLAB sort); else numpy's default argsort
    mean_over_all: bool  # mAP over every class; else over classes with non-difficult ground truth
    gt_truncate: bool = False  # int(float(x)) on the XML coordinates (mmdet's XMLDataset)
    score_decimals: int | None = None  # '{:.3f}' results files
    box_decimals: int | None = None  # '{:.1f}' results files
    drop_nonpositive: bool = False  # keep only score > 0 (RefineDet.PyTorch's test loop)
    devkit: bool = False  # MATLAB: overlap only where iw>0 && ih>0, NaN-skipping max, colon thresholds
    mmdet: bool = False  # float32 IoU/precision/AP, per-image assignment order, difficult boxes stacked last

    @property
    def rules(self) -> str:
        """The protocol's matching and averaging rules in one line, for reports."""
        match = f"IoU {'>=' if self.inclusive else '>'} 0.5 {'with' if self.plus_one else 'without'} +1 pixel areas"
        ties = "ties in file order (stable sort)" if self.stable_sort else "ties in numpy's default sort order"
        rounding = f", scores rounded to {self.score_decimals} decimals" if self.score_decimals is not None else ""
        mean = "all classes" if self.mean_over_all else "the classes with ground truth"
        return (f"{match}{rounding}, {ties}, each box matched once (duplicates are false positives), difficult "
                f"boxes neither count nor penalise, mAP = mean over {mean}")


PROTOCOLS: dict[str, VOCProtocol] = {
    p.name: p
    for p in (
        VOCProtocol(
            name="voc-devkit",
            equals="the official PASCAL VOC devkit (VOCevaldet.m, VOCap.m, VOCinit.m minoverlap 0.5), "
                   "detections written +1 at full precision",
            gt_offset=0.0, det_offset=(1.0, 1.0, 1.0, 1.0), plus_one=True, inclusive=True, stable_sort=True,
            mean_over_all=True, devkit=True),
        VOCProtocol(
            name="refinedet-pytorch",
            equals="RefineDet.PyTorch eval_refinedet.py (py-faster-rcnn voc_eval via its results files), "
                   "under the installed numpy's default sort",
            gt_offset=-1.0, det_offset=(1.0, 1.0, 1.0, 1.0), plus_one=False, inclusive=False, stable_sort=False,
            mean_over_all=True, score_decimals=3, box_decimals=1, drop_nonpositive=True),
        VOCProtocol(
            name="detectron2",
            equals="detectron2 PascalVOCDetectionEvaluator AP50 (detectron2/evaluation/pascal_voc_evaluation.py), "
                   "under the installed numpy's default sort",
            gt_offset=0.0, det_offset=(1.0, 1.0, 0.0, 0.0), plus_one=True, inclusive=False, stable_sort=False,
            mean_over_all=True, score_decimals=3, box_decimals=1),
        VOCProtocol(
            name="mmdet",
            equals="mmdetection 3.x VOCMetric (eval_map, use_legacy_coordinate=True, eval_mode '11points' "
                   "for VOC2007), under the installed numpy's default sort",
            gt_offset=-1.0, det_offset=(0.0, 0.0, 0.0, 0.0), plus_one=True, inclusive=True, stable_sort=False,
            mean_over_all=False, gt_truncate=True, mmdet=True),
    )
}

# Removed names -> why, and what to use instead (refused, not aliased: an alias would silently change the
# figure of every script that asked for the old rule).
RETIRED_PROTOCOLS: dict[str, str] = {
    "clean": "protocol 'clean' was removed: it matched no reference implementation (no +1 pixel, IoU > 0.5, "
             "stable sort, mean over classes with ground truth). Use 'voc-devkit' for the official VOC devkit "
             "rule, or 'refinedet-pytorch', 'detectron2' or 'mmdet' to reproduce that framework's figure.",
}

# Task-agreement scoring (one engine's detections against another's as ground truth): the devkit's
# matching on the boxes as given, averaged over the classes the reference detected.
AGREEMENT = replace(PROTOCOLS["voc-devkit"], name="agreement", mean_over_all=False,
                    equals="VOC devkit matching, mean over the classes present in the reference")

# MATLAB's 0:0.1:1: the colon operator fills the first half as a + k*d and the second half as b - k*d
# (MathWorks' colonop.m), so 0.6 = 1 - 0.4 and 0.7 = 1 - 0.30000000000000004 are the doubles nearest 0.6 and
# 0.7. numpy.arange (and Octave) give 0.6000000000000001 and 0.7000000000000001 instead.
_MATLAB_TENTHS = np.array([k * 0.1 for k in range(6)] + [1.0 - (10 - k) * 0.1 for k in range(6, 11)])
_NUMPY_TENTHS = np.arange(0.0, 1.1, 0.1)  # py-faster-rcnn's and mmdet's thresholds (0.30000000000000004, ...)


@dataclass
class ClassAP:
    """Per-class result row."""

    name: str
    ap: float  # NaN where the reference gives NaN (see the protocol)
    num_gt: int  # non-difficult ground-truth boxes
    num_detections: int
    tp: int
    recall: float  # at the end of the ranked list; NaN when num_gt == 0
    in_mean: bool = True  # counted in the mAP under the protocol


@dataclass
class VOCEvalResult:
    """mAP and per-class AP of one evaluation."""

    map: float
    per_class: list[ClassAP]
    protocol: str
    metric: str  # "VOC07 11-point" or "area"
    num_images: int
    iou_threshold: float = 0.5
    protocol_equals: str = ""
    protocol_rules: str = ""

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN written as None)."""
        def clean(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        return {
            "map": clean(self.map),
            "protocol": self.protocol,
            "protocol_equals": self.protocol_equals,
            "protocol_rules": self.protocol_rules,
            "metric": self.metric,
            "iou_threshold": self.iou_threshold,
            "num_images": self.num_images,
            "per_class": [
                {"class": r.name, "ap": clean(r.ap), "num_gt": r.num_gt, "num_detections": r.num_detections,
                 "tp": r.tp, "recall": clean(r.recall), "in_mean": r.in_mean}
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
            mark = "" if r.in_mean else " (not in mAP)"
            lines.append(f"| {r.name} | {pct(r.ap)}{mark} | {r.num_gt} | {r.num_detections} | {pct(r.recall)} |")
        lines.append(f"| **mAP** | **{pct(self.map)}** | | | |")
        lines.append(f"\nprotocol {self.protocol}: equals {self.protocol_equals}" if self.protocol_equals
                     else f"\nprotocol {self.protocol}")
        return "\n".join(lines)


def resolve_protocol(protocol: str | VOCProtocol) -> VOCProtocol:
    """The rules for a protocol name (a VOCProtocol passes through).

    Raises:
        ValueError: a removed name (with what to use instead) or an unknown one.
    """
    if isinstance(protocol, VOCProtocol):
        return protocol
    if protocol in RETIRED_PROTOCOLS:
        raise ValueError(RETIRED_PROTOCOLS[protocol])
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {tuple(PROTOCOLS)}")
    return PROTOCOLS[protocol]


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = True) -> float:
    """AP from a precision/recall curve as py-faster-rcnn's voc_ap (VOC07 11-point over numpy.arange
    thresholds, or the VOC2010+ area under the envelope). NaN recalls pass no threshold."""
    if use_07_metric:
        ap = 0.0
        for t in _NUMPY_TENTHS:
            above = recall >= t
            ap += (float(np.max(precision[above])) if above.any() else 0.0) / 11.0
        return ap
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    change = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[change + 1] - mrec[change]) * mpre[change + 1]))


def devkit_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = True) -> float:
    """AP as the MATLAB devkit computes it: VOC2007 VOCevaldet's inline 11-point loop, or VOC2010+ VOCap.
    MATLAB's ``max`` skips NaN (an all-NaN selection gives NaN); an empty selection counts 0."""
    if use_07_metric:
        ap = 0.0
        for t in _MATLAB_TENTHS:
            sel = precision[recall >= t]
            if sel.size == 0:
                p = 0.0
            elif np.isnan(sel).all():
                p = float("nan")
            else:
                p = float(np.nanmax(sel))
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.fmax.accumulate(mpre[::-1])[::-1]  # MATLAB max(a, b) ignores a NaN operand
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1  # NaN ~= x is true in MATLAB as in numpy
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def mmdet_ap(recall: np.ndarray, precision32: np.ndarray, use_07_metric: bool = True) -> np.float32:
    """mmdet's average_precision: float32 accumulator; '11points' over numpy.arange thresholds or 'area'."""
    ap = np.zeros(1, dtype=np.float32)
    if use_07_metric:
        for t in _NUMPY_TENTHS:
            sel = precision32[recall >= t]
            ap[0] += sel.max() if sel.size > 0 else 0
        ap /= 11
        return ap[0]
    mrec = np.hstack((np.zeros(1, dtype=recall.dtype), recall, np.ones(1, dtype=recall.dtype)))
    mpre = np.hstack((np.zeros(1, dtype=recall.dtype), precision32, np.zeros(1, dtype=recall.dtype)))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    ind = np.flatnonzero(mrec[1:] != mrec[:-1])
    ap[0] = np.sum((mrec[ind + 1] - mrec[ind]) * mpre[ind + 1])
    return ap[0]


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


def _pair_ious(bb: np.ndarray, gt: np.ndarray, rules: VOCProtocol) -> np.ndarray:
    """IoU of paired rows (float [P,4] each) under the protocol's arithmetic; -inf where the devkit
    does not compute an overlap (iw <= 0 or ih <= 0)."""
    if rules.mmdet:  # bbox_overlaps: float32, union clamped to eps=1e-6
        bb, gt = bb.astype(np.float32), gt.astype(np.float32)
        e = 1.0 if rules.plus_one else 0.0
        area_d = (bb[:, 2] - bb[:, 0] + e) * (bb[:, 3] - bb[:, 1] + e)
        area_g = (gt[:, 2] - gt[:, 0] + e) * (gt[:, 3] - gt[:, 1] + e)
        iw = np.maximum(np.minimum(bb[:, 2], gt[:, 2]) - np.maximum(bb[:, 0], gt[:, 0]) + e, 0)
        ih = np.maximum(np.minimum(bb[:, 3], gt[:, 3]) - np.maximum(bb[:, 1], gt[:, 1]) + e, 0)
        overlap = iw * ih
        return overlap / np.maximum(area_d + area_g - overlap, 1e-6)
    e = 1.0 if rules.plus_one else 0.0
    iw = np.minimum(gt[:, 2], bb[:, 2]) - np.maximum(gt[:, 0], bb[:, 0]) + e
    ih = np.minimum(gt[:, 3], bb[:, 3]) - np.maximum(gt[:, 1], bb[:, 1]) + e
    if rules.devkit:
        inter = iw * ih
        ua = (bb[:, 2] - bb[:, 0] + e) * (bb[:, 3] - bb[:, 1] + e) + (gt[:, 2] - gt[:, 0] + e) * (gt[:, 3] - gt[:, 1] + e) - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            ov = inter / ua
        return np.where((iw > 0) & (ih > 0), ov, -np.inf)
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    union = ((bb[:, 2] - bb[:, 0] + e) * (bb[:, 3] - bb[:, 1] + e)
             + (gt[:, 2] - gt[:, 0] + e) * (gt[:, 3] - gt[:, 1] + e) - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def _best_overlaps(det_key: np.ndarray, det_box: np.ndarray, gt_key: np.ndarray,
                   gt_box: np.ndarray, rules: VOCProtocol) -> tuple[np.ndarray, np.ndarray]:
    """For every detection, max IoU with the GT of the same (image, class) key and its first argmax.

    Returns (ovmax [D] (-inf without GT, NaN where an IoU is 0/0 as in py-faster-rcnn), jmax int [D]
    index into the GT arrays or -1).
    """
    d = len(det_key)
    ovmax = np.full(d, -np.inf, dtype=np.float32 if rules.mmdet else np.float64)
    jmax = np.full(d, -1, dtype=np.int64)
    if d == 0 or len(gt_key) == 0:
        return ovmax, jmax
    order = np.argsort(gt_key, kind="stable")  # GT of one key keep their order (argmax ties)
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

    iou = _pair_ious(det_box[pair_det], gt_box[pair_gt], rules)
    seg_max = np.maximum.reduceat(iou, seg_start)  # NaN propagates, like np.max
    ovmax[has] = seg_max
    # First pair reaching the max in each segment = np.argmax's choice (and the devkit's `ov>ovmax`).
    hit = np.flatnonzero(iou == np.repeat(seg_max, cnt))
    first_det, first_pos = np.unique(pair_det[hit], return_index=True)
    jmax[first_det] = pair_gt[hit[first_pos]]
    return ovmax, jmax


def _per_image_ranks(img: np.ndarray, neg_score: np.ndarray) -> np.ndarray:
    """mmdet's per-image order: rank of each detection within ``np.argsort(-scores)`` of its image's
    detections (in file order). A stable order serves where an image has no tied scores; images with ties
    get numpy's default argsort itself, so the tie order is the one mmdet sees."""
    n = len(img)
    o = np.lexsort((neg_score, img))
    rank = np.empty(n, dtype=np.int64)
    rank[o] = np.arange(n)
    gi, gs = img[o], neg_score[o]
    tied = np.flatnonzero((gi[1:] == gi[:-1]) & (gs[1:] == gs[:-1]))
    for g in np.unique(gi[tied]):
        lo, hi = np.searchsorted(gi, g, "left"), np.searchsorted(gi, g, "right")
        members = np.sort(o[lo:hi])  # this image's detections in file order
        rank[members[np.argsort(neg_score[members])]] = np.arange(lo, hi)
    return rank


def evaluate_voc(
    detections: Mapping[str, ImageDetections | tuple],
    annotations: Mapping[str, VOCAnnotation],
    class_names: Sequence[str] = VOC_CLASSES,
    protocol: str | VOCProtocol = "voc-devkit",
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> VOCEvalResult:
    """Per-class AP and mAP of ``detections`` against ``annotations`` under ``protocol``'s rules.

    Args:
        detections: image id -> (boxes [K,4] x1,y1,x2,y2 0-based original pixels,
            scores [K], labels [K] 0-based class index). Images without an entry
            have no detections.
        annotations: image id -> ground truth (XML 1-based boxes). Its order is the
            "file order" that tie-breaking follows; pass it in split-file order.
        class_names: names of the classes the labels index.
        protocol: "voc-devkit", "refinedet-pytorch", "detectron2" or "mmdet" (module docstring),
            or a VOCProtocol.
        iou_threshold: the overlap a match needs (compared with >= or > as the protocol does).
        use_07_metric: VOC07 11-point AP (default) or the area under the envelope (VOC2010+).

    Raises:
        ValueError: unknown or removed protocol, detections for an image not in ``annotations``,
            or malformed detection arrays.
    """
    rules = resolve_protocol(protocol)
    unknown = [k for k in detections if k not in annotations]
    if unknown:
        raise ValueError(f"detections for {len(unknown)} image(s) not in the annotations, "
                         f"e.g. {unknown[0]!r}")
    num_classes = len(class_names)

    gt_img, gt_cls, gt_box, gt_diff = [], [], [], []
    det_img, det_cls, det_box, det_score = [], [], [], []
    for img, (image_id, ann) in enumerate(annotations.items()):
        n = len(ann.labels)
        if n and (ann.labels.min() < 0 or ann.labels.max() >= num_classes):
            raise ValueError(f"annotation of image {image_id!r}: label out of range for "
                             f"{num_classes} classes")
        boxes = np.asarray(ann.boxes, dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(ann.labels, dtype=np.int64)
        diff = np.asarray(ann.difficult, dtype=bool).reshape(-1)
        if rules.gt_truncate:
            boxes = np.trunc(boxes)
        if rules.mmdet:  # difficult boxes go to bboxes_ignore, stacked after the others
            keep_order = np.argsort(diff, kind="stable")
            boxes, labels, diff = boxes[keep_order], labels[keep_order], diff[keep_order]
        gt_img.append(np.full(n, img, dtype=np.int64))
        gt_cls.append(labels)
        gt_box.append(boxes + rules.gt_offset)
        gt_diff.append(diff)
        if image_id in detections:
            boxes, scores, labels = _as_arrays(image_id, detections[image_id], num_classes)
            if rules.drop_nonpositive:
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

    det_box = det_box + np.asarray(rules.det_offset)
    if rules.box_decimals is not None:  # results-file round trip
        det_box = _round_like_format(det_box, rules.box_decimals)
    if rules.score_decimals is not None:
        det_score = _round_like_format(det_score, rules.score_decimals)
    if rules.mmdet:  # mmdet's pred_instances are float32
        det_score = det_score.astype(np.float32)

    ovmax, jmax = _best_overlaps(det_img * num_classes + det_cls, det_box,
                                 gt_img * num_classes + gt_cls, gt_box, rules)
    thr = np.float32(iou_threshold) if rules.mmdet else iou_threshold
    with np.errstate(invalid="ignore"):
        matched = ovmax >= thr if rules.inclusive else ovmax > thr  # NaN and -inf compare False -> FP
    ignored = matched & gt_diff[np.maximum(jmax, 0)] if len(gt_diff) else np.zeros_like(matched)

    rows = []
    for c, name in enumerate(class_names):
        npos = int(np.count_nonzero((gt_cls == c) & ~gt_diff))
        idx = np.flatnonzero(det_cls == c)  # file order: image, then detection order
        nd = idx.size
        neg = -det_score[idx]
        order = np.argsort(neg, kind="stable") if rules.stable_sort else np.argsort(neg)
        # Which detection of a box's matches is its TP: the first in the ranking (per image for mmdet).
        assign = _per_image_ranks(det_img[idx], neg) if rules.mmdet else np.argsort(order)
        m, ig, j = matched[idx], ignored[idx], jmax[idx]
        candidate = m & ~ig
        tp = np.zeros(nd)
        cand = np.flatnonzero(candidate)
        cand = cand[np.argsort(assign[cand])]
        _, first = np.unique(j[cand], return_index=True)
        tp[cand[first]] = 1.0
        fp = (~m | candidate).astype(np.float64) - tp
        tp, fp = tp[order], fp[order]
        ap, rec_end, n_tp = _class_ap(tp, fp, npos, rules, use_07_metric)
        in_mean = rules.mean_over_all or npos > 0
        rows.append(ClassAP(name=name, ap=ap, num_gt=npos, num_detections=int(nd), tp=n_tp, recall=rec_end,
                            in_mean=in_mean))

    aps = [r.ap for r in rows if r.in_mean]
    if not any(r.num_gt for r in rows):
        # No non-difficult object in the whole split: the references still print a number (0 or the mean of
        # per-class zeros), but it scores nothing, so the figure is undefined (null with the reason in JSON).
        # The per-class rows above keep each reference's values.
        mean_ap = float("nan")
    elif rules.mmdet:
        mean_ap = float(np.array(aps, dtype=np.float32).mean()) if aps else 0.0
    else:
        mean_ap = float(np.mean(aps)) if aps else float("nan")
    return VOCEvalResult(
        map=mean_ap,
        per_class=rows,
        protocol=rules.name,
        metric="VOC07 11-point" if use_07_metric else "area",
        num_images=len(annotations),
        iou_threshold=float(iou_threshold),
        protocol_equals=rules.equals,
        protocol_rules=rules.rules,
    )


def _class_ap(tp: np.ndarray, fp: np.ndarray, npos: int, rules: VOCProtocol,
              use_07_metric: bool) -> tuple[float, float, int]:
    """(AP, recall at the end of the list, TP count) of one class's ranked TP/FP flags, with the
    protocol's arithmetic."""
    n_tp = int(tp.sum())
    if rules.mmdet:
        tp32, fp32 = np.cumsum(tp.astype(np.float32)), np.cumsum(fp.astype(np.float32))
        eps = np.finfo(np.float32).eps
        rec = tp32 / np.maximum(np.array([npos]), eps)  # float64, as mmdet's int num_gts array makes it
        prec = tp32 / np.maximum(tp32 + fp32, eps)
        ap = float(mmdet_ap(rec, prec, use_07_metric))
        rec_end = float(rec[-1]) if len(rec) and npos else (0.0 if npos else float("nan"))
        return ap, rec_end, n_tp
    tp_c, fp_c = np.cumsum(tp), np.cumsum(fp)
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = tp_c / float(npos)  # NaN when npos == 0, as in every reference (0/0)
        if rules.devkit:
            prec = tp_c / (fp_c + tp_c)  # NaN while only difficult boxes matched
        else:
            prec = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
    ap = devkit_ap(rec, prec, use_07_metric) if rules.devkit else voc_ap(rec, prec, use_07_metric)
    rec_end = float(rec[-1]) if len(rec) and npos else (0.0 if npos else float("nan"))
    return float(ap), rec_end, n_tp
