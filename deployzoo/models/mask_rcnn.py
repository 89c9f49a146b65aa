"""Mask R-CNN R50-FPN 1x from an mmdetection checkpoint (spec section 4), with mmdetection 3.x test semantics.

Graph contract (everything after preprocessing runs inside the graph, with standard ONNX ops):
  inputs  image [B,3,H,W] float32 (normalised RGB, zero-padded bottom/right), img_hw [B,2] float32 (each
          image's resized, unpadded (h, w): every clip uses it, never the padded canvas);
  outputs boxes [B,100,4] (x1,y1,x2,y2 in network-input pixels), scores [B,100], labels [B,100] int64
          (0-based COCO class, -1 = padding), num_dets [B] int64, masks [B,100,28,28] (sigmoid probability
          of each detection's own class, before pasting).
The host divides the boxes by the resize factors and pastes the 28x28 masks at the ORIGINAL resolution
(not resized twice, which costs MMDeploy 1.0 mask AP).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import nn

from deployzoo.backbones.resnet import ResNet
from deployzoo.checkpoints import RenameRules
from deployzoo.checkpoints.head_classes import HeadTensor
from deployzoo.heads.box_head import Shared2FCBoxHead
from deployzoo.heads.mask_head import FCNMaskHead, detection_mask_probs
from deployzoo.heads.rpn import ProposalConfig, ProposalGenerator, RPNHead
from deployzoo.models.mmdet_common import (PREPROCESS_DESCRIPTION, MMDetPreprocess, resize_factors)
from deployzoo.necks.fpn import FPN
from deployzoo.ops.box_coder import DeltaBoxCoder
from deployzoo.ops.multiclass_nms import multiclass_nms
from deployzoo.ops.roi_extractor import MultiLevelRoIAlign, flatten_rois, per_roi_head
from deployzoo.models.instance_seg_contract import contract_fields
from deployzoo.registry import ModelSpec, PublishedFigure
from deployzoo.structures import Detections
from deployzoo.transforms import ImageMeta



@dataclass(frozen=True)
class MaskRCNNConfig:
    num_classes: int = 80
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    roi_strides: tuple[int, ...] = (4, 8, 16, 32)
    box_stds: tuple[float, ...] = (0.1, 0.1, 0.2, 0.2)
    score_threshold: float = 0.05
    nms_iou: float = 0.5
    max_dets: int = 100


class RoIHead(nn.Module):
    """mmdet StandardRoIHead: box branch on the proposals, mask branch on the final detections."""

    def __init__(self, config: MaskRCNNConfig):
        super().__init__()
        self.config = config
        self.bbox_roi_extractor = MultiLevelRoIAlign(7, config.roi_strides, sampling_ratio=0, aligned=True)
        self.bbox_head = Shared2FCBoxHead(256, 7, 1024, config.num_classes)
        self.mask_roi_extractor = MultiLevelRoIAlign(14, config.roi_strides, sampling_ratio=0, aligned=True)
        self.mask_head = FCNMaskHead(256, 256, 4, config.num_classes)
        self.coder = DeltaBoxCoder(stds=config.box_stds)

    def box_outputs(self, features, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits [B, R, K+1] and deltas [B, R, 4K] for RoIs ``boxes`` [B, R, 4]."""
        batch, rois = boxes.shape[:2]
        flat, batch_index = flatten_rois(boxes)
        logits, deltas = per_roi_head(self.bbox_head, self.bbox_roi_extractor, features, flat, batch_index)
        return logits.reshape(batch, rois, -1), deltas.reshape(batch, rois, -1)

    def detect(self, proposals, valid, logits, deltas, img_hw):
        """Softmax, class-specific decode clipped to the image, multiclass NMS (mmdet 3.x: in resized scale)."""
        batch, rois = proposals.shape[:2]
        scores = logits.softmax(dim=-1)[..., : self.config.num_classes]
        boxes = self.coder.decode(proposals[:, :, None, :], deltas.reshape(batch, rois, -1, 4), img_hw[:, None, None, :])
        c = self.config
        return multiclass_nms(boxes, scores, valid, c.score_threshold, c.nms_iou, c.max_dets)

    def mask_probs(self, features, boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return detection_mask_probs(self.mask_head, self.mask_roi_extractor, features, boxes, labels)



class MaskRCNN(nn.Module):
    def __init__(self, config: MaskRCNNConfig = MaskRCNNConfig()):
        super().__init__()
        self.config = config
        self.backbone = ResNet(depth=50, stride_in_1x1=False, norm="bn")
        self.neck = FPN([256, 512, 1024, 2048], 256, extra="maxpool")
        self.rpn_head = RPNHead(256, len(config.proposals.anchor_ratios) * len(config.proposals.anchor_scales))
        self.proposal_generator = ProposalGenerator(config.proposals)
        self.roi_head = RoIHead(config)

    def features(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """FPN levels P2..P6."""
        return tuple(self.neck(self.backbone(image)))

    def propose(self, features, img_hw: torch.Tensor):
        logits, deltas = self.rpn_head(features)
        return self.proposal_generator(logits, deltas, img_hw)

    def forward(self, image: torch.Tensor, img_hw: torch.Tensor):
        features = self.features(image)
        proposals, _, valid = self.propose(features, img_hw)
        roi_features = features[: len(self.config.roi_strides)]
        logits, deltas = self.roi_head.box_outputs(roi_features, proposals)
        boxes, scores, labels, num_dets = self.roi_head.detect(proposals, valid, logits, deltas, img_hw)
        masks = self.roi_head.mask_probs(roi_features, boxes, labels)
        return boxes, scores, labels, num_dets, masks


# ---------------------------------------------------------------------------------------------------
# Host side: preprocessing (worker processes, torch-free), batching, post-processing.


class InstanceSegPostprocess:
    """Graph outputs of one image -> Detections in original pixels with pasted, RLE-encoded masks.

    mmdet 3.x order: boxes divided by the (w, h) resize factors in float32, masks pasted with those boxes
    at the original size and binarised with >= ``mask_threshold``.
    """

    def __init__(self, mask_threshold: float = 0.5):
        self.mask_threshold = mask_threshold

    def __call__(self, outputs: dict[str, np.ndarray], meta: ImageMeta) -> Detections:
        from deployzoo.ops.mask_paste import encode_rle, paste_masks

        n = int(outputs["num_dets"])
        boxes = (outputs["boxes"][:n].astype(np.float32) / resize_factors(meta)).astype(np.float32)
        masks = paste_masks(outputs["masks"][:n].astype(np.float32), boxes, meta.orig_hw, self.mask_threshold)
        return Detections(boxes, outputs["scores"][:n].astype(np.float32), outputs["labels"][:n].astype(np.int64),
                          encode_rle(masks))


# The official file names the FPN and mask-head convs after mmcv's ConvModule (``.conv.``).
CHECKPOINT_RULES = RenameRules(
    renames=[
        (r"neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)", r"neck.lateral_convs.\1.\2"),
        (r"neck\.fpn_convs\.(\d+)\.conv\.(weight|bias)", r"neck.output_convs.\1.\2"),
        (r"roi_head\.mask_head\.convs\.(\d+)\.conv\.(weight|bias)", r"roi_head.mask_head.convs.\1.\2"),
    ],
)

def official_key(name: str) -> str:
    """Our state-dict name -> the name in mmdetection's file (the inverse of CHECKPOINT_RULES)."""
    name = re.sub(r"^neck\.output_convs\.(\d+)\.", r"neck.fpn_convs.\1.conv.", name)
    name = re.sub(r"^neck\.lateral_convs\.(\d+)\.", r"neck.lateral_convs.\1.conv.", name)
    return re.sub(r"^roi_head\.mask_head\.convs\.(\d+)\.", r"roi_head.mask_head.convs.\1.conv.", name)


# The fixture's dz-init-v1 gains, so stand-in weights produce detections and masks of sane sizes.
SYNTHETIC_GAINS = (
    (r"rpn_head\.rpn_cls\.weight", 2.0),
    (r"rpn_head\.rpn_reg\.weight", 0.1),
    (r"roi_head\.bbox_head\.fc_cls\.weight", 3.0),
    (r"roi_head\.bbox_head\.fc_reg\.weight", 0.1),
    (r"roi_head\.mask_head\.conv_logits\.weight", 20.0),
)


def build_mask_rcnn(num_classes: int = 80, score_threshold: float = 0.05, max_dets: int = 100) -> MaskRCNN:
    """``score_threshold`` / ``max_dets``: mmdet test_cfg.rcnn score_thr / max_per_img (deployzoo.test_settings)."""
    return MaskRCNN(MaskRCNNConfig(num_classes=num_classes, score_threshold=score_threshold,
                                   max_dets=max_dets)).eval()


# The class-dependent tensors of a fine-tuned checkpoint: fc_cls [C+1, 1024] (background last), the
# class-specific fc_reg [4C, 1024] and the mask head's conv_logits [C, 256, 1, 1].
CLASS_HEADS = (
    HeadTensor(r"roi_head\.bbox_head\.fc_cls\.(weight|bias)", per=1, extra=1),
    HeadTensor(r"roi_head\.bbox_head\.fc_reg\.(weight|bias)", per=4),
    HeadTensor(r"roi_head\.mask_head\.conv_logits\.(weight|bias)", per=1),
)


def make_spec(canvas_hw: tuple[int, int] | None = None, num_classes: int = 80) -> ModelSpec:
    """The registry entry; ``canvas_hw`` gives the fixed-shape variant (not bit-exact, see the README)."""
    suffix = "" if canvas_hw is None else f"@{canvas_hw[0]}x{canvas_hw[1]}"
    return ModelSpec(
        name="mmdet-mask-rcnn-r50-fpn-1x" + suffix,
        checkpoint_format="mmdetection .pth: {'state_dict', 'meta'} (mask_rcnn_r50_fpn_1x_coco_20200205-d4b0c5d6.pth)",
        published=PublishedFigure("COCO box AP", 38.2, "mmdetection model zoo (mask AP 34.7), v2 and v3"),
        build_model=partial(build_mask_rcnn, num_classes),
        checkpoint_rules=CHECKPOINT_RULES,
        preprocess=MMDetPreprocess(canvas_hw=canvas_hw),
        preprocess_description=PREPROCESS_DESCRIPTION,
        make_postprocess=InstanceSegPostprocess,
        synthetic_gains=SYNTHETIC_GAINS,
        checkpoint_key=official_key,
        class_heads=CLASS_HEADS,
        class_variant=partial(make_spec, canvas_hw),
        canvas_variant=partial(make_spec, num_classes=num_classes),
        **contract_fields(canvas_hw, "divide by the resize factors", "", num_classes),
    )


SPEC = make_spec()
