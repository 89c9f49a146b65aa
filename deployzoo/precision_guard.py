"""The accuracy guard: a reduced-precision engine must score like fp32 on the task's own metric.

Both engines (the same backend, fp32 and the candidate precision) are evaluated on the same first N images
of the dataset, through the same pre- and post-processing; the guard holds when the candidate's metric is at
most ``tolerance`` points below fp32's. ``auto`` (deployzoo.precision_auto) keeps the fastest precision whose
guard holds.

The guard also reports the candidate's agreement with fp32: the same metric with fp32's own predictions as
the ground truth (100 = identical). It does not need labels, so it still says something where the labelled
metric cannot (stand-in weights score near 0 on any labels); the verdict stays with the labelled metric.

An engine that gives NaN or infinite outputs on an image (fp16 overflows past 65504) fails the guard, with
the image and the output named (``non_finite``); nothing is scored then.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployzoo.nonfinite import NonFiniteOutputError
from deployzoo.pipeline import Engine, EvalOutcome, evaluate_dataset
from deployzoo.registry import ModelSpec

DEFAULT_TOLERANCE = 0.5  # metric points (AP, mAP, mIoU are in percent)
DEFAULT_IMAGES = 8


@dataclass(frozen=True)
class GuardResult:
    backend: str
    precision: str  # the candidate
    metric: str
    fp32: float | None  # percent; None when not scored (non-finite outputs)
    candidate: float | None  # percent; None when not scored (non-finite outputs)
    tolerance: float  # allowed drop, in points
    images: int
    data: str
    agreement: float | None = None  # candidate scored against fp32's predictions, percent; None: nothing to score
    # An engine gave non-finite outputs: {"precision", "image_id", "path", "outputs": {name: counts}, "problem"}.
    non_finite: dict[str, Any] | None = None

    @property
    def delta(self) -> float | None:
        return None if self.candidate is None or self.fp32 is None else self.candidate - self.fp32

    @property
    def holds(self) -> bool:
        return self.non_finite is None and self.delta is not None and self.delta >= -self.tolerance

    def describe(self) -> str:
        verdict = "holds" if self.holds else "FAILS"
        if self.non_finite is not None:
            return (f"accuracy guard FAILS: {self.backend} {self.non_finite['precision']} gives non-finite outputs "
                    f"(on {self.data}): {self.non_finite['problem']}; not scored")
        return (f"accuracy guard {verdict}: {self.backend} {self.precision} {self.metric} {self.candidate:.2f} vs fp32 "
                f"{self.fp32:.2f} (delta {round(self.delta, 2) + 0.0:+.2f}, allowed drop {self.tolerance:g}) on {self.images} images "
                f"of {self.data}; {self.describe_agreement()}")

    def describe_agreement(self) -> str:
        if self.agreement is None:
            return ("agreement with fp32: nothing to score (no fp32 prediction on these images can serve as "
                    "ground truth: none scores >= 0.05 with a non-empty box)")
        return f"agreement with fp32 (its predictions as ground truth): {self.agreement:.2f} (100 = identical)"

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "metric": self.metric, "fp32": self.fp32,
                "candidate": self.candidate, "delta": self.delta, "tolerance": self.tolerance, "holds": self.holds,
                "images": self.images, "data": self.data, "agreement": self.agreement, "non_finite": self.non_finite}


def evaluate_sample(spec: ModelSpec, engine: Engine, data_root: str | Path, work_dir: str | Path,
                    num_images: int) -> EvalOutcome:
    """``engine`` evaluated on the first ``num_images`` of the split (headline in percent).

    Results are kept in ``work_dir`` under the engine's backend and precision, so a rerun resumes.
    """
    backend = engine.backend
    fingerprint = {"model": spec.name, "backend": backend.name, "precision": backend.precision,
                   "weights": engine.weights, "purpose": "accuracy guard"}
    out = Path(work_dir) / f"{backend.name}-{backend.precision}"
    return evaluate_dataset(spec, data_root, engine.infer, backend.batch_size, out, fingerprint, resume=True,
                            workers=0, limit=num_images, progress=False)


def run_guard(spec: ModelSpec, open_engine: Callable[[str], Engine], precision: str, data_root: str | Path,
              work_dir: str | Path, num_images: int = DEFAULT_IMAGES,
              tolerance: float = DEFAULT_TOLERANCE) -> GuardResult:
    """Evaluate ``open_engine("fp32")`` and ``open_engine(precision)`` on the same images and compare.

    Non-finite outputs of either engine stop its evaluation at that image and fail the guard, naming them."""
    outcomes = {}
    task = spec.evaluation
    for p in ("fp32", precision):
        engine = open_engine(p)
        try:
            name = engine.backend.name
            outcomes[p] = evaluate_sample(spec, engine, data_root, work_dir, num_images)
        except NonFiniteOutputError as exc:
            found = {f.output: f.to_dict() for f in exc.found}
            non_finite = {"precision": p, "image_id": exc.image_id, "path": exc.path, "outputs": found,
                          "problem": exc.summary}
            fp32 = outcomes["fp32"].headline if "fp32" in outcomes else None
            return GuardResult(name, precision, task.metric_name, fp32, None, tolerance, 0, str(data_root),
                               non_finite=non_finite)
        finally:
            engine.backend.close()
    reference, candidate = outcomes["fp32"], outcomes[precision]
    scored = {k: a for k, a in reference.annotations.items() if k in candidate.run.results}
    agreement = task.agreement(candidate.run.results, reference.run.results, scored) if scored else None
    return GuardResult(name, precision, task.metric_name, reference.headline, candidate.headline, tolerance,
                       candidate.summary["images_evaluated"], str(data_root), agreement)


def resolve_precision(requested: str, backend: str, guard: Callable[[str], GuardResult],
                      say: Callable[[str], None] = print) -> tuple[str, GuardResult | None]:
    """The precision to run when asked for by name: kept as it is (no flipping behind the user's back); below
    fp32 the guard runs and is reported. ``auto`` is measured: deployzoo.precision_auto.choose_precision.
    """
    if requested == "fp32":
        return "fp32", None
    if requested == "auto":
        raise ValueError("precision auto is measured by deployzoo.precision_auto.choose_precision")
    result = guard(requested)
    say(result.describe())
    return requested, result
