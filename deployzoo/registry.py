"""The model zoo: one ``ModelSpec`` per model, in a plain dict.

A spec carries what a user and the pipeline need to know about a model without reading its code:
how to build it, how to load its official checkpoint, how to preprocess and post-process for it,
what graph it exports, which dataset and metric it is judged on, and the published figure.
Adding a model = one module in ``deployzoo/models`` that defines a ``SPEC``, and one line below.
"""
from __future__ import annotations

import importlib
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
    preprocess: Callable[[np.ndarray], tuple[np.ndarray, Any]]
    preprocess_description: str
    make_postprocess: Callable[[], Callable[[dict[str, np.ndarray], Any], Any]]  # -> f(outputs of one image, meta)
    evaluation: Any  # task adapter: open dataset, synthetic dataset, evaluate (see deployzoo.tasks)
    output_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # per image, no batch dim (dump reading)
    output_notes: dict[str, str] = field(default_factory=dict)  # name -> "[B,6375,4] ..." for docs and metadata
    category_ids: tuple[int, ...] | None = None  # dataset category id per class; default: index + 1
    # dz-init-v1 gain rules for stand-in weights, (regex, gain); "1d:" prefix = 1-D scales (see checkpoints.synthetic)
    synthetic_gains: tuple[tuple[str, float], ...] = ()


# name -> "module:attribute" holding the ModelSpec; modules are imported on first use.
_ZOO: dict[str, str] = {
    "refinedet320-vgg16-voc": "deployzoo.models.refinedet:SPEC_320_VOC",
}


def model_names() -> list[str]:
    return list(_ZOO)


def get_spec(name: str) -> ModelSpec:
    if name not in _ZOO:
        raise DeployzooError(f"unknown model '{name}'; the zoo has: {', '.join(_ZOO)}")
    module_name, attr = _ZOO[name].split(":")
    return getattr(importlib.import_module(module_name), attr)
