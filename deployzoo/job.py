"""The main job: export -> ONNX Runtime -> compare with PyTorch -> evaluate -> benchmark -> report."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from deployzoo.bench.e2e_ratio import (end_to_end_over_pure, leading_full_batches, no_ratio, pure_inputs_for,
                                       ratio_rounds, replay_pure)
from deployzoo.bench.pure import bench_sweep
from deployzoo.bench.report import environment, sweep_table, write_csv, write_json
from deployzoo.data.loader import ImageItem
from deployzoo.engine import load_model, make_backend
from deployzoo.cache import cached_onnx
from deployzoo.pipeline import evaluate_dataset, fingerprint_file, open_engine
from deployzoo.pictures import eval_pictures
from deployzoo.registry import get_spec
from deployzoo.run_report import plot_benchmark, protocol_reference, run_markdown
from deployzoo.runner import run_dataset
from deployzoo.tasks.protocol_choice import choose_protocol
from deployzoo.test_settings import report_fields
from deployzoo.verify import compare_engines

# Batches each round of the end-to-end/pure ratio measures (round 1 on the evaluation's first ones): enough for a
# steady rate over 3 batches, few enough that the 2 extra rounds add little to a run.
RATIO_BATCHES = 4


def _say(text: str) -> None:
    print(text, flush=True)


def run_main_job(
    model_name: str,
    out_dir: str | Path,
    checkpoint: str | Path | None = None,
    data: str | Path | None = None,
    batch_sizes: Sequence[int] = (1, 2, 4),
    eval_batch: int = 4,
    num_images: int = 12,
    protocol: str | None = None,
    bench_seconds: float = 3.0,
    bench_iters: int = 10,
    compare_images: int = 4,
    threads: int = 0,
    workers: int = 1,
    classes: str | Sequence[str] | None = None,
    annotations: str | Path | None = None,
    image_dir: str | Path | None = None,
    test_settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run every stage on one model and write ``report.md`` and ``report.json`` to ``out_dir``.

    ``classes``, ``annotations``, ``image_dir``: a fine-tuned checkpoint's class names and a COCO-format set
    outside val2017's layout (deployzoo.fine_tuned.spec_for); the synthetic set then has the model's classes.
    ``test_settings``: input_size, max_size, score_threshold, max_dets (deployzoo.test_settings)."""
    from deployzoo.fine_tuned import spec_for

    t_start = time.perf_counter()
    protocol = choose_protocol(get_spec(model_name).evaluation, protocol)  # refused before any file is read
    spec = spec_for(get_spec(model_name), checkpoint, classes, data=data, annotations=annotations, images=image_dir,
                    settings=test_settings)
    # A given dataset is checked whole before anything is written, loaded or exported: a bad file fails in seconds.
    checked = spec.evaluation.validate(data) if data is not None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    loaded = load_model(spec, checkpoint)
    if loaded.is_stand_in:
        notes.append(f"NOTE: {loaded.weights}.")
    else:
        notes.append(f"Weights: {checkpoint} ({loaded.mapping_report.format(verbose=False)})")
    if data is None:
        data = spec.evaluation.make_synthetic(out / "synthetic-data", num_images=num_images, seed=0)
        notes.append(
            f"NOTE: no dataset given: evaluated on {num_images} generated synthetic images in the "
            f"{spec.evaluation.dataset_name} layout ({data}); the accuracy is not comparable with the published figure."
        )
    for n in notes:
        _say(n)

    _say("[1/5] export to ONNX (dynamic batch)")
    exported = cached_onnx(loaded, dynamic_batch=True, say=_say)

    _say(f"[2/5] compare ONNX Runtime with PyTorch on {compare_images} images")
    engine = open_engine(spec, "onnxruntime", eval_batch, onnx_path=exported.path, threads=threads, loaded=loaded)
    reference = open_engine(spec, "pytorch", 1, loaded=loaded)
    checked = checked or spec.evaluation.validate(data)
    items = [ImageItem(i, str(checked.dataset.image_path(i))) for i in checked.ids[:compare_images]]
    agreement = compare_engines(engine, reference, items)
    _say(agreement.table())

    _say(f"[3/5] evaluate on {spec.evaluation.dataset_name} ({data}) with ONNX Runtime, batch {eval_batch}")
    fingerprint = {"model": spec.name, "backend": "onnxruntime", "weights": loaded.weights,
                   "checkpoint": fingerprint_file(checkpoint), "onnx": fingerprint_file(exported.path)}
    outcome = evaluate_dataset(spec, data, engine.infer, eval_batch, out / "eval", fingerprint, protocol=protocol,
                               resume=True, workers=workers, checked=checked, keep_inputs=True)
    # The pure side of the end-to-end/pure ratio: the same engine on the evaluation's first RATIO_BATCHES batches
    # (round 1, against the steady rate over the same batches); then more rounds of pipeline pass + replay over
    # them (the median resists the machine's drift). A long evaluation is not replayed whole.
    def pipeline_pass(images: list[ImageItem], keep_inputs: bool = False) -> Any:
        return run_dataset(images, spec.preprocess, engine.infer, spec.make_postprocess(), eval_batch,
                           spec.make_feeds, workers=workers, progress=False, batch_key=spec.batch_key,
                           per_detection=spec.ranked_outputs, keep_inputs=keep_inputs)

    _say("timing the end-to-end/pure ratio: pipeline passes alternating with the replay of their batches")
    first_run = outcome.run
    if not first_run.fed.get("batches"):  # every image resumed from an earlier run: one pass to measure on
        first_run = pipeline_pass([ImageItem(i, str(checked.dataset.image_path(i)))
                                   for i in checked.ids[: RATIO_BATCHES * eval_batch]], keep_inputs=True)
    fed = first_run.fed
    first_batches = leading_full_batches(fed.get("batches", []), eval_batch, RATIO_BATCHES)
    replay = replay_pure(engine.backend.infer, first_batches)

    def again() -> tuple[Any, dict[str, Any] | None]:
        passed = pipeline_pass(fed.get("items", [])[: sum(n for _, n in first_batches)])
        return passed.timer, replay_pure(engine.backend.infer, first_batches, rounds=1)

    ratio_first = end_to_end_over_pure(first_run.timer, [], eval_batch, "", replay)
    ratio_measured = ratio_rounds(ratio_first, again)
    engine.backend.close()
    _say(outcome.metrics.table())
    _say(outcome.run.timer.table())
    pictures = eval_pictures(spec, outcome.run.results, outcome.annotations, checked.dataset.image_path, out / "eval",
                             count=2, stand_in=loaded.is_stand_in)

    _say(f"[4/5] pure-inference benchmark, batch sizes {list(batch_sizes)}")
    # Timed on the evaluation's own first batch (same images, same batch), so the ratio compares like with like.
    pure_inputs, pure_inputs_said = pure_inputs_for(fed.get("first_full_batch"), spec.make_example_inputs)
    _say(f"inputs: {pure_inputs_said}")
    bench = bench_sweep(
        lambda b: make_backend("onnxruntime", spec, b, onnx_path=exported.path, threads=threads),
        batch_sizes, inputs_for=pure_inputs, warmup=2, min_iters=bench_iters, min_seconds=bench_seconds,
    )
    _say(sweep_table(bench))
    write_csv(out / "bench.csv", [{"batch": r.batch_size, **(r.stats.to_dict() if r.ok else {"error": r.error})}
                                  for r in bench])
    plot = plot_benchmark(bench, out / "bench.png", f"{spec.name}: ONNX Runtime fp32, pure inference "
                                                    f"({environment().get('cpu_model')})")

    _say("[5/5] report")
    e2e_ratio = ratio_measured if replay is not None else no_ratio(outcome.run.timer, eval_batch, len(first_batches))
    report = {
        "model": spec.name,
        "notes": notes,
        "weights": loaded.weights,
        "stand_in_weights": loaded.is_stand_in,
        **report_fields(loaded.spec),
        "data": str(data),
        "synthetic_data": any("synthetic" in n for n in notes),
        "num_images": num_images,
        "images_evaluated": outcome.summary.get("images_evaluated"),
        "pictures": pictures,
        "bench_plot": None if plot is None else plot.name,
        "export": {"path": str(exported.path), "opset": exported.opset, "ir_version": exported.ir_version,
                   "batch": "dynamic", "op_types": exported.op_types, "size_bytes": exported.size_bytes},
        "agreement": agreement.to_dict(),
        "accuracy": {"metric": spec.evaluation.metric_name, "protocol": protocol, "value": outcome.headline,
                     "published": spec.published.value, "published_source": spec.published.source,
                     "per_class": outcome.metrics.to_dict()},
        "stages": outcome.run.timer.to_dict() | {"batch_size": eval_batch},
        "pure_inference": [r.to_dict() for r in bench],
        "end_to_end_over_pure": e2e_ratio,
        "environment": environment(),
        "wall_seconds": time.perf_counter() - t_start,
    }
    write_json(out / "report.json", report)
    (out / "report.md").write_text(run_markdown(
        spec, report, agreement.table(), outcome.metrics.table(), sweep_table(bench), outcome.run.timer.table(), out,
        pictures=pictures, plot=plot, protocol_reference=protocol_reference(spec.evaluation, protocol),
        checkpoint=None if checkpoint is None else str(checkpoint)))
    _say(f"wrote {out / 'report.md'} and {out / 'report.json'} in {report['wall_seconds']:.0f} s")
    return report


def _pure_throughput_near(bench, batch: int) -> tuple[int, float] | None:
    ok = [r for r in bench if r.ok]
    if not ok:
        return None
    best = min(ok, key=lambda r: (abs(r.batch_size - batch), -r.batch_size))
    return best.batch_size, best.stats.throughput

