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

import functools
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
                    onnx_path: str | Path | None = None) -> tuple[int | None, int | None] | None:
    """The network input (H, W) the engine about to be built will take, None for a side it takes at any size;
    None as a whole when it takes every size.

    ``pytorch-aoti``: the model's example input (``ModelSpec.make_example_inputs``), which the package is built
    for. ONNX backends given a user's file: its image input's height and width where they are fixed numbers.
    """
    from deployzoo.backends import ONNX_BACKENDS

    if not free_hw(spec):
        return None  # every image is padded to the variant's one canvas
    if backend == "pytorch-aoti":
        shape = spec.make_example_inputs(batch_size or 1)[spec.input_name].shape
        return int(shape[-2]), int(shape[-1])
    if backend in ONNX_BACKENDS and onnx_path is not None:
        stat = Path(onnx_path).stat()
        return _onnx_input_hw(str(Path(onnx_path).resolve()), stat.st_size, stat.st_mtime_ns, spec.input_name)
    return None


@functools.lru_cache(maxsize=8)
def _onnx_input_hw(path: str, size: int, mtime_ns: int, input_name: str) -> tuple[int | None, int | None] | None:
    """The fixed sides of ``input_name`` in the .onnx at ``path``. Cached on the file's size and time: a command
    asks several times (its images, then the accuracy guard's), and parsing a 290 MB graph takes about a second."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    for graph_input in model.graph.input:
        if graph_input.name == input_name:
            dims = graph_input.type.tensor_type.shape.dim
            if len(dims) >= 3:
                hw = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in dims[-2:])
                return None if hw == (None, None) else hw  # type: ignore[return-value]
    return None


def _shown(hw: Sequence[int | None]) -> str:
    return "x".join("any" if v is None else str(v) for v in hw)


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


def hint(spec: ModelSpec, backend: str, fixed_hw: Sequence[int | None],
         needed_hw: Sequence[int] | None = None) -> str:
    """What to do about an engine of one input size, in parentheses (with a leading space). ``needed_hw``: the
    largest network input (H, W) among the images it refused, which a fixed canvas must hold."""
    from deployzoo.backends import ONNX_BACKENDS

    text = f" (this {backend} engine takes one network input size, {_shown(fixed_hw)} (H x W)"
    if backend in ONNX_BACKENDS:  # a user's file: the registry's variants are other graphs
        return text + f"; a graph exported with free height and width (`deployzoo export {spec.name}`) takes every image)"
    if not free_hw(spec) or len(fixed_hw) != 2 or None in fixed_hw:
        return text + ")"
    size = f"{fixed_hw[0]}x{fixed_hw[1]}"
    try:
        get_spec(f"{spec.name}@{size}")
    except DeployzooError:  # no fixed-canvas variant (PSPNet's label-map output)
        return text + ")"
    divisor = spec.canvas_divisor
    rule = f", sides multiples of {divisor}" if divisor > 1 else ""
    example = ""
    if needed_hw is not None:
        h, w = (max(a, b) for a, b in zip(needed_hw, fixed_hw))
        h, w = -(-h // divisor) * divisor, -(-w // divisor) * divisor
        example = f"; {spec.name}@{h}x{w} holds all of these"
    return text + f"; a fixed-canvas variant {spec.name}@HxW pads every image to one size{rule}{example})"


def misfits(spec: ModelSpec, image_sizes: Mapping[str, tuple[int, int]], fixed_hw: Sequence[int | None],
            backend: str) -> list[dict[str, str]]:
    """``{"path", "problem", "network_hw"}`` of every image (key: its path or id) whose network input does not
    match ``fixed_hw`` (a None side matches any), in the mapping's order. ``image_sizes``: each image's decoded
    (H, W), from its header."""
    from deployzoo.errors import ImageSizeError

    memo: dict = {}
    out = []
    for name, size in image_sizes.items():
        try:
            got = network_input_hw(spec, size, memo)
        except ImageSizeError:  # no size at all: ``unresizable`` names such images
            continue
        if any(f is not None and int(f) != g for f, g in zip(fixed_hw, got)):
            out.append({"path": str(name), "network_hw": got,
                        "problem": f"an image of {size[0]}x{size[1]} (H x W) becomes network input {got[0]}x{got[1]}, "
                                   f"not {backend}'s {_shown(fixed_hw)}"})
    return out


# Below this aspect ratio (long side / short side) no zoo model's resize gets near a 0-pixel side: that takes a
# long side over 2 x the resize's long-side limit times the short side (R-CNN 1333, PSPNet 2048).
EXTREME_ASPECT = 8


def unresizable(spec: ModelSpec, image_sizes: Mapping[str, tuple[int, int]]) -> list[dict[str, str]]:
    """``{"path", "problem"}`` of every image (key: its path) that the model's own resize would make 0 pixels on
    a side (deployzoo.errors.ImageSizeError), from the header sizes, in the mapping's order. Only sizes with an
    extreme aspect ratio are tried (one blank image each), so a dataset of ordinary photos costs nothing."""
    from deployzoo.errors import ImageSizeError

    memo: dict = {}
    out = []
    for name, (h, w) in image_sizes.items():
        if max(h, w) < EXTREME_ASPECT * max(min(h, w), 1):
            continue
        try:
            network_input_hw(spec, (h, w), memo)
        except ImageSizeError as exc:
            out.append({"path": str(name), "problem": exc.problem})
    return out


def needed_hw(bad: Sequence[dict]) -> tuple[int, int]:
    """The largest network input (H, W) among ``misfits``' refused images."""
    return max(b["network_hw"][0] for b in bad), max(b["network_hw"][1] for b in bad)


def header_sizes(paths: Sequence[str | Path]) -> dict[str, tuple[int, int]]:
    """Decoded (H, W) of each image file from its header (EXIF orientation applied), by path as given."""
    from deployzoo.data.checks import image_header_hw

    return {str(p): tuple(image_header_hw(p)) for p in paths}  # type: ignore[misc]


def refusal(spec: ModelSpec, backend: str, fixed_hw: Sequence[int | None], bad: Sequence[dict], total: int,
            skip_hint: bool = True) -> str:
    """One message naming the images (the first 10) that an engine of one input size cannot take, and what
    to do about it."""
    skip = f"; --skip-bad leaves {'it' if len(bad) == 1 else 'them'} out" if skip_hint and len(bad) < total else ""
    count = f"{len(bad)} of the {total} images {'does' if len(bad) == 1 else 'do'}" if total > 1 else "the image does"
    return (f"{count} not fit the engine's input size{hint(spec, backend, fixed_hw, needed_hw(bad))}, so nothing "
            f"was built or run{skip}: {listing(bad)}")


def listing(bad: Sequence[dict]) -> str:
    """The "path: problem" of the first 10 of ``bad``, then how many more there are."""
    more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
    return "; ".join(f"{b['path']}: {b['problem']}" for b in bad[:10]) + more


def unresizable_text(bad: Sequence[dict], total: int, offer: bool) -> str:
    """The images (``unresizable``'s, the first 10) the model's resize makes 0 pixels on a side, as one sentence
    of ``total`` images; ``offer``: say that --skip-bad leaves them out."""
    count = f"{len(bad)} of the {total} images {'does' if len(bad) == 1 else 'do'}" if total > 1 else "the image does"
    hint = f"; --skip-bad leaves {'it' if len(bad) == 1 else 'them'} out" if offer else ""
    return f"{count} not survive the model's resize, so nothing was built or run{hint}: {listing(bad)}"


def refuse_misfits(spec: ModelSpec, backend: str, image_sizes: Mapping[str, tuple[int, int]],
                   batch_size: int | None = 1, onnx_path: str | Path | None = None, skip_hint: bool = False,
                   skip_bad: bool = False) -> None:
    """Raise DeployzooError naming the images (key: path) that the engine ``backend`` is about to build for one
    input size would refuse; nothing when it takes every size. ``skip_hint``: the command has --skip-bad.
    ``skip_bad``: the run will skip such images itself, so raise only when none of them fits (nothing to build
    the engine for)."""
    fixed = engine_input_hw(spec, backend, batch_size, onnx_path)
    if fixed is not None:
        bad = misfits(spec, image_sizes, fixed, backend)
        if bad and (not skip_bad or len(bad) == len(image_sizes)):
            raise DeployzooError(refusal(spec, backend, fixed, bad, len(image_sizes), skip_hint=skip_hint))
