"""The accuracy guard: a reduced-precision engine must score like fp32 on the task's own metric.

Both engines (the same backend, fp32 and the candidate precision) are evaluated on the same first N images
of the dataset, through the same pre- and post-processing; the guard holds when the candidate's metric is at
most ``tolerance`` points below fp32's. ``auto`` precision keeps fp16 only where the guard holds.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployzoo.pipeline import Engine, evaluate_dataset
from deployzoo.precision import supports
from deployzoo.registry import ModelSpec

DEFAULT_TOLERANCE = 0.5  # metric points (AP, mAP, mIoU are in percent)
DEFAULT_IMAGES = 8


@dataclass(frozen=True)
class GuardResult:
    backend: str
    precision: str  # the candidate
    metric: str
    fp32: float  # percent
    candidate: float  # percent
    tolerance: float  # allowed drop, in points
    images: int
    data: str

    @property
    def delta(self) -> float:
        return self.candidate - self.fp32

    @property
    def holds(self) -> bool:
        return self.delta >= -self.tolerance

    def describe(self) -> str:
        verdict = "holds" if self.holds else "FAILS"
        return (f"accuracy guard {verdict}: {self.backend} {self.precision} {self.metric} {self.candidate:.2f} vs fp32 "
                f"{self.fp32:.2f} (delta {self.delta:+.2f}, allowed drop {self.tolerance:g}) on {self.images} images "
                f"of {self.data}")

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "metric": self.metric, "fp32": self.fp32,
                "candidate": self.candidate, "delta": self.delta, "tolerance": self.tolerance, "holds": self.holds,
                "images": self.images, "data": self.data}


def evaluate_sample(spec: ModelSpec, engine: Engine, data_root: str | Path, work_dir: str | Path,
                    num_images: int) -> tuple[float, int]:
    """(headline metric in percent, images evaluated) of ``engine`` on the first ``num_images`` of the split.

    Results are kept in ``work_dir`` under the engine's backend and precision, so a rerun resumes.
    """
    backend = engine.backend
    fingerprint = {"model": spec.name, "backend": backend.name, "precision": backend.precision,
                   "weights": engine.weights, "purpose": "accuracy guard"}
    out = Path(work_dir) / f"{backend.name}-{backend.precision}"
    outcome = evaluate_dataset(spec, data_root, engine.infer, backend.batch_size, out, fingerprint, resume=True,
                               workers=0, limit=num_images, progress=False)
    return outcome.headline, outcome.summary["images_evaluated"]


def run_guard(spec: ModelSpec, open_engine: Callable[[str], Engine], precision: str, data_root: str | Path,
              work_dir: str | Path, num_images: int = DEFAULT_IMAGES, tolerance: float = DEFAULT_TOLERANCE,
              fp32_metric: float | None = None) -> GuardResult:
    """Evaluate ``open_engine("fp32")`` and ``open_engine(precision)`` on the same images and compare.

    ``fp32_metric``: the fp32 figure when already known (a matrix evaluates fp32 once per backend).
    """
    images = num_images
    if fp32_metric is None:
        engine = open_engine("fp32")
        try:
            fp32_metric, images = evaluate_sample(spec, engine, data_root, work_dir, num_images)
        finally:
            engine.backend.close()
    engine = open_engine(precision)
    try:
        name = engine.backend.name
        candidate, images = evaluate_sample(spec, engine, data_root, work_dir, num_images)
    finally:
        engine.backend.close()
    return GuardResult(name, precision, spec.evaluation.metric_name, fp32_metric, candidate, tolerance, images,
                       str(data_root))


def resolve_precision(requested: str, backend: str, guard: Callable[[str], GuardResult],
                      say: Callable[[str], None] = print) -> tuple[str, GuardResult | None]:
    """The precision to run: ``requested`` as it is, or for ``auto`` fp16 where the backend offers it and
    ``guard("fp16")`` holds, else fp32. Reduced precisions asked for by name are guarded too, and reported.
    Says what it chose and why.
    """
    if requested == "fp32":
        return "fp32", None
    if requested != "auto":
        result = guard(requested)
        say(result.describe())
        return requested, result
    if not supports(backend, "fp16"):
        say(f"precision auto: fp32 ({backend} offers no fp16 here)")
        return "fp32", None
    result = guard("fp16")
    say(result.describe())
    chosen = "fp16" if result.holds else "fp32"
    say(f"precision auto: {chosen} for {backend}")
    return chosen, result
