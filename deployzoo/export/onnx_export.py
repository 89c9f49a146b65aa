"""ONNX export: a clean graph of default-domain ops, fixed or dynamic batch, with metadata."""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch

from deployzoo import __version__
from deployzoo.errors import BadInputError, DeployzooError

DEFAULT_OPSET = 17
_AXIS_NAMES = {3: {1: "height", 2: "width"}}  # free dims of a [C, H, W] input
DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    opset: int
    ir_version: int
    batch: int | None  # None = dynamic
    op_types: dict[str, int]  # op type -> count
    size_bytes: int


def export_onnx(
    model: torch.nn.Module,
    spec,
    out_path: str | Path,
    batch_size: int = 1,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    extra_metadata: dict[str, str] | None = None,
) -> ExportResult:
    """Trace ``model`` (a zoo model in eval mode) to ``out_path`` and check the file.

    Inputs ``spec.graph_input_dims()`` with a batch dim in front (B fixed, or a named free dim with
    ``dynamic_batch``; dims the spec leaves free, such as H and W, are named free dims); outputs
    ``spec.output_names``. Raises DeployzooError if the checker fails or a non-default domain op slipped in.
    """
    if batch_size < 1:
        raise DeployzooError(f"batch size must be >= 1, got {batch_size}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Deterministic trace inputs; exactness is checked later on different inputs.
    examples = {k: torch.from_numpy(v) for k, v in spec.make_example_inputs(batch_size).items()}
    input_dims = spec.graph_input_dims()
    dynamic_axes: dict[str, dict[int, str]] = {}
    for name, dims in input_dims.items():
        axes = {1 + i: f"{name}_{_AXIS_NAMES.get(len(dims), {}).get(i, f'dim{i}')}" for i, d in enumerate(dims) if d is None}
        if dynamic_batch:
            axes[0] = "batch"
        if axes:
            dynamic_axes[name] = axes
    if dynamic_batch:
        dynamic_axes.update({n: {0: "batch"} for n in spec.output_names})
    args = tuple(examples[name] for name in input_dims)
    model = model.eval()
    with torch.no_grad():
        reference_outputs = model(*args)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            args,
            str(out_path),
            input_names=list(input_dims),
            output_names=list(spec.output_names),
            opset_version=opset,
            dynamic_axes=dynamic_axes or None,
            dynamo=False,
            do_constant_folding=True,
        )
    proto = onnx.load(str(out_path))
    shapes = []
    for name, value in zip(spec.output_names, reference_outputs):
        dims = spec.output_dims.get(name)  # None entries follow the input size: declared as named free dims
        shapes.append(tuple(value.shape) if dims is None else
                      (value.shape[0], *(f"{name}_dim{i + 1}" if d is None else d for i, d in enumerate(dims))))
    _declare_output_shapes(proto, shapes, "batch" if dynamic_batch else None)
    # onnxruntime refuses the newest IR versions: write the lowest one that supports the opset.
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    metadata = {
        "deployzoo.version": __version__,
        "deployzoo.model": spec.name,
        "deployzoo.task": spec.task,
        "deployzoo.dataset": spec.dataset,
        "deployzoo.input": json.dumps({"name": spec.input_name, "layout": "NCHW", "hw": list(spec.input_hw),
                                       "batch": None if dynamic_batch else batch_size,
                                       "inputs": {n: [None if d is None else d for d in dims] for n, dims in input_dims.items()}}),
        "deployzoo.preprocessing": spec.preprocess_description,
        "deployzoo.class_names": json.dumps(list(spec.class_names)),
        **_test_settings_metadata(spec),
        "deployzoo.outputs": json.dumps({n: spec.output_notes.get(n, "") for n in spec.output_names}),
        **(extra_metadata or {}),
    }
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "deployzoo"
    proto.producer_version = __version__
    onnx.save(proto, str(out_path))
    check_onnx(out_path)
    return ExportResult(
        path=out_path,
        opset=opset,
        ir_version=proto.ir_version,
        batch=None if dynamic_batch else batch_size,
        op_types=op_type_counts(proto),
        size_bytes=out_path.stat().st_size,
    )


def _test_settings_metadata(spec: Any) -> dict[str, str]:
    """``deployzoo.test_settings``: every test-time setting the graph and its host side were made with
    (deployzoo.test_settings.settings_of); read back by fine_tuned.spec_for when the file is run."""
    from deployzoo.test_settings import METADATA_KEY, settings_of

    try:
        return {METADATA_KEY: json.dumps(settings_of(spec))}
    except DeployzooError:  # a model without test-time settings
        return {}


def _declare_output_shapes(proto: onnx.ModelProto, shapes: list[tuple[int | str, ...]], batch_param: str | None) -> None:
    """Write the outputs' true sizes into the graph: the tracer leaves flattened sizes symbolic
    (``Softmaxodm_conf_dim_1``), and consumers of the file should see [batch, 6375, 21]. A str size
    is a named free dim (an output that follows the input's H, W)."""
    for output, shape in zip(proto.graph.output, shapes):
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for axis, size in enumerate(shape):
            dim = dims.add()
            if axis == 0 and batch_param is not None:
                dim.dim_param = batch_param
            elif isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = int(size)


def op_type_counts(proto: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def check_onnx(path: str | Path) -> None:
    """onnx.checker (full, with shape inference) and the default-domain-only rule."""
    path = Path(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise DeployzooError(f"{path}: ONNX checker failed: {exc}") from exc
    proto = onnx.load(str(path), load_external_data=False)
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in proto.graph.node if n.domain not in DEFAULT_DOMAINS})
    if foreign:
        raise DeployzooError(f"{path}: non-standard ops in the graph: {', '.join(foreign)}")


def read_metadata(path: str | Path) -> dict[str, str]:
    """The file's metadata_props. Raises BadInputError for a path that is not a regular file (a named pipe
    would block the read), whatever onnx raises for a file it cannot parse."""
    if not Path(path).is_file():
        raise BadInputError(path, "not a regular file")
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


# --------------------------------------------------------------------------- model files given by users


@dataclass(frozen=True)
class OnnxFileInfo:
    """What a user's .onnx says about itself: deployzoo metadata (empty for a foreign file), graph inputs/outputs."""

    path: Path
    metadata: dict[str, str]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def model(self) -> str | None:
        """The registry name it was exported for, or None when the file has no deployzoo metadata."""
        return self.metadata.get("deployzoo.model") or None

    @property
    def weights(self) -> str:
        return self.metadata.get("deployzoo.weights", "")

    @property
    def stand_in(self) -> bool:
        """Exported from deterministic stand-in weights (engine.DEFAULT_WEIGHTS_NOTE), not a checkpoint."""
        return "stand-in weights" in self.weights


def _looks_like(head: bytes) -> str:
    """What a file that is not ONNX appears to be, from its first bytes (for the error message)."""
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip file, e.g. a PyTorch checkpoint: a checkpoint goes with --checkpoint"
    if head[:1] == b"\x80":
        return "it looks like a pickle, e.g. a checkpoint: a checkpoint goes with --checkpoint"
    if head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8"):
        return "it is an image"
    if head.lstrip()[:1] in (b"<", b"{"):
        return "it is text (HTML, XML or JSON), e.g. an error page saved by a download"
    return "truncated or corrupt? re-export it or download it again"


def inspect_onnx_file(path: str | Path) -> OnnxFileInfo:
    """Read a user-given .onnx's metadata and graph signature without running it.

    Raises:
        BadInputError: naming the file, when it is missing, a directory, empty, or not an ONNX model.
    """
    path = Path(path)
    if not path.exists():
        raise BadInputError(path, "model file not found")
    if path.is_dir():
        raise BadInputError(path, "expected an .onnx model file, found a directory")
    if not path.is_file():  # a named pipe, socket or device: reading it could block forever
        raise BadInputError(path, "not a regular file (a named pipe, socket or device); give an .onnx model file")
    size = path.stat().st_size
    if size == 0:
        raise BadInputError(path, "model file is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(16)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, onnx's own errors, OSError
        raise BadInputError(path, f"not an ONNX model: it cannot be parsed ({size} bytes; {_looks_like(head)})") from exc
    if not proto.graph.node or not proto.graph.output:
        raise BadInputError(path, f"not an ONNX model: it parses, but holds no graph ({size} bytes; {_looks_like(head)})")
    initializers = {t.name for t in proto.graph.initializer}
    return OnnxFileInfo(
        path=path,
        metadata={p.key: p.value for p in proto.metadata_props},
        inputs=tuple(i.name for i in proto.graph.input if i.name not in initializers),
        outputs=tuple(o.name for o in proto.graph.output),
    )


def check_onnx_for_model(info: OnnxFileInfo, spec: Any | None, command: str = "predict") -> str:
    """The registry name to run ``info``'s file as, after checking it fits ``spec`` (a ModelSpec, or None when
    the user named no model). ``command`` only shapes the advice in messages.

    Raises:
        BadInputError: the file has no deployzoo metadata and no model was named (or its inputs/outputs are not
            the named model's graph contract), or it was exported for another model (named).
    """
    path = info.path
    if info.model is None:
        if spec is None:
            raise BadInputError(path, "has no deployzoo metadata (it was not written by `deployzoo export`), so "
                                      f"the model it holds is unknown; name the model: deployzoo {command} MODEL "
                                      f"--onnx {path}")
        if set(info.inputs) != set(spec.input_names) or list(info.outputs) != list(spec.output_names):
            raise BadInputError(path, f"has no deployzoo metadata, and its graph is not {spec.name}'s contract "
                                      f"(inputs {list(info.inputs)}, outputs {list(info.outputs)}; {spec.name} has "
                                      f"inputs {list(spec.input_names)}, outputs {list(spec.output_names)}); "
                                      f"export it with `deployzoo export {spec.name}`")
        return spec.name
    if spec is not None and info.model != spec.name:
        raise BadInputError(path, f"was exported for {info.model}, not {spec.name}: give {info.model} as the "
                                  f"model name with this file (deployzoo {command} {info.model} --onnx {path} ...), "
                                  f"or export {spec.name}")
    return info.model
