"""Non-finite engine outputs (NaN, +inf, -inf): found per image and output, never passed on silently.

An fp16 engine overflows past 65504, a broken kernel or a corrupt dump holds NaN; what the host would do
with such values is wrong without a word (argmax over NaN logits picks a class, NaN boxes never match, an
inf box crashes the evaluation after all the work). So every place outputs enter the host (engine runs and
dumps through ``runner.run_dataset``: eval, predict, the accuracy guard; and ``verify.compare_engines``)
checks them, and the caller stops naming the image and the output, or skips and counts the image.

What is checked, per image (the rows of a batch's padding are dropped first):
- every value of every floating-point output (integer outputs cannot be non-finite), except the padding
  rows of the fixed-size detection contract: where the graph has ``num_dets``, rows ``num_dets`` and beyond
  of the per-detection outputs (``spec.ranked_outputs``: boxes, scores, labels, masks / dets) are padding the
  host never reads, so they are not checked;
- the post-processed detections' boxes and scores: finite offsets can still decode to infinite boxes
  (RefineDet's ``exp`` of a large size delta). A box that decodes to inf but is dropped by the score
  threshold is not a detection and is not counted.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deployzoo.errors import DeployzooError
from deployzoo.structures import Detections

POSTPROCESSED_BOXES = "post-processed boxes"
POSTPROCESSED_SCORES = "post-processed scores"


@dataclass(frozen=True)
class NonFinite:
    """The non-finite values of one output of one image."""

    output: str
    nan: int
    posinf: int
    neginf: int
    size: int  # values checked

    @property
    def total(self) -> int:
        return self.nan + self.posinf + self.neginf

    def describe(self) -> str:
        kinds = [f"{n} {k}" for n, k in ((self.nan, "NaN"), (self.posinf, "+inf"), (self.neginf, "-inf")) if n]
        return f"'{self.output}' holds {self.total} non-finite of {self.size} values ({', '.join(kinds)})"

    def to_dict(self) -> dict[str, int]:
        return {"nan": self.nan, "posinf": self.posinf, "neginf": self.neginf, "checked": self.size}


def count(name: str, values: np.ndarray) -> NonFinite | None:
    """The non-finite values of ``values`` (None when all are finite, or the dtype cannot hold any)."""
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.floating):
        return None
    finite = np.isfinite(values)
    if finite.all():
        return None
    bad = values[~finite]
    nan = int(np.isnan(bad).sum())
    posinf = int((bad > 0).sum())
    return NonFinite(name, nan, posinf, int(bad.size) - nan - posinf, int(values.size))


def check_outputs(outputs: Mapping[str, np.ndarray], per_detection: Sequence[str] = ()) -> list[NonFinite]:
    """Non-finite values in the graph outputs of ONE image (no batch dim), output by output.

    ``per_detection``: outputs whose rows past ``outputs["num_dets"]`` are padding (not checked).
    """
    real = None
    if "num_dets" in outputs:
        real = max(0, int(np.asarray(outputs["num_dets"]).reshape(-1)[0]))
    found = []
    for name, value in outputs.items():
        if real is not None and name in per_detection:
            value = np.asarray(value)[:real]
        bad = count(name, value)
        if bad is not None:
            found.append(bad)
    return found


def check_result(result: Any) -> list[NonFinite]:
    """Non-finite boxes or scores in a post-processed result (label maps are integers: nothing to check)."""
    if not isinstance(result, Detections):
        return []
    found = [count(POSTPROCESSED_BOXES, result.boxes), count(POSTPROCESSED_SCORES, result.scores)]
    return [f for f in found if f is not None]


def describe(found: Sequence[NonFinite]) -> str:
    """One line for one image: which outputs, how many values, which kinds."""
    text = "; ".join(f.describe() for f in found)
    if all(f.output in (POSTPROCESSED_BOXES, POSTPROCESSED_SCORES) for f in found):
        text += " (the engine's outputs are finite; they overflow when decoded to boxes, e.g. a huge size offset)"
    return text


class NonFiniteOutputError(DeployzooError):
    """An engine (or dump) gave NaN or infinite values for an image."""

    def __init__(self, image_id: str, path: str, found: Sequence[NonFinite], engine: str = "engine",
                 resumable: bool = False):
        self.image_id = image_id
        self.path = path
        self.found = list(found)
        self.summary = f"{engine} output is not finite for image {image_id} ({path}): {describe(found)}"
        super().__init__(
            f"{self.summary}. An fp16 engine overflows past 65504, a broken engine or dump gives NaN: results "
            "computed from such values would be wrong without a word. "
            + ("Finished batches are kept (--resume); " if resumable else "")
            + "--skip-bad skips such images and counts them"
        )


def skipped_record(image_id: str, path: str, found: Sequence[NonFinite]) -> dict[str, Any]:
    """The entry of an image skipped for non-finite outputs, as ``run_dataset`` lists skipped images."""
    return {"image_id": image_id, "path": path, "problem": f"non-finite engine output: {describe(found)}",
            "non_finite": {f.output: f.to_dict() for f in found}}


def summarize(skipped: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """metrics.json's ``non_finite_outputs``: images skipped for non-finite outputs, and per output how many
    of those images and values (always present: zero images means every output was checked and finite)."""
    images, by_output = [], {}
    for entry in skipped:
        if "non_finite" not in entry:
            continue
        images.append(entry["image_id"])
        for name, counts in entry["non_finite"].items():
            row = by_output.setdefault(name, {"images": 0, "nan": 0, "posinf": 0, "neginf": 0})
            row["images"] += 1
            for kind in ("nan", "posinf", "neginf"):
                row[kind] += int(counts[kind])
    return {"images": len(images), "image_ids": images, "by_output": by_output,
            "rule": "every floating-point output value of each image except the padding rows past num_dets, and "
                    "the post-processed boxes and scores"}


def summary_line(summary: Mapping[str, Any]) -> str:
    """'2 images: odm_loc on 2 (48 values), ...' for messages."""
    parts = [f"'{name}' on {row['images']} ({row['nan'] + row['posinf'] + row['neginf']} values)"
             for name, row in summary["by_output"].items()]
    return f"{summary['images']} image{'s' if summary['images'] != 1 else ''} ({', '.join(parts)})"
