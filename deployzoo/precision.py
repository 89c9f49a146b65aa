"""Numeric precisions, and which backend offers which.

fp32 is the reference every engine is judged against. fp16, bf16 and int8 engines must pass the accuracy
guard (deployzoo.precision_guard) before a result is trusted; ``auto`` measures every candidate's speed and
guard on this machine and keeps the fastest whose guard holds (deployzoo.precision_auto).
"""
from __future__ import annotations

from deployzoo.errors import DeployzooError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
CHOICES = (*PRECISIONS, "auto")

_INT8_OPENVINO_ONLY = "deployzoo quantizes to int8 for OpenVINO only (NNCF post-training quantization)"

# What each backend can run on this kind of machine, and why not the rest (shown in matrix cells).
_SUPPORT: dict[str, dict[str, str | None]] = {
    # ONNX Runtime's CPU execution provider runs the fp32 graph we export; an fp16 copy of the graph
    # would run most of its ops through inserted casts on CPU, which is neither fast nor what users deploy.
    "onnxruntime": {"fp32": None, "fp16": "ONNX Runtime's CPU execution provider runs fp32 only here",
                    "bf16": "ONNX Runtime's CPU execution provider has no bf16 kernels", "int8": _INT8_OPENVINO_ONLY},
    # OpenVINO's CPU plugin takes the precision as a hint on the fp32 graph (f16 needs AVX512-FP16/AMX-FP16,
    # bf16 needs AVX512-BF16/AMX: the backend refuses bf16 on a CPU whose plugin does not report it); int8 is
    # the graph quantized by NNCF (backends/openvino_int8.py).
    "openvino": {"fp32": None, "fp16": None, "bf16": None, "int8": None},
    "pytorch": {"fp32": None, "fp16": None, "bf16": None, "int8": _INT8_OPENVINO_ONLY},
    "pytorch-compile": {"fp32": None, "fp16": None, "bf16": None, "int8": _INT8_OPENVINO_ONLY},
    "pytorch-aoti": {"fp32": None, "fp16": None, "bf16": None, "int8": _INT8_OPENVINO_ONLY},
}


class UnsupportedPrecision(DeployzooError):
    """The backend does not offer this precision (a matrix cell's status "unsupported")."""


def check_precision(backend: str, precision: str) -> None:
    """Raise a clear error unless ``backend`` runs ``precision`` (``auto`` is resolved before this)."""
    if precision not in PRECISIONS:
        raise DeployzooError(f"precision must be one of {', '.join(CHOICES)}, got '{precision}'")
    reason = _SUPPORT.get(backend, {}).get(precision)
    if reason is not None:
        raise UnsupportedPrecision(f"{backend} cannot run {precision}: {reason}")


def supports(backend: str, precision: str) -> bool:
    try:
        check_precision(backend, precision)
    except UnsupportedPrecision:
        return False
    return True


def torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
