"""Engine against the PyTorch model on the same preprocessed images: numbers and detections."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from deployzoo.compare import LABEL_TIE_MARGIN, LabelMatch, MatchResult, TensorDiff, match_detections, tensor_diff
from deployzoo.data.loader import BadImage, ImageItem, prepared_images
from deployzoo.engine import split_outputs
from deployzoo.errors import BadInputError
from deployzoo.nonfinite import check_outputs, check_result, describe
from deployzoo.structures import LabelMap


@dataclass
class Agreement:
    images: int
    outputs: list[TensorDiff]  # worst case over images, per output
    detections: MatchResult  # all images pooled
    engine: dict[str, Any]
    reference: dict[str, Any]
    tolerances: dict[str, str] = field(default_factory=dict)
    # Outputs whose rows are ranked by score (after NMS): near-equal scores may swap rows, which the
    # fixture rules allow, so these are reported but judged through the detection matching.
    ranked: tuple[str, ...] = ()
    labels: LabelMatch | None = None  # segmentation models: label maps compared pixel by pixel
    # Images where either side gave NaN or infinite outputs (deployzoo.nonfinite): they fail the comparison
    # and are left out of the numbers above. {"image_id", "path", "side", "outputs": {name: counts}, "problem"}
    non_finite: list[dict[str, Any]] = field(default_factory=list)
    # (image id, path, engine result, reference result) per compared image, for pictures (not in to_dict).
    results: list[tuple[str, str, Any, Any]] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        labels_ok = self.labels is None or self.labels.ok
        return (all(d.ok for d in self.outputs if d.name not in self.ranked) and self.detections.ok and labels_ok
                and not self.non_finite)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": "PASS" if self.ok else "FAIL",
            "images": self.images,
            "outputs": [d.to_dict() for d in self.outputs],
            "detections": self.detections.to_dict(),
            **({} if self.labels is None else {"label_maps": self.labels.to_dict()}),
            "non_finite": self.non_finite,
            "engine": self.engine,
            "reference": self.reference,
            "tolerances": self.tolerances,
        }

    def table(self) -> str:
        lines = ["| output | max abs error | max rel error | tolerance (rel) | ok |", "|---|---:|---:|---:|---|"]
        for d in self.outputs:
            verdict = ("yes" if d.ok else "NO") if d.name not in self.ranked else ("yes" if d.ok else "rows swapped (see matching)")
            lines.append(f"| {d.name} | {d.max_abs:.3e} | {d.max_rel:.3e} | {d.tolerance:.0e} | {verdict} |")
        m = self.detections
        if self.non_finite:
            lines += ["", f"Non-finite outputs on {len({n['image_id'] for n in self.non_finite})} of {self.images} "
                          "images (left out of the figures here; the comparison fails):"]
            lines += [f"- {n['side']}, image {n['image_id']} ({n['path']}): {n['problem']}" for n in self.non_finite]
        if self.labels is not None:
            return "\n".join(lines + ["", self.labels.describe(),
                                       f"Verdict: **{'PASS' if self.ok else 'FAIL'}** over {self.images} images."])
        lines += [
            "",
            f"Detections: {m.matched} matched one to one, {m.unmatched_engine} engine-only, "
            f"{m.unmatched_reference} reference-only (same label, IoU > {m.iou_threshold}, "
            f"|score diff| < {m.score_tolerance:g})"
            + (f", {m.swaps} near-tie swaps (one engine-only and one reference-only detection whose scores "
               f"differ by < {m.swap_tolerance:g}: ranked either way at a cut)" if m.swaps else "")
            + f"; worst matched IoU {m.worst_iou:.6f}, "
            f"worst score diff {m.worst_score_diff:.2e}."
            + ("" if m.worst_mask_agreement is None else
               f" Masks: matched pairs agree on at least {100 * m.worst_mask_agreement:.3f}% of pixels "
               f"(need > {100 * m.mask_agreement_threshold:g}%)."),
            f"Verdict: **{'PASS' if self.ok else 'FAIL'}** over {self.images} images.",
        ]
        return "\n".join(lines)


def compare_engines(engine, reference, items: Sequence[ImageItem]) -> Agreement:
    """Run the same preprocessed batches through ``engine`` and ``reference`` (pipeline.Engine objects)."""
    spec = engine.spec
    postprocess = spec.make_postprocess()
    reference_postprocess = spec.make_postprocess()
    if hasattr(reference_postprocess, "keep_margin"):  # segmentation: which pixels are near-ties
        reference_postprocess.keep_margin = True
    batch_size = engine.backend.batch_size
    worst: dict[str, TensorDiff] = {}
    pooled_engine, pooled_reference = [], []
    pairs: list[tuple[str, str, Any, Any]] = []
    non_finite: list[dict[str, Any]] = []
    prepared = []
    for p in prepared_images(items, spec.preprocess, workers=0):
        if isinstance(p, BadImage):
            raise BadInputError(p.path, p.problem)
        prepared.append(p)
    for chunk in _chunks(prepared, batch_size, spec.batch_key):
        count = len(chunk)
        feeds = spec.make_feeds([p.array for p in chunk], [p.meta for p in chunk], batch_size)
        ids = [p.image_id for p in chunk]
        out_e = engine.infer(feeds, ids)
        out_r = _reference_infer(reference, feeds, ids, count)
        finite = []  # rows of this chunk where both sides' outputs and results are finite
        for k, (p, e, r) in enumerate(zip(chunk, split_outputs(out_e, count), split_outputs(out_r, count))):
            found = {"engine": check_outputs(e, spec.ranked_outputs), "reference": check_outputs(r, spec.ranked_outputs)}
            if not any(found.values()):
                with np.errstate(over="ignore", invalid="ignore"):  # overflow is found in the results
                    result_e, result_r = postprocess(e, p.meta), reference_postprocess(r, p.meta)
                found = {"engine": check_result(result_e), "reference": check_result(result_r)}
            if any(found.values()):
                non_finite += [{"image_id": p.image_id, "path": p.path, "side": side, "problem": describe(f),
                                "outputs": {x.output: x.to_dict() for x in f}} for side, f in found.items() if f]
                continue
            finite.append(k)
            pooled_engine.append(result_e)
            pooled_reference.append(result_r)
            pairs.append((p.image_id, p.path, result_e, result_r))
        for name in spec.output_names if finite else ():
            diff = tensor_diff(name, out_e[name][finite], out_r[name][finite])
            if name not in worst or diff.max_rel > worst[name].max_rel:
                worst[name] = diff
    labels = None
    if pooled_reference and isinstance(pooled_reference[0], LabelMap):
        # Logits within tolerance may still differ by up to max_abs each, so any pixel whose top two
        # reference logits are closer than twice that can flip between two correct engines (bilinear
        # resizing is a convex combination: it does not grow the difference). Never below the fixtures' 1e-5.
        largest = max((d.max_abs for d in worst.values()), default=0.0)
        labels = LabelMatch(tie_margin=max(LABEL_TIE_MARGIN, 2.0 * largest))
        for e, r in zip(pooled_engine, pooled_reference):
            labels.add(e.labels, r.labels, r.margin)
        matches = MatchResult(0, 0, 0, 1.0, 0.0)
    else:
        matches = _match_pooled(pooled_engine, pooled_reference)
    return Agreement(
        images=len(prepared),
        outputs=[worst[n] for n in spec.output_names if n in worst],
        detections=matches,
        engine=engine.describe(),
        reference=reference.describe(),
        ranked=tuple(spec.ranked_outputs),
        labels=labels,
        non_finite=non_finite,
        results=pairs,
        tolerances={
            "outputs": "max|engine - reference| <= 1e-4 * max(1, max|reference|)",
            **({"label_maps": "identical except where the reference's top two logits are within twice the largest "
                              "logit difference (at least 1e-5)"}
               if labels is not None else
               {"detections": "one-to-one: same label, IoU > 0.999, |score difference| < 1e-4; what is left unmatched "
                              "may pair up as swaps of detections whose scores differ by < 1e-5"}),
        },
    )


def _chunks(prepared: list, batch_size: int, batch_key) -> list[list]:
    """Consecutive batches of at most ``batch_size``; with ``batch_key``, one key per batch."""
    chunks: list[list] = []
    for p in prepared:
        if (not chunks or len(chunks[-1]) == batch_size
                or (batch_key is not None and batch_key(p.meta) != batch_key(chunks[-1][0].meta))):
            chunks.append([])
        chunks[-1].append(p)
    return chunks


def _reference_infer(reference, feeds: dict[str, np.ndarray], ids, count: int) -> dict[str, np.ndarray]:
    """The reference may have another batch size (PyTorch runs any): feed it the real rows of the same
    inputs (same padded canvas), in sub-batches padded with zero rows."""
    ref_batch = reference.backend.batch_size
    if ref_batch == next(iter(feeds.values())).shape[0]:
        return reference.infer(feeds, ids)
    parts = []
    for start in range(0, count, ref_batch):
        n = min(count, start + ref_batch) - start
        sub = {}
        for name, value in feeds.items():
            rows = np.zeros((ref_batch, *value.shape[1:]), dtype=value.dtype)
            rows[:n] = value[start : start + n]
            sub[name] = rows
        parts.append({k: v[:n] for k, v in reference.infer(sub, ids).items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _match_pooled(engine_dets, reference_dets) -> MatchResult:
    """Per-image matching (detections never match across images), summed over the images."""
    per_image = [match_detections(e, r) for e, r in zip(engine_dets, reference_dets)]
    return MatchResult(
        matched=sum(m.matched for m in per_image),
        unmatched_engine=sum(m.unmatched_engine for m in per_image),
        unmatched_reference=sum(m.unmatched_reference for m in per_image),
        swaps=sum(m.swaps for m in per_image),
        worst_iou=min((m.worst_iou for m in per_image), default=1.0),
        worst_score_diff=max((m.worst_score_diff for m in per_image), default=0.0),
        examples=[x for m in per_image for x in m.examples][:6],
        worst_mask_agreement=min((m.worst_mask_agreement for m in per_image if m.worst_mask_agreement is not None),
                                 default=None),
    )
