"""Engine against reference: per-output errors and one-to-one detection matching.

The tolerances are the project's fidelity rules (shared fixtures README): tensors
``max|a-b| <= 1e-4 * max(1, max|ref|)``; detections matched one to one with the same label,
IoU > 0.999 and |score difference| < 1e-4; pasted masks of matched detections agree on > 99.9% of pixels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from deployzoo.structures import Detections

TENSOR_RTOL = 1e-4
MATCH_IOU = 0.999
MATCH_SCORE_TOL = 1e-4
# Detections left unmatched on both sides pair up as swaps when their scores differ by less than this: the
# fixtures' rule for near-tied scores, whose order (at the max-detections cut, or in NMS) rounding decides.
MATCH_SWAP_TOL = 1e-5
MASK_AGREEMENT = 0.999  # pasted masks of a matched pair agree on more than this fraction of pixels


@dataclass
class TensorDiff:
    name: str
    max_abs: float
    max_rel: float  # max |a-b| / max(1, max|ref|): the quantity the tolerance bounds
    tolerance: float
    ok: bool

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def tensor_diff(name: str, value: np.ndarray, reference: np.ndarray, rtol: float = TENSOR_RTOL) -> TensorDiff:
    value = np.asarray(value, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if value.shape != reference.shape:
        return TensorDiff(name, float("inf"), float("inf"), rtol, False)
    scale = max(1.0, float(np.abs(reference).max(initial=0.0)))
    max_abs = float(np.abs(value - reference).max(initial=0.0))
    return TensorDiff(name, max_abs, max_abs / scale, rtol, max_abs <= rtol * scale)


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [len(a), len(b)] of x1,y1,x2,y2 boxes (no +1), computed in float64."""
    a = a.astype(np.float64)[:, None, :]
    b = b.astype(np.float64)[None, :, :]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    # Two empty boxes (zero width or height, which dense heads such as FSAF can emit) have no IoU: they
    # count as the same box (IoU 1) when their corners agree to the tensor tolerance.
    scale = np.maximum(1.0, np.maximum(np.abs(a).max(-1), np.abs(b).max(-1)))
    same = np.abs(a - b).max(-1) <= TENSOR_RTOL * scale
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, np.where(same, 1.0, 0.0))
    return iou


@dataclass
class MatchResult:
    matched: int
    unmatched_engine: int
    unmatched_reference: int
    worst_iou: float  # lowest IoU among matched pairs (1.0 if none)
    worst_score_diff: float
    iou_threshold: float = MATCH_IOU
    score_tolerance: float = MATCH_SCORE_TOL
    examples: list[dict] = field(default_factory=list)  # a few unmatched detections, for the report
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (engine index, reference index) matched
    # Instance masks: lowest fraction of image pixels on which a matched pair's masks agree (None: no masks).
    worst_mask_agreement: float | None = None
    mask_agreement_threshold: float = MASK_AGREEMENT
    # Pairs of an engine-only and a reference-only detection whose scores differ by < swap_tolerance (any
    # label or box): near-tied scores ranked differently at a cut. Not counted in the unmatched figures.
    swaps: int = 0
    swap_tolerance: float = MATCH_SWAP_TOL

    @property
    def ok(self) -> bool:
        masks_ok = self.worst_mask_agreement is None or self.worst_mask_agreement > self.mask_agreement_threshold
        return self.unmatched_engine == 0 and self.unmatched_reference == 0 and masks_ok

    def to_dict(self) -> dict:
        return {**{k: v for k, v in self.__dict__.items() if k != "pairs"}, "ok": self.ok}


def match_detections(
    engine: Detections, reference: Detections, iou_threshold: float = MATCH_IOU, score_tolerance: float = MATCH_SCORE_TOL
) -> MatchResult:
    """Match each reference detection to one engine detection (same label, IoU > thr, |ds| < tol).

    Greedy in reference order, choosing the closest score among the candidates; order differences
    between near-equal scores therefore do not count as mismatches. What stays unmatched on both sides then
    pairs up, closest scores first, as swaps where the scores differ by < MATCH_SWAP_TOL (1e-5): the fixtures'
    rule for near-tied scores, which may fall on either side of the max-detections cut or of an NMS decision.
    """
    used = np.zeros(len(engine), dtype=bool)
    matched = 0
    worst_iou, worst_ds = 1.0, 0.0
    unmatched_ref: list[int] = []
    pairs: list[tuple[int, int]] = []
    for label in np.union1d(np.unique(engine.labels), np.unique(reference.labels)):
        e_idx = np.flatnonzero(engine.labels == label)
        r_idx = np.flatnonzero(reference.labels == label)
        if e_idx.size == 0 or r_idx.size == 0:
            unmatched_ref += r_idx.tolist()
            continue
        iou = pairwise_iou(reference.boxes[r_idx], engine.boxes[e_idx])
        dscore = np.abs(reference.scores[r_idx, None].astype(np.float64) - engine.scores[None, e_idx])
        ok = (iou > iou_threshold) & (dscore < score_tolerance)
        for row, r in enumerate(r_idx):
            candidates = np.flatnonzero(ok[row] & ~used[e_idx])
            if candidates.size == 0:
                unmatched_ref.append(int(r))
                continue
            best = candidates[np.argmin(dscore[row, candidates])]
            used[e_idx[best]] = True
            pairs.append((int(e_idx[best]), int(r)))
            matched += 1
            worst_iou = min(worst_iou, float(iou[row, best]))
            worst_ds = max(worst_ds, float(dscore[row, best]))
    unmatched_eng = np.flatnonzero(~used)
    swapped_ref, swapped_eng = _near_tie_swaps(engine.scores[unmatched_eng], reference.scores[unmatched_ref])
    unmatched_ref = [r for k, r in enumerate(unmatched_ref) if k not in swapped_ref]
    unmatched_eng = np.asarray([e for k, e in enumerate(unmatched_eng) if k not in swapped_eng], dtype=np.int64)
    examples = [
        {"side": "reference", "label": int(reference.labels[i]), "score": float(reference.scores[i]),
         "box": reference.boxes[i].tolist()} for i in unmatched_ref[:3]
    ] + [
        {"side": "engine", "label": int(engine.labels[i]), "score": float(engine.scores[i]), "box": engine.boxes[i].tolist()}
        for i in unmatched_eng[:3]
    ]
    return MatchResult(matched, len(unmatched_eng), len(unmatched_ref), worst_iou, worst_ds,
                       iou_threshold, score_tolerance, examples, pairs, _worst_mask_agreement(engine, reference, pairs),
                       swaps=len(swapped_ref))


def _near_tie_swaps(engine_scores: np.ndarray, reference_scores: np.ndarray) -> tuple[set[int], set[int]]:
    """Positions (reference side, engine side) of leftover detections paired one to one, closest scores first,
    where the scores differ by < MATCH_SWAP_TOL."""
    if not len(engine_scores) or not len(reference_scores):
        return set(), set()
    gap = np.abs(np.asarray(reference_scores, np.float64)[:, None] - np.asarray(engine_scores, np.float64)[None, :])
    swapped_ref: set[int] = set()
    swapped_eng: set[int] = set()
    for flat in np.argsort(gap, axis=None, kind="stable"):
        r, e = divmod(int(flat), gap.shape[1])
        if gap[r, e] >= MATCH_SWAP_TOL:
            break
        if r not in swapped_ref and e not in swapped_eng:
            swapped_ref.add(r)
            swapped_eng.add(e)
    return swapped_ref, swapped_eng


def _worst_mask_agreement(engine: Detections, reference: Detections, pairs) -> float | None:
    if engine.masks is None or reference.masks is None:
        return None
    from pycocotools import mask as mask_util

    worst = 1.0
    for e, r in pairs:
        a, b = mask_util.decode(_rle(engine.masks[e])), mask_util.decode(_rle(reference.masks[r]))
        worst = min(worst, float((a == b).mean()))
    return worst


def _rle(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": rle["size"], "counts": counts.encode() if isinstance(counts, str) else counts}


LABEL_TIE_MARGIN = 1e-5  # label maps may differ only where the reference's top two logits are this close
# When the reference's margins are unknown (a label-map graph), differing pixels may be at most this fraction.
LABEL_UNKNOWN_MARGIN_FRACTION = 1e-4


@dataclass
class LabelMatch:
    """Label maps of engine and reference, pooled over images.

    ``near_ties``: differing pixels where the reference's top-1 minus top-2 logit is < ``tie_margin`` (either
    label is right there); None when the reference gave no margins. ``tie_margin`` is at least LABEL_TIE_MARGIN;
    compare_engines widens it to twice the largest logit difference it measured.
    """

    pixels: int = 0
    differing: int = 0
    near_ties: int | None = 0
    shape_mismatches: int = 0
    tie_margin: float = LABEL_TIE_MARGIN

    @property
    def ok(self) -> bool:
        if self.shape_mismatches:
            return False
        if self.near_ties is None:
            return self.differing <= LABEL_UNKNOWN_MARGIN_FRACTION * self.pixels
        return self.differing == self.near_ties

    def add(self, engine: np.ndarray, reference: np.ndarray, margin: np.ndarray | None) -> None:
        if engine.shape != reference.shape:
            self.shape_mismatches += 1
            return
        differs = engine != reference
        self.pixels += int(differs.size)
        self.differing += int(differs.sum())
        if margin is None or self.near_ties is None:
            self.near_ties = None
        else:
            self.near_ties += int((differs & (margin < self.tie_margin)).sum())

    def describe(self) -> str:
        if self.shape_mismatches:
            return f"Label maps: {self.shape_mismatches} image(s) with different label-map shapes."
        ties = ("margins unknown: allowed up to "
                f"{LABEL_UNKNOWN_MARGIN_FRACTION:g} of the pixels" if self.near_ties is None else
                f"{self.near_ties} of them where the reference's top two logits are within {self.tie_margin:.3g}")
        return f"Label maps: {self.differing} of {self.pixels} pixels differ ({ties})."

    def to_dict(self) -> dict:
        return {**self.__dict__, "ok": self.ok}
