"""OpenVINO on CPU (pip extra ``deployzoo[openvino]``): reads our ONNX, optionally caches it as IR."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from deployzoo.backends.base import Backend
from deployzoo.errors import BadInputError, DeployzooError

HINTS = ("latency", "throughput")
# OpenVINO's CPU plugin computes in bf16 by default on CPUs that have it (AMX, AVX512-BF16): an fp32
# engine must ask for f32 explicitly, or its numbers silently stop matching the other backends.
# int8 engines are IR quantized by NNCF (backends/openvino_int8.py): the quantized convolutions run in int8,
# everything NNCF left alone stays f32.
_PRECISION_HINT = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}
# The CPU plugin's OPTIMIZATION_CAPABILITIES entry each precision needs natively: without it the plugin
# ignores the hint or emulates, and the engine would not be what its name says.
_CAPABILITY = {"bf16": "BF16", "fp16": "FP16", "int8": "INT8"}


def cpu_capabilities() -> tuple[str, ...]:
    """OpenVINO's CPU OPTIMIZATION_CAPABILITIES on this machine (e.g. FP32, BF16, FP16, INT8)."""
    return tuple(_import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def precision_refusal(precision: str, capabilities: tuple[str, ...] | None = None) -> str | None:
    """Why this CPU cannot run ``precision`` natively under OpenVINO, or None when it can."""
    needed = _CAPABILITY.get(precision)
    capabilities = cpu_capabilities() if capabilities is None and needed else capabilities
    if needed and needed not in capabilities:
        return (f"this CPU has no native {precision} for OpenVINO (its CPU plugin reports "
                f"{', '.join(capabilities)}; {needed} is missing)")
    return None


# What each lowered precision's compiled model must report as its INFERENCE_PRECISION_HINT.
_COMPILED_AS = {"fp16": "f16", "bf16": "bf16"}


def _check_compiled_precision(ov, compiled, precision: str) -> None:
    """Refuse an engine compiled at another precision than asked: on a CPU without native f16 (an AVX2 AMD EPYC,
    whose plugin reports FP32, INT8, BIN) OpenVINO takes an f16 hint and compiles at f32 without a word, and the
    engine would be fp32 under the name fp16, its timing and guard figures labelled wrongly.

    Raises:
        UnsupportedPrecision: the compiled model's INFERENCE_PRECISION_HINT is not ``precision``'s type.
    """
    wanted = _COMPILED_AS.get(precision)
    if wanted is None:
        return
    got = compiled.get_property("INFERENCE_PRECISION_HINT")
    if got != getattr(ov.Type, wanted):
        from deployzoo.precision import UnsupportedPrecision

        raise UnsupportedPrecision(
            f"openvino cannot run {precision} on this CPU: asked for {wanted}, its CPU plugin compiled the model "
            f"at {got.get_type_name()} (the plugin reports {', '.join(cpu_capabilities())}), so the engine would be "
            f"{got.get_type_name()} under the name {precision}")


def _import_openvino():
    try:
        import openvino
    except ImportError as exc:
        raise DeployzooError("the openvino backend needs OpenVINO: pip install 'deployzoo[openvino]'") from exc
    return openvino


_STRICT_IOU = "/iou_threshold_strict"  # names the threshold constant that make_nms_strict put in


def make_nms_strict(model) -> int:
    """Give every NonMaxSuppression of ``model`` (as OpenVINO read it from ONNX) ONNX's IoU rule; returns
    how many it changed.

    ONNX NonMaxSuppression suppresses a box whose IoU with a kept one is strictly greater than
    ``iou_threshold`` (ONNX's reference implementation, ONNX Runtime; mmcv, torchvision and our eager NMS
    alike). OpenVINO's suppresses at IoU >= threshold, so of two boxes with IoU exactly 0.5 (one the left
    half of the other, common with boxes clipped to an image edge) it loses one. OpenVINO compares IoU in
    float32, where ``>= nextafter(t)`` is ``> t``: the threshold constant is raised by one float32 step.

    (TopK needs nothing here: the exported graphs never let a TopK order equal values, see ops/topk.py.
    OpenVINO's reader makes TopK with ``stable=False``, and ``stable=True`` would cost seconds per image.)
    """
    try:
        from openvino import op as ov_op
    except ImportError:  # older releases keep it under openvino.runtime
        from openvino.runtime import op as ov_op
    changed = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "NonMaxSuppression" or node.get_input_size() < 4:
            continue
        threshold = node.input_value(3).get_node()
        if threshold.get_friendly_name().endswith(_STRICT_IOU):
            continue  # already made strict (an IR saved after this ran): raising it again would be wrong
        if threshold.get_type_name() != "Constant":
            raise DeployzooError(f"OpenVINO: NonMaxSuppression '{node.get_friendly_name()}' has a computed "
                                 "iou_threshold; only a constant one can be given ONNX's strict rule")
        value = np.asarray(threshold.get_data(), dtype=np.float32)
        strict = ov_op.Constant(np.array(np.nextafter(value, np.float32(np.inf)), dtype=np.float32))
        strict.set_friendly_name(node.get_friendly_name() + _STRICT_IOU)
        node.input(3).replace_source_output(strict.output(0))
        changed += 1
    return changed


class OpenVINOBackend(Backend):
    """Compiles an exported .onnx for OpenVINO's CPU plugin.

    Args:
        model_path: the .onnx (read directly) or an OpenVINO IR .xml.
        batch_size: the batch this engine runs; a graph with a fixed other batch is refused.
        threads: inference threads (0 = OpenVINO's default).
        hint: "latency" (one request, all cores on it) or "throughput" (OpenVINO's streams).
        precision: "fp32" (f32 forced), "fp16" or "bf16" (the CPU plugin's inference precision hint; refused
            where the CPU has no native support), or "int8" (``model_path`` is an NNCF-quantized IR).
        ir_cache: a folder to convert the ONNX into IR once (``<stem>-<hash>.xml``) and read it from there.
    """

    name = "openvino"

    def __init__(self, model_path: str | Path, batch_size: int = 1, threads: int = 0, hint: str = "latency",
                 precision: str = "fp32", ir_cache: str | Path | None = None):
        super().__init__()
        ov = _import_openvino()
        if hint not in HINTS:
            raise DeployzooError(f"OpenVINO hint must be one of {HINTS}, got {hint!r}")
        if precision not in _PRECISION_HINT:
            raise DeployzooError(f"OpenVINO precision must be one of {tuple(_PRECISION_HINT)}, got {precision!r}")
        model_path = Path(model_path)
        self.source = str(model_path)
        if not model_path.is_file():
            raise BadInputError(model_path, "model file not found")
        core = ov.Core()
        refusal = precision_refusal(precision, tuple(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")))
        if refusal:
            from deployzoo.precision import UnsupportedPrecision

            raise UnsupportedPrecision(f"openvino cannot run {precision}: {refusal}")
        try:
            model = core.read_model(str(self._cached_ir(ov, core, model_path, ir_cache) if ir_cache else model_path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with its own text
            raise BadInputError(model_path, f"OpenVINO cannot read it: {exc}") from exc
        make_nms_strict(model)
        self.batch_size = batch_size
        for port in model.inputs:
            shape = port.get_partial_shape()
            dims = tuple(None if d.is_dynamic else d.get_length() for d in shape)
            if dims and dims[0] is not None and dims[0] != batch_size:
                raise BadInputError(model_path, f"input '{port.get_any_name()}' is fixed to batch {dims[0]}, but batch "
                                                f"{batch_size} was asked for; export with --batch {batch_size} or --dynamic-batch")
            self.input_shapes[port.get_any_name()] = (batch_size, *dims[1:]) if dims else dims
        self.output_names = [port.get_any_name() for port in model.outputs]
        config = {"PERFORMANCE_HINT": hint.upper(), "INFERENCE_PRECISION_HINT": _PRECISION_HINT[precision]}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise BadInputError(model_path, f"OpenVINO cannot compile it for CPU: {exc}") from exc
        _check_compiled_precision(ov, self.compiled, precision)
        self.request = self.compiled.create_infer_request()
        self.threads, self.hint, self.precision = threads, hint, precision
        self.version = ov.__version__
        self.device_name = core.get_property("CPU", "FULL_DEVICE_NAME")

    @staticmethod
    def _cached_ir(ov, core, onnx_path: Path, folder: str | Path) -> Path:
        """Convert once to IR in ``folder`` (an engine-cache folder: checked before reuse, written atomically),
        keyed by the ONNX file's content hash and the OpenVINO version."""
        from deployzoo.cache import cached

        digest = hashlib.sha256(onnx_path.read_bytes())
        digest.update(ov.__version__.encode())
        stem = f"{onnx_path.stem}-{digest.hexdigest()[:16]}"

        def build(tmp: Path) -> None:
            ov.save_model(core.read_model(str(onnx_path)), str(tmp / f"{stem}.xml"), compress_to_fp16=False)

        return cached(folder, stem, [".xml", ".bin"], build, {"onnx": str(onnx_path), "openvino": ov.__version__},
                      what="OpenVINO IR")

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs(inputs)
        feed = {name: np.ascontiguousarray(inputs[name], dtype=np.float32) for name in self.input_shapes}
        results = self.request.infer(feed)
        by_name = {port.get_any_name(): value for port, value in results.items()}
        return {name: np.array(by_name[name]) for name in self.output_names}

    def native_call(self, inputs: dict[str, np.ndarray]):
        feed = {name: np.ascontiguousarray(inputs[name], dtype=np.float32) for name in self.input_shapes}
        infer = self.request.infer
        return lambda: infer(feed)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "version": self.version,
            "device": f"CPU ({self.device_name})",
            "threads": self.threads or "default",
            "hint": self.hint,
            "precision": self.precision,
            "batch_size": self.batch_size,
            "model": self.source,
        }

    def close(self) -> None:
        self.request = None
        self.compiled = None
