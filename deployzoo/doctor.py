"""``deployzoo doctor``: what is installed and usable on this machine, in one screen.

Backends and their versions (and why one is not usable), the CPU and the instruction-set features that decide
which precisions are fast (AVX-512, VNNI, bf16, AMX, read from /proc/cpuinfo's flags on Linux), the GPU, threads,
and the engine cache's location and size. Nothing is built or run beyond importing the backends.
"""
from __future__ import annotations

import importlib
import os
import platform
import shutil
from pathlib import Path
from typing import Any

# /proc/cpuinfo flag -> what it gives (Linux kernel names, arch/x86/include/asm/cpufeatures.h).
CPU_FEATURES = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI (int8 dot products)",
    "avx_vnni": "AVX-VNNI (int8 dot products, 256-bit)",
    "avx512_bf16": "AVX-512 BF16",
    "avx512_fp16": "AVX-512 FP16",
    "amx_tile": "AMX tiles",
    "amx_bf16": "AMX BF16",
    "amx_int8": "AMX INT8",
}


def _int8_line(flags: set[str]) -> str:
    """What OpenVINO int8 gets on this CPU: dot-product instructions, or the 1x1 forms (backends/openvino_int8_forms)."""
    from deployzoo.backends.openvino_int8_forms import INT8_DOT_FLAGS, wants_1x1_forms

    if flags & INT8_DOT_FLAGS:
        return "int8 dot products here (VNNI / AMX INT8): OpenVINO --precision int8 keeps the graph as it is"
    if wants_1x1_forms():
        return ("no int8 dot products (VNNI); OpenVINO --precision int8 quantizes FC layers and 2x2 stride-2 "
                "upsamplings as 1x1 convolutions here, whose int8 kernel is the fast one on such CPUs")
    return "no int8 dot products (VNNI); OpenVINO --precision int8 keeps the graph as it is (not measured here)"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The first processor's flags, or None where /proc/cpuinfo is absent (not Linux) or has none."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")  # flags are ASCII; a stray byte elsewhere is no reason to fail
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, ARM
            return set(value.split())
    return None


def _cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _module(name: str) -> tuple[Any | None, str]:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - an import can fail in many ways (missing, broken wheel)
        return None, f"not usable: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return module, str(getattr(module, "__version__", "?")).split("-")[0]  # OpenVINO appends its build id


def backends() -> list[tuple[str, str, str]]:
    """(backend, version or why not usable, detail) for every backend deployzoo has."""
    rows = []
    ort, ort_version = _module("onnxruntime")
    rows.append(("onnxruntime", ort_version,
                 f"providers: {', '.join(ort.get_available_providers())}" if ort else "pip install onnxruntime"))
    ov, ov_version = _module("openvino")
    detail = "pip install 'deployzoo[openvino]'"
    if ov is not None:
        try:
            core = ov.Core()
            caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            detail = f"{', '.join(core.available_devices)}; CPU offers {', '.join(caps)}"
        except Exception as exc:  # noqa: BLE001
            detail = f"cannot query devices: {exc}"
    rows.append(("openvino", ov_version, detail))
    nncf_spec = importlib.util.find_spec("nncf")
    rows.append(("  int8 (nncf)", _dist_version("nncf") if nncf_spec else "not installed",
                 "OpenVINO int8 quantization" if nncf_spec else "pip install 'deployzoo[int8]'"))
    torch, torch_version = _module("torch")
    rows.append(("pytorch", torch_version, f"{torch.get_num_threads()} intra-op threads" if torch else ""))
    rows.append(("pytorch-compile", torch_version if torch else "-", _compiler_note()))
    rows.append(("pytorch-aoti", torch_version if torch else "-", _compiler_note()))
    return rows


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def _compiler_note() -> str:
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    return f"C++ compiler: {compiler}" if compiler else "no C++ compiler on PATH: not usable on CPU"


def gpu() -> str:
    try:
        import torch
    except ImportError:
        return "unknown (torch not importable)"
    if not torch.cuda.is_available():
        return "none usable by torch (CUDA not available)" + (f"; torch built for CUDA {torch.version.cuda}"
                                                             if torch.version.cuda else "; torch is a CPU build")
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{len(names)} CUDA device(s): {', '.join(names)} (CUDA {torch.version.cuda})"


def threads() -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [f"{os.cpu_count()} logical cores, {usable} usable by this process"]
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var):
            parts.append(f"{var}={os.environ[var]}")
    return "; ".join(parts)


def report() -> str:
    """The text ``deployzoo doctor`` prints."""
    from deployzoo import __version__, cache

    lines = [f"deployzoo {__version__}, python {platform.python_version()}, {platform.platform()}", "",
             "Backends:"]
    rows = backends()
    width = max(len(r[0]) for r in rows)
    version_width = min(14, max(len(r[1]) for r in rows))
    for name, version, detail in rows:
        lines.append(f"  {name:<{width}}  {version:<{version_width}}  {detail}".rstrip())
    flags = cpu_flags()
    lines += ["", f"CPU: {_cpu_model()}"]
    if flags is None:
        lines.append("  features: unknown (no /proc/cpuinfo flags)")
    else:
        have = [what for flag, what in CPU_FEATURES.items() if flag in flags]
        lack = [what for flag, what in CPU_FEATURES.items() if flag not in flags]
        lines += _wrapped("  has: ", ", ".join(have) or "none of AVX2, AVX-512, VNNI, BF16, AMX")
        if lack:
            lines += _wrapped("  lacks: ", ", ".join(lack))
        bf16 = {"avx512_bf16", "amx_bf16"} & flags
        lines.append("  bf16 runs natively here (OpenVINO --precision bf16)" if bf16 else
                     "  bf16: no native support (OpenVINO refuses --precision bf16 here; PyTorch emulates it, slowly)")
        fp16 = {"avx512_fp16", "amx_fp16"} & flags
        lines += (["  fp16 has native instructions here (AVX-512 FP16 / AMX FP16)"] if fp16 else
                  _wrapped("  fp16: ", "no native support (OpenVINO compiles fp16 at f32 here, so deployzoo refuses "
                                      "its --precision fp16; PyTorch emulates it, slowly)"))
        lines += _wrapped("  int8: ", _int8_line(flags))
    lines += [f"  threads: {threads()}", "", f"GPU: {gpu()}", ""]
    root = cache.cache_root()
    found = cache.entries()
    lines += [f"Engine cache: {root}",
              f"  {'set by $' + cache.CACHE_ENV if os.environ.get(cache.CACHE_ENV) else 'default location'}; "
              f"{len(found)} entries, {cache.total_size() / 1e6:.1f} MB (`deployzoo cache list` shows them)"]
    if cache.root_problem():
        lines.append(f"  warning: {cache.root_problem()}")
    return "\n".join(lines)


def _wrapped(prefix: str, text: str, width: int = 100) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width, initial_indent=prefix, subsequent_indent=" " * len(prefix))
