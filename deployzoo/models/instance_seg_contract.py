"""The graph contract the R-CNN instance-segmentation models share (mmdet Mask R-CNN, detectron2 Cascade).

Inputs image [B,3,H,W] + img_hw [B,2]; outputs boxes [B,100,4], scores [B,100], labels [B,100] int64,
num_dets [B] int64, masks [B,100,28,28]. ``contract_fields`` gives the ModelSpec fields that follow from it,
so a model file states only what is its own (weights, preprocessing, post-processing, published figure).
"""
from __future__ import annotations

from functools import partial
from typing import Any

from deployzoo.data.coco import COCO_CATEGORY_IDS, COCO_CLASSES
from deployzoo.models.mmdet_common import DEFAULT_PADDED_HW, PaddedCollate, example_inputs
from deployzoo.tasks.coco_detection import COCODetectionTask

OUTPUT_NAMES = ("boxes", "scores", "labels", "num_dets", "masks")


def contract_fields(canvas_hw: tuple[int, int] | None, box_note: str, score_note: str,
                    num_classes: int = 80) -> dict[str, Any]:
    """ModelSpec keyword arguments for the dynamic-size graph, or the fixed ``canvas_hw`` one.

    ``num_classes`` other than COCO's 80 (a fine-tuned checkpoint): generic names ``class_0..``, category ids
    index + 1, until deployzoo.fine_tuned gives the real names and ids."""
    from deployzoo.fine_tuned import generic_class_names

    official = num_classes == len(COCO_CLASSES)
    return {
        "task": "instance-segmentation",
        "dataset": "COCO val2017",
        "input_hw": canvas_hw or DEFAULT_PADDED_HW,
        "class_names": COCO_CLASSES if official else generic_class_names(num_classes),
        "class_names_source": "official" if official else "generic",
        "input_name": "image",
        "output_names": OUTPUT_NAMES,
        "evaluation": COCODetectionTask() if official else COCODetectionTask(
            class_names=generic_class_names(num_classes), category_ids=range(1, num_classes + 1)),
        "output_shapes": {"boxes": (100, 4), "scores": (100,), "labels": (100,), "num_dets": (),
                          "masks": (100, 28, 28)},
        "output_dtypes": {"labels": "int64", "num_dets": "int64"},
        "output_notes": {
            "boxes": f"[B,100,4] x1,y1,x2,y2 in network-input pixels ({box_note})",
            "scores": f"[B,100] descending{score_note}; padding rows 0",
            "labels": f"[B,100] int64 0-based class of {num_classes} (category id via the spec's table); padding -1",
            "num_dets": "[B] int64 number of real rows",
            "masks": "[B,100,28,28] sigmoid mask of each detection's class; paste at the original size",
        },
        "category_ids": COCO_CATEGORY_IDS if official else None,
        "input_dims": {"image": (3, None, None) if canvas_hw is None else (3, *canvas_hw), "img_hw": (2,)},
        "ranked_outputs": ("boxes", "scores", "labels", "masks"),
        # A two-stage COCO model is ~30x slower than RefineDet: a smaller default run.
        "run_defaults": {"num_images": 4, "eval_batch": 2, "batch_sizes": [1, 2], "bench_seconds": 1.0,
                         "bench_iters": 3, "compare_images": 2},
        "collate": PaddedCollate(canvas_hw=canvas_hw),
        "example_inputs": partial(example_inputs, hw=canvas_hw or DEFAULT_PADDED_HW),
    }
