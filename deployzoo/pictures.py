"""Which pictures the commands write, and where: ``predict`` one per input, ``eval`` the first N images and the N
that disagree most with the ground truth, ``compare`` engine and reference side by side where they differ.
The drawing itself is deployzoo.draw."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from deployzoo import draw
from deployzoo.structures import Detections, LabelMap

PICTURE_DIR = "pictures"
MATCH_IOU = 0.5  # a detection agrees with a ground-truth box of its class at IoU >= 0.5 (the VOC07 / AP50 rule)


def weights_caption(stand_in: bool) -> list[str]:
    return ["stand-in weights: NOT the trained model (give --checkpoint)"] if stand_in else []


def predict_pictures(spec: Any, paths: Sequence[str], records: Sequence[dict], out_dir: str | Path,
                     stand_in: bool = False, score_threshold: float = draw.DEFAULT_SCORE_THRESHOLD,
                     skip: Sequence[str] = ()) -> list[Path]:
    """One picture per input in ``out_dir/pictures/<name>.png`` (``name``: output_names of ``paths``, the names
    label maps get), drawn from the predictions.json ``records`` of those inputs (matched by their "path").
    ``skip``: inputs left out of the run (undecodable), which get no picture."""
    from deployzoo.data.inputs import output_names

    out_dir = Path(out_dir)
    names = output_names(paths)
    by_path: dict[str, list[dict]] = {str(p): [] for p in paths}
    for record in records:
        by_path.setdefault(str(record.get("path")), []).append(record)
    written = []
    skipped = {str(p) for p in skip}
    for path, name in zip(paths, names):
        if str(path) in skipped:
            continue
        photo = draw.read_photo(path)
        mine = by_path.get(str(path), [])
        caption = [f"{spec.name}: {Path(path).name}", *weights_caption(stand_in)]
        if spec.task == "semantic-segmentation":
            from deployzoo.data.voc_seg import read_label_png

            if not mine:
                continue
            result: Detections | LabelMap = LabelMap(read_label_png(out_dir / mine[0]["label_map"]))
        else:
            result = draw.detections_from_records(mine, spec.class_names)
        picture = draw.draw_result(photo, result, spec, caption, score_threshold)
        written.append(draw.save_png(picture, out_dir / PICTURE_DIR / f"{name}.png"))
    return written


# --------------------------------------------------------------------------- eval: ground truth and disagreement


def ground_truth_boxes(spec: Any, annotation: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(boxes [N, 4] x1, y1, x2, y2 in image pixels, category ids [N]) of a detection task's ground-truth handle
    (VOC: deployzoo.data.voc.VOCAnnotation; COCO: tasks.coco_detection.COCOImageGT, crowd regions left out), or
    None for a handle without boxes (segmentation)."""
    from deployzoo.predictions import category_id

    if hasattr(annotation, "boxes") and hasattr(annotation, "labels"):
        labels = [category_id(spec, int(label)) for label in np.asarray(annotation.labels).tolist()]
        return np.asarray(annotation.boxes, np.float64).reshape(-1, 4), np.asarray(labels, np.int64)
    if hasattr(annotation, "dataset") and hasattr(annotation.dataset, "annotations"):
        anns = [a for a in annotation.dataset.annotations(annotation.image_id) if not a.get("iscrowd")]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float64)
        return boxes.reshape(-1, 4), np.array([a["category_id"] for a in anns], np.int64)
    return None


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of x1, y1, x2, y2 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def detection_disagreement(spec: Any, result: Detections, gt: tuple[np.ndarray, np.ndarray],
                           score_threshold: float = draw.DEFAULT_SCORE_THRESHOLD) -> int:
    """Missed ground-truth boxes + detections (score >= threshold) matching none, greedily by score, same class,
    IoU >= ``MATCH_IOU``."""
    from deployzoo.predictions import category_id

    shown = result.top(None, score_threshold)
    gt_boxes, gt_classes = gt
    if not len(shown) or not len(gt_boxes):
        return len(shown) + len(gt_boxes)
    classes = np.array([category_id(spec, int(label)) for label in shown.labels.tolist()], np.int64)
    iou = _iou(shown.boxes.astype(np.float64), gt_boxes)
    iou[classes[:, None] != gt_classes[None, :]] = 0.0
    taken = np.zeros(len(gt_boxes), bool)
    matched = 0
    for k in np.argsort(-shown.scores, kind="stable"):
        candidates = np.where(taken, -1.0, iou[k])
        best = int(np.argmax(candidates))
        if candidates[best] >= MATCH_IOU:
            taken[best] = True
            matched += 1
    return (len(shown) - matched) + (len(gt_boxes) - matched)


def label_disagreement(result: LabelMap, gt: np.ndarray, ignore_index: int = 255) -> float:
    """Percent of the labelled pixels (not ``ignore_index``) whose predicted class is not the ground truth's."""
    valid = gt != ignore_index
    return 100.0 * float(np.count_nonzero((result.labels != gt) & valid)) / max(1, int(valid.sum()))


def eval_pictures(spec: Any, results: Mapping[str, Detections | LabelMap], annotations: Mapping[str, Any],
                  image_path: Callable[[str], Any], out_dir: str | Path, count: int = 3, stand_in: bool = False,
                  score_threshold: float = draw.DEFAULT_SCORE_THRESHOLD) -> list[dict[str, Any]]:
    """Pictures of the first ``count`` evaluated images and of the ``count`` others that disagree most with the
    ground truth, in ``out_dir/pictures/``: detections over the photo with the ground-truth boxes as thin white
    outlines, or the predicted label map with a legend. Returns one ``{"file" (relative to out_dir), "image_id",
    "why", "disagreement", "unit"}`` per picture."""
    from deployzoo.data.voc_seg import read_label_png

    out_dir = Path(out_dir)
    ids = [i for i in annotations if i in results]
    gts: dict[str, Any] = {}
    scores: dict[str, float] = {}
    segmentation = spec.task == "semantic-segmentation"
    for i in ids:
        if segmentation:
            gts[i] = read_label_png(annotations[i].label_path)
            scores[i] = label_disagreement(results[i], gts[i])
        else:
            gts[i] = ground_truth_boxes(spec, annotations[i])
            scores[i] = float(detection_disagreement(spec, results[i], gts[i], score_threshold)) if gts[i] else 0.0
    first = ids[:count]
    rest = sorted((i for i in ids if i not in first), key=lambda i: -scores[i])[:count]
    unit = "share of labelled pixels wrong" if segmentation else f"missed + unmatched detections (IoU {MATCH_IOU})"
    written = []
    for why, chosen_ids in (("first", first), ("most disagreement", rest)):
        for k, i in enumerate(chosen_ids):
            photo = draw.read_photo(image_path(i))
            amount = f"{scores[i]:.1f}%" if segmentation else f"{scores[i]:.0f}"
            caption = [f"{spec.name}: image {i} ({why}); disagreement with ground truth: {amount}",
                       *weights_caption(stand_in)]
            if segmentation:
                picture = draw.draw_result(photo, results[i], spec, caption)
            else:
                caption.append("white outlines: ground truth")
                picture = draw.draw_result(photo, results[i], spec, caption, score_threshold,
                                           ground_truth=gts[i][0] if gts[i] else None)
            name = f"{'first' if why == 'first' else 'disagree'}-{k + 1}-{_safe(i)}.png"
            draw.save_png(picture, out_dir / PICTURE_DIR / name)
            written.append({"file": f"{PICTURE_DIR}/{name}", "image_id": i, "why": why,
                            "disagreement": scores[i], "unit": unit})
    return written


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))[:60]


# --------------------------------------------------------------------------- compare: engine | reference


def compare_pictures(spec: Any, results: Sequence[tuple[str, str, Any, Any]], out_dir: str | Path,
                     engine_name: str, reference_name: str, stand_in: bool = False, every: bool = False,
                     score_threshold: float = draw.DEFAULT_SCORE_THRESHOLD) -> list[Path]:
    """``out_dir/pictures/<name>.png``: the engine's result (left) and the reference's (right) side by side for
    each image where they differ (verify.Agreement.results; ``every``: all images). Detections differ when one
    side has a detection the other does not match (deployzoo.compare.match_detections: same label, IoU, score);
    label maps when any pixel differs. Returns the pictures written."""
    from deployzoo.compare import match_detections
    from deployzoo.data.inputs import output_names

    out_dir = Path(out_dir)
    names = output_names([path for _, path, _, _ in results])
    written = []
    for (image_id, path, engine_result, reference_result), name in zip(results, names):
        if isinstance(reference_result, LabelMap):
            differing = int(np.count_nonzero(engine_result.labels != reference_result.labels))
            notes = (f"{differing} pixels differ", "")
        else:
            m = match_detections(engine_result, reference_result)
            # Near-tie swaps pass the comparison but are still different detections on the picture.
            differing = m.unmatched_engine + m.unmatched_reference + 2 * m.swaps
            swaps = f" ({m.swaps} of them near-tie swaps)" if m.swaps else ""
            notes = (f"{m.unmatched_engine + m.swaps} detections only here{swaps}",
                     f"{m.unmatched_reference + m.swaps} only here{swaps}")
        if not differing and not every:
            continue
        photo = draw.read_photo(path)
        caption = [f"{spec.name}: {Path(path).name}", *weights_caption(stand_in)]
        left = draw.draw_result(photo, engine_result, spec, [f"engine: {engine_name}", *caption, notes[0]],
                                score_threshold)
        right = draw.draw_result(photo, reference_result, spec,
                                 [f"reference: {reference_name}", *caption, *([notes[1]] if notes[1] else [])],
                                 score_threshold)
        written.append(draw.save_png(draw.side_by_side(left, right), out_dir / PICTURE_DIR / f"{name}.png"))
    return written
