"""COCO box and mask AP with pycocotools' COCOeval (the metric itself is never re-implemented here).

Detections are turned into the official results format, one record per detection::

    {"image_id": int, "category_id": category_ids[label], "bbox": [x1, y1, x2 - x1, y2 - y1],
     "score": float, "segmentation": {"size": [H, W], "counts": str}}   # segmentation: masks only

For mask AP the ``bbox`` key is left out of what COCOeval sees (as mmdetection and detectron2 do),
otherwise ``loadRes`` takes the box area as the instance area and the small/medium/large splits change;
:func:`records_for_iou_type` gives each type's records, which deployzoo.score writes one file per type.
:func:`evaluate_coco_records` scores records as given (``deployzoo score`` on a results file);
``evaluator="faster-coco-eval"`` runs faster-coco-eval's COCOeval_faster (1.8.0 tested) on the same inputs.

Only ``image_ids`` are evaluated (``params.imgIds``), so a run over part of the split is scored on
that part. With no detections at all ``loadRes`` cannot be used (it indexes the first record); an
empty result set is built instead and COCOeval gives AP 0 for every category with ground truth
(-1, reported as None, where there is no ground truth at all); the result's ``notes`` say so.
pycocotools' progress prints are swallowed; the standard 12-line summary is kept as text.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from deployzoo.data.coco import quiet_coco
from deployzoo.structures import Detections

IOU_TYPES = ("bbox", "segm")
STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                               "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_TYPE_LABEL = {"bbox": "box", "segm": "mask"}


@dataclass
class CategoryAP:
    """AP of one category over IoU .50:.95, area all, maxDets 100 (from COCOeval's precision array)."""

    category_id: int
    name: str
    ap: float  # in [0, 1]; NaN when the category has no (non-crowd) ground truth in the evaluated images
    num_gt: int  # non-crowd ground-truth instances in the evaluated images
    num_detections: int


@dataclass
class IoUTypeResult:
    """COCOeval's output for one iou type ("bbox" or "segm")."""

    iou_type: str
    stats: list[float]  # the 12 numbers of COCOeval.stats, -1 where undefined
    summary: list[str]  # the 12 lines COCOeval.summarize() prints
    per_category: list[CategoryAP]
    num_detections: int

    @property
    def ap(self) -> float | None:
        """stats[0] (AP @[.50:.95]) in [0, 1], or None when COCOeval could not define it."""
        return None if self.stats[0] < 0 else float(self.stats[0])


@dataclass
class COCOEvalResult:
    """Box and/or mask AP of one evaluation, plus the results records it was computed from."""

    by_type: dict[str, IoUTypeResult]
    num_images: int
    records: list[dict] = field(repr=False)  # official COCO results format, ready to write as JSON
    notes: list[str] = field(default_factory=list)

    @property
    def bbox_ap(self) -> float | None:
        return self.by_type["bbox"].ap if "bbox" in self.by_type else None

    @property
    def segm_ap(self) -> float | None:
        return self.by_type["segm"].ap if "segm" in self.by_type else None

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN and -1 written as None); the records are left out (write them separately)."""
        def clean(x: float) -> float | None:
            return None if math.isnan(x) or x < 0 else float(x)

        out: dict = {"num_images": self.num_images, "notes": list(self.notes), "iou_types": {}}
        for iou_type, r in self.by_type.items():
            out["iou_types"][iou_type] = {
                "ap": r.ap,
                "stats": {name: clean(v) for name, v in zip(STAT_NAMES, r.stats)},
                "summary": list(r.summary),
                "num_detections": r.num_detections,
                "per_category": [
                    {"category_id": c.category_id, "name": c.name, "ap": clean(c.ap), "num_gt": c.num_gt,
                     "num_detections": c.num_detections}
                    for c in r.per_category
                ],
            }
        return out

    def table(self) -> str:
        """Markdown: headline AP per iou type, the standard summaries, then per-category AP in percent.

        Categories with neither ground truth nor detections are left out of the table (``to_dict`` has all).
        """
        def pct(x: float | None) -> str:
            return "n/a" if x is None or math.isnan(x) or x < 0 else f"{100.0 * x:.2f}"

        types = list(self.by_type)
        if not types:
            return "\n".join(["**COCO AP**: n/a (nothing evaluated)", *[f"- note: {n}" for n in self.notes]])
        lines = []
        for t in types:
            lines.append(f"**COCO {_TYPE_LABEL[t]} AP** (IoU .50:.95, {self.num_images} images): "
                         f"{pct(self.by_type[t].ap)}")
        lines += [f"- note: {n}" for n in self.notes]
        for t in types:
            lines += ["", f"{t}:", "```", *self.by_type[t].summary, "```"]
        first = self.by_type[types[0]].per_category
        lines += ["", "| category | id | GT | " + " | ".join(f"{_TYPE_LABEL[t]} AP (%)" for t in types) + " |",
                  "|---|---:|---:|" + "---:|" * len(types)]
        for k, c in enumerate(first):
            if c.num_gt == 0 and c.num_detections == 0:
                continue
            aps = " | ".join(pct(self.by_type[t].per_category[k].ap) for t in types)
            lines.append(f"| {c.name} | {c.category_id} | {c.num_gt} | {aps} |")
        unlisted = sum(1 for c in first if c.num_gt == 0 and c.num_detections == 0)
        if unlisted:
            lines += ["", f"{unlisted} categories without ground truth or detections not listed."]
        return "\n".join(lines)


def _check_detections(image_id: int, dets: Detections, num_classes: int, want_masks: bool,
                      image_hw: tuple[int, int]) -> None:
    k = len(dets)
    boxes = np.asarray(dets.boxes)
    if boxes.shape != (k, 4) or np.asarray(dets.labels).shape != (k,):
        raise ValueError(f"detections for image {image_id}: boxes {boxes.shape}, scores ({k},), labels "
                         f"{np.asarray(dets.labels).shape} do not agree (want [K,4], [K], [K])")
    if k == 0:
        return
    labels = np.asarray(dets.labels)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"detections for image {image_id}: label out of range 0..{num_classes - 1}")
    if not (np.isfinite(boxes).all() and np.isfinite(np.asarray(dets.scores)).all()):
        raise ValueError(f"detections for image {image_id}: non-finite box or score")
    if want_masks:
        if dets.masks is None or len(dets.masks) != k:
            raise ValueError(f"detections for image {image_id}: mask AP was asked for but the detections carry "
                             f"{'no' if dets.masks is None else len(dets.masks)} masks for {k} boxes")
        for rle in dets.masks:
            if tuple(int(v) for v in rle["size"]) != image_hw:
                raise ValueError(f"detections for image {image_id}: mask size {list(rle['size'])} is not the "
                                 f"image size {list(image_hw)}")


def results_records(detections: Mapping[int, Detections], category_ids: Sequence[int],
                    image_ids: Sequence[int], with_masks: bool) -> list[dict]:
    """Official COCO results records, images in ``image_ids`` order, detections in their own order."""
    records = []
    for image_id in image_ids:
        dets = detections.get(image_id)
        if dets is None or len(dets) == 0:
            continue
        masks = dets.masks if with_masks else None
        boxes = np.asarray(dets.boxes, dtype=np.float32)
        for k, (box, score, label) in enumerate(zip(boxes.tolist(), np.asarray(dets.scores).tolist(),
                                                    np.asarray(dets.labels).tolist())):
            x1, y1, x2, y2 = box
            record = {"image_id": int(image_id), "category_id": int(category_ids[int(label)]),
                      "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)}
            if masks is not None:
                rle = masks[k]
                counts = rle["counts"]
                record["segmentation"] = {"size": [int(v) for v in rle["size"]],
                                          "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
            records.append(record)
    return records


def _empty_results(coco_gt):
    """A results COCO with no annotations (what loadRes([]) would be if it did not fail)."""
    return quiet_coco({"images": list(coco_gt.dataset["images"]),
                       "categories": copy.deepcopy(coco_gt.dataset["categories"]), "annotations": []})


EVALUATORS = ("pycocotools", "faster-coco-eval")


def check_evaluator(name: str) -> None:
    """Raise DeployzooError unless ``name`` is an evaluator that can be used here (faster-coco-eval installed)."""
    from deployzoo.errors import DeployzooError

    if name not in EVALUATORS:
        raise DeployzooError(f"unknown COCO evaluator {name!r}; choose from {', '.join(EVALUATORS)}")
    if name == "faster-coco-eval":
        try:
            import faster_coco_eval  # noqa: F401
        except ImportError:
            raise DeployzooError("--coco-evaluator faster-coco-eval needs the faster-coco-eval package: "
                                 "pip install 'deployzoo[fastcoco]'") from None


def _run_cocoeval(coco_gt, records: list[dict], iou_type: str, image_ids: list[int], evaluator: str = "pycocotools"):
    """COCOeval after evaluate/accumulate/summarize; returns (the COCOeval, the 12 summary lines).

    ``evaluator``: "pycocotools" (the reference) or "faster-coco-eval" (its COCOeval_faster, a C++ port of
    the same algorithm, fed a COCO of its own built from the same ground-truth dict and the same records)."""
    if evaluator == "faster-coco-eval":
        return _run_faster_cocoeval(coco_gt, records, iou_type, image_ids)
    from pycocotools.cocoeval import COCOeval

    if records:
        dets = [dict(r) for r in records]  # loadRes writes area/id/iscrowd into the dicts it gets
        if iou_type == "segm":
            for d in dets:
                d.pop("bbox", None)  # mask area, not box area, for the small/medium/large splits
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(dets)
    else:
        coco_dt = _empty_results(coco_gt)
    coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
    coco_eval.params.imgIds = list(image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
        coco_eval.accumulate()
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        coco_eval.summarize()
    return coco_eval, [line for line in text.getvalue().splitlines() if line.strip()]


def _run_faster_cocoeval(coco_gt, records: list[dict], iou_type: str, image_ids: list[int]):
    """faster-coco-eval's COCOeval_faster on the same inputs as :func:`_run_cocoeval` (quiet)."""
    from faster_coco_eval import COCO, COCOeval_faster

    def quiet(*_args, **_kwargs) -> None:
        pass

    gt = COCO(print_function=quiet)
    gt.dataset = copy.deepcopy(coco_gt.dataset)
    gt.createIndex()
    if records:
        dets = [dict(r) for r in records]
        if iou_type == "segm":
            for d in dets:
                d.pop("bbox", None)
        dt = gt.loadRes(dets)
    else:
        dt = COCO(print_function=quiet)
        dt.dataset = {"images": list(gt.dataset["images"]), "categories": copy.deepcopy(gt.dataset["categories"]),
                      "annotations": []}
        dt.createIndex()
    lines: list[str] = []
    evaluator = COCOeval_faster(gt, dt, iou_type, print_function=quiet)
    evaluator.params.imgIds = list(image_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.print_function = lambda line, *_: lines.append(str(line))
    evaluator.summarize()
    return evaluator, [line for line in lines if line.strip()]


def evaluate_coco(
    coco_gt,
    detections: Mapping[int, Detections],
    category_ids: Sequence[int],
    class_names: Sequence[str],
    iou_types: Sequence[str] = IOU_TYPES,
    image_ids: Sequence[int] | None = None,
    evaluator: str = "pycocotools",
) -> COCOEvalResult:
    """COCO AP of ``detections`` against ``coco_gt`` with pycocotools.

    Args:
        coco_gt: a ``pycocotools.coco.COCO`` holding the ground truth.
        detections: COCO image id -> detections in original-image pixels (labels index ``class_names``;
            ``masks`` RLEs of the image size when "segm" is asked for). Images without an entry have
            no detections.
        category_ids: label -> COCO category id (every one must be a category of ``coco_gt``).
        class_names: label -> name, for the per-category table.
        iou_types: any of "bbox", "segm".
        image_ids: the images to score (the ones that were run); all of ``coco_gt``'s when None.
        evaluator: "pycocotools" (the reference) or "faster-coco-eval" (see :func:`evaluate_coco_records`).

    Raises:
        ValueError: unknown iou type or image id, detections for an image not in ``image_ids``,
            category ids missing from the ground truth, or malformed detections (bad shapes, labels,
            non-finite values, missing or wrongly sized masks for "segm").
    """
    iou_types, image_ids = _check_args(coco_gt, category_ids, class_names, iou_types, image_ids)
    wanted = set(image_ids)
    extra = [i for i in detections if int(i) not in wanted]
    if extra:
        raise ValueError(f"detections for {len(extra)} image(s) not being evaluated, e.g. {extra[0]}")
    detections = {int(i): d for i, d in detections.items()}
    with_masks = "segm" in iou_types
    for image_id, dets in detections.items():
        info = coco_gt.imgs[image_id]
        _check_detections(image_id, dets, len(class_names), with_masks, (int(info["height"]), int(info["width"])))
    records = results_records(detections, category_ids, image_ids, with_masks)
    return evaluate_coco_records(coco_gt, records, category_ids, class_names, iou_types, image_ids, evaluator)


def _check_args(coco_gt, category_ids, class_names, iou_types, image_ids) -> tuple[tuple[str, ...], list[int]]:
    iou_types = tuple(iou_types)
    bad = [t for t in iou_types if t not in IOU_TYPES]
    if bad or not iou_types:
        raise ValueError(f"iou_types must be a non-empty subset of {IOU_TYPES}, got {iou_types}")
    if len(category_ids) != len(class_names):
        raise ValueError(f"{len(category_ids)} category ids but {len(class_names)} class names")
    missing_cats = [c for c in category_ids if c not in coco_gt.cats]
    if missing_cats:
        raise ValueError(f"category ids {missing_cats} are not categories of the ground truth")
    image_ids = sorted(coco_gt.imgs) if image_ids is None else [int(i) for i in image_ids]
    unknown = [i for i in image_ids if i not in coco_gt.imgs]
    if unknown:
        raise ValueError(f"{len(unknown)} image id(s) not in the ground truth, e.g. {unknown[0]}")
    return iou_types, image_ids


def records_for_iou_type(records: Sequence[dict], iou_type: str) -> list[dict]:
    """What one IoU type is scored from, as the frameworks write it per type (mmdetection's
    ``results.bbox.json`` / ``results.segm.json``): "bbox" records without ``segmentation``, "segm" records
    without ``bbox`` (so that pycocotools' ``loadRes`` takes the mask area for small/medium/large)."""
    drop = "segmentation" if iou_type == "bbox" else "bbox"
    return [{k: v for k, v in r.items() if k != drop} for r in records]


def evaluate_coco_records(
    coco_gt,
    records: Sequence[dict],
    category_ids: Sequence[int],
    class_names: Sequence[str],
    iou_types: Sequence[str] = IOU_TYPES,
    image_ids: Sequence[int] | None = None,
    evaluator: str = "pycocotools",
) -> COCOEvalResult:
    """COCO AP of official results records (``image_id``, ``category_id``, ``bbox`` [x, y, w, h] pixels,
    ``score``, and ``segmentation`` RLE for "segm"), scored as given: each IoU type sees
    :func:`records_for_iou_type` of them, so the figures are what pycocotools gives on the per-type files.

    ``evaluator``: "pycocotools" (default, the reference) or "faster-coco-eval" (COCOeval_faster; equal
    stats and per-class APs, checked by tests/test_score.py whenever it is installed). The records are
    expected to be checked already (deployzoo.score checks a results file; :func:`evaluate_coco` checks
    detections); ``image_ids`` and categories are checked here.
    """
    iou_types, image_ids = _check_args(coco_gt, category_ids, class_names, iou_types, image_ids)
    if evaluator not in EVALUATORS:
        raise ValueError(f"unknown COCO evaluator {evaluator!r}; expected one of {EVALUATORS}")
    records = list(records)
    notes = []
    if not records:
        notes.append("no detections: every category with ground truth scores AP 0")
    if not image_ids:
        notes.append("no images evaluated: AP is undefined (None)")

    # Ground-truth counts per category over the evaluated images (crowd regions excluded, as COCOeval).
    num_gt: dict[int, int] = {}
    for image_id in image_ids:
        for ann in coco_gt.imgToAnns.get(image_id, []):
            if not ann.get("iscrowd", 0):
                num_gt[ann["category_id"]] = num_gt.get(ann["category_id"], 0) + 1
    num_dets: dict[int, int] = {}
    for r in records:
        num_dets[r["category_id"]] = num_dets.get(r["category_id"], 0) + 1

    by_type = {}
    for iou_type in iou_types:
        coco_eval, summary = _run_cocoeval(coco_gt, records_for_iou_type(records, iou_type), iou_type, image_ids,
                                           evaluator)
        # precision: [T IoUs, R recall points, K categories, A areas, M maxDets]; area "all", maxDets 100.
        precision = coco_eval.eval["precision"]
        cat_index = {cid: k for k, cid in enumerate(coco_eval.params.catIds)}
        per_category = []
        for cid, name in zip(category_ids, class_names):
            p = precision[:, :, cat_index[int(cid)], 0, -1]
            p = p[p > -1]
            per_category.append(CategoryAP(int(cid), str(name), float(np.mean(p)) if p.size else float("nan"),
                                           num_gt.get(int(cid), 0), num_dets.get(int(cid), 0)))
        by_type[iou_type] = IoUTypeResult(iou_type, [float(v) for v in coco_eval.stats[:12]], summary[:12],
                                          per_category, len(records))
    return COCOEvalResult(by_type, len(image_ids), records, notes)
