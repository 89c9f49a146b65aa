"""The predictions contract: COCO-results-style records that other tools and acceptance checks read.

``predictions.json`` is a list of ``{"file_name", "path", "category", "category_id", "bbox": [x, y, w, h],
"score"}`` in original-image pixels (``file_name``: the image file's name; ``path``: the input as given, so
inputs that share a file name stay apart), one record per detection, images in the order given, detections in
the model's own output order. ``eval`` writes the same records (detections.json / predictions.json) with
``"image_id"`` after ``file_name``: the dataset's id of the image (COCO: the integer id; VOC: the id string,
e.g. "000002"); ``deployzoo score`` reads them by ``image_id``, else ``file_name``. Instance-segmentation
models add ``"segmentation"``, the COCO RLE (``{"size": [H, W], "counts": str}``) of the mask at the
original resolution. Detection models' ``category_id`` is the dataset's id (VOC: 1..20 in alphabetical
class order, i.e. the original label index with background = 0).

Semantic segmentation models write one record per image: ``{"file_name", "path", "label_map":
"label_maps/<name>.png" (a palette PNG of class indices at the original size, beside predictions.json; <name>
is the file stem, made unique where inputs share one: deployzoo.data.inputs.output_names), "height", "width",
"pixels": {class name: pixel count}}`` (classes present only).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from deployzoo.data.inputs import output_names
from deployzoo.registry import ModelSpec
from deployzoo.structures import Detections, LabelMap

LABEL_MAP_DIR = "label_maps"


def category_id(spec: ModelSpec, label: int) -> int:
    return int(spec.category_ids[label]) if spec.category_ids else int(label) + 1


def detection_records(spec: ModelSpec, file_name: str, detections: Detections, path: str | None = None) -> list[dict]:
    records = []
    where = {"file_name": file_name} if path is None else {"file_name": file_name, "path": path}
    for k, (box, score, label) in enumerate(
        zip(detections.boxes.tolist(), detections.scores.tolist(), detections.labels.tolist())
    ):
        x1, y1, x2, y2 = box
        record = {
            **where,
            "category": spec.class_names[label],
            "category_id": category_id(spec, label),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": score,
        }
        if detections.masks is not None:
            record["segmentation"] = detections.masks[k]
        records.append(record)
    return records


def label_map_record(spec: ModelSpec, file_name: str, result: LabelMap, name: str | None = None,
                     path: str | None = None) -> dict:
    """``name``: the label map's file name without .png (default: the file name's stem)."""
    values, counts = np.unique(result.labels, return_counts=True)
    height, width = result.labels.shape
    where = {"file_name": file_name} if path is None else {"file_name": file_name, "path": path}
    name = Path(file_name).stem if name is None else name
    return {**where, "label_map": f"{LABEL_MAP_DIR}/{name}.png",
            "height": int(height), "width": int(width),
            "pixels": {spec.class_names[int(v)]: int(c) for v, c in zip(values, counts)}}


def records_for(spec: ModelSpec, items: Iterable[tuple[str, Detections | LabelMap]],
                paths: Sequence[str] | None = None, names: Sequence[str] | None = None) -> list[dict]:
    """Records for (file name, result) pairs, in that order. ``paths``: each input as given (the records'
    "path"); ``names``: each label map's name (default: ``output_names`` of the file names, as
    :func:`write_label_maps` names them)."""
    items = list(items)
    if names is None and any(isinstance(r, LabelMap) for _, r in items):
        names = output_names([f for f, _ in items])
    out: list[dict] = []
    for k, (file_name, result) in enumerate(items):
        path = None if paths is None else paths[k]
        if isinstance(result, LabelMap):
            out.append(label_map_record(spec, file_name, result, names[k], path))
        else:
            out += detection_records(spec, file_name, result, path)
    return out


def write_label_maps(out_dir: str | Path, items: Iterable[tuple[str, LabelMap]],
                     names: Sequence[str] | None = None) -> Path:
    """Each (file name, label map) as ``out_dir/label_maps/<name>.png`` (VOC palette PNG); ``names`` default to
    ``output_names`` of the file names (the stem, made unique where two share one)."""
    from deployzoo.data.voc_seg import write_label_png

    items = list(items)
    names = output_names([f for f, _ in items]) if names is None else names
    folder = Path(out_dir) / LABEL_MAP_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, (_, result) in zip(names, items):
        write_label_png(folder / f"{name}.png", result.labels)
    return folder


def write_predictions(path: str | Path, records: list[dict]) -> Path:
    """Write records as JSON (floats in full float32 precision, one record per line for diffing).

    Strict JSON: the pipeline stops or skips an image whose outputs are not finite (deployzoo.nonfinite)
    before any record is made, so a NaN or infinity here is our bug, and raises before the file is written.
    """
    import json

    try:
        lines = [json.dumps(record, allow_nan=False) for record in records]
    except ValueError as exc:
        bad = next(r for r in records if not _is_strict(r))
        raise ValueError(f"internal error: a non-finite value reached {path}: {bad}") from exc
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write("[\n" + ",\n".join(lines) + ("\n" if lines else "") + "]\n")
    return path


def _is_strict(record: dict) -> bool:
    import json

    try:
        json.dumps(record, allow_nan=False)
        return True
    except ValueError:
        return False
