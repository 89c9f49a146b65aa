"""Which PyTorch lower precisions this CPU runs natively: tests that run real fp16/bf16 RefineDet images skip
where they are emulated (about 2 minutes per image on an AVX2-only AMD EPYC, 2026-12-01, 100x fp32)."""
from __future__ import annotations

from deployzoo.doctor import cpu_flags

_NATIVE_FLAGS = {"fp16": {"avx512_fp16", "amx_fp16"}, "bf16": {"avx512_bf16", "amx_bf16"}}


def native(precision: str) -> bool:
    """True when oneDNN has native kernels for ``precision`` ("fp16" or "bf16") on this CPU."""
    return bool((cpu_flags() or set()) & _NATIVE_FLAGS[precision])


def native_half_precision() -> str | None:
    """A PyTorch lower precision this CPU runs natively, fp16 first, or None."""
    return next((p for p in ("fp16", "bf16") if native(p)), None)


def emulated_reason(precision: str) -> str:
    return (f"PyTorch {precision} is emulated on this CPU (no AVX-512 {precision.upper()} or AMX): real {precision} "
            "RefineDet images take minutes each here")
