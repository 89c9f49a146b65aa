"""RefineDet (luuuyi/RefineDet.PyTorch): the network, its checkpoint rules, its host-side detection output.

Spec: shared/specs/models.md section 6. The module attribute names and ModuleList indices are the
checkpoint's key names, so the official state dict loads with no renames.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deployzoo.backbones.vgg import vgg16_reduced_fc
from deployzoo.checkpoints.head_classes import HeadTensor
from deployzoo.checkpoints.remap import RenameRules
from deployzoo.data.voc import VOC_CLASSES
from deployzoo.heads.refinedet import flatten_levels, multibox_convs, run_tcb, tcb_layers
from deployzoo.heads.refinedet_detect import RefineDetDetectConfig, refinedet_detect
from deployzoo.layers.l2norm import L2Norm
from deployzoo.ops.priors import ssd_priors
from deployzoo.structures import Detections
from deployzoo.registry import ModelSpec, PublishedFigure
from deployzoo.tasks.voc_detection import VOCDetectionTask
from deployzoo.transforms import ImageMeta, warp_resize_mean_rgb

OUTPUT_NAMES = ("arm_loc", "arm_conf", "odm_loc", "odm_conf")
MEAN_BGR = (104.0, 117.0, 123.0)


@dataclass(frozen=True)
class RefineDetConfig:
    """``voc_refinedet['320']`` of the original data/config.py."""

    size: int = 320
    num_classes: int = 21  # background included, at index 0
    feature_maps: tuple[int, ...] = (40, 20, 10, 5)
    steps: tuple[int, ...] = (8, 16, 32, 64)
    min_sizes: tuple[float, ...] = (32, 64, 128, 256)
    aspect_ratios: tuple[tuple[float, ...], ...] = ((2,), (2,), (2,), (2,))
    variances: tuple[float, float] = (0.1, 0.2)
    anchors_per_cell: int = 3
    source_channels: tuple[int, ...] = (512, 512, 1024, 512)  # conv4_3, conv5_3, fc7, conv6_2

    def priors(self) -> np.ndarray:
        return ssd_priors(self.feature_maps, self.size, self.steps, self.min_sizes, (), self.aspect_ratios, clip=True)


class RefineDet(nn.Module):
    """RefineDet with a VGG16 backbone.

    ``forward(image [B,3,S,S]) -> (arm_loc [B,P,4], arm_conf [B,P,2], odm_loc [B,P,4], odm_conf [B,P,C])``
    with both confidences softmaxed: the deployed graph contract. ``forward_raw`` returns the logits.
    Input: RGB minus the BGR mean (104,117,123), 0-255 range (see ``preprocess``).
    """

    def __init__(self, config: RefineDetConfig = RefineDetConfig()):
        super().__init__()
        self.config = config
        c = config
        self.vgg = vgg16_reduced_fc()
        self.conv4_3_L2Norm = L2Norm(512, 10)
        self.conv5_3_L2Norm = L2Norm(512, 8)
        self.extras = nn.ModuleList([nn.Conv2d(1024, 256, 1), nn.Conv2d(256, 512, 3, stride=2, padding=1)])
        self.arm_loc = multibox_convs(c.source_channels, c.anchors_per_cell, 4)
        self.arm_conf = multibox_convs(c.source_channels, c.anchors_per_cell, 2)
        self.odm_loc = multibox_convs([256] * 4, c.anchors_per_cell, 4)
        self.odm_conf = multibox_convs([256] * 4, c.anchors_per_cell, c.num_classes)
        self.tcb0, self.tcb1, self.tcb2 = tcb_layers(c.source_channels)

    def forward_raw(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sources = []
        for k in range(30):
            x = self.vgg[k](x)
            if k == 22:
                sources.append(self.conv4_3_L2Norm(x))
            elif k == 29:
                sources.append(self.conv5_3_L2Norm(x))
        for k in range(30, len(self.vgg)):
            x = self.vgg[k](x)
        sources.append(x)
        for k, conv in enumerate(self.extras):
            x = F.relu(conv(x))
            if k % 2 == 1:
                sources.append(x)

        arm_loc = flatten_levels([head(s) for head, s in zip(self.arm_loc, sources)], 4)
        arm_conf = flatten_levels([head(s) for head, s in zip(self.arm_conf, sources)], 2)
        refined = run_tcb(sources, self.tcb0, self.tcb1, self.tcb2)
        odm_loc = flatten_levels([head(s) for head, s in zip(self.odm_loc, refined)], 4)
        odm_conf = flatten_levels([head(s) for head, s in zip(self.odm_conf, refined)], self.config.num_classes)
        return arm_loc, arm_conf, odm_loc, odm_conf

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        arm_loc, arm_conf, odm_loc, odm_conf = self.forward_raw(x)
        return arm_loc, arm_conf.softmax(dim=-1), odm_loc, odm_conf.softmax(dim=-1)


# The official file is refinedet_net.state_dict(): names already match the module tree.
CHECKPOINT_RULES = RenameRules(renames=[], ignore=[])


def preprocess(bgr: np.ndarray, size: int = 320) -> tuple[np.ndarray, ImageMeta]:
    """eval_refinedet.py's BaseTransform(size, (104, 117, 123)): warp to size x size, minus mean, RGB."""
    return warp_resize_mean_rgb(bgr, (size, size), MEAN_BGR)


PREPROCESS_DESCRIPTION = (
    "cv2.imread BGR uint8 -> cv2.resize to 320x320 (INTER_LINEAR, aspect not kept) -> float32 -> "
    "subtract (104,117,123) in BGR order -> channels to RGB -> CHW; no std division"
)


class RefineDetPostprocess:
    """Graph outputs of one image -> Detections in original pixels (labels 0-based, background dropped).

    Boxes are the normalised corners times (W, H) of the original image, float32, not clipped: what
    eval_refinedet.py's test_net hands to the evaluation.
    """

    def __init__(self, config: RefineDetConfig = RefineDetConfig(), detect: RefineDetDetectConfig | None = None):
        self.priors = config.priors()
        self.detect = detect or RefineDetDetectConfig(variances=config.variances)

    def __call__(self, outputs: dict[str, np.ndarray], meta: ImageMeta) -> Detections:
        boxes, scores, labels = refinedet_detect(
            outputs["arm_loc"], outputs["arm_conf"], outputs["odm_loc"], outputs["odm_conf"], self.priors, self.detect
        )
        h, w = meta.orig_hw
        scale = np.array([w, h, w, h], dtype=np.float32)
        return Detections(boxes * scale, scores, labels - 1)


def refinedet_config(size: int = 320, num_classes: int = 21) -> RefineDetConfig:
    """The config for a ``size`` x ``size`` input: RefineDet.PyTorch's voc_refinedet['320'] / ['512'] differ only
    in the feature-map sides (size / step, steps 8, 16, 32, 64); other multiples of 64 follow the same rule.

    Raises:
        ValueError: ``size`` not a multiple of 64 (the TCB's 2x upsampling then misses the finer level).
    """
    if size % 64:
        raise ValueError(f"RefineDet's input size must be a multiple of 64 (e.g. 320, 512), got {size}")
    steps = RefineDetConfig.steps
    return RefineDetConfig(size=size, num_classes=num_classes, feature_maps=tuple(size // s for s in steps))


def build_refinedet320_voc(num_classes: int = 20, size: int = 320) -> RefineDet:
    """``num_classes``: object classes (the network adds the background at index 0); ``size``: the square input
    side (deployzoo.test_settings --input-size; the priors follow it)."""
    return RefineDet(refinedet_config(size, num_classes + 1)).eval()


# The class-dependent tensors of a fine-tuned checkpoint: the ODM confidence convs [A*(C+1), 256, 3, 3]
# (3 anchors per cell, background included). The ARM's two-way confidences do not depend on C.
CLASS_HEADS = (HeadTensor(r"odm_conf\.\d+\.(weight|bias)", per=3, extra=3),)


# Stand-in weights keep activations in range: He-like gain, a tiny first layer (inputs are 0-255),
# small box deltas, L2Norm scales that match the original's init (10, 8) in expectation.
SYNTHETIC_GAINS = (
    (r".*", 2**0.5),
    (r"vgg\.0\.weight", 2**0.5 / 80),
    (r"(arm|odm)_loc\.\d\.weight", 0.1),
    (r"1d:conv4_3_L2Norm\.weight", 40 / 3),
    (r"1d:conv5_3_L2Norm\.weight", 32 / 3),
)

def make_spec_320(num_classes: int = 20) -> ModelSpec:
    """The registry entry; ``num_classes`` (object classes, background not counted) for a fine-tuned checkpoint,
    with generic names until deployzoo.fine_tuned names them."""
    from deployzoo.fine_tuned import generic_class_names

    official = num_classes == len(VOC_CLASSES)
    names = VOC_CLASSES if official else generic_class_names(num_classes)
    c = num_classes + 1
    return ModelSpec(
        name="refinedet320-vgg16-voc",
        task="detection",
        dataset="VOC2007 test",
        input_hw=(320, 320),
        checkpoint_format="RefineDet.PyTorch .pth: bare state dict, 98 tensors (e.g. RefineDet320_VOC_final.pth)",
        published=PublishedFigure(
            "VOC07 11-point mAP", 79.81,
            "luuuyi/RefineDet.PyTorch README (PyTorch eval, --protocol refinedet-pytorch); paper 80.0, Caffe 79.52",
        ),
        class_names=names,
        class_names_source="official" if official else "generic",
        build_model=partial(build_refinedet320_voc, num_classes),
        checkpoint_rules=CHECKPOINT_RULES,
        input_name="image",
        output_names=OUTPUT_NAMES,
        preprocess=partial(preprocess, size=320),
        preprocess_description=PREPROCESS_DESCRIPTION,
        make_postprocess=RefineDetPostprocess,
        evaluation=VOCDetectionTask(year="2007", split="test", class_names=names, protocol="refinedet-pytorch"),
        output_shapes={"arm_loc": (6375, 4), "arm_conf": (6375, 2), "odm_loc": (6375, 4), "odm_conf": (6375, c)},
        output_notes={
            "arm_loc": "[B,6375,4] ARM box offsets (variances 0.1, 0.2) against the priors",
            "arm_conf": "[B,6375,2] ARM softmax (background, object)",
            "odm_loc": "[B,6375,4] ODM box offsets against the ARM-refined priors",
            "odm_conf": f"[B,6375,{c}] ODM softmax, class 0 = background, then "
                        + ("VOC classes alphabetically" if official else "the checkpoint's classes in order"),
        },
        synthetic_gains=SYNTHETIC_GAINS,
        class_heads=CLASS_HEADS,
        class_variant=make_spec_320,
    )


SPEC_320_VOC = make_spec_320()
