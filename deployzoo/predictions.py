"""The predictions contract: COCO-results-style records that other tools and acceptance checks read.

``predictions.json`` is a list of ``{"file_name", "category", "category_id", "bbox": [x, y, w, h],
"score"}`` in original-image pixels, one record per detection, images in the order given, detections
in the model's own output order; instance-segmentation models add ``"segmentation"``, the COCO RLE
(``{"size": [H, W], "counts": str}``) of the mask at the original resolution. Detection models' ``category_id`` is the dataset's id (VOC: 1..20 in
alphabetical class order, i.e. the original label index with background = 0).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from deployzoo.registry import ModelSpec
from deployzoo.structures import Detections


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


def records_for(spec: ModelSpec, items: Iterable[tuple[str, Detections]]) -> list[dict]:
    """Records for (file name, detections) pairs, in that order."""
    out: list[dict] = []
    for file_name, detections in items:
        out += detection_records(spec, file_name, detections)
    return out


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
