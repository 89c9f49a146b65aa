"""Which kind of dataset a folder holds, and the task that scores it without a model (``deployzoo score``).

Kinds, recognised from the official layouts their readers take (deployzoo.data.coco, voc, voc_seg):

- ``coco``: ``<root>/annotations/instances_<split>.json`` (``val2017`` preferred when there are several);
- ``voc07``: ``ImageSets/Main/test.txt`` in ``<root>``, ``<root>/VOC2007`` or ``<root>/VOCdevkit/VOC2007``;
- ``voc12seg``: ``ImageSets/Segmentation/val.txt`` in ``<root>``, ``<root>/VOC2012`` or
  ``<root>/VOCdevkit/VOC2012``.

:func:`dataset_kind` is the one place the layout is recognised; a new layout (custom annotation files,
other splits) is added there and in :func:`task_for_kind`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from deployzoo.errors import BadInputError, DeployzooError

DATASET_KINDS = ("coco", "voc07", "voc12seg")
_VOC_SPLITS = {"voc07": ("2007", "Main", "test"), "voc12seg": ("2012", "Segmentation", "val")}


def _coco_splits(root: Path) -> list[str]:
    folder = root / "annotations"
    if not folder.is_dir():
        return []
    return sorted(p.name[len("instances_"):-len(".json")] for p in folder.glob("instances_*.json"))


def _voc_year_dir(root: Path, kind: str) -> Path | None:
    year, subdir, split = _VOC_SPLITS[kind]
    for cand in (root, root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
        if (cand / "ImageSets" / subdir / f"{split}.txt").is_file():
            return cand
    return None


def dataset_kind(root: str | Path) -> str:
    """The kind of dataset at ``root``: one of :data:`DATASET_KINDS`.

    Raises:
        BadInputError: ``root`` does not exist, holds none of the layouts, or more than one (then
            ``--dataset`` must say which), naming ``root`` and what was looked for.
    """
    root = Path(root)
    if not root.is_dir():
        raise BadInputError(root, "is a file, not a dataset directory" if root.exists()
                            else "dataset directory does not exist")
    found = []
    if _coco_splits(root):
        found.append("coco")
    found += [kind for kind in ("voc07", "voc12seg") if _voc_year_dir(root, kind) is not None]
    if not found:
        raise BadInputError(root, "no dataset layout recognised: expected COCO (annotations/instances_<split>.json), "
                                  "VOC2007 detection (ImageSets/Main/test.txt) or VOC2012 segmentation "
                                  "(ImageSets/Segmentation/val.txt), in it or in VOC<year>/ or VOCdevkit/VOC<year>/ "
                                  "below it")
    if len(found) > 1:
        raise BadInputError(root, f"holds more than one dataset ({', '.join(found)}): say which with --dataset")
    return found[0]


def coco_split(root: str | Path) -> str:
    """The split whose ``annotations/instances_<split>.json`` is scored: the only one, else ``val2017``."""
    splits = _coco_splits(Path(root))
    if len(splits) == 1:
        return splits[0]
    if "val2017" in splits:
        return "val2017"
    if not splits:
        raise BadInputError(Path(root) / "annotations", "no instances_<split>.json: not a COCO dataset")
    raise BadInputError(Path(root) / "annotations", f"several annotation files ({', '.join(splits)}) and none is "
                                                    f"instances_val2017.json: keep the one to score")


def _coco_task(custom_layout: bool = False):
    """COCODetectionTask, or for a file outside the val2017 layout its custom-layout form (takes
    ``annotation_file``)."""
    if custom_layout:
        from deployzoo.tasks.custom import CustomCOCOTask

        return CustomCOCOTask
    from deployzoo.tasks.coco_detection import COCODetectionTask

    return COCODetectionTask


def _mask_only_task(custom_layout: bool = False):
    """COCO scored on masks alone (a ``coco_results.segm.json`` holds no boxes): "segm" is the only IoU type
    and mask AP the headline."""
    base = _coco_task(custom_layout)

    class MaskOnlyCOCOTask(base):
        metric_name = "COCO mask AP"

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.iou_types = ("segm",)

        @staticmethod
        def headline(result) -> float:
            ap = result.segm_ap
            return float("nan") if ap is None else 100.0 * ap

    return MaskOnlyCOCOTask


def task_for_kind(kind: str, root: str | Path, iou_types: Sequence[str] = ("bbox",),
                  class_names: Sequence[str] | None = None, annotation_file: str | Path | None = None) -> Any:
    """The task adapter that scores ``kind`` at ``root`` without a model.

    COCO takes its categories (ids and names) from the annotation file itself (``annotation_file`` when the set
    is not in the val2017 layout); VOC detection and segmentation use the VOC class lists, or ``class_names``
    for a VOC-format set of your own classes. ``iou_types``: COCO only ("bbox", plus "segm" for masks).

    Raises:
        DeployzooError: ``class_names`` for COCO (its file names the categories), ``annotation_file`` for VOC.
    """
    if kind != "coco" and annotation_file is not None:
        raise DeployzooError(f"--annotations is for COCO-format sets; {root} is a {kind} set")
    if kind == "coco":
        from deployzoo.data.coco import COCODetection

        if class_names is not None:
            raise DeployzooError("--classes is for VOC-format sets: a COCO file names its categories itself")
        split = coco_split(root) if annotation_file is None else "val2017"
        # validated here: a bad file is named before scoring
        path = COCODetection(root, split=split, annotation_file=annotation_file).split_file
        categories = json.loads(path.read_text(encoding="utf-8"))["categories"]
        names, ids = [c["name"] for c in categories], [c["id"] for c in categories]
        custom = annotation_file is not None
        layout = {"annotation_file": annotation_file} if custom else {}
        if "bbox" not in iou_types:  # a segm results file (masks without boxes): mask AP is the headline
            return _mask_only_task(custom)(split=split, class_names=names, category_ids=ids,
                                           iou_types=("bbox", "segm"), **layout)
        return _coco_task(custom)(split=split, class_names=names, category_ids=ids, iou_types=tuple(iou_types),
                                  **layout)
    if kind == "voc07":
        from deployzoo.tasks.voc_detection import VOCDetectionTask

        task = VOCDetectionTask()
    elif kind == "voc12seg":
        from deployzoo.tasks.voc_segmentation import VOCSegmentationTask

        task = VOCSegmentationTask()
    else:
        task = None
    if task is not None:
        if class_names is None:
            return task
        from deployzoo.tasks.custom import task_for_classes

        return task_for_classes(task, tuple(class_names), tuple(range(1, len(class_names) + 1)))
    raise DeployzooError(f"unknown dataset kind {kind!r}; choose from {', '.join(DATASET_KINDS)}")
