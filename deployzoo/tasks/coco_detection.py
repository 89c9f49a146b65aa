"""COCO detection / instance segmentation (val2017 by default): dataset, synthetic stand-in, box and mask AP."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from deployzoo.data.coco import (
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    COCODetection,
    quiet_coco,
)
from deployzoo.data.synthetic_coco import make_synthetic_coco
from deployzoo.errors import BadInputError
from deployzoo.eval.coco_eval import IOU_TYPES, COCOEvalResult, evaluate_coco
from deployzoo.structures import Detections
from deployzoo.tasks import reference_truth
from deployzoo.tasks.validation import CheckedSplit, check_split, size_mismatch


@dataclass(frozen=True)
class COCOImageGT:
    """Ground truth handle of one image: its entry in the dataset (whose ``coco`` holds the annotations).

    Attributes:
        image_id: the COCO image id (the pipeline's key is ``str(image_id)``).
        height, width: image size from the annotation file.
        num_annotations: annotations of the image, crowd regions included.
        dataset: the opened dataset; ``dataset.coco`` is what COCOeval scores against.
    """

    image_id: int
    height: int
    width: int
    num_annotations: int
    dataset: COCODetection


class COCODetectionTask:
    """Adapter the pipeline uses for models judged by COCO AP (box AP is the headline)."""

    metric_name = "COCO box AP"
    protocols = ("standard",)

    def __init__(self, split: str = "val2017", class_names: Sequence[str] = COCO_CLASSES,
                 category_ids: Sequence[int] = COCO_CATEGORY_IDS, iou_types: Sequence[str] = IOU_TYPES):
        if len(class_names) != len(category_ids):
            raise ValueError(f"{len(class_names)} class names but {len(category_ids)} category ids")
        iou_types = tuple(iou_types)
        if "bbox" not in iou_types or any(t not in IOU_TYPES for t in iou_types):
            raise ValueError(f"iou_types must include 'bbox' (the headline) and be a subset of {IOU_TYPES}, "
                             f"got {iou_types}")
        self.split = split
        self.class_names = tuple(class_names)
        self.category_ids = tuple(int(c) for c in category_ids)
        self.iou_types = iou_types
        self.dataset_name = f"COCO {split}"

    def open(self, root: str | Path) -> COCODetection:
        """Open ``root`` (with ``annotations/instances_<split>.json``); its categories must hold ours."""
        official = self.category_ids == COCO_CATEGORY_IDS and self.class_names == COCO_CLASSES
        dataset = COCODetection(root, split=self.split, check_categories=official, defer_box_problems=True)
        missing = [c for c in self.category_ids if c not in dataset.coco.cats]
        if missing:
            raise BadInputError(dataset.split_file, f"the model's category ids {missing} are not in 'categories'")
        return dataset

    def validate(self, root: str | Path, skip_bad: bool = False, limit: int | None = None) -> CheckedSplit:
        """Open ``root`` and check it all before any inference: the annotation file, and every image to run
        (the first ``limit``) exists, has a readable header and the ``height``/``width`` the file gives."""
        return check_split(self, root, skip_bad=skip_bad, limit=limit)

    def check_image(self, dataset: COCODetection, image_id: str, handle: COCOImageGT, hw: tuple[int, int]) -> None:
        """Raise BadInputError unless the image file's (H, W) ``hw`` is the annotation file's, and the size of
        every RLE ``segmentation`` of the image's annotations."""
        if (handle.height, handle.width) != tuple(hw):
            what = f"the 'images' entry of id {image_id}"
            raise BadInputError(dataset.split_file, size_mismatch(what, (handle.height, handle.width),
                                                                  dataset.image_path(image_id), hw))
        # An RLE mask of another size can never be matched: pycocotools' rleIou (maskApi.c) gives -1 for
        # masks of different sizes, so mask AP would drop without a word.
        for ann in dataset.annotations(image_id):
            seg = ann.get("segmentation")
            if isinstance(seg, dict) and tuple(seg["size"]) != tuple(hw):
                raise BadInputError(dataset.split_file, f"annotation id {ann['id']} of image {image_id}: RLE "
                                                        f"segmentation 'size' {list(seg['size'])} [height, width] is "
                                                        f"not the size {list(hw)} of {dataset.image_path(image_id)}: "
                                                        f"the mask could never match a detection")

    def make_synthetic(self, root: str | Path, num_images: int = 8, seed: int = 0) -> Path:
        """Write a synthetic COCO tree at ``root`` and return the path to pass to :meth:`open`."""
        return make_synthetic_coco(root, num_images=num_images, seed=seed, split=self.split)

    def load_ground_truth(
        self, dataset: COCODetection, skip_bad: bool = False
    ) -> tuple[dict[str, COCOImageGT], list[tuple[str, str]]]:
        """One handle per image, keyed by str(image id), in ``dataset.ids`` order (numeric id order).

        The annotation file was fully validated when opened; the per-image problems left are an impossible
        box (negative size, far outside the image: ``dataset.box_problems``) and an annotation without
        ``segmentation`` when mask AP is asked for (both skipped with ``skip_bad``, else raised).
        Returns (handles, [(image id, problem)] skipped).
        """
        annotations: dict[str, COCOImageGT] = {}
        skipped: list[tuple[str, str]] = []
        for image_id in dataset.ids:
            box = getattr(dataset, "box_problems", {}).get(image_id)  # an impossible box: this image only
            if box:
                if not skip_bad:
                    raise BadInputError(dataset.split_file, box)
                skipped.append((image_id, f"{dataset.split_file}: {box}"))
                continue
            anns = dataset.annotations(image_id)
            if "segm" in self.iou_types:
                bare = [a["id"] for a in anns if "segmentation" not in a]
                if bare:
                    problem = (f"image {image_id}: annotation(s) {bare} have no 'segmentation' "
                               f"(needed for mask AP)")
                    if not skip_bad:
                        raise BadInputError(dataset.split_file, problem)
                    skipped.append((image_id, f"{dataset.split_file}: {problem}"))
                    continue
            info = dataset.image_info(image_id)
            annotations[image_id] = COCOImageGT(int(image_id), int(info["height"]), int(info["width"]),
                                                len(anns), dataset)
        return annotations, skipped

    def evaluate(
        self,
        results: Mapping[str, Detections],
        annotations: Mapping[str, COCOImageGT],
        protocol: str = "standard",
    ) -> COCOEvalResult:
        """COCO AP over the images in ``annotations`` (results for other images are ignored)."""
        if protocol not in self.protocols:
            raise ValueError(f"unknown protocol {protocol!r} for {self.metric_name}; expected one of {self.protocols}")
        if not annotations:
            return COCOEvalResult({}, 0, [], ["no images evaluated"])
        datasets = {id(a.dataset) for a in annotations.values()}
        if len(datasets) != 1:
            raise ValueError("annotations come from more than one opened dataset")
        coco = next(iter(annotations.values())).dataset.coco
        dets = {int(k): d for k, d in results.items() if k in annotations}
        image_ids = [a.image_id for a in annotations.values()]
        return evaluate_coco(coco, dets, self.category_ids, self.class_names, self.iou_types, image_ids)

    def agreement(
        self,
        candidate: Mapping[str, Detections],
        reference: Mapping[str, Detections],
        annotations: Mapping[str, COCOImageGT],
    ) -> float | None:
        """Box AP (percent) of ``candidate`` scored against ``reference``'s confident detections as ground
        truth, on the images of ``annotations``: 100 when they agree. None when the reference detects nothing
        (empty boxes have no area to match and are left out)."""
        confident = reference_truth(reference, annotations)
        images, truth = [], []
        for key, handle in annotations.items():
            images.append({"id": handle.image_id, "height": handle.height, "width": handle.width})
            ref = confident[key]
            for (x1, y1, x2, y2), label in zip(ref.boxes.tolist(), ref.labels.tolist()):
                if x2 > x1 and y2 > y1:
                    truth.append({"id": len(truth) + 1, "image_id": handle.image_id, "iscrowd": 0,
                                  "category_id": self.category_ids[label], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                  "area": (x2 - x1) * (y2 - y1)})
        if not truth:
            return None
        categories = [{"id": c, "name": n} for c, n in zip(self.category_ids, self.class_names)]
        coco = quiet_coco({"images": images, "annotations": truth, "categories": categories})
        boxes_only = {h.image_id: Detections(candidate[k].boxes, candidate[k].scores, candidate[k].labels)
                      for k, h in annotations.items()}
        result = evaluate_coco(coco, boxes_only, self.category_ids, self.class_names, ("bbox",),
                               [h.image_id for h in annotations.values()])
        return self.headline(result)

    @staticmethod
    def headline(result: COCOEvalResult) -> float:
        """Box AP in percent (NaN when undefined: no images or no ground truth)."""
        ap = result.bbox_ap
        return float("nan") if ap is None else 100.0 * ap

    @staticmethod
    def results_records(result: COCOEvalResult) -> list[dict]:
        """The official COCO results records (eval writes them per IoU type: deployzoo.score.write_coco_results)."""
        return result.records
