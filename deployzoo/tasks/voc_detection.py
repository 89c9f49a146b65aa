"""VOC detection (VOC2007 test by default): dataset, synthetic stand-in, VOC07 mAP."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from deployzoo.data.synthetic_voc import make_synthetic_voc
from deployzoo.data.voc import VOC_CLASSES, VOCAnnotation, VOCDetection
from deployzoo.errors import BadInputError
from deployzoo.eval.voc07 import (AGREEMENT, PROTOCOLS, RETIRED_PROTOCOLS, ImageDetections, VOCEvalResult,
                                  evaluate_voc)
from deployzoo.structures import Detections
from deployzoo.tasks import reference_truth
from deployzoo.tasks.validation import CheckedSplit, check_split, size_mismatch


class VOCDetectionTask:
    """Adapter the pipeline uses for models judged by VOC07 11-point mAP.

    ``protocol``: the model's default, the one its published figure was measured with (see
    deployzoo.eval.voc07); ``protocols`` lists it first, then the others."""

    metric_name = "VOC07 11-point mAP"
    retired_protocols = RETIRED_PROTOCOLS  # removed name -> message naming what to use instead

    def __init__(self, year: str = "2007", split: str = "test", class_names: Sequence[str] = VOC_CLASSES,
                 protocol: str = "voc-devkit"):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown VOC protocol {protocol!r}; expected one of {tuple(PROTOCOLS)}")
        self.protocols = (protocol, *(p for p in PROTOCOLS if p != protocol))
        self.year = year
        self.split = split
        self.class_names = tuple(class_names)
        self.dataset_name = f"VOC{year} {split}"

    def open(self, root: str | Path) -> VOCDetection:
        return VOCDetection(root, year=self.year, split=self.split)

    def validate(self, root: str | Path, skip_bad: bool = False, limit: int | None = None) -> CheckedSplit:
        """Open ``root`` and check it all before any inference: every annotation XML parses, and every image
        to run (the first ``limit``) exists, has a readable header and the ``<size>`` its XML gives."""
        return check_split(self, root, skip_bad=skip_bad, limit=limit)

    def check_image(self, dataset: VOCDetection, image_id: str, ann: VOCAnnotation, hw: tuple[int, int]) -> None:
        """Raise BadInputError unless the image file's (H, W) ``hw`` is the XML's ``<size>``."""
        if (ann.height, ann.width) != tuple(hw):
            raise BadInputError(dataset.annotation_path(image_id),
                                size_mismatch("<size>", (ann.height, ann.width), dataset.image_path(image_id), hw))

    def make_synthetic(self, root: str | Path, num_images: int = 16, seed: int = 0) -> Path:
        return make_synthetic_voc(root, num_images=num_images, seed=seed, year=self.year, split=self.split)

    def load_ground_truth(
        self, dataset: VOCDetection, skip_bad: bool = False
    ) -> tuple[dict[str, VOCAnnotation], list[tuple[str, str]]]:
        """Parse every annotation of the split up front, so a bad XML stops the run before inference.

        Returns (annotations by id in split order, [(id, problem)] skipped when ``skip_bad``).
        """
        annotations: dict[str, VOCAnnotation] = {}
        skipped: list[tuple[str, str]] = []
        for image_id in dataset.ids:
            try:
                annotations[image_id] = dataset.annotation(image_id)
            except BadInputError as exc:
                if not skip_bad:
                    raise
                skipped.append((image_id, str(exc)))
        return annotations, skipped

    def evaluate(
        self,
        results: Mapping[str, Detections],
        annotations: Mapping[str, VOCAnnotation],
        protocol: str | None = None,
    ) -> VOCEvalResult:
        """VOC07 mAP over the images in ``annotations`` (those skipped as bad are left out by the caller),
        under ``protocol`` (default: the model's, ``protocols[0]``)."""
        dets = {
            image_id: ImageDetections(d.boxes, d.scores, d.labels) for image_id, d in results.items() if image_id in annotations
        }
        return evaluate_voc(dets, annotations, self.class_names, protocol=protocol or self.protocols[0])

    def protocol_equals(self, protocol: str) -> str:
        """What ``protocol``'s figures equal (framework, file), for reports."""
        return PROTOCOLS[protocol].equals

    def protocol_rules(self, protocol: str) -> str:
        """``protocol``'s matching and averaging rules in one line (IoU comparison, +1, ties, mean), for reports."""
        return PROTOCOLS[protocol].rules

    @staticmethod
    def headline(result: VOCEvalResult) -> float:
        """The figure compared with the published one, in percent."""
        return 100.0 * result.map

    def agreement(
        self,
        candidate: Mapping[str, Detections],
        reference: Mapping[str, Detections],
        annotations: Mapping[str, VOCAnnotation],
    ) -> float | None:
        """mAP (percent) of ``candidate`` scored against ``reference``'s confident detections as ground
        truth, on the images of ``annotations``: 100 when they agree. None when the reference detects nothing."""
        confident = reference_truth(reference, annotations)
        truth = {}
        for image_id, ann in annotations.items():
            ref = confident[image_id]
            # Ground truth boxes are 1-based (as in the XML); detections 0-based.
            truth[image_id] = VOCAnnotation(image_id, ann.width, ann.height, ref.boxes.astype(np.float64) + 1.0,
                                            ref.labels.astype(np.int64), np.zeros(len(ref), dtype=bool))
        if not any(len(t.labels) for t in truth.values()):
            return None
        dets = {k: ImageDetections(candidate[k].boxes, candidate[k].scores, candidate[k].labels) for k in truth}
        return self.headline(evaluate_voc(dets, truth, self.class_names, protocol=AGREEMENT))
