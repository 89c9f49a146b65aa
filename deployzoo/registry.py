"""The model zoo: one ``ModelSpec`` per model, in a plain dict.

A spec carries what a user and the pipeline need to know about a model without reading its code:
how to build it, how to load its official checkpoint, how to preprocess and post-process for it,
what graph it exports, which dataset and metric it is judged on, and the published figure.
Adding a model = one module in ``deployzoo/models`` that defines a ``SPEC``, and one line below.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from deployzoo.errors import DeployzooError


@dataclass(frozen=True)
class PublishedFigure:
    metric: str  # e.g. "VOC07 11-point mAP"
    value: float  # in percent
    source: str  # where the number comes from, and under which protocol


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str  # "detection", "instance-segmentation", "semantic-segmentation"
    dataset: str  # evaluation split, e.g. "VOC2007 test"
    input_hw: tuple[int, int]  # network input (H, W) of the default export
    checkpoint_format: str  # what the user's official file is
    published: PublishedFigure
    class_names: tuple[str, ...]
    build_model: Callable[[], Any]  # -> torch.nn.Module in eval mode; forward(image) -> outputs in output_names order
    checkpoint_rules: Any  # deployzoo.checkpoints.RenameRules
    input_name: str
    output_names: tuple[str, ...]
    # Picklable and torch-free: runs in data-loading worker processes. BGR uint8 -> (float32 [3,H,W], ImageMeta)
    # (It may carry ``read_image(path) -> BGR uint8``: the decoder the loader then uses; cv2 otherwise.)
    preprocess: Callable[[np.ndarray], tuple[np.ndarray, Any]]
    preprocess_description: str
    make_postprocess: Callable[[], Callable[[dict[str, np.ndarray], Any], Any]]  # -> f(outputs of one image, meta)
    evaluation: Any  # task adapter: open dataset, synthetic dataset, evaluate (see deployzoo.tasks)
    output_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # per image, no batch dim (dump reading)
    output_notes: dict[str, str] = field(default_factory=dict)  # name -> "[B,6375,4] ..." for docs and metadata
    category_ids: tuple[int, ...] | None = None  # dataset category id per class; default: index + 1
    # dz-init-v1 gain rules for stand-in weights, (regex, gain); "1d:" prefix = 1-D scales (see checkpoints.synthetic)
    synthetic_gains: tuple[tuple[str, float], ...] = ()
    # Graph inputs per image (no batch dim), None = free; default {input_name: (3, *input_hw)}.
    input_dims: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    # (preprocessed arrays, metas, batch_size) -> graph inputs; default: stack, zero rows for padding.
    collate: Callable[[list[np.ndarray], list[Any], int], dict[str, np.ndarray]] | None = None
    # batch_size -> deterministic graph inputs for tracing and pure-inference benchmarks.
    example_inputs: Callable[[int], dict[str, np.ndarray]] | None = None
    output_dtypes: dict[str, str] = field(default_factory=dict)  # name -> numpy dtype when not float32
    # Model state-dict name -> the official checkpoint's name (stand-in weights are generated under it).
    checkpoint_key: Callable[[str], str] | None = None
    # Outputs whose rows are ranked by score after NMS (engine comparisons judge them by detection matching).
    ranked_outputs: tuple[str, ...] = ()
    # `deployzoo run` settings that differ from the defaults (keys of job.run_main_job: num_images, ...).
    run_defaults: dict[str, Any] = field(default_factory=dict)
    # canvas_hw -> this model's fixed-canvas variant (``name@HxW``); default: the module's make_spec(canvas_hw=...).
    canvas_variant: Callable[[tuple[int, int]], "ModelSpec"] | None = None
    canvas_divisor: int = 32  # fixed-canvas sides must be multiples of this (the padding rule's divisor)
    # Per image, no batch dim, None = free (follows the input size): how the exported graph declares outputs.
    output_dims: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    # meta -> key: only images with equal keys share a batch (a graph that must not pad, e.g. PSPNet).
    batch_key: Callable[[Any], Any] | None = None
    # Fine-tuned checkpoints (deployzoo.checkpoints.head_classes): the head tensors whose shapes give the class
    # count, and num_classes -> this model (same canvas and contract) built for that many classes.
    class_heads: tuple[Any, ...] = ()
    class_variant: Callable[[int], "ModelSpec"] | None = None
    class_names_source: str = "official"  # where class_names come from (checkpoint meta, --classes, dataset ...)
    # Test-time settings changed from the official ones (deployzoo.test_settings: input_size, max_size,
    # score_threshold, max_dets); empty = the official model. test_settings.settings_of gives every value.
    test_settings: dict[str, Any] = field(default_factory=dict)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.graph_input_dims())

    def graph_input_dims(self) -> dict[str, tuple[int | None, ...]]:
        return dict(self.input_dims) or {self.input_name: (3, *self.input_hw)}

    def make_feeds(self, arrays: list[np.ndarray], metas: list[Any], batch_size: int) -> dict[str, np.ndarray]:
        """Graph inputs for one batch of preprocessed images (a short batch is padded)."""
        if self.collate is not None:
            return self.collate(arrays, metas, batch_size)
        from deployzoo.engine import stack_batch

        return {self.input_name: stack_batch(arrays, batch_size)[0]}

    def make_example_inputs(self, batch_size: int) -> dict[str, np.ndarray]:
        if self.example_inputs is not None:
            return self.example_inputs(batch_size)
        rng = np.random.default_rng(0)
        return {self.input_name: (rng.standard_normal((batch_size, 3, *self.input_hw)) * 50.0).astype(np.float32)}


# name -> "module:attribute" holding the ModelSpec; modules are imported on first use.
_ZOO: dict[str, str] = {
    "refinedet320-vgg16-voc": "deployzoo.models.refinedet:SPEC_320_VOC",
    "mmdet-mask-rcnn-r50-fpn-1x": "deployzoo.models.mask_rcnn:SPEC",
    "d2-cascade-mask-rcnn-r50-fpn-3x": "deployzoo.models.d2_cascade_mask_rcnn:SPEC",
    "mmdet-fsaf-r50-fpn-1x": "deployzoo.models.fsaf:SPEC",
    "mmdet-fsaf-r50-fpn-1x-v3post": "deployzoo.models.fsaf:SPEC_V3_POST",
    "mmseg-pspnet-r50-d8-voc12aug": "deployzoo.models.pspnet:SPEC",
    "mmseg-pspnet-r50-d8-voc12aug-labels": "deployzoo.models.pspnet:SPEC_LABELS",
}


def model_names() -> list[str]:
    return list(_ZOO)


def get_spec(name: str) -> ModelSpec:
    """The spec of ``name``; ``name@HxW`` is its fixed-canvas variant where the model offers one."""
    base, _, canvas = name.partition("@")
    if base not in _ZOO:
        raise DeployzooError(f"unknown model '{name}'; the zoo has: {', '.join(_ZOO)}")
    module_name, attr = _ZOO[base].split(":")
    module = importlib.import_module(module_name)
    spec = getattr(module, attr)
    if not canvas:
        return spec
    make_variant = spec.canvas_variant or getattr(module, "make_spec", None)
    match = re.fullmatch(r"(\d+)x(\d+)", canvas)
    if match is None or make_variant is None:
        raise DeployzooError(f"'{name}': {base} has no fixed-canvas variant '@{canvas}' (expected @HxW, e.g. @800x1216)")
    h, w = int(match.group(1)), int(match.group(2))
    if h % spec.canvas_divisor or w % spec.canvas_divisor:
        raise DeployzooError(f"'{name}': the canvas sides must be multiples of {spec.canvas_divisor}")
    return make_variant(canvas_hw=(h, w))
