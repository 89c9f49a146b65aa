"""Scoring predictions against a dataset: what ``eval`` does after inference, and ``deployzoo score`` on its own.

One path for both commands: the predictions of the images to score (COCO: official results records;
VOC detection: :class:`~deployzoo.structures.Detections`; VOC segmentation: :class:`~deployzoo.structures.LabelMap`),
keyed by the dataset's image id, go to :func:`score_predictions`, which computes the task's metric and, for
a ``--skip-bad`` run, the figure with the skipped images' objects counted as missed; :func:`write_scores`
writes metrics.json and the COCO results files (one per IoU type, as the frameworks write them:
``coco_results.bbox.json`` without ``segmentation``, ``coco_results.segm.json`` without ``bbox``, so that
pycocotools run directly on either file gives the figures printed here); :func:`policy_lines` prints the
skip policy with both figures.

:func:`read_predictions` reads a predictions file made anywhere: deployzoo's predictions.json / detections.json
contract (deployzoo.predictions: ``file_name`` and/or ``image_id``, ``category_id``, ``bbox`` [x, y, w, h],
``score``, optional ``segmentation`` RLE; or segmentation records with ``label_map``), or a COCO results file
(``image_id``, ``category_id``, ``bbox``, ``score``, optional ``segmentation``). It is checked whole before
anything is scored; every problem is one BadInputError naming the file, the record and the problem.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from deployzoo.errors import BadInputError
from deployzoo.structures import Detections, LabelMap

COCO_RESULTS = "coco_results.{}.json"  # one per IoU type: bbox, segm
SKIP_POLICY = ("skipped images are left out together with their ground truth (the headline); the second figure "
               "counts their objects as missed")


def is_coco(task: Any) -> bool:
    from deployzoo.tasks.coco_detection import COCODetectionTask

    return isinstance(task, COCODetectionTask)


def dataset_image_id(task: Any, key: str) -> int | str:
    """The dataset's own id of the pipeline's key: COCO's integer id, VOC's string id."""
    return int(key) if is_coco(task) else key


# ----------------------------------------------------------------------------------------------- scoring


@dataclass
class Scores:
    """What :func:`score_predictions` computed.

    Attributes:
        metrics: the task's result object (``to_dict``, ``table``) over the scored images.
        headline: the task's headline figure in percent (NaN where undefined).
        protocol: the protocol used.
        coco_records: COCO only: the results records scored (written per IoU type by :func:`write_scores`).
        missed: with skipped images: the metric with their objects counted as missed (None otherwise).
        missed_headline: its headline figure in percent.
        skipped: ids of the skipped images, and of those whose ground truth could not be read (not countable).
    """

    metrics: Any
    headline: float
    protocol: str
    coco_records: list[dict] | None = None
    coco_evaluator: str | None = None
    missed: Any = None
    missed_headline: float | None = None
    skipped: list[str] = field(default_factory=list)
    not_countable: list[str] = field(default_factory=list)
    policy: bool = False  # record the skip policy (--skip-bad, or images skipped anyway)


def coco_records_of(task: Any, results: Mapping[str, Detections], annotations: Mapping[str, Any]) -> list[dict]:
    """Official COCO results records of pipeline results (checked as ``evaluate_coco`` checks them), images in
    ``annotations`` order, detections in their own order."""
    from deployzoo.eval.coco_eval import _check_detections, results_records

    with_masks = "segm" in task.iou_types
    for key, handle in annotations.items():
        if key in results:
            _check_detections(handle.image_id, results[key], len(task.class_names), with_masks,
                              (handle.height, handle.width))
    detections = {annotations[k].image_id: d for k, d in results.items() if k in annotations}
    return results_records(detections, task.category_ids, [a.image_id for a in annotations.values()], with_masks)


def _evaluate(task: Any, predictions: Any, annotations: Mapping[str, Any], protocol: str, coco_evaluator: str):
    if is_coco(task):
        from deployzoo.eval.coco_eval import COCOEvalResult, evaluate_coco_records

        if not annotations:
            return COCOEvalResult({}, 0, [], ["no images evaluated"])
        coco = next(iter(annotations.values())).dataset.coco
        image_ids = [a.image_id for a in annotations.values()]
        wanted = set(image_ids)
        records = [r for r in predictions if r["image_id"] in wanted]
        return evaluate_coco_records(coco, records, task.category_ids, task.class_names, task.iou_types, image_ids,
                                     coco_evaluator)
    return task.evaluate({k: predictions[k] for k in annotations if k in predictions}, annotations, protocol=protocol)


def _missed_segmentation(task: Any, result: Any, handles: Sequence[Any]):
    """mIoU with the ground-truth pixels of ``handles`` counted as missed: added to each class's label area
    (so to its union) and to nothing else, as if nothing had been predicted there."""
    from deployzoo.eval.miou import SegmentationAccumulator

    acc = SegmentationAccumulator(len(task.class_names), task.ignore_index)
    acc.area_intersect += result.area_intersect
    acc.area_pred += result.area_pred
    acc.area_label += result.area_label
    acc.num_images = result.num_images
    for handle in handles:
        gt = task._read_gt(handle).astype(np.int64)
        gt = gt[gt != task.ignore_index]
        acc.area_label += np.bincount(gt, minlength=acc.num_classes)[: acc.num_classes]
        acc.num_images += 1
    return acc.result(task.class_names)


def score_predictions(
    task: Any,
    predictions: Any,
    annotations: Mapping[str, Any],
    protocol: str | None = None,
    coco_evaluator: str = "pycocotools",
    skipped: Sequence[str] = (),
    skipped_annotations: Mapping[str, Any] | None = None,
    skip_bad: bool = False,
) -> Scores:
    """Score ``predictions`` on the images of ``annotations`` (the task's ground-truth handles, by key).

    Args:
        task: the task adapter (deployzoo.tasks.*).
        predictions: COCO: results records (``image_id`` int); VOC: {key: Detections}; segmentation:
            {key: LabelMap}. Predictions of images outside ``annotations`` are ignored.
        protocol: the task's protocol (default: its first).
        coco_evaluator: "pycocotools" or "faster-coco-eval" (COCO only).
        skipped: keys of images skipped as bad input (``--skip-bad``): the metric is then also computed with
            their objects counted as missed, over ``annotations`` plus the ``skipped_annotations`` handles;
            skipped images without a handle (unreadable ground truth) cannot be counted and are listed.
        skip_bad: the run was allowed to skip images: the skip policy is recorded even when none was skipped
            (both figures are then the one figure).

    Raises:
        DeployzooError: unknown protocol.
    """
    from deployzoo.tasks.protocol_choice import choose_protocol

    protocol = choose_protocol(task, protocol)  # a removed name says what to use instead
    metrics = _evaluate(task, predictions, annotations, protocol, coco_evaluator)
    scores = Scores(metrics, task.headline(metrics), protocol,
                    coco_records=list(metrics.records) if is_coco(task) else None,
                    coco_evaluator=coco_evaluator if is_coco(task) else None, skipped=list(skipped))
    scores.policy = bool(skip_bad or skipped)
    if scores.policy and not skipped:
        scores.missed, scores.missed_headline = metrics, scores.headline
    if skipped:
        handles = dict(skipped_annotations or {})
        countable = {k: handles[k] for k in skipped if k in handles}
        scores.not_countable = [k for k in skipped if k not in handles]
        if task.metric_name == "mIoU":
            missed = _missed_segmentation(task, metrics, list(countable.values()))
        else:
            everything = {**annotations, **countable}
            if not is_coco(task):  # the skipped images have no detections at all
                predictions = {**predictions, **{k: Detections.empty() for k in countable}}
            missed = _evaluate(task, predictions, everything, protocol, coco_evaluator)
        scores.missed, scores.missed_headline = missed, task.headline(missed)
    return scores


def _pct(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def scores_summary(task: Any, scores: Scores) -> dict[str, Any]:
    """The part of metrics.json both commands write: protocol, evaluator, headline, metrics, skip policy."""
    summary: dict[str, Any] = {"protocol": scores.protocol}
    if scores.coco_evaluator is not None:
        summary["coco_evaluator"] = scores.coco_evaluator
    summary["headline"] = {"metric": task.metric_name, "value": scores.headline}
    summary["metrics"] = scores.metrics.to_dict()
    if scores.policy:
        summary["skipped_images_policy"] = {
            "policy": SKIP_POLICY,
            "images_skipped": len(scores.skipped),
            "skipped_excluded": _pct(scores.headline),
            "skipped_counted_as_missed": _pct(scores.missed_headline),
            "ground_truth_not_countable": scores.not_countable,
            # only a run that scored every image can be set beside the published figure
            "comparable_to_published": not scores.skipped,
            "why_not_comparable": (f"the published figure scores every image of the split; this run left "
                                   f"{len(scores.skipped)} out") if scores.skipped else None,
            "metrics_counted_as_missed": scores.missed.to_dict(),
        }
    return summary


def write_coco_results(out_dir: str | Path, task: Any, records: Sequence[dict]) -> list[Path]:
    """``coco_results.<iou type>.json`` for each of the task's IoU types (see the module docstring)."""
    from deployzoo.eval.coco_eval import records_for_iou_type
    from deployzoo.predictions import write_predictions

    return [write_predictions(Path(out_dir) / COCO_RESULTS.format(t), records_for_iou_type(records, t))
            for t in task.iou_types]


def write_scores(out_dir: str | Path, task: Any, scores: Scores, summary: dict[str, Any]) -> list[Path]:
    """metrics.json (``summary``: :func:`scores_summary` plus the command's own keys) and, for COCO, the
    results files per IoU type. Returns the paths written."""
    from deployzoo.bench.report import write_json

    out_dir = Path(out_dir)
    written = []
    if scores.coco_records is not None:
        written += write_coco_results(out_dir, task, scores.coco_records)
    from deployzoo.figures import undefined_reason

    undefined = undefined_reason(task.metric_name)
    write_json(out_dir / "metrics.json", summary, reasons={"headline.value": undefined})
    return [out_dir / "metrics.json", *written]


def policy_lines(summary: Mapping[str, Any]) -> list[str]:
    """The printed lines of a metrics.json summary's skip policy (none without one): both figures, and that a
    run with skipped images is not comparable to the published figure."""
    policy = summary.get("skipped_images_policy")
    if not policy:
        return []

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    metric = summary["headline"]["metric"]
    if not policy["images_skipped"]:
        return ["--skip-bad: no image was skipped, every image of the split is scored (the two figures are one)."]
    lines = [f"{policy['images_skipped']} images skipped: {metric} {fmt(policy['skipped_excluded'])} with them left "
             f"out (their ground truth too), {fmt(policy['skipped_counted_as_missed'])} with their objects counted "
             f"as missed.",
             "NOT comparable to the published figure, which scores every image of the split."]
    if policy["ground_truth_not_countable"]:
        ids = policy["ground_truth_not_countable"]
        lines.append(f"{len(ids)} of them have ground truth that could not be read, so their objects are not "
                     f"counted in either figure: {', '.join(ids[:5])}")
    return lines


# --------------------------------------------------------------------------------- reading a predictions file


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Images:
    """The dataset's images by id and by file name, to match predictions records to (strictly)."""

    def __init__(self, task: Any, dataset: Any, annotations: Mapping[str, Any]):
        self.coco = is_coco(task)
        self.annotations = annotations
        self.by_name: dict[str, str] = {}
        for key in annotations:
            self.by_name[Path(dataset.image_path(key)).name] = key

    def key(self, path: Path, where: str, record: dict) -> str:
        has_id, has_name = "image_id" in record, "file_name" in record
        if not has_id and not has_name:
            raise BadInputError(path, f"{where}: no 'image_id' or 'file_name' to say which image it is")
        key = None
        if has_id:
            image_id = record["image_id"]
            if self.coco and not (isinstance(image_id, int) and not isinstance(image_id, bool)):
                raise BadInputError(path, f"{where}: 'image_id' must be the COCO integer id, got {image_id!r}")
            if not self.coco and not isinstance(image_id, str):
                raise BadInputError(path, f"{where}: 'image_id' must be the VOC id as a string (e.g. '000001'), "
                                          f"got {image_id!r}")
            key = str(image_id)
            if key not in self.annotations:
                raise BadInputError(path, f"{where}: image_id {image_id!r} is not an image of the dataset")
        if has_name:
            name = record["file_name"]
            if not isinstance(name, str) or name not in self.by_name:
                raise BadInputError(path, f"{where}: file_name {name!r} is not an image file of the dataset")
            if key is not None and self.by_name[name] != key:
                raise BadInputError(path, f"{where}: file_name {name!r} is image {self.by_name[name]!r} of the "
                                          f"dataset, but image_id says {record['image_id']!r}")
            key = self.by_name[name]
        return key


def _load_json_list(path: Path) -> list:
    if not path.is_file():
        raise BadInputError(path, "is a folder, not a predictions file (give the .json inside it)" if path.is_dir()
                            else "predictions file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)  # NaN/Infinity parse here and are named per record below
    except json.JSONDecodeError as exc:
        raise BadInputError(path, f"not valid JSON ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(path, f"cannot read predictions file ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        raise BadInputError(path, "this is a COCO annotation (ground-truth) file, not predictions: pass a results "
                                  "list ([{image_id, category_id, bbox, score}, ...])")
    if not isinstance(data, list):
        raise BadInputError(path, f"expected a JSON list of records, got {type(data).__name__}")
    for k, record in enumerate(data):
        if not isinstance(record, dict):
            raise BadInputError(path, f"record {k}: expected an object, got {type(record).__name__}")
    return data


def _check_detection(path: Path, where: str, record: dict, category_ids: Sequence[int],
                     class_names: Sequence[str], masks_only: bool = False) -> int:
    """Check one detection record's fields; returns its label (index into ``class_names``). ``masks_only``:
    records of a segm results file, which have no ``bbox``."""
    for key in ("category_id", "score") if masks_only else ("category_id", "bbox", "score"):
        if key not in record:
            raise BadInputError(path, f"{where}: missing '{key}'")
    cid = record["category_id"]
    if not (isinstance(cid, int) and not isinstance(cid, bool)) or cid not in category_ids:
        shown = f"{min(category_ids)}..{max(category_ids)}" if len(category_ids) > 8 else list(category_ids)
        raise BadInputError(path, f"{where}: category_id {cid!r} is not a category of the dataset ({shown})")
    label = list(category_ids).index(cid)
    if "category" in record and record["category"] != class_names[label]:
        raise BadInputError(path, f"{where}: category {record['category']!r} is not the dataset's name of "
                                  f"category_id {cid} ({class_names[label]!r})")
    if not _finite(record["score"]):
        raise BadInputError(path, f"{where}: score {record['score']!r} is not a finite number")
    if masks_only:
        return label
    bbox = record["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4):
        raise BadInputError(path, f"{where}: bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
    if not all(_finite(v) for v in bbox):
        raise BadInputError(path, f"{where}: bbox {bbox!r} holds a value that is not a finite number (NaN?)")
    if bbox[2] < 0 or bbox[3] < 0:
        raise BadInputError(path, f"{where}: bbox has a negative width or height: {bbox!r}")
    return label


def _check_rle(path: Path, where: str, seg: Any, hw: tuple[int, int]) -> dict:
    if not isinstance(seg, dict) or not isinstance(seg.get("counts"), str):
        raise BadInputError(path, f"{where}: segmentation must be a compressed COCO RLE {{'size': [H, W], "
                                  f"'counts': str}} (polygons and uncompressed counts are not scored)")
    size = seg.get("size")
    if not (isinstance(size, list) and len(size) == 2 and [int(v) if _finite(v) else None for v in size] == list(hw)):
        raise BadInputError(path, f"{where}: segmentation size {size!r} is not the image size {list(hw)} "
                                  f"([height, width])")
    return seg


def read_predictions(path: str | Path, task: Any, dataset: Any, annotations: Mapping[str, Any]) -> tuple[Any, str]:
    """Read and check a predictions file for ``task``'s dataset (see the module docstring for the formats).

    Returns (predictions as :func:`score_predictions` takes them, a word naming the format read).
    Images of the dataset without a record have no detections (detection); segmentation needs a label map of
    every image. Masks: either every detection record has ``segmentation`` (then mask AP is scored too) or none.

    Raises:
        BadInputError: naming ``path``, the record and the problem: not a list of objects, unknown image id
            or file name, unknown category id, missing field, NaN or infinite number, bad box, a mask of the
            wrong size, a missing or unreadable label map, two label maps of one image.
    """
    path = Path(path)
    records = _load_json_list(path)
    images = _Images(task, dataset, annotations)
    if task.metric_name == "mIoU":
        return _read_label_maps(path, records, task, images), "label maps"
    if any("label_map" in r for r in records):
        raise BadInputError(path, f"holds segmentation label maps, but {task.dataset_name} is a detection dataset")
    category_ids = task.category_ids if is_coco(task) else tuple(range(1, len(task.class_names) + 1))
    with_masks = sum(1 for r in records if "segmentation" in r)
    if is_coco(task) and with_masks not in (0, len(records)):
        first = next(k for k, r in enumerate(records) if ("segmentation" in r) != ("segmentation" in records[0]))
        raise BadInputError(path, f"record {first}: {with_masks} of {len(records)} records have 'segmentation': "
                                  f"either every record has a mask or none")
    masks_only = is_coco(task) and "bbox" not in task.iou_types
    keys, labels = [], []
    for k, record in enumerate(records):
        where = f"record {k}"
        key = images.key(path, where, record)
        labels.append(_check_detection(path, where, record, category_ids, task.class_names, masks_only))
        if is_coco(task) and with_masks:
            handle = annotations[key]
            _check_rle(path, where, record["segmentation"], (handle.height, handle.width))
        keys.append(key)
    kind = "COCO results" if records and "file_name" not in records[0] else "predictions contract"
    if is_coco(task):
        out = []
        for key, record in zip(keys, records):
            rec = {"image_id": int(key), "category_id": record["category_id"], "score": record["score"]}
            if not masks_only:
                rec["bbox"] = list(record["bbox"])
            if with_masks:
                rec["segmentation"] = {"size": list(record["segmentation"]["size"]),
                                       "counts": record["segmentation"]["counts"]}
            out.append(rec)
        return out, kind
    per_image: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        per_image.setdefault(key, []).append(index)
    predictions = {}
    for key in annotations:  # split order, as eval scores them
        rows = per_image.get(key, [])
        # [x, y, w, h] back to corners in float64: exact for boxes that were float32 corners (eval's own files)
        boxes = np.asarray([[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in (records[i]["bbox"] for i in rows)],
                           dtype=np.float64).reshape(-1, 4)
        predictions[key] = Detections(boxes, np.asarray([records[i]["score"] for i in rows], dtype=np.float64),
                                      np.asarray([labels[i] for i in rows], dtype=np.int64))
    return predictions, kind


def _read_label_maps(path: Path, records: list[dict], task: Any, images: _Images) -> dict[str, LabelMap]:
    from deployzoo.data.voc_seg import read_label_png

    if not records:
        raise BadInputError(path, "holds no label maps")
    found: dict[str, LabelMap] = {}
    for k, record in enumerate(records):
        where = f"record {k}"
        if "label_map" not in record:
            raise BadInputError(path, f"{where}: missing 'label_map' (the PNG of class indices, relative to "
                                      f"{path.parent})")
        key = images.key(path, where, record)
        if key in found:
            raise BadInputError(path, f"{where}: a second label map of image {key!r}")
        png = path.parent / str(record["label_map"])
        if not png.is_file():
            raise BadInputError(path, f"{where}: label map {png} not found")
        labels = read_label_png(png)
        handle = images.annotations[key]
        if labels.shape != (handle.height, handle.width):
            raise BadInputError(png, f"is {labels.shape[1]}x{labels.shape[0]}, but image {key!r} is "
                                     f"{handle.width}x{handle.height} (width x height)")
        bad = np.unique(labels[labels >= len(task.class_names)])
        if bad.size:
            raise BadInputError(png, f"label value(s) {bad[:5].tolist()} are not class indices "
                                     f"(0..{len(task.class_names) - 1})")
        found[key] = LabelMap(labels)
    missing = [k for k in images.annotations if k not in found]
    if missing:
        raise BadInputError(path, f"no label map for {len(missing)} image(s) of the dataset, e.g. {missing[0]!r}")
    return {k: found[k] for k in images.annotations}


# ----------------------------------------------------------------------------------------- the score command


def score_file(
    data: str | Path,
    predictions: str | Path,
    out_dir: str | Path,
    protocol: str | None = None,
    kind: str | None = None,
    coco_evaluator: str = "pycocotools",
    class_names: Sequence[str] | None = None,
    annotation_file: str | Path | None = None,
    eval_protocol: tuple[str, str] | None = None,
) -> tuple[Any, Scores, dict[str, Any]]:
    """``deployzoo score``: score the predictions file against the dataset at ``data`` (kind recognised from
    its layout unless ``kind`` is given) and write metrics.json (+ COCO results files) to ``out_dir``.

    Only the ground truth is read (annotations, label PNGs): image files are not needed. No model is built.
    ``class_names``: a VOC-format set's own classes (``--classes``); ``annotation_file``: a COCO file outside the
    val2017 layout (``--annotations``; the kind is then COCO). ``eval_protocol``: (protocol, metric name) of the
    eval run that wrote the file (:func:`eval_run_protocol`), used when ``protocol`` is None and it is one of this
    task's protocols for the same metric. Returns (task, scores, summary).
    """
    from deployzoo.data.kinds import dataset_kind, task_for_kind
    from deployzoo.eval.coco_eval import check_evaluator

    check_evaluator(coco_evaluator)
    kind = kind or ("coco" if annotation_file is not None else dataset_kind(data))
    iou_types = ("bbox",)
    if kind == "coco":
        raw = _load_json_list(Path(predictions))
        if raw and any("segmentation" in r for r in raw):
            # masks: box AP too, unless no record has a box (a segm results file, as eval writes it)
            iou_types = ("segm",) if not any("bbox" in r for r in raw) else ("bbox", "segm")
    task = task_for_kind(kind, data, iou_types=iou_types, class_names=class_names, annotation_file=annotation_file)
    if (protocol is None and eval_protocol is not None and eval_protocol[1] == task.metric_name
            and eval_protocol[0] in task.protocols):
        protocol = eval_protocol[0]
    dataset = task.open(data)
    annotations, _ = task.load_ground_truth(dataset)
    preds, fmt = read_predictions(predictions, task, dataset, annotations)
    scores = score_predictions(task, preds, annotations, protocol=protocol, coco_evaluator=coco_evaluator)
    summary = {"dataset": task.dataset_name, "dataset_kind": kind, "data_root": str(data),
               "predictions": str(predictions), "predictions_format": fmt,
               "images_evaluated": len(annotations), **scores_summary(task, scores)}
    write_scores(out_dir, task, scores, summary)
    return task, scores, summary


def eval_run_protocol(predictions: str | Path) -> tuple[str, str] | None:
    """(protocol, metric name) from the ``metrics.json`` that ``deployzoo eval`` wrote beside ``predictions``
    (its ``protocol`` and ``headline.metric``), or None. Without it, ``score`` on eval's own detections.json
    used the task's first protocol (VOC: voc-devkit) while eval used the model's (RefineDet: refinedet-pytorch),
    and printed another mAP than eval's with nothing said."""
    path = Path(predictions).parent / "metrics.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or not isinstance(saved.get("headline"), dict) or "model" not in saved:
        return None
    protocol, metric = saved.get("protocol"), saved["headline"].get("metric")
    return (protocol, metric) if isinstance(protocol, str) and isinstance(metric, str) else None


def run_score_command(args: Any) -> int:
    """``deployzoo score`` (deployzoo.cli): score, print the task's tables and the headline, write metrics.json."""
    predictions = Path(args.predictions)
    out = Path(args.out) if args.out else predictions.parent / "score"
    from deployzoo.fine_tuned import parse_classes

    task, scores, summary = score_file(args.data, predictions, out, protocol=args.protocol, kind=args.dataset,
                                       coco_evaluator=args.coco_evaluator, class_names=parse_classes(args.classes),
                                       annotation_file=args.annotations, eval_protocol=(
                                           None if args.protocol else eval_run_protocol(predictions)))
    if args.protocol is None and scores.protocol == (eval_run_protocol(predictions) or ("",))[0]:
        print(f"protocol {scores.protocol}: the one the eval run used ({predictions.parent / 'metrics.json'}); "
              f"--protocol chooses another")
    print(scores.metrics.table())
    evaluator = f", {scores.coco_evaluator}" if scores.coco_evaluator else ""
    from deployzoo.figures import headline_text

    print(f"\n{task.metric_name} ({scores.protocol} protocol{evaluator}): "
          f"{headline_text(scores.headline, task.metric_name)} "
          f"({summary['images_evaluated']} images of {task.dataset_name}, {summary['predictions_format']} "
          f"from {predictions})")
    written = [out / "metrics.json"] + ([out / COCO_RESULTS.format(t) for t in task.iou_types]
                                        if scores.coco_records is not None else [])
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
