"""Test-time settings a fine-tuned model may change (issue 17 item 5): the test scale, the score threshold and
the detections kept per image, mapped onto each model's own constructor arguments.

Per family (official values; "graph": inside the exported graph, "host": in the host-side post-processing):

- RefineDet: ``input_size`` the square side, 320 (multiples of 64; the priors follow it: voc_refinedet '320' and
  '512' differ only in the feature-map sides); ``score_threshold`` Detect_RefineDet's conf_thresh 0.01 (host);
  ``max_dets`` keep_top_k, official: every NMS survivor (host); no ``max_size``.
- mmdet Mask R-CNN and FSAF: keep-ratio scale (1333, 800) = ``max_size`` 1333, ``input_size`` 800 (the short
  side); ``score_threshold`` test_cfg(.rcnn).score_thr 0.05 and ``max_dets`` max_per_img 100 (graph).
- detectron2 Cascade Mask R-CNN: ResizeShortestEdge 800, max size 1333; ``score_threshold``
  MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.05 and ``max_dets`` TEST.DETECTIONS_PER_IMAGE 100 (graph).
- mmseg PSPNet: keep-ratio scale (2048, 512) = ``max_size`` 2048, ``input_size`` 512; nothing else.

Defaults are the official ones; ``ModelSpec.test_settings`` holds only what was changed. Sources: RefineDet.PyTorch
data/config.py (voc_refinedet '320'/'512') and eval_refinedet.py; mmdetection 3.x configs/_base_/models/
mask_rcnn_r50_fpn.py and configs/fsaf/fsaf_r50_fpn_1x_coco.py; detectron2 configs/Base-RCNN-FPN.yaml and
config/defaults.py; mmsegmentation 1.x configs/_base_/datasets/pascal_voc12.py.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from deployzoo.errors import DeployzooError

__all__ = ["FIELDS", "OPTIONS", "check_settings", "describe", "from_metadata", "official_settings", "reconcile",
           "report_fields", "settings_of", "with_settings"]

FIELDS = ("input_size", "max_size", "score_threshold", "max_dets")
OPTIONS = {"input_size": "--input-size", "max_size": "--max-size", "score_threshold": "--test-score-thr",
           "max_dets": "--test-max-dets"}
METADATA_KEY = "deployzoo.test_settings"


@dataclass(frozen=True)
class _Family:
    prefix: str
    official: dict[str, Any]  # every field: its official value (None: the model keeps all / has no such limit)
    settable: tuple[str, ...]


_FAMILIES = (
    _Family("refinedet", {"input_size": 320, "max_size": None, "score_threshold": 0.01, "max_dets": None},
            ("input_size", "score_threshold", "max_dets")),
    _Family("mmdet-mask-rcnn", {"input_size": 800, "max_size": 1333, "score_threshold": 0.05, "max_dets": 100},
            FIELDS),
    _Family("mmdet-fsaf", {"input_size": 800, "max_size": 1333, "score_threshold": 0.05, "max_dets": 100},
            FIELDS),
    _Family("d2-cascade-mask-rcnn", {"input_size": 800, "max_size": 1333, "score_threshold": 0.05, "max_dets": 100},
            FIELDS),
    _Family("mmseg-pspnet", {"input_size": 512, "max_size": 2048, "score_threshold": None, "max_dets": None},
            ("input_size", "max_size")),
)


def _family(spec) -> _Family:
    for family in _FAMILIES:
        if spec.name.startswith(family.prefix):
            return family
    raise DeployzooError(f"{spec.name} has no test-time settings (deployzoo.test_settings)")


def official_settings(spec) -> dict[str, Any]:
    """Every setting's official value for ``spec`` (None: not applicable, or no limit)."""
    return dict(_family(spec).official)


def settings_of(spec) -> dict[str, Any]:
    """What ``spec`` runs with: every field's value and ``changed`` (the fields that are not the official ones),
    for reports, the ONNX metadata and fingerprints."""
    values = {**official_settings(spec), **spec.test_settings}
    return {**values, "changed": sorted(spec.test_settings)}


def report_fields(spec) -> dict[str, Any]:
    """``{"test_settings": settings_of(spec)}`` for metrics.json, report.json and engine descriptions; {} for a
    model without test-time settings."""
    try:
        return {"test_settings": settings_of(spec)}
    except DeployzooError:
        return {}


def describe(spec) -> str:
    """One line: 'test settings: input_size 512 (official 320), score_threshold 0.01, ...'."""
    official = official_settings(spec)
    parts = []
    for key in _family(spec).settable:
        value = spec.test_settings.get(key, official[key])
        shown = "all" if value is None else value
        parts.append(f"{key} {shown}" + (f" (official {'all' if official[key] is None else official[key]})"
                                         if key in spec.test_settings else ""))
    return "test settings: " + ", ".join(parts)


def check_settings(spec, input_size: Any = None, max_size: Any = None, score_threshold: Any = None,
                   max_dets: Any = None, keep_official: bool = False) -> dict[str, Any]:
    """The changed settings for ``spec`` (values equal to the official one dropped unless ``keep_official``),
    checked.

    Raises:
        DeployzooError: one message naming the option and the problem: a setting the model does not have, a
            number that is not finite, not a whole number, out of range (input_size 32..4096, max_size up to
            8192 and not below the input size, score threshold in [0, 1), max_dets 1..10000), or a RefineDet
            side that is not a multiple of 64.
    """
    family = _family(spec)
    given = {"input_size": input_size, "max_size": max_size, "score_threshold": score_threshold,
             "max_dets": max_dets}
    problems = []
    out: dict[str, Any] = {}
    for key, value in given.items():
        if value is None:
            continue
        option = OPTIONS[key]
        if key not in family.settable:
            problems.append(f"{option}: {spec.name} has no {key.replace('_', ' ')} to set (settable: "
                            f"{', '.join(OPTIONS[k] for k in family.settable)})")
            continue
        if key == "score_threshold":
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number) or not 0.0 <= number < 1.0:
                problems.append(f"{option}: expected a score in [0, 1), got {value!r}")
                continue
            out[key] = number
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if isinstance(value, bool) or not math.isfinite(number) or not number.is_integer():
                problems.append(f"{option}: expected a whole number, got {value!r}")
                continue
            number = int(number)
            low, high = {"input_size": (32, 4096), "max_size": (32, 8192), "max_dets": (1, 10000)}[key]
            if not low <= number <= high:
                problems.append(f"{option}: expected {low}..{high}, got {number}")
                continue
            out[key] = number
    size = out.get("input_size", family.official["input_size"])
    if "input_size" in out and family.prefix == "refinedet" and size % 64:
        problems.append(f"--input-size: RefineDet's side must be a multiple of 64 (its TCB upsamples each level "
                        f"2x onto the finer one; RefineDet.PyTorch ships 320 and 512), got {size}")
    long_side = out.get("max_size", family.official["max_size"])
    if long_side is not None and size is not None and long_side < size and ("max_size" in out or "input_size" in out):
        problems.append(f"--max-size {long_side} is below --input-size {size} (the long side cannot be shorter)")
    if problems:
        raise DeployzooError(f"{spec.name}: bad test-time setting(s): " + "; ".join(problems))
    return {k: v for k, v in out.items() if keep_official or v != family.official[k]}


def with_settings(spec, settings: Mapping[str, Any] | None):
    """``spec`` built with ``settings`` (checked ``check_settings`` output, merged over ``spec.test_settings``):
    the model's constructor arguments, its preprocessing, its post-processing and its output contract follow.
    ``spec`` unchanged when there is nothing to change."""
    merged = {**spec.test_settings, **(settings or {})}
    if not merged:
        return spec
    family = _family(spec)
    values = {**family.official, **merged}
    if family.prefix == "refinedet":
        spec = _refinedet(spec, values)
    elif family.prefix == "mmseg-pspnet":
        spec = dataclasses.replace(spec, preprocess=dataclasses.replace(
            spec.preprocess, scale=(values["max_size"], values["input_size"])))
        spec = _typical_input(spec, (375, 500), 1)  # a VOC image
    else:
        spec = _typical_input(_rcnn(spec, family, values), (480, 640), 32)  # a COCO image, padded to /32
    note = describe(dataclasses.replace(spec, test_settings=merged))
    return dataclasses.replace(spec, test_settings=merged, preprocess_description=_base_description(spec) +
                               f"; deployzoo {note}")


def _base_description(spec) -> str:
    return spec.preprocess_description.split("; deployzoo test settings:")[0]


def _typical_input(spec, image_hw: tuple[int, int], divisor: int):
    """The default input size (tracing, pure-inference benchmarks) at the new scale: a typical dataset image
    through the changed preprocessing, as the official default is at the official scale. A fixed canvas keeps
    its size."""
    import numpy as np

    if getattr(spec.preprocess, "canvas_hw", None) is not None or not isinstance(spec.example_inputs, partial):
        return spec
    h, w = spec.preprocess(np.zeros((*image_hw, 3), dtype=np.uint8))[1].resized_hw
    hw = (-(-h // divisor) * divisor, -(-w // divisor) * divisor)
    return dataclasses.replace(spec, input_hw=hw, example_inputs=_with_keywords(spec.example_inputs, hw=hw))


def _with_keywords(build, **keywords):
    if not isinstance(build, partial):
        raise DeployzooError("internal: this function takes no test-time settings")
    return partial(build.func, *build.args, **{**build.keywords, **keywords})


def _rcnn(spec, family: _Family, values: dict[str, Any]):
    from deployzoo.models.d2_common import D2Preprocess

    pre = spec.preprocess
    if isinstance(pre, D2Preprocess):
        pre = dataclasses.replace(pre, short_edge=values["input_size"], max_size=values["max_size"])
    else:  # mmdet: keep-ratio scale (long, short)
        pre = dataclasses.replace(pre, scale=(values["max_size"], values["input_size"]))
    old, new = family.official["max_dets"], values["max_dets"]
    shapes = {n: ((new, *s[1:]) if n in (*spec.ranked_outputs, "dets") and s and s[0] == old else s)
              for n, s in spec.output_shapes.items()}
    notes = {n: text.replace(f"[B,{old}", f"[B,{new}") for n, text in spec.output_notes.items()}
    return dataclasses.replace(spec, preprocess=pre, output_shapes=shapes, output_notes=notes,
                               build_model=_with_keywords(spec.build_model, score_threshold=values["score_threshold"],
                                                          max_dets=new))


def _refinedet(spec, values: dict[str, Any]):
    from deployzoo.heads.refinedet_detect import RefineDetDetectConfig
    from deployzoo.models.refinedet import (
        RefineDetPostprocess,
        preprocess,
        refinedet_config,
    )

    size = values["input_size"]
    config = refinedet_config(size, len(spec.class_names) + 1)
    priors = int(config.priors().shape[0])
    detect = RefineDetDetectConfig(score_threshold=values["score_threshold"], max_per_image=values["max_dets"],
                                   variances=config.variances)
    old = spec.output_shapes["arm_loc"][0]
    shapes = {n: (priors, *s[1:]) for n, s in spec.output_shapes.items()}
    notes = {n: text.replace(f"[B,{old},", f"[B,{priors},") for n, text in spec.output_notes.items()}
    return dataclasses.replace(spec, input_hw=(size, size), preprocess=partial(preprocess, size=size),
                               make_postprocess=partial(RefineDetPostprocess, config, detect),
                               output_shapes=shapes, output_notes=notes,
                               build_model=_with_keywords(spec.build_model, size=size))


def from_metadata(spec, metadata: Mapping[str, str], where: str) -> dict[str, Any]:
    """The changed settings an exported ONNX was made with (its ``deployzoo.test_settings``); {} for a file
    exported with the official ones or before settings were recorded.

    Raises:
        DeployzooError: the stored settings are not readable or not valid for ``spec`` (naming the file).
    """
    text = metadata.get(METADATA_KEY)
    if not text:
        return {}
    try:
        stored = json.loads(text)
        if not isinstance(stored, dict):
            raise TypeError("not an object")
        changed = stored.get("changed") or []
        return check_settings(spec, **{k: stored.get(k) for k in FIELDS if k in changed})
    except (ValueError, TypeError, DeployzooError) as exc:
        raise DeployzooError(f"{where}: its {METADATA_KEY} metadata is not usable ({exc})") from exc


def reconcile(spec, given: Mapping[str, Any], stored: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The settings to run an exported file with: its own. Options that ask for other values are refused
    (the graph and its contract were made with the stored ones: export again with the new options)."""
    official = official_settings(spec)
    differ = [k for k in FIELDS if given.get(k, official[k]) != stored.get(k, official[k]) and k in given]
    if differ:
        raise DeployzooError(f"{where} was exported with " + ", ".join(
            f"{OPTIONS[k]} {stored.get(k, official[k])}" for k in differ) + "; the options ask for " + ", ".join(
            f"{OPTIONS[k]} {given[k]}" for k in differ) + ": export again with them (deployzoo export ... "
            "--input-size/--max-size/--test-score-thr/--test-max-dets)")
    return dict(stored)
