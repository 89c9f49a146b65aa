"""Test helper: edit the COCO instances JSON of a (copied) synthetic COCO tree in place."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def coco_json_path(root: Path) -> Path:
    """``root/annotations/instances_val2017.json``, the layout ``make_synthetic_coco`` writes."""
    return Path(root) / "annotations" / "instances_val2017.json"


def edit_coco_json(root: Path, change: Callable[[dict[str, Any]], Any]) -> Path:
    """Load the JSON, let ``change`` modify the dict in place, write it back; returns the file's path."""
    path = coco_json_path(root)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path
