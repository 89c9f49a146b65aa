"""VOC semantic segmentation (VOC2012 val by default): dataset, synthetic stand-in, mIoU."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deployzoo.data.synthetic_voc_seg import make_synthetic_voc_seg
from deployzoo.data.voc_seg import (
    IGNORE_INDEX,
    VOC_SEG_CLASSES,
    VOCSegmentation,
    read_label_png,
)
from deployzoo.errors import BadInputError
from deployzoo.eval.miou import MIoUResult, SegmentationAccumulator
from deployzoo.structures import LabelMap
from deployzoo.tasks.validation import CheckedSplit, check_split, size_mismatch


@dataclass(frozen=True)
class VOCSegGT:
    """Ground truth handle of one image: where its label PNG is and its size (pixels read at evaluation).

    Attributes:
        image_id: the id from the split file.
        label_path: the image's SegmentationClass PNG (checked to be a P or L mode PNG).
        height, width: label size from the PNG header (= the image size in VOC).
    """

    image_id: str
    label_path: Path
    height: int
    width: int


class VOCSegmentationTask:
    """Adapter the pipeline uses for models judged by mmsegmentation's mIoU on VOC segmentation."""

    metric_name = "mIoU"
    protocols = ("whole",)

    def __init__(self, year: str = "2012", split: str = "val", class_names: Sequence[str] = VOC_SEG_CLASSES,
                 ignore_index: int = IGNORE_INDEX):
        self.year = str(year)
        self.split = split
        self.class_names = tuple(class_names)
        self.ignore_index = int(ignore_index)
        if 0 <= self.ignore_index < len(self.class_names):
            raise ValueError(f"ignore_index {self.ignore_index} is one of the {len(self.class_names)} class indices")
        self.dataset_name = f"VOC{self.year} {split}"

    def open(self, root: str | Path) -> VOCSegmentation:
        return VOCSegmentation(root, year=self.year, split=self.split)

    def validate(self, root: str | Path, skip_bad: bool = False, limit: int | None = None) -> CheckedSplit:
        """Open ``root`` and check it all before any inference: every label PNG's header, and for every image
        to run (the first ``limit``) that the image exists, has a readable header and its label's size, and
        that the label's pixels decode to class indices or the ignore value."""
        return check_split(self, root, skip_bad=skip_bad, limit=limit)

    def check_image(self, dataset: VOCSegmentation, image_id: str, handle: VOCSegGT, hw: tuple[int, int]) -> None:
        """Raise BadInputError unless the label PNG is the image's size (``hw``, as (H, W)) and holds labels."""
        if (handle.height, handle.width) != tuple(hw):
            raise BadInputError(handle.label_path, size_mismatch("the label PNG", (handle.height, handle.width),
                                                                 dataset.image_path(image_id), hw))
        self._read_gt(handle)

    def make_synthetic(self, root: str | Path, num_images: int = 8, seed: int = 0) -> Path:
        """Write a synthetic VOC segmentation tree under ``root`` and return the path to pass to :meth:`open`."""
        return make_synthetic_voc_seg(root, num_images=num_images, seed=seed, year=self.year, split=self.split)

    def load_ground_truth(
        self, dataset: VOCSegmentation, skip_bad: bool = False
    ) -> tuple[dict[str, VOCSegGT], list[tuple[str, str]]]:
        """Check every label PNG's header up front, so a missing or wrong file stops the run before inference.

        Pixels are not read here (they are read one image at a time by :meth:`evaluate`),
        so a PNG whose data is truncated is only found then.
        Returns (handles by id in split order, [(id, problem)] skipped when ``skip_bad``).
        """
        annotations: dict[str, VOCSegGT] = {}
        skipped: list[tuple[str, str]] = []
        for image_id in dataset.ids:
            try:
                height, width = dataset.label_size(image_id)
            except BadInputError as exc:
                if not skip_bad:
                    raise
                skipped.append((image_id, str(exc)))
                continue
            annotations[image_id] = VOCSegGT(image_id, dataset.label_path(image_id), height, width)
        return annotations, skipped

    def _read_gt(self, handle: VOCSegGT) -> np.ndarray:
        """The handle's labels, uint8 [H, W], with every value a class index or the ignore value."""
        gt = read_label_png(handle.label_path)
        num_classes = len(self.class_names)
        values = np.unique(gt)
        bad = values[(values >= num_classes) & (values != self.ignore_index)]
        if bad.size:
            raise BadInputError(handle.label_path, f"label value(s) {bad[:5].tolist()} are neither a class index "
                                                   f"(0..{num_classes - 1}) nor the ignore value {self.ignore_index}")
        return gt

    def evaluate(
        self,
        results: Mapping[str, LabelMap],
        annotations: Mapping[str, VOCSegGT],
        protocol: str = "whole",
    ) -> MIoUResult:
        """mIoU over the images in ``annotations`` (results for other images are ignored).

        Each prediction must have its ground truth's size (labels at the original image size).

        Raises:
            ValueError: unknown protocol, no result for an annotated image, or a predicted label
                outside the classes.
            BadInputError: a label PNG that cannot be read, holds unknown values, or whose shape
                differs from the prediction's (the message names the file).
        """
        if protocol not in self.protocols:
            raise ValueError(f"unknown protocol {protocol!r} for {self.metric_name}; expected one of {self.protocols}")
        missing = [k for k in annotations if k not in results]
        if missing:
            raise ValueError(f"no prediction for {len(missing)} annotated image(s), e.g. {missing[0]!r}")
        acc = SegmentationAccumulator(len(self.class_names), self.ignore_index)
        for image_id, handle in annotations.items():
            gt = self._read_gt(handle)
            pred = np.asarray(results[image_id].labels)
            if pred.shape != gt.shape:
                raise BadInputError(handle.label_path, f"prediction for {image_id!r} has shape {pred.shape}, "
                                                       f"the ground truth {gt.shape}")
            try:
                acc.add(pred, gt)
            except ValueError as exc:
                raise ValueError(f"prediction for image {image_id!r}: {exc}") from None
        return acc.result(self.class_names)

    def agreement(
        self,
        candidate: Mapping[str, LabelMap],
        reference: Mapping[str, LabelMap],
        annotations: Mapping[str, VOCSegGT],
    ) -> float | None:
        """mIoU (percent) of ``candidate``'s label maps scored against ``reference``'s as ground truth, on the
        images of ``annotations``: 100 when every pixel agrees."""
        acc = SegmentationAccumulator(len(self.class_names), self.ignore_index)
        for image_id in annotations:
            acc.add(np.asarray(candidate[image_id].labels), np.asarray(reference[image_id].labels))
        if acc.num_images == 0:
            return None
        return self.headline(acc.result(self.class_names))

    @staticmethod
    def headline(result: MIoUResult) -> float:
        """mIoU in percent (NaN when undefined: nothing evaluated)."""
        return float("nan") if math.isnan(result.miou) else 100.0 * result.miou

    @staticmethod
    def write_predictions(out_dir: str | Path, results: Mapping[str, LabelMap]) -> Path:
        """Write each prediction as ``out_dir/label_maps/<id>.png`` (VOC palette PNG); returns that folder."""
        from deployzoo.predictions import write_label_maps

        return write_label_maps(out_dir, results.items())
