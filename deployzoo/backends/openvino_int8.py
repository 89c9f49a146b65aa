"""int8 post-training quantization for OpenVINO with NNCF (pip extra ``deployzoo[int8]``).

The exported fp32 ONNX is read by OpenVINO, quantized by ``nncf.quantize`` on calibration images that went
through the model's own preprocessing, and saved as IR next to the other engines; the file is keyed by the
ONNX file's content, the calibration images and the settings below, so it is built once and reused.

What becomes int8: the inputs and weights of the convolutions (transposed ones too) and matrix products,
where the time goes. On AVX2 CPUs without VNNI the constant-weight matrix products and the non-overlapping
(s x s, stride s) transposed convolutions are quantized as 1x1 convolutions, whose int8 kernel is the fast one
there (``openvino_int8_forms``).
Everything else stays fp32 (NNCF's ignored scope, by op type): NonMaxSuppression, TopK, RoIAlign, box
decoding (elementwise Add/Multiply/Exp/...), softmax/sigmoid, resizes, pooling, concatenations. Those carry
the detection logic (thresholds, rankings, coordinates), where an 8-bit step would move boxes and reorder
candidates; none of them costs much time.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from deployzoo.errors import BadInputError, DeployzooError

if TYPE_CHECKING:
    from deployzoo.registry import ModelSpec

DEFAULT_CALIBRATION_IMAGES = 16
CALIBRATION_SEED = 1  # a generated calibration set differs from the guard's generated set (seed 0)
# The only op types whose inputs NNCF may quantize: the rest are put in its ignored scope (see the module doc).
QUANTIZED_TYPES = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")
_STRUCTURAL = {"Parameter", "Constant", "Result", "Convert", "ShapeOf", "Reshape", "Squeeze", "Unsqueeze",
               "Transpose", "StridedSlice", "Slice", "Broadcast", "Range", "Tile"}
SETTINGS_VERSION = 2  # bump when the quantization recipe changes (invalidates cached IR)


@dataclass(frozen=True)
class Calibration:
    """Where the calibration images come from: ``data`` (a dataset in the model's own format; its first
    ``images`` images) or, when None, a generated synthetic set (said so when it is made)."""

    data: str | Path | None = None
    images: int = DEFAULT_CALIBRATION_IMAGES

    def __post_init__(self):
        if self.images < 1:
            raise DeployzooError(f"calibration needs at least 1 image, got {self.images}")


def _import_nncf():
    try:
        import nncf
    except ImportError as exc:
        raise DeployzooError("int8 quantization needs NNCF: pip install 'deployzoo[int8]'") from exc
    return nncf


def nncf_available() -> bool:
    try:
        _import_nncf()
    except DeployzooError:
        return False
    return True


_NOTED: set[str] = set()  # generated calibration sets already announced in this process


def calibration_feeds(spec: ModelSpec, calibration: Calibration, work_dir: str | Path, batch_size: int = 1,
                      say: Callable[[str], None] = print) -> tuple[list[dict[str, np.ndarray]], dict]:
    """Graph inputs of the calibration images, ``batch_size`` per feed, and a description of them."""
    from deployzoo.data.loader import BadImage, ImageItem, prepared_images

    data = calibration.data
    if data is None:
        data = spec.evaluation.make_synthetic(Path(work_dir) / f"calibration-data-{spec.name}-{calibration.images}",
                                              num_images=calibration.images, seed=CALIBRATION_SEED)
        if str(data) not in _NOTED:  # the guard's engine and the command's own calibrate alike: say it once
            _NOTED.add(str(data))
            say(f"note: int8 calibration uses {calibration.images} generated synthetic images ({data}); give --data "
                "or --calibration-data for images like the ones the model will see")
        source = "generated synthetic set"
    else:
        source = "dataset"
    dataset = spec.evaluation.open(data)
    ids = list(dataset.ids[: calibration.images])
    if not ids:
        raise BadInputError(data, "no images to calibrate int8 with")
    items = [ImageItem(i, str(dataset.image_path(i))) for i in ids]
    arrays, metas = [], []
    for prepared in prepared_images(items, spec.preprocess, workers=0):
        if isinstance(prepared, BadImage):
            raise BadInputError(prepared.path, f"calibration image: {prepared.problem}")
        arrays.append(prepared.array)
        metas.append(prepared.meta)
    feeds = [spec.make_feeds(arrays[i:i + batch_size], metas[i:i + batch_size], batch_size)
             for i in range(0, len(arrays), batch_size)]
    described = {"source": source, "data": str(Path(data).resolve()), "images": len(ids), "image_ids": ids}
    return feeds, described


def ignored_types(model) -> list[str]:
    """Op types of ``model`` NNCF must leave in fp32: every computing type except ``QUANTIZED_TYPES``."""
    present = {node.get_type_name() for node in model.get_ordered_ops()}
    return sorted(present - set(QUANTIZED_TYPES) - _STRUCTURAL)


def quantized_ir(spec: ModelSpec, onnx_path: str | Path, cache_dir: str | Path, calibration: Calibration | None = None,
                 say: Callable[[str], None] = print, as_1x1: bool | None = None) -> Path:
    """The int8 IR (.xml) of ``onnx_path``, quantized once and kept in ``cache_dir``.

    Calibration feeds hold one image each, or the graph's fixed batch; a dynamic-batch graph's IR serves every
    batch size. The key hashes the ONNX file, the calibration images (their folder, ids and file contents) and the
    recipe (NNCF version, op types kept in fp32, number of images, the 1x1 forms), so a change to any of them
    builds anew. ``as_1x1``: quantize constant-weight matrix products and non-overlapping transposed convolutions
    as 1x1 convolutions (``openvino_int8_forms``); None decides by this CPU (``wants_1x1_forms``: x86-64 with AVX2
    and neither AVX-512 nor VNNI). The calibration then runs that form in fp32, where it is slower (Cascade, 16
    images: about 2:45 instead of 1 minute, once per cache entry). The IR's .json says whether the forms were
    applied (not where NNCF left one of those convolutions unquantized: that IR is built without them, and it is
    said).
    """
    import openvino as ov

    from deployzoo.backends.openvino_int8_forms import wants_1x1_forms
    from deployzoo.cache import cached

    nncf = _import_nncf()
    onnx_path, cache_dir = Path(onnx_path), Path(cache_dir)
    calibration = calibration or Calibration()
    core = ov.Core()
    model = core.read_model(str(onnx_path))
    dims = model.inputs[0].get_partial_shape()
    batch = dims[0].get_length() if dims.rank.is_static and dims[0].is_static else 1
    feeds, described = calibration_feeds(spec, calibration, cache_dir, batch_size=batch, say=say)
    ignored = ignored_types(model)
    as_1x1 = wants_1x1_forms() if as_1x1 is None else as_1x1
    recipe = {"version": SETTINGS_VERSION, "nncf": nncf.__version__, "openvino": ov.__version__,
              "quantized_types": QUANTIZED_TYPES, "ignored_types": ignored, "subset_size": len(feeds) * batch,
              "as_1x1_convolutions": as_1x1,
              "calibration": {**described, "files": _files_digest(spec, described)}}
    digest = hashlib.sha256(onnx_path.read_bytes())
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    stem = f"{onnx_path.stem.replace('-fp32', '')}-int8-{digest.hexdigest()[:16]}"

    def build(tmp: Path) -> None:
        quantized, applied = quantize_model(nncf, model, feeds, ignored, as_1x1,
                                            lambda: core.read_model(str(onnx_path)), onnx_path.name, described, say)
        ov.save_model(quantized, str(tmp / f"{stem}.xml"), compress_to_fp16=False)
        (tmp / f"{stem}.json").write_text(json.dumps({"onnx": str(onnx_path), **recipe,
                                                      "as_1x1_convolutions_applied": applied}, indent=1))

    # An engine-cache entry: checked before reuse, written atomically (deployzoo.cache).
    return cached(cache_dir, stem, [".xml", ".bin", ".json"], build, {"onnx": str(onnx_path), "recipe": recipe},
                  say=say, what="int8 IR")


def quantize_model(nncf, model, feeds: list[dict[str, np.ndarray]], ignored: list[str], as_1x1: bool,
                   reread: Callable[[], object], name: str, described: dict, say: Callable[[str], None] = print):
    """``model`` (an ``openvino.Model``, changed in place) quantized by NNCF on ``feeds``; with ``as_1x1``, its
    constant-weight matrix products and non-overlapping transposed convolutions first become 1x1 convolutions.
    Returns (quantized model, whether those forms are in it). Where NNCF left one of those convolutions in fp32
    (ten times slower than FullyConnected there), the model is quantized again from ``reread()`` in its own form,
    and that is said."""
    from deployzoo.backends.openvino_int8_forms import as_1x1_convolutions, unquantized

    rewritten = as_1x1_convolutions(model) if as_1x1 else []
    if rewritten:
        say(f"rewriting {len(rewritten)} matrix products and transposed convolutions as 1x1 convolutions before "
            "quantizing (on AVX2 CPUs without VNNI OpenVINO's int8 kernels for those are no faster than fp32, its "
            "int8 1x1 convolution is; calibration runs that form in fp32 and takes longer)")
    quantized = _quantize(nncf, model, feeds, ignored, name, described, say)
    left = unquantized(quantized, rewritten)
    if left:
        named = ", ".join(left[:3]) + (f" and {len(left) - 3} more" if len(left) > 3 else "")
        say(f"NNCF left {len(left)} of those convolutions in fp32 ({named}), where that form is slow; quantizing "
            "again with those ops as they were")
        return _quantize(nncf, reread(), feeds, ignored, name, described, say), False
    return quantized, bool(rewritten)


def _quantize(nncf, model, feeds, ignored, name: str, described: dict, say: Callable[[str], None]):
    say(f"quantizing {name} to int8 with NNCF {nncf.__version__} on {described['images']} calibration "
        f"images ({described['source']}); kept in fp32: {', '.join(ignored) or 'nothing'}")
    log = logging.getLogger("nncf")
    level = log.level
    log.setLevel(logging.WARNING)  # NNCF lists every op it leaves alone at INFO
    try:
        quantized = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds),
                                  ignored_scope=nncf.IgnoredScope(types=ignored, validate=False))
    finally:
        log.setLevel(level)
    return quantized


def _files_digest(spec: ModelSpec, described: dict) -> str:
    """A hash of the calibration images' bytes: the same folder with other images is another calibration."""
    dataset = spec.evaluation.open(described["data"])
    h = hashlib.sha256()
    for image_id in described["image_ids"]:
        h.update(Path(dataset.image_path(image_id)).read_bytes())
    return h.hexdigest()[:16]
