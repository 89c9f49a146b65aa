"""The library behind the commands: set up an engine, predict, evaluate a dataset, evaluate dumps."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from deployzoo.backends.base import Backend
from deployzoo.cache import cached_onnx, kind_dir
from deployzoo.data.identity import images_digest
from deployzoo.data.loader import ImageItem, items_from_paths
from deployzoo.engine import LoadedModel, load_model, make_backend
from deployzoo.tasks.protocol_choice import choose_protocol
from deployzoo import nonfinite
from deployzoo.errors import DeployzooError
from deployzoo.export.onnx_export import ExportResult, export_onnx
from deployzoo.predictions import records_for, write_label_maps, write_predictions
from deployzoo.registry import ModelSpec
from deployzoo.runner import DatasetRun, InferFn, ResultStore, run_dataset
from deployzoo.tasks.validation import CheckedSplit
from deployzoo.test_settings import report_fields


def export_model(loaded: LoadedModel, out: str | Path, batch_size: int = 1, dynamic_batch: bool = False) -> ExportResult:
    return export_onnx(loaded.model, loaded.spec, out, batch_size=batch_size, dynamic_batch=dynamic_batch,
                       extra_metadata={"deployzoo.weights": loaded.weights})


@dataclass
class Engine:
    """A backend ready to run, plus what produced it (for fingerprints and reports)."""

    spec: ModelSpec
    backend: Backend
    loaded: LoadedModel | None  # the PyTorch model when one was built
    onnx_path: Path | None
    weights: str

    def infer(self, feeds: dict[str, np.ndarray], ids: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """One batch of graph inputs (of the images ``ids``) -> outputs.

        Raises InputShapeError (a BadInputError) naming the batch's images when the engine was built for another
        input shape (an AOTInductor package, or an ONNX file fixed to one image size, meets an image of another
        size); runner.run_dataset then retries the batch's images one by one, to name or skip only those."""
        from deployzoo.errors import InputShapeError

        check = getattr(self.backend, "check_inputs", None)  # a duck-typed backend may not have it
        try:
            if check is not None:
                check(feeds)
        except InputShapeError as exc:
            if not ids:
                raise
            raise InputShapeError(", ".join(ids), exc.problem + self._fixed_size_hint()) from None
        return self.backend.infer(feeds)

    def _fixed_size_hint(self) -> str:
        """What to do when this engine's image size is fixed where the model's is free."""
        from deployzoo.fixed_size import free_hw, hint

        fixed = self.backend.input_shapes.get(self.spec.input_name, ())
        if not free_hw(self.spec) or len(fixed) < 3 or None in fixed[-2:]:
            return ""
        return hint(self.spec, self.backend.name, fixed[-2:])

    def describe(self) -> dict[str, Any]:
        return {**self.backend.describe(), "weights": self.weights, **report_fields(self.spec)}


def open_engine(
    spec: ModelSpec,
    backend: str,
    batch_size: int,
    checkpoint: str | Path | None = None,
    onnx_path: str | Path | None = None,
    work_dir: str | Path = ".",
    threads: int = 0,
    loaded: LoadedModel | None = None,
    precision: str = "fp32",
    device: str = "cpu",
    calibration=None,
) -> Engine:
    """Engine for ``backend`` at ``batch_size`` and ``precision`` (fp32, fp16, bf16 or int8; see resolve_precision
    for auto). ``calibration``: int8's calibration images (engine.make_backend).

    ONNX backends run ``onnx_path`` if given, else the model (from ``checkpoint`` or stand-in weights) exported
    at a fixed batch into the engine cache (deployzoo.cache; reused when there). The PyTorch backends run the
    model itself; AOTInductor packages are kept in the engine cache too. ``work_dir`` is no longer written.
    """
    from deployzoo.backends import ONNX_BACKENDS

    if backend not in ONNX_BACKENDS or onnx_path is None:
        loaded = loaded or load_model(spec, checkpoint)
    if backend in ONNX_BACKENDS and onnx_path is None:
        onnx_path = cached_onnx(loaded, batch_size=batch_size).path  # the graph is fp32
    model = loaded.model if loaded is not None and backend not in ONNX_BACKENDS else None
    weights = loaded.weights if loaded is not None else onnx_weights_note(onnx_path)
    # AOTInductor packages must live somewhere; OpenVINO reads the ONNX directly unless a cache is asked for.
    cache_dir = kind_dir("aoti") if backend == "pytorch-aoti" else None
    engine_backend = make_backend(backend, spec, batch_size, onnx_path=onnx_path, model=model, threads=threads,
                                  precision=precision, device=device, cache_dir=cache_dir, calibration=calibration)
    return Engine(spec, engine_backend, loaded, Path(onnx_path) if onnx_path else None, weights)


def onnx_weights_note(onnx_path: str | Path) -> str:
    """What weights a given .onnx holds, from its metadata: stand-in weights are said so (issue 18 item 5)."""
    from deployzoo.export.onnx_export import inspect_onnx_file

    info = inspect_onnx_file(onnx_path)
    if info.stand_in:
        return (f"from {onnx_path}, exported from stand-in weights: outputs and accuracy are NOT those of the "
                f"trained model")
    return f"from {onnx_path}" + (f" (exported from {info.weights})" if info.weights else "")


def artifact_name(spec: ModelSpec, batch_size: int | None, precision: str, suffix: str) -> str:
    """``<model>-b<batch>-<precision><suffix>`` (``-bdyn`` for a dynamic batch): every artifact names its precision."""
    return f"{spec.name}-b{'dyn' if batch_size is None else batch_size}-{precision}{suffix}"


def predict_files(
    engine: Engine,
    paths: Sequence[str | Path],
    score_threshold: float = 0.0,
    max_dets: int | None = None,
    batch_size: int | None = None,
    out_dir: str | Path | None = None,
    skipped: list[dict[str, str]] | None = None,
    runner: Any = None,
) -> list[dict]:
    """Predictions records (see deployzoo.predictions) for image files, in the order given.

    Every input keeps its own result: records carry the file name and the path as given, and segmentation
    models' label maps are written as palette PNGs under ``out_dir`` named by ``output_names`` (the stem, made
    unique where inputs share one; the records name them). ``skipped``: a list that receives ``{"path",
    "problem"}`` of each image that cannot be decoded, which is then left out (the others are still run);
    without it such an image raises BadInputError. ``runner``: what runs the images (default
    ``runner.run_dataset``; deployzoo.distributed.ray_eval.RayRunner spreads them over a Ray cluster).
    """
    spec = engine.spec
    postprocess = spec.make_postprocess()
    items = items_from_paths(paths)  # ids: unique output names
    run_images = runner or run_dataset
    run = run_images(items, spec.preprocess, engine.infer, postprocess, batch_size or engine.backend.batch_size,
                      spec.make_feeds, workers=0, progress=False, batch_key=spec.batch_key,
                      per_detection=spec.ranked_outputs, skip_bad=skipped is not None)
    if skipped is not None:
        skipped += [{"path": s["path"], "problem": s["problem"]} for s in run.skipped]
    items = [item for item in items if item.image_id in run.results]
    results = [(Path(item.path).name, run.results[item.image_id]) for item in items]
    given = [item.path for item in items]
    if spec.task == "semantic-segmentation":
        names = [item.image_id for item in items]
        if out_dir is not None:
            write_label_maps(out_dir, results, names)
        return records_for(spec, results, given, names)
    return records_for(spec, [(f, r.top(max_dets, score_threshold)) for f, r in results], given)


def fingerprint_file(path: str | Path | None) -> str | None:
    """A cheap identity for a big file: size + hash of its first and last MiB."""
    if path is None:
        return None
    path = Path(path)
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read(1 << 20))
    return f"{size}:{digest.hexdigest()[:16]}"


@dataclass
class EvalOutcome:
    metrics: Any  # the task's result object (to_dict, table)
    run: DatasetRun
    skipped_annotations: list[tuple[str, str]]
    headline: float  # percent
    out_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, Any] = field(default_factory=dict)  # the ground truth scored against, by image id


def evaluate_dataset(
    spec: ModelSpec,
    data_root: str | Path,
    infer: InferFn,
    batch_size: int,
    out_dir: str | Path,
    fingerprint: dict[str, Any],
    protocol: str | None = None,
    resume: bool = False,
    skip_bad: bool = False,
    workers: int = 1,
    limit: int | None = None,
    progress: bool = True,
    checked: CheckedSplit | None = None,
    runner: Any = None,
    skip_nonfinite: bool | None = None,
    coco_evaluator: str = "pycocotools",
    keep_inputs: bool = False,
) -> EvalOutcome:
    """Stream the task's split through ``infer``; write metrics.json and the results to ``out_dir``:
    detections.json (detection), or predictions.json + label_maps/*.png (segmentation), in the predictions
    contract (deployzoo.predictions: ``file_name`` the image file's name, ``image_id`` the dataset's id), and
    for COCO ``coco_results.<bbox|segm>.json``. Scoring is deployzoo.score's (``deployzoo score`` takes the same
    path); ``coco_evaluator``: "pycocotools" or "faster-coco-eval". With ``skip_bad``, metrics.json also carries
    the figure with the skipped images' objects counted as missed (``skipped_images_policy``).

    The split is checked first (``task.validate``; pass ``checked`` when the caller already did, before its
    expensive part), so a bad annotation or image file stops the run before any inference. ``runner``: what
    runs the images (default ``runner.run_dataset``; deployzoo.distributed.ray_eval.RayRunner: a Ray cluster,
    writing the same result shards, so --resume works across both). ``keep_inputs``: the run keeps the graph
    inputs it fed (``DatasetRun.fed``, run_dataset's ``keep_inputs``) for a pure-inference replay."""
    task = spec.evaluation
    protocol = choose_protocol(task, protocol)  # refused (removed or unknown) before any inference
    out_dir = Path(out_dir)
    if checked is None:
        checked = task.validate(data_root, skip_bad=skip_bad, limit=limit)
    dataset, annotations = checked.dataset, checked.annotations
    items = [ImageItem(i, str(dataset.image_path(i)), str(dataset.split_file)) for i in annotations]
    if spec.batch_key is not None and batch_size > 1:
        items = sorted(items, key=lambda item: checked.sizes[item.image_id])  # batches of one size stay full
    # the image files themselves (id, name, size), not only their count: --resume must not mix in results
    # computed on other files that happen to share the ids
    image_files = images_digest((item.image_id, item.path) for item in items)
    store = ResultStore(out_dir, {**fingerprint, "images": len(items), "image_files": image_files,
                                  "batch_size": batch_size,
                                  # host-side settings (RefineDet) leave the graph alone: resume must see them
                                  **({"test_settings": spec.test_settings} if spec.test_settings else {})},
                        resume=resume)
    run_images = runner or run_dataset
    run = run_images(items, spec.preprocess, infer, spec.make_postprocess(), batch_size, spec.make_feeds, store=store,
                      workers=workers, skip_bad=skip_bad, progress=progress, description=spec.name,
                      batch_key=spec.batch_key, per_detection=spec.ranked_outputs, skip_nonfinite=skip_nonfinite,
                      **({"keep_inputs": True} if keep_inputs else {}))
    bad_images = {s["image_id"] for s in run.skipped}
    evaluated = {i: a for i, a in annotations.items() if i not in bad_images}
    if not evaluated:
        raise DeployzooError(f"no image of {dataset.split_file} could be evaluated: all {len(run.skipped)} "
                             f"were skipped as bad input (the first: {run.skipped[0]['problem']})")
    results = [(i, run.results[i]) for i in evaluated]
    paths = [str(dataset.image_path(i)) for i in evaluated]
    if spec.task == "semantic-segmentation":
        split = split_names(dataset)  # label_maps/<name>.png: the image file's stem, unique within the split
        names = [split[i] for i, _ in results]
        write_label_maps(out_dir, results, names)
        records = records_for(spec, [(Path(p).name, r) for p, (_, r) in zip(paths, results)], paths, names)
        write_predictions(out_dir / "predictions.json", _with_image_ids(task, records, paths, list(evaluated)))
    else:
        records = records_for(spec, [(Path(p).name, r) for p, (_, r) in zip(paths, results)], paths)
        write_predictions(out_dir / "detections.json", _with_image_ids(task, records, paths, list(evaluated)))
    # What happens after inference is deployzoo.score's, the path `deployzoo score` takes on a predictions file.
    from deployzoo.score import coco_records_of, is_coco, score_predictions, scores_summary, write_scores

    predictions = coco_records_of(task, dict(results), evaluated) if is_coco(task) else dict(results)
    skipped_ids = [s["image_id"] for s in checked.skipped + run.skipped]
    skipped_handles = {i: annotations[i] for i in skipped_ids if i in annotations}
    if len(skipped_handles) < len(skipped_ids):  # images that failed their file check: their ground truth
        every, _ = task.load_ground_truth(dataset, skip_bad=True)
        skipped_handles.update({i: every[i] for i in skipped_ids if i in every})
    scores = score_predictions(task, predictions, evaluated, protocol=protocol, coco_evaluator=coco_evaluator,
                               skipped=skipped_ids, skipped_annotations=skipped_handles, skip_bad=skip_bad)
    metrics = scores.metrics
    common = scores_summary(task, scores)
    summary = {
        "model": spec.name,
        "dataset": task.dataset_name,
        "data_root": str(data_root),
        "images_evaluated": len(evaluated),
        "images_skipped": checked.skipped + run.skipped,
        "images_resumed": run.resumed,
        "non_finite_outputs": nonfinite.summarize(run.skipped),
        **common,
        "headline": {**common["headline"], "published": spec.published.value},
        "stages": run.timer.to_dict(),
        **run.extra,  # a Ray run's "ray": replicas, their throughput, the overhead (deployzoo.distributed.ray_eval)
        "engine": fingerprint,
        **report_fields(spec),  # the test-time settings the figures were measured with
    }
    write_scores(out_dir, task, scores, summary)
    skipped_checks = [(s["image_id"], f"{s['path']}: {s['problem']}" if "path" in s else s["problem"])
                      for s in checked.skipped]
    return EvalOutcome(metrics, run, skipped_checks, task.headline(metrics), out_dir, summary, evaluated)


def _with_image_ids(task: Any, records: list[dict], paths: Sequence[str], keys: Sequence[str]) -> list[dict]:
    """Contract records with ``image_id`` (the dataset's own id) after ``file_name``; each record's ``path``
    says which image it is (``paths[k]`` is image ``keys[k]``'s, unique within a split)."""
    from deployzoo.score import dataset_image_id

    key_of = dict(zip(paths, keys))
    out = []
    for record in records:
        image_id = dataset_image_id(task, key_of[record["path"]])
        out.append({"file_name": record["file_name"], "image_id": image_id,
                    **{k: v for k, v in record.items() if k != "file_name"}})
    return out


def split_names(dataset: Any) -> dict[str, str]:
    """Each image id's output name: ``output_names`` of the whole split's image paths (the image file's stem
    unless two share one). ``data to-bin --data`` names its .bin files so, and ``eval --dumps`` looks for
    ``<name>_<k>.bin``, whatever ``--limit`` is."""
    from deployzoo.data.inputs import output_names

    return dict(zip(dataset.ids, output_names([dataset.image_path(i) for i in dataset.ids])))


def dump_infer(spec: ModelSpec, dumps_dir: str | Path, stems: Sequence[str] | Mapping[str, str]) -> InferFn:
    """An InferFn that reads the vendor tool's output dumps (``<stem>_<k>.bin``) instead of running a model.

    ``stems``: each image id's dump stem (``split_names``), or a list of ids that are their own stems."""
    from deployzoo.data.vendor_bin import find_dumps, read_bin

    if not spec.output_shapes:
        raise DeployzooError(f"{spec.name} has no fixed output shapes (its graph follows each image's size), "
                             f"so its dumps cannot be read; a fixed-canvas variant ({spec.name}@HxW) has them")
    shapes = [spec.output_shapes[n] for n in spec.output_names]
    stem_of = dict(stems) if isinstance(stems, Mapping) else {s: s for s in stems}
    index = find_dumps(dumps_dir, list(stem_of.values()), len(shapes))

    dtypes = [np.dtype(spec.output_dtypes.get(n, "float32")) for n in spec.output_names]
    _check_dump_sizes(index, [s for s in stem_of.values()], shapes, dtypes)

    def infer(feeds: dict[str, np.ndarray], ids: Sequence[str]) -> dict[str, np.ndarray]:
        batch = feeds[spec.input_name].shape[0]
        per_image = [[read_bin(index.path(stem_of[i], k), shape, dtype)
                      for k, (shape, dtype) in enumerate(zip(shapes, dtypes))] for i in ids]
        outputs = {}
        for k, name in enumerate(spec.output_names):
            rows = [arrays[k] for arrays in per_image]
            rows += [np.zeros_like(rows[0])] * (batch - len(rows))  # padding of a short batch
            outputs[name] = np.stack(rows)
        return outputs

    infer.source = f"dump ({dumps_dir})"  # named in messages about the outputs
    return infer


def _check_dump_sizes(index: Any, stems: Sequence[str], shapes: Sequence[tuple[int, ...]],
                      dtypes: Sequence[np.dtype]) -> None:
    """Every dump's byte count against its output's shape, before any is read (a stat per file): a dump of
    another model, shape or dtype stops the run here, naming the files, not after the images before it.
    Raises BadInputError naming the dump directory and up to five files with their sizes."""
    from deployzoo.errors import BadInputError

    wrong = []
    for stem in stems:
        for k, (shape, dtype) in enumerate(zip(shapes, dtypes)):
            path = index.path(stem, k)
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            actual = path.stat().st_size
            if actual != expected:
                wrong.append(f"{path.name} has {actual} bytes, expected {expected} ({tuple(shape)} x {dtype.name})")
    if wrong:
        more = f"; and {len(wrong) - 5} more" if len(wrong) > 5 else ""
        raise BadInputError(index.directory, f"{len(wrong)} output dump(s) of the wrong size: "
                            + "; ".join(wrong[:5]) + more)


def write_bins(spec: ModelSpec, image_paths: Sequence[str | Path], out_dir: str | Path, workers: int = 0,
               names: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Preprocess images to raw float32 .bin files, one per image and graph input, and two .info lists.

    Each image's graph inputs at batch 1 are written exactly as the engine receives them (for R-CNN models
    the image padded to a multiple of 32): the image input as ``<name>.bin`` in ``out_dir``, any other
    input (e.g. ``img_hw``) as ``<input name>/<name>.bin``, the one-folder-per-input layout vendor tools
    take for multi-input models. ``names``: one per image (default ``output_names``: the stem, made unique
    where two images share one); clashing names or paths the .info format cannot hold stop before any file
    is written.
    ``input.info``: index, .bin path, network input width and height (what the benchmark tool reads);
    ``images.info``: index, image path, ORIGINAL width and height (what post-processing needs).
    Returns both paths.
    """
    from deployzoo.data.loader import BadImage, prepared_images
    from deployzoo.data.vendor_bin import write_bin, write_info
    from deployzoo.errors import BadInputError

    out_dir = Path(out_dir)
    items = items_from_paths(image_paths)
    if names is not None:
        items = [ImageItem(name, item.path) for name, item in zip(names, items)]
        first: dict[str, str] = {}
        for item in items:
            other = first.setdefault(item.image_id.casefold(), item.path)
            if other != item.path:
                raise DeployzooError(f"{other} and {item.path} would both be written as {item.image_id}.bin: "
                                     "rename one")
    for item in items:
        for where in (out_dir.resolve() / f"{item.image_id}.bin", Path(item.path).resolve()):
            if any(c.isspace() for c in str(where)):
                raise BadInputError(where, "path contains whitespace, which the .info format cannot hold")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, image_rows = [], []
    for index, prepared in enumerate(prepared_images(items, spec.preprocess, workers=workers)):
        if isinstance(prepared, BadImage):
            raise BadInputError(prepared.path, prepared.problem)
        feeds = spec.make_feeds([prepared.array], [prepared.meta], 1)
        image = feeds[spec.input_name][0]
        bin_path = write_bin(out_dir / f"{prepared.image_id}.bin", image)
        for name, value in feeds.items():
            if name != spec.input_name:
                write_bin(out_dir / name / f"{prepared.image_id}.bin", value[0])
        h, w = prepared.meta.orig_hw
        rows.append((index, str(bin_path.resolve()), image.shape[2], image.shape[1]))
        image_rows.append((index, str(Path(prepared.path).resolve()), w, h))
    return write_info(out_dir / "input.info", rows), write_info(out_dir / "images.info", image_rows)
