"""Cascade Mask R-CNN R50-FPN 3x from detectron2's model zoo (spec §2: ``Misc/cascade_mask_rcnn_R_50_FPN_3x``).

Graph contract (the Mask R-CNN one; everything after preprocessing runs inside the graph, standard ONNX ops):
  inputs  image [B,3,H,W] float32 (BGR minus the pixel mean, zero-padded bottom/right to /32), img_hw [B,2]
          float32 (each image's resized, unpadded (h, w): every clip uses it, never the padded canvas);
  outputs boxes [B,100,4] (x1,y1,x2,y2 in network-input pixels), scores [B,100], labels [B,100] int64
          (0-based COCO class, -1 = padding), num_dets [B] int64, masks [B,100,28,28] (sigmoid probability
          of each detection's own class, before pasting).
The host then runs detectron2's ``detector_postprocess``: boxes scaled by (W/w, H/h), clipped to the
original image, empty boxes dropped (after the top-100 cut), masks pasted at the original resolution.

detectron2 test semantics reproduced here: ResNet-50 with the stride in the 1x1 conv and FrozenBN; FPN with
a max-pool P6; RPN ranked by logits with torchvision's batched_nms; three cascade stages with class-agnostic
regression (weights (10,10,5,5), (20,20,10,10), (30,30,15,15)), each later stage on the previous stage's
boxes clipped to the image (no empty-box filter at test time); scores = mean of the three stages' softmax;
boxes = the last stage's; ``fast_rcnn_inference`` (clip, score > 0.05, class-wise NMS 0.5, top 100).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from deployzoo.backbones.resnet import ResNet
from deployzoo.checkpoints import RenameRules
from deployzoo.checkpoints.head_classes import HeadTensor
from deployzoo.heads.box_head import Shared2FCBoxHead
from deployzoo.heads.mask_head import FCNMaskHead, detection_mask_probs
from deployzoo.heads.rpn import TORCHVISION_LOOP_ABOVE, ProposalConfig, ProposalGenerator, RPNHead
from deployzoo.models.d2_common import D2_PREPROCESS_DESCRIPTION, D2Preprocess, original_scale
from deployzoo.necks.fpn import FPN
from deployzoo.ops.box_coder import DeltaBoxCoder, clip_boxes
from deployzoo.ops.multiclass_nms import multiclass_nms, multiclass_nms_shared_boxes
from deployzoo.ops.roi_extractor import MultiLevelRoIAlign, flatten_rois, per_roi_head
from deployzoo.models.instance_seg_contract import contract_fields
from deployzoo.registry import ModelSpec, PublishedFigure
from deployzoo.structures import Detections
from deployzoo.transforms import ImageMeta

NAME = "d2-cascade-mask-rcnn-r50-fpn-3x"


@dataclass(frozen=True)
class CascadeMaskRCNNConfig:
    num_classes: int = 80
    proposals: ProposalConfig = field(default_factory=lambda: ProposalConfig(style="detectron2"))
    roi_strides: tuple[int, ...] = (4, 8, 16, 32)
    # ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS, one per stage
    stage_weights: tuple[tuple[float, float, float, float], ...] = (
        (10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
    score_threshold: float = 0.05
    nms_iou: float = 0.5
    max_dets: int = 100


class StageOutput(NamedTuple):
    """One cascade stage of a batch: its input boxes [B,R,4], class logits [B,R,K+1] (background last),
    raw class-agnostic deltas [B,R,4] and the boxes they decode to [B,R,4] (not clipped)."""

    proposals: torch.Tensor
    logits: torch.Tensor
    deltas: torch.Tensor
    boxes: torch.Tensor


class CascadeRoIHeads(nn.Module):
    """detectron2 CascadeROIHeads at test time: three box stages, then the mask head on the final boxes."""

    def __init__(self, config: CascadeMaskRCNNConfig):
        super().__init__()
        self.config = config
        self.box_pooler = MultiLevelRoIAlign(7, config.roi_strides, sampling_ratio=0, aligned=True,
                                             level_rule="detectron2")
        self.box_heads = nn.ModuleList(
            Shared2FCBoxHead(256, 7, 1024, config.num_classes, class_agnostic=True) for _ in config.stage_weights
        )
        self.mask_pooler = MultiLevelRoIAlign(14, config.roi_strides, sampling_ratio=0, aligned=True,
                                              level_rule="detectron2")
        self.mask_head = FCNMaskHead(256, 256, 4, config.num_classes)
        self.coders = [DeltaBoxCoder(weights=w, clamp_both_sides=False, center_from_corners=False)
                       for w in config.stage_weights]

    def run_stages(self, features, proposals: torch.Tensor, img_hw: torch.Tensor) -> list[StageOutput]:
        """All stages on ``proposals`` [B,R,4]; stage k > 0 starts from stage k-1's boxes clipped to the image."""
        stages: list[StageOutput] = []
        boxes = proposals
        for k, (head, coder) in enumerate(zip(self.box_heads, self.coders)):
            if k > 0:
                boxes = clip_boxes(stages[-1].boxes, img_hw[:, None, :])
            batch, rois = boxes.shape[:2]
            flat, batch_index = flatten_rois(boxes)
            logits, deltas = per_roi_head(head, self.box_pooler, features, flat, batch_index)
            logits, deltas = logits.reshape(batch, rois, -1), deltas.reshape(batch, rois, 4)
            stages.append(StageOutput(boxes, logits, deltas, coder.decode(boxes, deltas)))
        return stages

    def detect(self, stages: list[StageOutput], valid: torch.Tensor, img_hw: torch.Tensor):
        """Stage-averaged softmax scores on the last stage's boxes, then ``fast_rcnn_inference``.

        -> (boxes [B,K,4], scores [B,K], labels [B,K] int64, num_dets [B] int64), K = max_dets.
        """
        c = self.config
        probs = [s.logits.softmax(dim=-1) for s in stages]
        # detectron2: sum(list) * (1.0 / num_stages); the same float32 operations in the same order
        scores = sum(probs[1:], probs[0]) * (1.0 / len(probs))
        boxes = stages[-1].boxes
        finite = torch.isfinite(boxes).all(dim=-1) & torch.isfinite(scores).all(dim=-1)
        valid = valid & finite
        boxes = clip_boxes(torch.where(finite[..., None], boxes, torch.zeros_like(boxes)), img_hw[:, None, :])
        scores = torch.where(finite[..., None], scores, torch.zeros_like(scores))[..., : c.num_classes]
        # torchvision's batched_nms (see heads.rpn.torchvision_batched_nms): the coordinate-offset trick for up
        # to 1000 candidate (RoI, class) pairs, a loop over the classes above that. Each image takes its own.
        offset = multiclass_nms(boxes[:, :, None, :], scores, valid, c.score_threshold, c.nms_iou, c.max_dets)
        looped = multiclass_nms_shared_boxes(boxes, scores, valid, c.score_threshold, c.nms_iou, c.max_dets)
        candidates = ((scores > c.score_threshold) & valid[..., None]).sum(dim=(1, 2))
        use_loop = candidates > TORCHVISION_LOOP_ABOVE
        return tuple(torch.where(use_loop.reshape(-1, *([1] * (a.dim() - 1))), b, a) for a, b in zip(offset, looped))

    def mask_probs(self, features, boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sigmoid masks [B,K,28,28] of each detection's class, pooled from its final box."""
        return detection_mask_probs(self.mask_head, self.mask_pooler, features, boxes, labels)



class CascadeMaskRCNN(nn.Module):
    def __init__(self, config: CascadeMaskRCNNConfig = CascadeMaskRCNNConfig()):
        super().__init__()
        self.config = config
        self.backbone = ResNet(depth=50, stride_in_1x1=True, norm="frozen_bn")
        self.neck = FPN([256, 512, 1024, 2048], 256, extra="maxpool", upsample="scale2")
        self.rpn_head = RPNHead(256, len(config.proposals.anchor_ratios) * len(config.proposals.anchor_scales))
        self.proposal_generator = ProposalGenerator(config.proposals)
        self.roi_heads = CascadeRoIHeads(config)

    def features(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """FPN levels P2..P6."""
        return tuple(self.neck(self.backbone(image)))

    def propose(self, features, img_hw: torch.Tensor):
        """-> (proposals [B,P,4], objectness logits [B,P], valid [B,P])."""
        logits, deltas = self.rpn_head(features)
        return self.proposal_generator(logits, deltas, img_hw)

    def forward(self, image: torch.Tensor, img_hw: torch.Tensor):
        features = self.features(image)
        proposals, _, valid = self.propose(features, img_hw)
        roi_features = features[: len(self.config.roi_strides)]
        stages = self.roi_heads.run_stages(roi_features, proposals, img_hw)
        boxes, scores, labels, num_dets = self.roi_heads.detect(stages, valid, img_hw)
        masks = self.roi_heads.mask_probs(roi_features, boxes, labels)
        return boxes, scores, labels, num_dets, masks


# ---------------------------------------------------------------------------------------------------
# Host side: post-processing (preprocessing and collation: models.d2_common, models.mmdet_common).


class D2InstanceSegPostprocess:
    """Graph outputs of one image -> Detections in original pixels (detectron2 ``detector_postprocess``).

    Boxes multiplied by (W/w, H/h) in float32, clipped to [0, W] x [0, H]; detections whose box is then
    empty (w <= 0 or h <= 0) are dropped; masks pasted with the remaining boxes at the original size and
    binarised with >= ``mask_threshold`` (``paste_masks_in_image``).
    """

    def __init__(self, mask_threshold: float = 0.5):
        self.mask_threshold = mask_threshold

    def __call__(self, outputs: dict[str, np.ndarray], meta: ImageMeta) -> Detections:
        from deployzoo.ops.mask_paste import encode_rle, paste_masks

        n = int(outputs["num_dets"])
        h, w = meta.orig_hw
        boxes = outputs["boxes"][:n].astype(np.float32) * original_scale(meta)
        boxes = np.minimum(np.maximum(boxes, np.float32(0)), np.asarray([w, h, w, h], dtype=np.float32))
        keep = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
        boxes = boxes[keep]
        masks = paste_masks(outputs["masks"][:n][keep].astype(np.float32), boxes, (h, w), self.mask_threshold)
        return Detections(boxes, outputs["scores"][:n][keep].astype(np.float32),
                          outputs["labels"][:n][keep].astype(np.int64), encode_rle(masks))


# detectron2 name -> ours. Every other key must match exactly; the loader is strict.
_STAGES = {2: 1, 3: 2, 4: 3, 5: 4}  # detectron2 res{s} = our layer{s-1}; fpn suffix s = log2(stride)
CHECKPOINT_RULES = RenameRules(
    renames=[
        (r"backbone\.bottom_up\.stem\.conv1\.weight", "backbone.conv1.weight"),
        (r"backbone\.bottom_up\.stem\.conv1\.norm\.(\w+)", r"backbone.bn1.\1"),
        *[(rf"backbone\.bottom_up\.res{s}\.(\d+)\.conv([123])\.weight", rf"backbone.layer{i}.\1.conv\2.weight")
          for s, i in _STAGES.items()],
        *[(rf"backbone\.bottom_up\.res{s}\.(\d+)\.conv([123])\.norm\.(\w+)", rf"backbone.layer{i}.\1.bn\2.\3")
          for s, i in _STAGES.items()],
        *[(rf"backbone\.bottom_up\.res{s}\.(\d+)\.shortcut\.weight", rf"backbone.layer{i}.\1.downsample.0.weight")
          for s, i in _STAGES.items()],
        *[(rf"backbone\.bottom_up\.res{s}\.(\d+)\.shortcut\.norm\.(\w+)", rf"backbone.layer{i}.\1.downsample.1.\2")
          for s, i in _STAGES.items()],
        *[(rf"backbone\.fpn_lateral{s}\.(weight|bias)", rf"neck.lateral_convs.{s - 2}.\1") for s in _STAGES],
        *[(rf"backbone\.fpn_output{s}\.(weight|bias)", rf"neck.output_convs.{s - 2}.\1") for s in _STAGES],
        (r"proposal_generator\.rpn_head\.conv\.(weight|bias)", r"rpn_head.rpn_conv.\1"),
        (r"proposal_generator\.rpn_head\.objectness_logits\.(weight|bias)", r"rpn_head.rpn_cls.\1"),
        (r"proposal_generator\.rpn_head\.anchor_deltas\.(weight|bias)", r"rpn_head.rpn_reg.\1"),
        (r"roi_heads\.box_head\.(\d+)\.fc1\.(weight|bias)", r"roi_heads.box_heads.\1.shared_fcs.0.\2"),
        (r"roi_heads\.box_head\.(\d+)\.fc2\.(weight|bias)", r"roi_heads.box_heads.\1.shared_fcs.1.\2"),
        (r"roi_heads\.box_predictor\.(\d+)\.cls_score\.(weight|bias)", r"roi_heads.box_heads.\1.fc_cls.\2"),
        (r"roi_heads\.box_predictor\.(\d+)\.bbox_pred\.(weight|bias)", r"roi_heads.box_heads.\1.fc_reg.\2"),
        *[(rf"roi_heads\.mask_head\.mask_fcn{k}\.(weight|bias)", rf"roi_heads.mask_head.convs.{k - 1}.\1")
          for k in (1, 2, 3, 4)],
        (r"roi_heads\.mask_head\.deconv\.(weight|bias)", r"roi_heads.mask_head.upsample.\1"),
        (r"roi_heads\.mask_head\.predictor\.(weight|bias)", r"roi_heads.mask_head.conv_logits.\1"),
    ],
    ignore=[
        (r"proposal_generator\.anchor_generator\.cell_anchors\.\d+",
         "anchors are computed from the config (detectron2 ignores the stored ones too)"),
        (r"pixel_mean", "preprocessing constant: the BGR mean is subtracted on the host"),
        (r"pixel_std", "preprocessing constant: std 1, nothing to divide"),
    ],
)


def official_key(name: str) -> str:
    """Our state-dict name -> the name in detectron2's file (the inverse of CHECKPOINT_RULES)."""
    rules = (
        (r"backbone\.conv1\.weight", "backbone.bottom_up.stem.conv1.weight"),
        (r"backbone\.bn1\.(\w+)", r"backbone.bottom_up.stem.conv1.norm.\1"),
        *[(rf"backbone\.layer{i}\.(\d+)\.conv([123])\.weight", rf"backbone.bottom_up.res{s}.\1.conv\2.weight")
          for s, i in _STAGES.items()],
        *[(rf"backbone\.layer{i}\.(\d+)\.bn([123])\.(\w+)", rf"backbone.bottom_up.res{s}.\1.conv\2.norm.\3")
          for s, i in _STAGES.items()],
        *[(rf"backbone\.layer{i}\.(\d+)\.downsample\.0\.weight", rf"backbone.bottom_up.res{s}.\1.shortcut.weight")
          for s, i in _STAGES.items()],
        *[(rf"backbone\.layer{i}\.(\d+)\.downsample\.1\.(\w+)", rf"backbone.bottom_up.res{s}.\1.shortcut.norm.\2")
          for s, i in _STAGES.items()],
        *[(rf"neck\.lateral_convs\.{s - 2}\.(\w+)", rf"backbone.fpn_lateral{s}.\1") for s in _STAGES],
        *[(rf"neck\.output_convs\.{s - 2}\.(\w+)", rf"backbone.fpn_output{s}.\1") for s in _STAGES],
        (r"rpn_head\.rpn_conv\.(\w+)", r"proposal_generator.rpn_head.conv.\1"),
        (r"rpn_head\.rpn_cls\.(\w+)", r"proposal_generator.rpn_head.objectness_logits.\1"),
        (r"rpn_head\.rpn_reg\.(\w+)", r"proposal_generator.rpn_head.anchor_deltas.\1"),
        (r"roi_heads\.box_heads\.(\d+)\.shared_fcs\.0\.(\w+)", r"roi_heads.box_head.\1.fc1.\2"),
        (r"roi_heads\.box_heads\.(\d+)\.shared_fcs\.1\.(\w+)", r"roi_heads.box_head.\1.fc2.\2"),
        (r"roi_heads\.box_heads\.(\d+)\.fc_cls\.(\w+)", r"roi_heads.box_predictor.\1.cls_score.\2"),
        (r"roi_heads\.box_heads\.(\d+)\.fc_reg\.(\w+)", r"roi_heads.box_predictor.\1.bbox_pred.\2"),
        *[(rf"roi_heads\.mask_head\.convs\.{k - 1}\.(\w+)", rf"roi_heads.mask_head.mask_fcn{k}.\1") for k in (1, 2, 3, 4)],
        (r"roi_heads\.mask_head\.upsample\.(\w+)", r"roi_heads.mask_head.deconv.\1"),
        (r"roi_heads\.mask_head\.conv_logits\.(\w+)", r"roi_heads.mask_head.predictor.\1"),
    )
    for pattern, replacement in rules:
        match = re.fullmatch(pattern, name)
        if match is not None:
            return match.expand(replacement)
    return name


# The fixture's dz-init-v1 gains (keys.json), so stand-in weights give detections and masks of sane sizes.
SYNTHETIC_GAINS = (
    (r"backbone\.bottom_up\.stem\.conv1\.weight", 1.0 / 60.0),  # BGR 0-255 input, std 1
    (r"proposal_generator\.rpn_head\.objectness_logits\.weight", 10.0),
    (r"proposal_generator\.rpn_head\.anchor_deltas\.weight", 0.1),
    (r"roi_heads\.box_predictor\.\d\.cls_score\.weight", 4.0),
    (r"roi_heads\.box_predictor\.\d\.bbox_pred\.weight", 0.1),
    (r"roi_heads\.mask_head\.predictor\.weight", 20.0),
)


def build_cascade_mask_rcnn(num_classes: int = 80, score_threshold: float = 0.05,
                            max_dets: int = 100) -> CascadeMaskRCNN:
    """``score_threshold`` / ``max_dets``: detectron2 MODEL.ROI_HEADS.SCORE_THRESH_TEST / TEST.DETECTIONS_PER_IMAGE
    (deployzoo.test_settings)."""
    return CascadeMaskRCNN(CascadeMaskRCNNConfig(num_classes=num_classes, score_threshold=score_threshold,
                                                 max_dets=max_dets)).eval()


# The class-dependent tensors of a fine-tuned checkpoint (ROI_HEADS.NUM_CLASSES): each stage's classifier
# [C+1, 1024] (background last) and the class-specific mask predictor [C, 256, 1, 1]. The cascade's box
# regression is class-agnostic (CLS_AGNOSTIC_BBOX_REG: [4, 1024] whatever C is), so it stays strict.
CLASS_HEADS = (
    HeadTensor(r"roi_heads\.box_predictor\.\d+\.cls_score\.(weight|bias)", per=1, extra=1),
    HeadTensor(r"roi_heads\.mask_head\.predictor\.(weight|bias)", per=1),
)


def make_spec(canvas_hw: tuple[int, int] | None = None, num_classes: int = 80) -> ModelSpec:
    """The registry entry; ``canvas_hw`` gives the fixed-shape variant (not bit-exact: spec §1.4).

    ``@1344x1344`` holds every image at its official size (long side <= 1333); smaller canvases shrink the
    images that do not fit.
    """
    suffix = "" if canvas_hw is None else f"@{canvas_hw[0]}x{canvas_hw[1]}"
    return ModelSpec(
        name=NAME + suffix,
        checkpoint_format=("detectron2 model-zoo .pkl: pickle of {'model': {name: ndarray}, '__author__'} "
                           "(Misc/cascade_mask_rcnn_R_50_FPN_3x/144998488/model_final_480dd8.pkl)"),
        published=PublishedFigure("COCO box AP", 44.3, "detectron2 MODEL_ZOO.md (mask AP 38.5), model id 144998488"),
        build_model=partial(build_cascade_mask_rcnn, num_classes),
        checkpoint_rules=CHECKPOINT_RULES,
        preprocess=D2Preprocess(canvas_hw=canvas_hw),
        preprocess_description=D2_PREPROCESS_DESCRIPTION,
        make_postprocess=D2InstanceSegPostprocess,
        synthetic_gains=SYNTHETIC_GAINS,
        checkpoint_key=official_key,
        class_heads=CLASS_HEADS,
        class_variant=partial(make_spec, canvas_hw),
        canvas_variant=partial(make_spec, num_classes=num_classes),
        **contract_fields(canvas_hw, "multiply by original/resized size", " (mean of the 3 stages' softmax)",
                          num_classes),
    )


SPEC = make_spec()
