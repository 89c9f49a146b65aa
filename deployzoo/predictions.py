"""The predictions contract: COCO-results-style records that other tools and acceptance checks read.

``predictions.json`` is a list of ``{"file_name", "category", "category_id", "bbox": [x, y, w, h],
"score"}`` in original-image pixels, one record per detection, images in the order given, detections
in the model's own output order; instance-segmentation models add ``"segmentation"``, the COCO RLE
(``{"size": [H, W], "counts": str}``) of the mask at the original resolution. Detection models'
``category_id`` is the dataset's id (VOC: 1..20 in alphabetical class order, i.e. the original label index
with background = 0).

Semantic segmentation models write one record per image: ``{"file_name", "label_map": "label_maps/<stem>.png"
(a palette PNG of class indices at the original size, beside predictions.json), "height", "width",
"pixels": {class name: pixel count}}`` (classes present only).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from deployzoo.registry import ModelSpec
from deployzoo.structures import Detections, LabelMap

LABEL_MAP_DIR = "label_maps"


def category_id(spec: ModelSpec, label: int) -> int:
    return int(spec.category_ids[label]) if spec.category_ids else int(label) + 1


def detection_records(spec: ModelSpec, file_name: str, detections: Detections) -> list[dict]:
    records = []
    for k, (box, score, label) in enumerate(
        zip(detections.boxes.tolist(), detections.scores.tolist(), detections.labels.tolist())
    ):
        x1, y1, x2, y2 = box
        record = {
            "file_name": file_name,
            "category": spec.class_names[label],
            "category_id": category_id(spec, label),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": score,
        }
        if detections.masks is not None:
            record["segmentation"] = detections.masks[k]
        records.append(record)
    return records


def label_map_record(spec: ModelSpec, file_name: str, result: LabelMap) -> dict:
    values, counts = np.unique(result.labels, return_counts=True)
    height, width = result.labels.shape
    return {"file_name": file_name, "label_map": f"{LABEL_MAP_DIR}/{Path(file_name).stem}.png",
            "height": int(height), "width": int(width),
            "pixels": {spec.class_names[int(v)]: int(c) for v, c in zip(values, counts)}}


def records_for(spec: ModelSpec, items: Iterable[tuple[str, Detections | LabelMap]]) -> list[dict]:
    """Records for (file name, result) pairs, in that order."""
    out: list[dict] = []
    for file_name, result in items:
        if isinstance(result, LabelMap):
            out.append(label_map_record(spec, file_name, result))
        else:
            out += detection_records(spec, file_name, result)
    return out


def write_label_maps(out_dir: str | Path, items: Iterable[tuple[str, LabelMap]]) -> Path:
    """Each (file name, label map) as ``out_dir/label_maps/<stem>.png`` (VOC palette PNG)."""
    from deployzoo.data.voc_seg import write_label_png

    folder = Path(out_dir) / LABEL_MAP_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, result in items:
        write_label_png(folder / f"{Path(file_name).stem}.png", result.labels)
    return folder


def write_predictions(path: str | Path, records: list[dict]) -> Path:
    """Write records as JSON (floats in full float32 precision, one record per line for diffing)."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write("[\n")
        for i, record in enumerate(records):
            f.write(json.dumps(record) + (",\n" if i + 1 < len(records) else "\n"))
        f.write("]\n")
    return path
