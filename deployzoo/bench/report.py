"""Writers for benchmark results: Markdown sweep table, JSON, CSV, and the machine description.

Everything here takes plain dicts (or objects with ``to_dict()``) so other reports can reuse it.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import socket
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from deployzoo import jsonio

# Package -> distributions that provide it (the GPU build of onnxruntime has its own name).
_VERSIONED = {
    "torch": ("torch",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "numpy": ("numpy",),
    "onnx": ("onnx",),
    "openvino": ("openvino",),
}


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"expected a dict or an object with to_dict(), got {type(obj).__name__}")


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def sweep_table(results: Iterable[Any]) -> str:
    """Markdown table, one row per cell (``PureBenchResult`` or its ``to_dict()``).

    Columns: backend, precision, batch, images/s, latency min/mean/p50/p90/p99 (ms per batch),
    basis, warnings. A failed cell shows its error in the warnings column.
    """
    lines = [
        "| backend | precision | batch | images/s | min ms | mean ms | p50 ms | p90 ms | p99 ms | basis | warnings |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in map(_as_dict, results):
        s = r.get("stats") or {}
        warning = f"FAILED: {r['error']}" if r.get("error") else (s.get("warning") or "")
        cells = [
            str(r.get("name", "?")),
            str(r.get("precision", "?")),
            str(r.get("batch_size", "?")),
            _fmt(s.get("throughput"), ".1f"),
            *(_fmt(s.get(k), ".3f") for k in ("min_ms", "mean_ms", "p50_ms", "p90_ms", "p99_ms")),
            str(s.get("basis", "-")),
            warning.replace("|", "\\|").replace("\n", " "),  # keep the Markdown row intact
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_json(obj: Any) -> str:
    """Strict pretty JSON (indent 2) that accepts numpy values, paths and objects with ``to_dict()``; a
    non-finite float is written as null and named with its reason under "null_values" (deployzoo.jsonio)."""
    return jsonio.dumps(obj, indent=2)


def write_json(path: str | Path, obj: Any, reasons: dict[str, str] | None = None) -> Path:
    """Write ``obj`` as strict, pretty JSON (parent folders created); returns the path. See jsonio.dumps."""
    return jsonio.write_json(path, obj, reasons=reasons)


def _csv_cell(v: Any) -> Any:
    # Nested values go in as JSON so the file stays one row per record.
    if v is None:
        return ""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (dict, list, tuple, np.ndarray)):
        return json.dumps(jsonio.to_plain(v), allow_nan=False)  # non-finite values as null
    return v


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write dict rows as CSV. Columns: union of keys in first-seen order; missing -> empty.

    Nested values (dicts, lists) are written as JSON strings, None as an empty cell.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_cell(row.get(k)) for k in columns})
    return path


def _cpu_model() -> str | None:
    """CPU model from /proc/cpuinfo (x86 "model name"; some ARM kernels use other keys)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or None
    for key in ("model name", "Model Name", "Hardware", "Processor", "cpu model", "cpu"):
        for line in text.splitlines():
            k, sep, v = line.partition(":")
            if sep and k.strip() == key and v.strip():
                return v.strip()
    return platform.processor() or platform.machine() or None


def _version(dists: tuple[str, ...]) -> str | None:
    # Package metadata, not import: importing torch just to read its version costs seconds.
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def environment() -> dict[str, Any]:
    """Where and when a benchmark ran: date, host, OS, Python, CPU, library versions, threads."""
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "versions": {name: _version(dists) for name, dists in _VERSIONED.items()},
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
