"""Task adapters for your own classes and your own data (issue 17): the COCO, VOC and VOC-segmentation tasks with
a class list that is not the official one, COCO files outside the val2017 layout, and synthetic sets drawn with
those classes (the official generators' images, their labels folded onto the N classes).

Category ids written to results are the dataset's own: COCO's come from the file's ``categories`` (matched by
name, deployzoo.fine_tuned); VOC-format sets name their objects in the XML, so a class list is all they need.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np

from deployzoo.data.coco import COCO_CATEGORY_IDS, COCODetection
from deployzoo.data.voc import VOC_CLASSES, VOCDetection
from deployzoo.tasks.coco_detection import COCODetectionTask
from deployzoo.tasks.voc_detection import VOCDetectionTask
from deployzoo.tasks.voc_segmentation import VOCSegmentationTask


class CustomCOCOTask(COCODetectionTask):
    """COCO AP with any categories and ids; the annotation file and image folder may be anywhere.

    Args (beyond COCODetectionTask's): ``annotation_file`` (default ``<root>/annotations/instances_<split>.json``),
    ``image_dir`` (default ``<root>/<split>``).
    """

    def __init__(self, split: str = "val2017", class_names: Sequence[str] = (), category_ids: Sequence[int] = (),
                 iou_types: Sequence[str] = ("bbox", "segm"), annotation_file: str | Path | None = None,
                 image_dir: str | Path | None = None):
        super().__init__(split, class_names, category_ids, iou_types)
        self.annotation_file = None if annotation_file is None else Path(annotation_file)
        self.image_dir = None if image_dir is None else Path(image_dir)
        if self.annotation_file is not None:
            self.dataset_name = f"COCO-format {self.annotation_file.name}"

    def open(self, root: str | Path) -> COCODetection:
        from deployzoo.errors import BadInputError

        dataset = COCODetection(root, split=self.split, annotation_file=self.annotation_file)
        if self.image_dir is not None:
            dataset.image_dir = self.image_dir
        missing = [c for c in self.category_ids if c not in dataset.coco.cats]
        if missing:
            raise BadInputError(dataset.split_file, f"the model's category ids {missing} are not in 'categories'")
        return dataset

    def make_synthetic(self, root: str | Path, num_images: int = 8, seed: int = 0) -> Path:
        """The official synthetic COCO set with its categories replaced by ours: object k of COCO class c gets
        class c mod N (ours in order, with our category ids)."""
        root = super().make_synthetic(root, num_images=num_images, seed=seed)
        path = Path(root) / "annotations" / f"instances_{self.split}.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        n = len(self.class_names)
        for ann in data["annotations"]:
            ann["category_id"] = self.category_ids[COCO_CATEGORY_IDS.index(ann["category_id"]) % n]
        data["categories"] = [{"id": c, "name": name, "supercategory": "object"}
                              for c, name in zip(self.category_ids, self.class_names)]
        path.write_text(json.dumps(data), encoding="utf-8")
        return root


class CustomVOCTask(VOCDetectionTask):
    """VOC07 mAP on a VOC-format detection set whose XML objects are named from ``class_names``."""

    def open(self, root: str | Path) -> VOCDetection:
        return VOCDetection(root, year=self.year, split=self.split, class_names=self.class_names)

    def make_synthetic(self, root: str | Path, num_images: int = 16, seed: int = 0) -> Path:
        """The official synthetic VOC set with each object's VOC class c renamed to our class c mod N."""
        root = super().make_synthetic(root, num_images=num_images, seed=seed)
        dataset = VOCDetection(root, year=self.year, split=self.split)
        for image_id in dataset.ids:
            path = dataset.annotation_path(image_id)
            tree = ET.parse(path)
            for node in tree.getroot().iter("name"):
                if node.text in VOC_CLASSES:
                    node.text = self.class_names[VOC_CLASSES.index(node.text) % len(self.class_names)]
            tree.write(path)
        return root


class CustomVOCSegTask(VOCSegmentationTask):
    """mIoU on a VOC-format segmentation set with ``class_names`` (label value = index; 255 = ignore)."""

    def make_synthetic(self, root: str | Path, num_images: int = 8, seed: int = 0) -> Path:
        """The official synthetic set with label values v (1..20) folded to v mod N (0 stays background)."""
        from deployzoo.data.voc_seg import read_label_png, write_label_png

        root = super().make_synthetic(root, num_images=num_images, seed=seed)
        n = len(self.class_names)
        for path in Path(root).glob(f"VOC{self.year}/SegmentationClass/*.png"):
            labels = read_label_png(path)
            folded = np.where(labels == self.ignore_index, labels, labels % n).astype(np.uint8)
            write_label_png(path, folded)
        return root


def task_for_classes(task, class_names: Sequence[str], category_ids: Sequence[int]):
    """``task`` (an official adapter) for our class list; COCO tasks also take our category ids."""
    if isinstance(task, COCODetectionTask):
        layout = {"annotation_file": getattr(task, "annotation_file", None),
                  "image_dir": getattr(task, "image_dir", None)}
        return CustomCOCOTask(task.split, class_names, category_ids, task.iou_types, **layout)
    if isinstance(task, VOCDetectionTask):
        return CustomVOCTask(task.year, task.split, class_names, protocol=task.protocols[0])  # the model's protocol
    if isinstance(task, VOCSegmentationTask):
        return CustomVOCSegTask(task.year, task.split, class_names, task.ignore_index)
    raise TypeError(f"no class-list variant of {type(task).__name__}")


def with_layout(task, annotation_file: str | Path | None, image_dir: str | Path | None):
    """A COCO task reading ``annotation_file`` and the images in ``image_dir`` (``--annotations``/``--images``)."""
    from deployzoo.errors import DeployzooError

    if not isinstance(task, COCODetectionTask):
        raise DeployzooError("--annotations / --images apply to COCO-format datasets; this model is judged on "
                             f"{task.dataset_name} (give the VOC-format directory with --data)")
    return CustomCOCOTask(task.split, task.class_names, task.category_ids, task.iou_types,
                          annotation_file=annotation_file, image_dir=image_dir)
