"""FSAF R50-FPN 1x from an mmdetection checkpoint (spec section 3), with either of mmdetection's two
test-time post-processing algorithms (spec §3.3), chosen by name:

* ``mmdet-fsaf-r50-fpn-1x`` (algorithm "A", mmdet v2.0-v2.17, the one the published 37.4 box AP was
  measured with): per level, the ``nms_pre`` = 1000 LOCATIONS with the highest max-over-classes sigmoid
  score, each keeping all 80 class scores; decode; concatenate the levels; every (location, class) with
  score > 0.05 is a candidate for class-wise NMS (IoU 0.5); the best 100 are kept.
* ``mmdet-fsaf-r50-fpn-1x-v3post`` (algorithm "B", mmdet >= 2.18 and 3.x ``filter_scores_and_topk``,
  the reference fixture's): per level, the (location, class) PAIRS with score > 0.05, the best 1000 of
  them; decode those; concatenate; drop boxes with w <= 0 or h <= 0 (mmdet 3.x, ``min_bbox_size=0``);
  class-wise NMS (IoU 0.5) over the pairs; the best 100.

A passes every class of a chosen location (up to 80,000 pairs a level), B caps the pairs at 1000 a level,
so they can keep different detections.

Graph contract (everything after preprocessing runs inside the graph, with standard ONNX ops):
  inputs  image [B,3,H,W] float32 (normalised RGB, zero-padded bottom/right), img_hw [B,2] float32 (each
          image's resized, unpadded (h, w); the TBLR decode clips to it, never to the padded canvas);
  outputs dets [B,100,5] (x1,y1,x2,y2 in network-input pixels, score; descending), labels [B,100] int64
          (0-based COCO class, -1 = padding), num_dets [B] int64.
The host divides the boxes by the (w, h) resize factors (A: mmdet v2 divides by the float32 factors; B:
mmdet 3.x multiplies by their float32 reciprocals); there is no clip in original pixels.

Where the graph's float32 rounding can differ from mmdetection's (either can only flip the decision on a
pair of boxes whose IoU lies that close to the 0.5 threshold):
* mmdetection rescales the boxes to original pixels BEFORE its NMS; the graph runs NMS on the
  network-input boxes (it does not know the original size). IoU is invariant under separate x and y
  scaling, so only rounding differs (~1e-7 relative).
* A's class-wise NMS uses NonMaxSuppression's class dimension on the unshifted boxes (mmcv's per-class
  loop) instead of mmdet v2.0's coordinate-offset trick, whose shifted coordinates (up to ~1e5) round to
  ~0.01 pixel (~1e-4 relative IoU): with up to 80,000 candidates per level one offset NMS is quadratic in
  ONNX Runtime (minutes per image with stand-in weights). B keeps the offset trick, as mmdet 3.x does for
  its at most 5,000 pairs.

Fixed canvas (``@HxW``, e.g. mmdeploy's 800x1216): images whose official keep-ratio size does not fit are
resized smaller so they do (``transforms.fit_size``; portrait 480x640 -> 800x600), and the zero padding to
the canvas changes features near the image's right and bottom edges; expect small AP drift (spec §1.4).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from deployzoo.backbones.resnet import ResNet
from deployzoo.checkpoints import RenameRules
from deployzoo.checkpoints.head_classes import HeadTensor
from deployzoo.data.coco import COCO_CATEGORY_IDS, COCO_CLASSES
from deployzoo.heads.fsaf import FSAFHead, tblr_decode
from deployzoo.models.mmdet_common import (DEFAULT_PADDED_HW, PREPROCESS_DESCRIPTION, MMDetPreprocess, PaddedCollate,
                                           example_inputs, resize_factors)
from deployzoo.necks.fpn import FPN
from deployzoo.ops.anchors import base_anchors, grid_anchors
from deployzoo.ops.multiclass_nms import labelled_nms, multiclass_nms_shared_boxes
from deployzoo.ops.topk import gather_rows, topk_clamped
from deployzoo.registry import ModelSpec, PublishedFigure
from deployzoo.structures import Detections
from deployzoo.tasks.coco_detection import COCODetectionTask
from deployzoo.transforms import ImageMeta

OUTPUT_NAMES = ("dets", "labels", "num_dets")
POSTPROCESS_ALGORITHMS = {
    "A": "mmdet v2.0-v2.17: per level top-1000 locations by max class score (all 80 scores kept)",
    "B": "mmdet >= 2.18 / 3.x: per level top-1000 (location, class) pairs above the score threshold",
}


@dataclass(frozen=True)
class FSAFConfig:
    """mmdet ``fsaf_r50_fpn_1x_coco.py`` test settings; ``postprocess`` picks the algorithm (module docstring)."""

    num_classes: int = 80
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    normalizer: float = 4.0
    nms_pre: int = 1000
    score_threshold: float = 0.05
    nms_iou: float = 0.5
    max_dets: int = 100
    postprocess: str = "A"

    def __post_init__(self):
        if self.postprocess not in POSTPROCESS_ALGORITHMS:
            raise ValueError(f"postprocess must be one of {sorted(POSTPROCESS_ALGORITHMS)}, got {self.postprocess!r}")


class FSAF(nn.Module):
    """ResNet-50 (C3..C5) -> FPN P3..P7 (P6 from C5) -> FSAF head -> TBLR decode -> selection and NMS."""

    def __init__(self, config: FSAFConfig = FSAFConfig()):
        super().__init__()
        self.config = config
        self.backbone = ResNet(depth=50, stride_in_1x1=False, norm="bn", out_indices=(1, 2, 3))
        self.neck = FPN([512, 1024, 2048], 256, extra="p6p7_on_input")
        self.bbox_head = FSAFHead(config.num_classes, 256, 256, 4)
        for level, stride in enumerate(config.strides):
            # one square prior of side = stride per location (octave_base_scale 1, ratio 1)
            self.register_buffer(f"base_prior_{level}", base_anchors(stride, [1.0], [1.0]), persistent=False)

    def features(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """FPN levels P3..P7 (strides 8..128)."""
        return tuple(self.neck(self.backbone(image)))

    def head_outputs(self, features) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: class logits [B, 80, H, W] (before the sigmoid) and TBLR [B, 4, H, W] (after the ReLU)."""
        return self.bbox_head(features)

    def _level_inputs(self, level: int, logits: torch.Tensor, tblr: torch.Tensor):
        """Scores [B, HW, C] (sigmoid), TBLR [B, HW, 4] and priors [HW, 4] of one level, locations row-major."""
        batch = logits.shape[0]
        scores = logits.permute(0, 2, 3, 1).reshape(batch, -1, self.config.num_classes).sigmoid()
        tblr = tblr.permute(0, 2, 3, 1).reshape(batch, -1, 4)
        priors = grid_anchors(getattr(self, f"base_prior_{level}"), logits, self.config.strides[level])
        return scores, tblr, priors

    def detect_locations(self, logits, tblr, img_hw: torch.Tensor):
        """Algorithm A (mmdet v2.0 ``get_bboxes`` + ``multiclass_nms``) -> (boxes, scores, labels, num_dets)."""
        c = self.config
        level_boxes, level_scores = [], []
        for level, (logit, reg) in enumerate(zip(logits, tblr)):
            scores, reg, priors = self._level_inputs(level, logit, reg)
            # mmdet skips the top-k when a level has <= nms_pre locations; sorting them anyway changes
            # only the order of equal scores, which mmdet leaves unspecified too.
            _, index = topk_clamped(scores.max(dim=2).values, c.nms_pre, dim=1)
            level_boxes.append(tblr_decode(priors[index], gather_rows(reg, index), c.normalizer, img_hw[:, None, :]))
            level_scores.append(gather_rows(scores, index))
        boxes, scores = torch.cat(level_boxes, dim=1), torch.cat(level_scores, dim=1)
        valid = torch.ones_like(scores[..., 0], dtype=torch.bool)
        return multiclass_nms_shared_boxes(boxes, scores, valid, c.score_threshold, c.nms_iou, c.max_dets)

    def detect_pairs(self, logits, tblr, img_hw: torch.Tensor):
        """Algorithm B (mmdet 3.x ``filter_scores_and_topk`` + ``_bbox_post_process``) -> (boxes, scores,
        labels, num_dets)."""
        c = self.config
        level_boxes, level_scores, level_labels = [], [], []
        for level, (logit, reg) in enumerate(zip(logits, tblr)):
            scores, reg, priors = self._level_inputs(level, logit, reg)
            flat = scores.reshape(scores.shape[0], -1)  # (location, class) pairs, location-major
            # Stable ranking of the pairs above the threshold: the order of mmdet's nonzero + sort.
            top, index = topk_clamped(torch.where(flat > c.score_threshold, flat, -1.0), c.nms_pre, dim=1)
            location = torch.div(index, c.num_classes, rounding_mode="floor")
            level_labels.append(index - location * c.num_classes)
            level_boxes.append(tblr_decode(priors[location], gather_rows(reg, location), c.normalizer,
                                           img_hw[:, None, :]))
            level_scores.append(top)
        boxes = torch.cat(level_boxes, dim=1)
        scores = torch.cat(level_scores, dim=1)
        labels = torch.cat(level_labels, dim=1)
        valid = (scores > c.score_threshold) & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        return labelled_nms(boxes, scores, labels, valid, c.nms_iou, c.max_dets)

    def forward(self, image: torch.Tensor, img_hw: torch.Tensor):
        """-> dets [B, 100, 5], labels [B, 100] int64, num_dets [B] int64 (see the module docstring)."""
        logits, tblr = self.head_outputs(self.features(image))
        detect = self.detect_locations if self.config.postprocess == "A" else self.detect_pairs
        boxes, scores, labels, num_dets = detect(logits, tblr, img_hw)
        return torch.cat([boxes, scores[..., None]], dim=-1), labels, num_dets


# ---------------------------------------------------------------------------------------------------
# Host side: post-processing, checkpoint rules, the registry entries.


class DetectionPostprocess:
    """Graph outputs of one image -> Detections in original pixels.

    ``reciprocal``: mmdet 3.x rescales by multiplying with the float32 reciprocals of the resize factors
    (``scale_boxes(boxes, [1 / s for s in scale_factor])``); mmdet v2 divides by the float32 factors.
    The two can differ in the last bit.
    """

    def __init__(self, reciprocal: bool = False):
        self.reciprocal = reciprocal

    def __call__(self, outputs: dict[str, np.ndarray], meta: ImageMeta) -> Detections:
        n = int(outputs["num_dets"])
        dets = outputs["dets"][:n].astype(np.float32)
        if self.reciprocal:
            (h, w), (rh, rw) = meta.orig_hw, meta.resized_hw
            inverse = np.asarray([1 / (rw / w), 1 / (rh / h)] * 2, dtype=np.float32)
            boxes = (dets[:, :4] * inverse).astype(np.float32)
        else:
            boxes = (dets[:, :4] / resize_factors(meta)).astype(np.float32)
        return Detections(boxes, np.ascontiguousarray(dets[:, 4]), outputs["labels"][:n].astype(np.int64))


# The official file names the FPN and head tower convs after mmcv's ConvModule (``.conv.``); mmdet's
# fpn_convs.3 / .4 are the P6 / P7 convs, our FPN's extra_convs.0 / .1.
CHECKPOINT_RULES = RenameRules(
    renames=[
        (r"neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)", r"neck.lateral_convs.\1.\2"),
        (r"neck\.fpn_convs\.([012])\.conv\.(weight|bias)", r"neck.output_convs.\1.\2"),
        (r"neck\.fpn_convs\.3\.conv\.(weight|bias)", r"neck.extra_convs.0.\1"),
        (r"neck\.fpn_convs\.4\.conv\.(weight|bias)", r"neck.extra_convs.1.\1"),
        (r"bbox_head\.(cls|reg)_convs\.(\d+)\.conv\.(weight|bias)", r"bbox_head.\1_convs.\2.\3"),
    ],
)


def official_key(name: str) -> str:
    """Our state-dict name -> the name in mmdetection's file (the inverse of CHECKPOINT_RULES)."""
    name = re.sub(r"^neck\.lateral_convs\.(\d+)\.", r"neck.lateral_convs.\1.conv.", name)
    name = re.sub(r"^neck\.output_convs\.(\d+)\.", r"neck.fpn_convs.\1.conv.", name)
    name = re.sub(r"^neck\.extra_convs\.(\d+)\.", lambda m: f"neck.fpn_convs.{int(m.group(1)) + 3}.conv.", name)
    return re.sub(r"^bbox_head\.(cls|reg)_convs\.(\d+)\.", r"bbox_head.\1_convs.\2.conv.", name)


# The fixture's dz-init-v1 gains, so stand-in weights give scores and boxes of sane sizes.
SYNTHETIC_GAINS = (
    (r"bbox_head\.retina_cls\.weight", 5.0),
    (r"bbox_head\.retina_reg\.weight", 20.0),
)


def build_fsaf(postprocess: str = "A", num_classes: int = 80, score_threshold: float = 0.05,
               max_dets: int = 100) -> FSAF:
    """``score_threshold`` / ``max_dets``: mmdet test_cfg score_thr / max_per_img (deployzoo.test_settings)."""
    return FSAF(FSAFConfig(postprocess=postprocess, num_classes=num_classes, score_threshold=score_threshold,
                           max_dets=max_dets)).eval()


# The class-dependent tensor of a fine-tuned checkpoint: retina_cls [A*C, 256, 3, 3], one anchor (A = 1),
# sigmoid classification (no background row).
CLASS_HEADS = (HeadTensor(r"bbox_head\.retina_cls\.(weight|bias)", per=1),)


def make_spec(canvas_hw: tuple[int, int] | None = None, postprocess: str = "A", num_classes: int = 80) -> ModelSpec:
    """The registry entry: ``postprocess`` "A" (mmdet v2, published figure) or "B" (mmdet 3.x, name suffix
    ``-v3post``); ``canvas_hw`` gives the fixed-shape variant (not bit-exact, see the module docstring)."""
    if postprocess not in POSTPROCESS_ALGORITHMS:
        raise ValueError(f"postprocess must be one of {sorted(POSTPROCESS_ALGORITHMS)}, got {postprocess!r}")
    from deployzoo.fine_tuned import generic_class_names

    official = num_classes == len(COCO_CLASSES)
    names = COCO_CLASSES if official else generic_class_names(num_classes)
    suffix = ("" if postprocess == "A" else "-v3post") + ("" if canvas_hw is None else f"@{canvas_hw[0]}x{canvas_hw[1]}")
    dims: dict[str, Any] = {"image": (3, None, None) if canvas_hw is None else (3, *canvas_hw), "img_hw": (2,)}
    published = (PublishedFigure("COCO box AP", 37.4, "mmdetection model zoo (measured April 2020 with this "
                                 "post-processing, mmdet v2.0)") if postprocess == "A" else
                 PublishedFigure("COCO box AP", 37.4, "mmdetection model zoo (measured with the mmdet v2.0 "
                                 "post-processing; not re-measured with this mmdet 3.x one)"))
    return ModelSpec(
        name="mmdet-fsaf-r50-fpn-1x" + suffix,
        task="detection",
        dataset="COCO val2017",
        input_hw=canvas_hw or DEFAULT_PADDED_HW,
        checkpoint_format="mmdetection .pth: {'state_dict', 'meta'} (fsaf_r50_fpn_1x_coco-94ccc51f.pth)",
        published=published,
        class_names=names,
        class_names_source="official" if official else "generic",
        build_model=partial(build_fsaf, postprocess, num_classes),
        checkpoint_rules=CHECKPOINT_RULES,
        input_name="image",
        output_names=OUTPUT_NAMES,
        preprocess=MMDetPreprocess(canvas_hw=canvas_hw),
        preprocess_description=PREPROCESS_DESCRIPTION,
        make_postprocess=partial(DetectionPostprocess, reciprocal=postprocess == "B"),
        evaluation=COCODetectionTask(iou_types=("bbox",)) if official else COCODetectionTask(
            class_names=names, category_ids=range(1, num_classes + 1), iou_types=("bbox",)),
        output_shapes={"dets": (100, 5), "labels": (100,), "num_dets": ()},
        output_dtypes={"labels": "int64", "num_dets": "int64"},
        output_notes={
            "dets": "[B,100,5] x1,y1,x2,y2 in network-input pixels (divide by the resize factors), score; "
                    "descending; padding rows 0",
            "labels": f"[B,100] int64 0-based class of {num_classes} (category id via the spec's table); padding -1",
            "num_dets": "[B] int64 number of real rows",
        },
        category_ids=COCO_CATEGORY_IDS if official else None,
        synthetic_gains=SYNTHETIC_GAINS,
        checkpoint_key=official_key,
        input_dims=dims,
        ranked_outputs=("dets", "labels"),
        run_defaults={"num_images": 4, "eval_batch": 2, "batch_sizes": [1, 2], "bench_seconds": 1.0,
                      "bench_iters": 3, "compare_images": 2},
        collate=PaddedCollate(canvas_hw=canvas_hw),
        example_inputs=partial(example_inputs, hw=canvas_hw or DEFAULT_PADDED_HW),
        canvas_variant=partial(make_spec, postprocess=postprocess, num_classes=num_classes),
        class_heads=CLASS_HEADS,
        class_variant=partial(make_spec, canvas_hw, postprocess),
    )


SPEC = make_spec()
SPEC_V3_POST = make_spec(postprocess="B")
