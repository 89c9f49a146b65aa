"""Strict JSON for every file deployzoo writes: never NaN or Infinity.

Python's ``json`` writes ``float("nan")`` as the bare token ``NaN`` (and infinities as ``Infinity``), which is
not JSON: strict readers (``jq``, JavaScript's ``JSON.parse``, Go, Rust's serde_json) refuse the whole file.
Here a non-finite float becomes ``null``, and a top-level object says which field held what, with the reason,
under ``"null_values"`` (``{"headline.value": "NaN: ..."}``), so an undefined figure is never mistaken for a
missing one. ``json.dumps(allow_nan=False)`` then guarantees the text.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

NULL_VALUES_KEY = "null_values"

_KIND_REASON = {
    "NaN": "undefined (NaN): nothing to compute it from, e.g. a mean over no values",
    "Infinity": "infinite",
    "-Infinity": "minus infinity",
}


def _default(obj: Any) -> Any:
    """Numpy values, paths, dataclasses and objects with ``to_dict()``: what our results contain."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def to_plain(obj: Any, null_values: dict[str, str] | None = None, path: str = "") -> Any:
    """``obj`` as plain JSON values; each non-finite float becomes None and is recorded in ``null_values``
    under its dotted path (list items as ``[i]``) with its kind (``NaN``, ``Infinity``, ``-Infinity``)."""
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        if null_values is not None:
            null_values[path or "."] = "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
        return None
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v, null_values, f"{path}.{k}" if path else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, null_values, f"{path}[{i}]") for i, v in enumerate(obj)]
    return to_plain(_default(obj), null_values, path)


def dumps(obj: Any, indent: int | None = 2, reasons: Mapping[str, str] | None = None, ensure_ascii: bool = False
          ) -> str:
    """Strict JSON text of ``obj`` (see the module docstring). ``reasons``: dotted path -> why that value is
    undefined, used when it is non-finite (default: what kind of value it was). ``ensure_ascii``: every
    non-ASCII character as a ``\\uXXXX`` escape.

    A top-level list cannot carry the record: a non-finite value in one is our bug and raises ValueError.
    """
    null_values: dict[str, str] = {}
    plain = to_plain(obj, null_values)
    if null_values:
        if not isinstance(plain, dict):
            raise ValueError(f"non-finite values in a JSON list at {', '.join(sorted(null_values))}")
        reasons = reasons or {}
        plain[NULL_VALUES_KEY] = {p: f"{kind}: {reasons.get(p, _KIND_REASON[kind])}" for p, kind in null_values.items()}
    return json.dumps(plain, indent=indent, ensure_ascii=ensure_ascii, allow_nan=False)


def encoded(obj: Any, indent: int | None = 2, reasons: Mapping[str, str] | None = None) -> bytes:
    """``dumps`` as UTF-8 bytes with a final newline, ready to write."""
    try:
        return (dumps(obj, indent, reasons) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # A file name that is not valid UTF-8 reaches Python as lone surrogates (PEP 383), which UTF-8 cannot
        # hold: the whole text is then ASCII with escapes, as ``json.dumps`` writes by default
        # (predictions.json), so the name survives as ``\\udcXX`` instead of the write failing.
        return (dumps(obj, indent, reasons, ensure_ascii=True) + "\n").encode("ascii")


def write_json(path: str | Path, obj: Any, reasons: Mapping[str, str] | None = None) -> Path:
    """Write ``obj`` as strict, pretty JSON (parent folders created); returns the path."""
    path = Path(path)
    data = encoded(obj, reasons=reasons)  # before the file is opened: a failure leaves no empty file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
