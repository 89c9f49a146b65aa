"""PSPNet R50-D8 from an mmsegmentation checkpoint (spec §5), VOC12aug 512x512 20k, whole-image test.

Graph contract, chosen at export (registry name):
  ``mmseg-pspnet-r50-d8-voc12aug`` (logits): input image [B,3,H,W] float32 (normalised RGB, H, W dynamic:
      the official keep-ratio size, no padding); output seg_logits [B,21,H,W]: the decode head's stride-8
      logits resized to the network input (bilinear, align_corners False). The host resizes them to the
      original image (the second bilinear resize) and takes the argmax.
  ``mmseg-pspnet-r50-d8-voc12aug-labels`` (label map): inputs image and orig_hw [B,2] (the original
      (H, W)); output label_map [B,H0,W0] uint8, both resizes and the argmax inside the graph. All images
      of one batch share one original size (the pipeline batches them so).
  ``...@HxW`` (fixed canvas, e.g. @500x500, logits): images keep their size when they fit the canvas
      (else shrink to fit), zero-padded bottom/right; not the official protocol (the pyramid's pooled
      branches average over the padding, so every pixel changes; see the README).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deployzoo.backbones.resnet import ResNet
from deployzoo.checkpoints import RenameRules
from deployzoo.checkpoints.head_classes import HeadTensor
from deployzoo.errors import DeployzooError
from deployzoo.data.voc_seg import VOC_SEG_CLASSES
from deployzoo.heads.psp import PSPHead
from deployzoo.models.mmdet_common import MMDET_MEAN_RGB, MMDET_STD_RGB
from deployzoo.ops.resize import resize_bilinear, resize_bilinear_to_hw
from deployzoo.registry import ModelSpec, PublishedFigure
from deployzoo.structures import LabelMap
from deployzoo.tasks.voc_segmentation import VOCSegmentationTask
from deployzoo.transforms import ImageMeta, fit_size, keep_ratio_size, pad_batch, resize_normalize_rgb

NAME = "mmseg-pspnet-r50-d8-voc12aug"
TEST_SCALE = (2048, 512)
DEFAULT_INPUT_HW = (512, 683)  # a 375x500 VOC image after the keep-ratio resize

PREPROCESS_DESCRIPTION = (
    "cv2 BGR uint8 -> keep-ratio resize to (2048, 512) (mmcv.imrescale: cv2.resize INTER_LINEAR on uint8; "
    "short side 512 unless the long side would pass 2048) -> RGB float32 (x - [123.675,116.28,103.53]) / "
    "[58.395,57.12,57.375]; no padding"
)


class PSPNet(nn.Module):
    """ResNetV1c-50-D8 (stride 8) + PSPHead; the auxiliary FCN head is training-only and not built.

    forward(image [B,3,H,W]) -> seg_logits [B,21,H,W] (``output="logits"``), or with
    ``output="labels"`` forward(image, orig_hw [B,2]) -> label_map [B,H0,W0] uint8.
    """

    def __init__(self, num_classes: int = 21, output: str = "logits"):
        super().__init__()
        if output not in ("logits", "labels"):
            raise ValueError(f"output must be 'logits' or 'labels', got {output!r}")
        self.output = output
        self.backbone = ResNet(50, deep_stem=True, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                               contract_dilation=True, out_indices=(3,))
        self.decode_head = PSPHead(2048, 512, num_classes, (1, 2, 3, 6))

    def decode_logits(self, image: torch.Tensor) -> torch.Tensor:
        """The decode head's logits at stride 8: [B, 21, ceil(H/8), ceil(W/8)]."""
        return self.decode_head(self.backbone(image)[-1])

    def forward(self, image: torch.Tensor, orig_hw: torch.Tensor | None = None):
        logits = resize_bilinear(self.decode_logits(image), image)  # first resize: to the network input
        if self.output == "logits":
            return (logits,)
        at_original = resize_bilinear_to_hw(logits, orig_hw)  # second resize: to the original image
        return (at_original.argmax(dim=1).to(torch.uint8),)


# ---------------------------------------------------------------------------------------------------
# Host side (worker processes, torch-free until post-processing).


@dataclass(frozen=True)
class MMSegPreprocess:
    """mmseg 1.x test pipeline: cv2 BGR -> keep-ratio resize to ``scale`` -> RGB, (x - mean) / std.

    ``canvas_hw``: a fixed-shape export; images are resized with the official rule but never beyond the
    canvas (VOC images, <= 500 px, then keep their own size in a 500x500 canvas).
    """

    scale: tuple[int, int] = TEST_SCALE
    canvas_hw: tuple[int, int] | None = None

    def __call__(self, bgr: np.ndarray) -> tuple[np.ndarray, ImageMeta]:
        orig = bgr.shape[:2]
        if self.canvas_hw is None:
            size = keep_ratio_size(orig, self.scale)
        else:
            size = fit_size(orig, self.scale, self.canvas_hw)
        return resize_normalize_rgb(bgr, size, MMDET_MEAN_RGB, MMDET_STD_RGB)


@dataclass(frozen=True)
class SegCollate:
    """One batch of preprocessed images -> graph inputs.

    The pipeline batches only images of one size (``batch_key``), so nothing is padded on the official
    path; a batch that mixes sizes anyway (or a fixed canvas) is zero-padded bottom/right to the largest
    image (or the canvas) and the host crops the logits back to each image's own size.
    """

    canvas_hw: tuple[int, int] | None = None
    with_orig_hw: bool = False

    def __call__(self, arrays: list[np.ndarray], metas: list[ImageMeta], batch_size: int) -> dict[str, np.ndarray]:
        feeds = {"image": pad_batch(arrays, batch_size, 1, self.canvas_hw)}
        if self.with_orig_hw:
            orig_hw = np.zeros((batch_size, 2), dtype=np.float32)
            orig_hw[:] = metas[0].orig_hw  # padding rows: any size works, their outputs are dropped
            for i, meta in enumerate(metas):
                orig_hw[i] = meta.orig_hw
            feeds["orig_hw"] = orig_hw
        return feeds


def same_size_key(meta: ImageMeta) -> tuple:
    """Images batched together must share the network-input size (no padding: exact)."""
    return meta.resized_hw


def same_sizes_key(meta: ImageMeta) -> tuple:
    """The label-map graph resizes a whole batch to one original size: both sizes must agree."""
    return meta.resized_hw, meta.orig_hw


def logits_at_original(seg_logits: np.ndarray, meta: ImageMeta) -> torch.Tensor:
    """[C, H, W] graph logits (network-input size, maybe padded) -> [C, H0, W0] at the original size: crop
    the padding, then mmseg's second bilinear resize (align_corners False), computed by torch as mmseg does."""
    rh, rw = meta.resized_hw
    logits = torch.from_numpy(np.ascontiguousarray(seg_logits[:, :rh, :rw], dtype=np.float32))
    with torch.inference_mode():
        return F.interpolate(logits[None], size=meta.orig_hw, mode="bilinear", align_corners=False)[0]


class SegPostprocess:
    """Graph outputs of one image -> LabelMap at the original size.

    Logits: crop any padding, resize to the original (H, W) (bilinear, align_corners False: mmseg's second
    resize, with torch so the arithmetic is the same), argmax over classes (first index on exact ties).
    ``keep_margin`` also keeps the top-1 minus top-2 logit per pixel (what comparisons use to tell
    near-ties). Label-map graphs already did all of it.
    """

    def __init__(self, keep_margin: bool = False):
        self.keep_margin = keep_margin

    def __call__(self, outputs: dict[str, np.ndarray], meta: ImageMeta) -> LabelMap:
        h, w = meta.orig_hw
        if "label_map" in outputs:
            return LabelMap(np.ascontiguousarray(outputs["label_map"][:h, :w], dtype=np.uint8))
        full = logits_at_original(outputs["seg_logits"], meta)
        with torch.inference_mode():
            labels = full.argmax(dim=0).to(torch.uint8).numpy()
            margin = None
            if self.keep_margin:
                top2 = full.topk(2, dim=0).values
                margin = (top2[0] - top2[1]).numpy()
        return LabelMap(labels, margin)


# The auxiliary FCN head supervises training only (mmseg does not run it at test).
CHECKPOINT_RULES = RenameRules(
    ignore=[(r"auxiliary_head\..*", "auxiliary FCN head: training only, not run at test (mmseg whole inference)")],
)

# The fixture's dz-init-v1 gains (keys.json), so the stand-in weights are the fixture's weights.
SYNTHETIC_GAINS = (
    (r"backbone\..*", math.sqrt(2.0)),
    (r"backbone\.stem\.0\.weight", 8.0),
    (r"1d:backbone\.layer\d\.\d+\.bn3\.weight", 0.3),
    (r"decode_head\.bottleneck\.conv\.weight", math.sqrt(2.0)),
    (r"decode_head\.psp_modules\.\d\.1\.conv\.weight", 0.1),
    (r"decode_head\.conv_seg\.weight", 1.0),
)


def example_inputs(batch_size: int, hw: tuple[int, int] = DEFAULT_INPUT_HW, with_orig_hw: bool = False
                   ) -> dict[str, np.ndarray]:
    """Deterministic inputs for tracing and pure-inference benchmarks (a 375x500 VOC image's size)."""
    rng = np.random.default_rng(0)
    feeds = {"image": rng.standard_normal((batch_size, 3, *hw), dtype=np.float32)}
    if with_orig_hw:
        feeds["orig_hw"] = np.tile(np.asarray([[375, 500]], dtype=np.float32), (batch_size, 1))
    return feeds


# The class-dependent tensor of a fine-tuned checkpoint: the decode head's conv_seg [C, 512, 1, 1] (background is
# one of mmseg's C classes). The auxiliary head's conv_seg is ignored by name (training only).
CLASS_HEADS = (HeadTensor(r"decode_head\.conv_seg\.(weight|bias)", per=1),)


def make_spec(canvas_hw: tuple[int, int] | None = None, output: str = "logits", num_classes: int = 21) -> ModelSpec:
    """The registry entry: ``output`` "logits" or "labels"; ``canvas_hw`` a fixed-shape (logits) variant;
    ``num_classes``: a fine-tuned checkpoint's class count (generic names until deployzoo.fine_tuned names them)."""
    from deployzoo.fine_tuned import generic_class_names

    official = num_classes == len(VOC_SEG_CLASSES)
    names = VOC_SEG_CLASSES if official else generic_class_names(num_classes)
    if canvas_hw is not None and output != "logits":
        raise DeployzooError("a fixed-canvas PSPNet exports logits only (the host crops the padding)")
    labels = output == "labels"
    name = NAME + ("-labels" if labels else "") + ("" if canvas_hw is None else f"@{canvas_hw[0]}x{canvas_hw[1]}")
    image_dims = (3, None, None) if canvas_hw is None else (3, *canvas_hw)
    if labels:
        outputs = {"output_names": ("label_map",), "output_dtypes": {"label_map": "uint8"},
                   "output_dims": {"label_map": (None, None)}, "ranked_outputs": ("label_map",),
                   "output_notes": {"label_map": "[B,H0,W0] uint8 class per pixel at the original size "
                                                  "(orig_hw of the batch's first row)"},
                   "input_dims": {"image": image_dims, "orig_hw": (2,)}}
    else:
        hw = (None, None) if canvas_hw is None else canvas_hw
        outputs = {"output_names": ("seg_logits",), "output_dims": {"seg_logits": (num_classes, *hw)},
                   "output_notes": {"seg_logits": f"[B,{num_classes},H,W] logits at the network input size; resize to the "
                                                  "original (bilinear, align_corners False), then argmax"},
                   "input_dims": {"image": image_dims}}
        if canvas_hw is not None:
            outputs["output_shapes"] = {"seg_logits": (num_classes, *canvas_hw)}
    return ModelSpec(
        name=name,
        task="semantic-segmentation",
        dataset="VOC2012 val",
        input_hw=canvas_hw or DEFAULT_INPUT_HW,
        checkpoint_format=("mmsegmentation .pth: {'state_dict', 'meta'} "
                           "(pspnet_r50-d8_512x512_20k_voc12aug_20200617_101958-ed5dfbd9.pth)"),
        published=PublishedFigure("mIoU", 76.78, "mmsegmentation model zoo, single scale, whole-image test"),
        class_names=names,
        class_names_source="official" if official else "generic",
        build_model=lambda: PSPNet(num_classes=num_classes, output=output).eval(),
        checkpoint_rules=CHECKPOINT_RULES,
        input_name="image",
        preprocess=MMSegPreprocess(canvas_hw=canvas_hw),
        preprocess_description=PREPROCESS_DESCRIPTION + ("" if canvas_hw is None else
                                                         f"; zero-padded to the {canvas_hw[0]}x{canvas_hw[1]} canvas"),
        make_postprocess=SegPostprocess,
        evaluation=VOCSegmentationTask(class_names=names),
        synthetic_gains=SYNTHETIC_GAINS,
        collate=SegCollate(canvas_hw=canvas_hw, with_orig_hw=labels),
        example_inputs=partial(example_inputs, hw=canvas_hw or DEFAULT_INPUT_HW, with_orig_hw=labels),
        batch_key=(same_sizes_key if labels else same_size_key) if canvas_hw is None else None,
        canvas_divisor=1,
        canvas_variant=partial(make_spec, output=output, num_classes=num_classes),
        class_heads=CLASS_HEADS,
        class_variant=partial(make_spec, canvas_hw, output),
        # Without a canvas a batch holds images of one network-input size only. The evaluation orders the
        # images by size, but a few images of several sizes (`run`'s generated set cycles through four) still
        # leave short batches first, each run with a padding row, and `run` found no leading full batches for its
        # end-to-end/pure ratio. At batch 1 every batch is full and nothing is padded; it costs nothing on 2
        # cores (matrix: 0.290 against 0.288 images/s at batch 4 on ONNX Runtime).
        run_defaults={"num_images": 4, "eval_batch": 1 if canvas_hw is None else 2, "batch_sizes": [1, 2],
                      "bench_seconds": 1.0,
                      "bench_iters": 3, "compare_images": 2},
        **outputs,
    )


SPEC = make_spec()
SPEC_LABELS = make_spec(output="labels")
