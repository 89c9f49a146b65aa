"""Images that an engine of one fixed input size cannot take, found from their headers before it is built.

An AOTInductor package (``pytorch-aoti``) is compiled for the model's example input, and a user's .onnx may fix
the image height and width; an image whose network input has another size is refused by ``Engine.infer``
(InputShapeError). That refusal comes after the engine is built (1-2 minutes for a package) and after the
images before it ran. The commands call ``misfits`` first, so such images are named (or, with --skip-bad,
left out) before any weights load.

A network input's size depends only on the image's size (resize and pad rules), never on its pixels, so it is
found by preprocessing one blank image per distinct (H, W) from the headers.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from deployzoo.errors import DeployzooError
from deployzoo.registry import ModelSpec, get_spec


def free_hw(spec: ModelSpec) -> bool:
    """The model's graph takes images of any height and width (False for fixed-canvas variants MODEL@HxW)."""
    dims = spec.graph_input_dims().get(spec.input_name, ())
    return len(dims) >= 3 and None in dims[-2:]


def engine_input_hw(spec: ModelSpec, backend: str, batch_size: int | None = 1,
                    onnx_path: str | Path | None = None) -> tuple[int, int] | None:
    """The one network input (H, W) the engine about to be built will take, or None when it takes any.

    ``pytorch-aoti``: the model's example input (``ModelSpec.make_example_inputs``), which the package is built
    for. ONNX backends given a user's file: its image input's height and width when both are fixed numbers.
    """
    from deployzoo.backends import ONNX_BACKENDS

    if not free_hw(spec):
        return None  # every image is padded to the variant's one canvas
    if backend == "pytorch-aoti":
        shape = spec.make_example_inputs(batch_size or 1)[spec.input_name].shape
        return int(shape[-2]), int(shape[-1])
    if backend in ONNX_BACKENDS and onnx_path is not None:
        import onnx

        model = onnx.load(str(onnx_path), load_external_data=False)
        for graph_input in model.graph.input:
            if graph_input.name == spec.input_name:
                dims = graph_input.type.tensor_type.shape.dim
                if len(dims) >= 3 and all(d.HasField("dim_value") for d in dims[-2:]):
                    return int(dims[-2].dim_value), int(dims[-1].dim_value)
    return None


def network_input_hw(spec: ModelSpec, image_hw: tuple[int, int], _memo: dict | None = None) -> tuple[int, int]:
    """(H, W) of the graph input that an image of ``image_hw`` (its decoded size) becomes: the model's own
    preprocessing and batching run on a blank image of that size."""
    key = (spec.name, int(image_hw[0]), int(image_hw[1]))
    if _memo is not None and key in _memo:
        return _memo[key]
    blank = np.zeros((key[1], key[2], 3), np.uint8)
    array, meta = spec.preprocess(blank)
    shape = spec.make_feeds([array], [meta], 1)[spec.input_name].shape
    hw = (int(shape[-2]), int(shape[-1]))
    if _memo is not None:
        _memo[key] = hw
    return hw


def hint(spec: ModelSpec, backend: str, fixed_hw: Sequence[int]) -> str:
    """What to do about an engine of one image size, in parentheses (with a leading space)."""
    size = f"{fixed_hw[0]}x{fixed_hw[1]}"
    text = f" (this {backend} engine takes one image size, {size}"
    try:
        get_spec(f"{spec.name}@{size}")
    except DeployzooError:  # no fixed-canvas variant (PSPNet's label-map output)
        return text + ")"
    return (text + f"; the fixed-canvas variant {spec.name}@HxW pads every image to one size H x W, "
            f"multiples of {spec.canvas_divisor})")


def misfits(spec: ModelSpec, image_sizes: Mapping[str, tuple[int, int]], fixed_hw: Sequence[int],
            backend: str) -> list[dict[str, str]]:
    """``{"path", "problem"}`` of every image (key: its path or id) whose network input is not ``fixed_hw``,
    in the mapping's order. ``image_sizes``: each image's decoded (H, W), from its header."""
    memo: dict = {}
    fixed = (int(fixed_hw[0]), int(fixed_hw[1]))
    out = []
    for name, size in image_sizes.items():
        got = network_input_hw(spec, size, memo)
        if got != fixed:
            out.append({"path": str(name), "problem": f"a {size[0]}x{size[1]} image becomes a {got[0]}x{got[1]} "
                                                      f"network input, not {backend}'s {fixed[0]}x{fixed[1]}"})
    return out


def header_sizes(paths: Sequence[str | Path]) -> dict[str, tuple[int, int]]:
    """Decoded (H, W) of each image file from its header (EXIF orientation applied), by path as given."""
    from deployzoo.data.checks import image_header_hw

    return {str(p): tuple(image_header_hw(p)) for p in paths}  # type: ignore[misc]


def refusal(spec: ModelSpec, backend: str, fixed_hw: Sequence[int], bad: Sequence[dict[str, str]], total: int,
            skip_hint: bool = True) -> str:
    """One message naming the images (the first 10) that an engine of one input size cannot take, and what
    to do about it."""
    listed = "; ".join(f"{b['path']}: {b['problem']}" for b in bad[:10])
    more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
    skip = "; --skip-bad leaves them out" if skip_hint else ""
    return (f"{len(bad)} of {total} images do not fit the engine's input size{hint(spec, backend, fixed_hw)}, "
            f"so nothing was built or run{skip}: {listed}{more}")


def refuse_misfits(spec: ModelSpec, backend: str, image_sizes: Mapping[str, tuple[int, int]],
                   batch_size: int | None = 1, onnx_path: str | Path | None = None, skip_hint: bool = False) -> None:
    """Raise DeployzooError naming the images (key: path) that the engine ``backend`` is about to build for one
    input size would refuse; nothing when it takes every size. ``skip_hint``: the command has --skip-bad."""
    fixed = engine_input_hw(spec, backend, batch_size, onnx_path)
    if fixed is not None:
        bad = misfits(spec, image_sizes, fixed, backend)
        if bad:
            raise DeployzooError(refusal(spec, backend, fixed, bad, len(image_sizes), skip_hint=skip_hint))
