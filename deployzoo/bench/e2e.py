"""End-to-end benchmark: the whole chain per image on real files, several engines interleaved, each against a
yardstick engine, with a check that every engine gives the yardstick's answers.

One timed pass of an engine over the images runs, for each image at batch 1: read and decode the file, the
model's own preprocessing and graph feeds (``decode+preprocess``), the engine's ``infer`` call with its
outputs back in host memory (``inference``), and the host post-processing (RefineDet decode + NMS, mask
pasting at the original size, label-map resizing; ``post-process``). Nothing is cached between passes.

Interleaving: after the warm-up passes, each repeat runs one pass of every engine, the engines' order
rotating from repeat to repeat, so slow drifts of the machine (other load, clocks, heat) spread over all
engines instead of favouring the ones measured first. An engine's figure is the median over its repeats of
each image's time, averaged over the images (with one image: that image's median).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from deployzoo.compare import match_detections
from deployzoo.data.loader import BadImage, ImageItem, prepare
from deployzoo.errors import BadInputError
from deployzoo.structures import Detections, LabelMap

BASIS = ("end to end per image at batch 1: file read + decode + preprocessing, the engine's infer call (outputs "
         "back in host memory), host post-processing (incl. mask pasting / label-map resizing); median over "
         "interleaved repeats")
YARDSTICK = ("pytorch", "fp32")
YARDSTICK_NOTE = (
    "The yardstick is deployzoo's eager PyTorch backend at fp32: the model run as plain PyTorch modules, which "
    "reproduces the original frameworks' outputs (see the model notes) and, for Cascade Mask R-CNN, ran within 1% "
    "of detectron2's own DefaultPredictor time end to end (issue 15's side-by-side measurement): for that model a "
    "ratio against it stands for one against the original framework itself. For the other models its speed "
    "relative to their framework's own code was not measured here."
)
STAGES = ("prepare", "infer", "postprocess")
STAGE_TITLES = {"prepare": "decode+preprocess", "infer": "inference", "postprocess": "post-process"}
# Detections agree when matched one to one: same label, IoU and score within these (compare.py's rule at fp32;
# lower precisions move scores in the third decimal, so they are matched with a rule stated in the report).
MATCH_RULES = {"fp32": (0.999, 1e-4), "low": (0.9, 0.02)}


@dataclass
class EngineRun:
    """One engine of the comparison: its timings per image and repeat, and its agreement with the yardstick."""

    label: str  # "onnxruntime fp32"
    backend: str
    precision: str
    engine: Any = None  # pipeline.Engine; None when it could not be opened
    status: str = "ok"  # ok, unsupported, failed
    error: str | None = None
    describe: dict[str, Any] = field(default_factory=dict)
    samples: list[list[dict[str, float]]] = field(default_factory=list)  # [repeat][image] {stage: seconds, total}
    results: list[Any] = field(default_factory=list)  # per image, from its last warm-up pass (or first timed)
    agreement: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def per_image_median(self, key: str = "total") -> list[float]:
        """Each image's median over the repeats."""
        return [statistics.median(rep[i][key] for rep in self.samples) for i in range(len(self.samples[0]))]

    def seconds_per_image(self, key: str = "total") -> float:
        return float(np.mean(self.per_image_median(key)))

    def repeat_means(self) -> list[float]:
        """Mean s/image of each repeat's pass: its spread shows how steady the machine was."""
        return [float(np.mean([s["total"] for s in rep])) for rep in self.samples]


@dataclass
class E2EResult:
    model: str
    images: list[str]
    image_note: str
    repeats: int
    warmup: int
    yardstick: str
    runs: list[EngineRun]
    environment: dict[str, Any] = field(default_factory=dict)
    threads: int = 0

    def yardstick_run(self) -> EngineRun | None:
        return next((r for r in self.runs if r.label == self.yardstick and r.ok), None)

    def rows(self) -> list[dict[str, Any]]:
        base = self.yardstick_run()
        base_s = base.seconds_per_image() if base is not None and base.samples else None
        rows = []
        for run in self.runs:
            row: dict[str, Any] = {"engine": run.label, "backend": run.backend, "precision": run.precision,
                                   "status": run.status, "error": run.error}
            if run.ok and run.samples:
                s = run.seconds_per_image()
                spread = run.repeat_means()
                row |= {"s_per_image": s, "vs_yardstick": base_s / s if base_s else None,
                        "time_ratio": s / base_s if base_s else None,
                        "repeat_min_s": min(spread), "repeat_max_s": max(spread),
                        **{f"{k}_s": run.seconds_per_image(k) for k in STAGES},
                        "agreement": run.agreement, "engine_description": run.describe}
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "mode": "end to end", "basis": BASIS, "yardstick": self.yardstick,
                "yardstick_note": YARDSTICK_NOTE, "images": self.images, "image_note": self.image_note,
                "repeats": self.repeats, "warmup_passes": self.warmup, "threads": self.threads or "backend default",
                "environment": self.environment, "rows": self.rows(),
                "samples": {r.label: r.samples for r in self.runs if r.ok}}

    def table(self) -> str:
        lines = ["| engine | median s/image | vs yardstick | decode+preprocess s | inference s | post-process s "
                 "| repeats' spread s | agrees with yardstick |",
                 "|---|---:|---:|---:|---:|---:|---:|---|"]
        for row in self.rows():
            if row["status"] != "ok" or "s_per_image" not in row:
                lines.append(f"| {row['engine']} | {row['status']} | - | - | - | - | - | {row['error'] or ''} |")
                continue
            ratio = row["vs_yardstick"]
            if row["engine"] == self.yardstick:
                versus = "1.00x (yardstick)"
            elif ratio is None:
                versus = "-"
            else:
                versus = f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"
            lines.append(
                f"| {row['engine']} | {row['s_per_image']:.3f} | {versus} | {row['prepare_s']:.3f} | {row['infer_s']:.3f} "
                f"| {row['postprocess_s']:.3f} | {row['repeat_min_s']:.3f}-{row['repeat_max_s']:.3f} "
                f"| {_agreement_text(row['agreement'])} |")
        return "\n".join(lines)

    def markdown(self) -> str:
        env = self.environment
        return "\n".join([
            f"# End-to-end benchmark: {self.model}",
            "",
            f"Date {env.get('date')}; machine: {env.get('cpu_model')}, {env.get('logical_cores')} logical cores; "
            f"threads: {self.threads or 'backend default'}; versions {env.get('versions')}.",
            "",
            f"Basis: {BASIS}. {self.warmup} warm-up pass(es) per engine, then {self.repeats} repeats; in each repeat "
            f"every engine makes one pass over the {len(self.images)} image(s), the order of the engines rotating.",
            "",
            f"Images: {self.image_note}",
            "",
            self.table(),
            "",
            YARDSTICK_NOTE,
            "",
            "Agreement: each engine's detections matched one to one with the yardstick's on the same images "
            f"(same label; at fp32 IoU > {MATCH_RULES['fp32'][0]} and |score difference| < {MATCH_RULES['fp32'][1]:g}, "
            f"the compare rule; below fp32 IoU > {MATCH_RULES['low'][0]} and |score difference| < "
            f"{MATCH_RULES['low'][1]:g}); segmentation: the share of identical label-map pixels. Lower precisions "
            "are not run through the accuracy guard here: use `--precision` with `deployzoo eval` for the metric.",
            "",
        ])


def _agreement_text(agreement: dict[str, Any] | None) -> str:
    if not agreement:
        return "-"
    if "pixels_equal" in agreement:
        return f"{100 * agreement['pixels_equal']:.3f}% of pixels"
    text = f"{agreement['matched']}/{agreement['reference']} matched"
    if agreement["engine_only"]:
        text += f", {agreement['engine_only']} engine-only"
    return text


def agreement_with(results: Sequence[Any], reference: Sequence[Any], precision: str) -> dict[str, Any]:
    """How far ``results`` give the same answers as ``reference`` (one result per image, same order)."""
    if reference and isinstance(reference[0], LabelMap):
        equal = sum(int(np.count_nonzero(a.labels == b.labels)) for a, b in zip(results, reference))
        total = sum(b.labels.size for b in reference)
        return {"pixels_equal": equal / total if total else 1.0, "pixels": total}
    iou, score = MATCH_RULES["fp32" if precision == "fp32" else "low"]
    matched = engine_only = total = 0
    for e, r in zip(results, reference):
        m = match_detections(_without_masks(e), _without_masks(r), iou_threshold=iou, score_tolerance=score)
        matched += m.matched
        engine_only += m.unmatched_engine
        total += len(r)
    return {"matched": matched, "reference": total, "engine_only": engine_only, "iou_threshold": iou,
            "score_tolerance": score}


def _without_masks(d: Detections) -> Detections:
    # Matching compares boxes, labels and scores; masks would be decoded and compared per pair (slow with
    # hundreds of detections) and follow from the boxes' agreement here.
    return Detections(d.boxes, d.scores, d.labels, None)


def run_passes(spec, runs: Sequence[EngineRun], items: Sequence[ImageItem], repeats: int = 3, warmup: int = 1,
               yardstick: str = "pytorch fp32", progress: bool = True) -> None:
    """Time every ok engine of ``runs`` over ``items`` (warm-up passes, then interleaved repeats), in place;
    then fill each engine's agreement with the ``yardstick`` run."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    postprocess = spec.make_postprocess()
    for run in runs:
        for _ in range(warmup if run.ok else 0):
            _guarded(run, lambda: setattr(run, "results", [res for _, res in _one_pass(spec, run.engine, items, postprocess)]))
    active = [r for r in runs if r.ok]
    for rep in range(repeats):
        shift = rep % max(1, len(active))
        for run in active[shift:] + active[:shift]:
            if not run.ok:
                continue
            if progress:
                print(f"  repeat {rep + 1}/{repeats}: {run.label}", flush=True)

            def timed_pass(run=run):
                passed = _one_pass(spec, run.engine, items, postprocess)
                run.samples.append([times for times, _ in passed])
                if not run.results:
                    run.results = [res for _, res in passed]

            _guarded(run, timed_pass)
    active = [r for r in runs if r.ok]
    base = next((r for r in active if r.label == yardstick), None)
    for run in active:
        if base is not None:
            run.agreement = agreement_with(run.results, base.results, run.precision)


def _guarded(run: EngineRun, step) -> None:
    """Run ``step``; an engine that fails while running becomes a failed row and the others go on."""
    try:
        step()
    except Exception as exc:
        run.status, run.error, run.samples = "failed", f"{type(exc).__name__}: {exc}", []


def _one_pass(spec, engine, items: Sequence[ImageItem], postprocess) -> list[tuple[dict[str, float], Any]]:
    out = []
    for item in items:
        t0 = time.perf_counter()
        prepared = prepare(item, spec.preprocess)
        if isinstance(prepared, BadImage):
            raise BadInputError(prepared.path, prepared.problem)
        feeds = spec.make_feeds([prepared.array], [prepared.meta], 1)
        t1 = time.perf_counter()
        outputs = engine.infer(feeds, [item.image_id])
        t2 = time.perf_counter()
        with np.errstate(over="ignore", invalid="ignore"):
            result = postprocess({k: v[0] for k, v in outputs.items()}, prepared.meta)
        t3 = time.perf_counter()
        out.append(({"prepare": t1 - t0, "infer": t2 - t1, "postprocess": t3 - t2, "total": t3 - t0}, result))
    return out


def open_runs(spec, backends: Sequence[str], precisions: Sequence[str], loaded, work_dir: str | Path,
              threads: int = 0, device: str = "cpu", items: Sequence[ImageItem] = ()) -> list[EngineRun]:
    """The yardstick (eager PyTorch fp32, first) and every backend x precision asked for, opened at batch 1.
    A combination the backend does not offer, or that fails to open, becomes a row with its reason; so does an
    engine of one input size (pytorch-aoti) that some of ``items`` do not fit, before it is built."""
    from deployzoo.backends import ONNX_BACKENDS
    from deployzoo.cache import cached_onnx
    from deployzoo.fixed_size import header_sizes, refuse_misfits
    from deployzoo.pipeline import open_engine
    from deployzoo.precision import check_precision

    wanted = [YARDSTICK] + [(b, p) for b in backends for p in precisions if (b, p) != YARDSTICK]
    sizes = header_sizes([item.path for item in items])  # the command checked these files' headers already
    onnx_path = None
    runs = []
    for backend, precision in wanted:
        run = EngineRun(f"{backend} {precision}", backend, precision)
        runs.append(run)
        try:
            check_precision(backend, precision)
            if sizes:  # an engine of one input size is not built for images it would refuse
                refuse_misfits(spec, backend, sizes)
            if backend in ONNX_BACKENDS and onnx_path is None:
                onnx_path = cached_onnx(loaded, batch_size=1).path
            run.engine = open_engine(spec, backend, 1, onnx_path=onnx_path if backend in ONNX_BACKENDS else None,
                                     work_dir=work_dir, threads=threads, loaded=loaded, precision=precision,
                                     device="cpu" if (backend, precision) == YARDSTICK else device)
            run.describe = run.engine.describe()
        except Exception as exc:  # one engine that cannot run must not lose the others
            from deployzoo.precision import UnsupportedPrecision

            run.status = "unsupported" if isinstance(exc, UnsupportedPrecision) else "failed"
            run.error = f"{type(exc).__name__}: {exc}" if run.status == "failed" else str(exc)
    return runs


def bench_e2e(spec, loaded, items: Sequence[ImageItem], backends: Sequence[str], precisions: Sequence[str],
              work_dir: str | Path, repeats: int = 3, warmup: int = 1, threads: int = 0, device: str = "cpu",
              image_note: str = "", progress: bool = True) -> E2EResult:
    """Open the engines, run the interleaved passes, close the engines; the result has the table."""
    from deployzoo.bench.report import environment

    runs = open_runs(spec, backends, precisions, loaded, work_dir, threads=threads, device=device, items=items)
    yardstick = " ".join(YARDSTICK)
    try:
        run_passes(spec, runs, items, repeats=repeats, warmup=warmup, yardstick=yardstick, progress=progress)
    finally:
        for run in runs:
            if run.engine is not None:
                try:
                    run.engine.backend.close()
                except Exception:
                    pass  # a close failure says nothing about the measurement
    return E2EResult(spec.name, [i.path for i in items], image_note, repeats, warmup, yardstick, runs,
                     environment=environment(), threads=threads)
