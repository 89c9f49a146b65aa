"""Read a training checkpoint's weights without ever running code from the file.

Checkpoints are pickles, and a pickle can call any Python function while it loads.
Official download links get mirrored, re-hosted and replaced, so deployzoo treats every
checkpoint as untrusted:

* PyTorch files (``.pth``/``.pt``/``.bin``, zip or pre-1.6 legacy format) are read with
  ``torch.load(..., weights_only=True)`` only; the one thing added to its allow-list is
  the handful of numpy names needed to rebuild arrays and scalars (some trainers keep
  numpy values in their ``meta``).
* Pickles (``.pkl``, e.g. the detectron2 model zoo) are read with :class:`_NumpyOnlyUnpickler`,
  which can build dicts, lists, tuples, strings, numbers and numpy arrays, and nothing else.

The file's extension is only a hint: the loader is chosen from the file's first bytes,
so a renamed file still goes through the right (safe) reader, and a JPEG, a text file or
an HTML error page saved as ``model.pth`` is reported as what it is.
"""
from __future__ import annotations

import codecs
import collections
import contextlib
import importlib
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deployzoo.errors import CheckpointError

__all__ = ["RawCheckpoint", "load_checkpoint"]

# torch.save's zip container, and the pickled magic number that opens the legacy
# (torch < 1.6) format: b"\x80\x02" + LONG1 of 0x1950a86a20f9469cfc6c.
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_PICKLE_SUFFIXES = {".pkl", ".pickle"}
_DATAPARALLEL_PREFIX = "module."


@dataclass
class RawCheckpoint:
    """Weights read from one checkpoint file, before any mapping onto a model.

    Attributes:
        path: the file read.
        format: how the weights were stored: ``"pth-bare"``, ``"pth-state_dict"``,
            ``"pth-model"``, ``"pkl-detectron2"``, ``"pkl-bare"``, ``"pkl-state_dict"``.
        tensors: weight name -> CPU tensor. Dtypes are as stored (float64 numpy arrays
            stay float64; integer buffers such as ``num_batches_tracked`` stay integer);
            casting to the model's dtype is the remapper's job.
        meta: the file's other top-level entries that are plain data (mmdet/mmseg
            ``meta``, detectron2 ``__author__``, ``iteration`` ...), with numpy scalars
            and arrays turned into Python numbers and lists. Entries holding tensors or
            other objects (optimizer state, EMA weights) are left out and named in
            ``notes``.
        notes: what the loader did beyond reading, e.g. stripping ``module.``.
    """

    path: Path
    format: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def load_checkpoint(path: str | Path) -> RawCheckpoint:
    """Read the weights of a ``.pth``/``.pt``/``.bin`` or ``.pkl`` checkpoint safely.

    Raises:
        CheckpointError: the file is missing or unreadable, is not a checkpoint (the
            message says what it looks like instead), holds no weights, or asks to
            build Python objects that would need arbitrary code to load.
    """
    path = Path(path)
    head = _read_head(path)
    kind = _sniff(path, head)
    if kind == "torch":
        obj = _torch_load(path)
        family = "pth"
    elif kind == "pickle":
        obj = _restricted_pickle_load(path)
        family = "pkl"
    else:
        raise CheckpointError(
            f"{path}: not a checkpoint: the file is {_describe_content(head, path)}"
        )
    return _unwrap(path, obj, family)


# --------------------------------------------------------------------------- sniffing


def _read_head(path: Path, size: int = 64) -> bytes:
    """First bytes of ``path``; turns every way of not being readable into CheckpointError."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():  # a named pipe, socket or device: opening it could block forever
        raise CheckpointError(f"{path}: not a regular file (a named pipe, socket or device), not a checkpoint file")
    try:
        with path.open("rb") as f:
            return f.read(size)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint file: {e}") from e


def _sniff(path: Path, head: bytes) -> str:
    """``"torch"``, ``"pickle"`` or ``"other"``, judged by content first, extension second."""
    if head.startswith(_ZIP_MAGIC) or head.startswith(_LEGACY_TORCH_MAGIC):
        return "torch"
    # Protocol >= 2 pickles open with PROTO (0x80). Protocol 0/1 pickles have no marker,
    # so those are only tried when the extension says "pickle".
    if head.startswith(b"\x80") or (head and path.suffix.lower() in _PICKLE_SUFFIXES):
        return "pickle"
    return "other"


def _describe_content(head: bytes, path: Path) -> str:
    """A short phrase saying what a non-checkpoint file looks like, to put in errors."""
    if not head:
        return "empty (0 bytes)"
    stripped = head.lstrip()
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "a PNG image"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (Keras/Caffe-style weights are not supported)"
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed data (decompress it first)"
    if stripped.lower().startswith((b"<!doctype html", b"<html")):
        return "an HTML page (probably a failed or redirected download)"
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the weights themselves (run `git lfs pull`)"
    if len(head) >= 9 and head[8:9] == b"{" and path.suffix.lower() == ".safetensors":
        return "a safetensors file, which this loader does not read"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"a text file starting {text[:40]!r}"
    return f"unrecognised binary data (first bytes: {head[:8].hex(' ')})"


# ------------------------------------------------------------------ numpy allow-list


def _first_attr(module_names: tuple[str, ...], name: str) -> Any:
    """``name`` from the first importable module; numpy 2 moved ``numpy.core`` to ``numpy._core``."""
    for module_name in module_names:
        try:
            with warnings.catch_warnings():
                # numpy 2 warns when numpy.core is touched; that is only a fallback here.
                warnings.simplefilter("ignore", DeprecationWarning)
                return getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {module_names} provides {name}")  # pragma: no cover


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> object for every global a pickled numpy array or scalar may name.

    Files written by numpy 1.x say ``numpy.core...``; numpy 2.x writes ``numpy._core...``.
    Both spellings resolve to the installed numpy's function, so either era loads.
    """
    multiarray = ("numpy._core.multiarray", "numpy.core.multiarray")
    numeric = ("numpy._core.numeric", "numpy.core.numeric")
    reconstruct = _first_attr(multiarray, "_reconstruct")  # protocol 2-4 arrays
    scalar = _first_attr(multiarray, "scalar")  # numpy scalars, e.g. np.float64(0.5)
    frombuffer = _first_attr(numeric, "_frombuffer")  # protocol 5 arrays
    table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for prefix in ("numpy.core", "numpy._core"):
        for module in (f"{prefix}.multiarray", f"{prefix}._multiarray_umath"):
            table[(module, "_reconstruct")] = reconstruct
            table[(module, "scalar")] = scalar
        table[(f"{prefix}.numeric", "_frombuffer")] = frombuffer
    return table


def _plain_globals() -> dict[tuple[str, str], Any]:
    """Non-numpy globals that plain-data pickles use; none of them can run other code."""
    table: dict[tuple[str, str], Any] = {
        # Protocol 2 stores bytes as _codecs.encode(latin-1 str, "latin1").
        ("_codecs", "encode"): codecs.encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }
    # Protocol < 3 pickles name builtins as __builtin__ (Python 2 spelling).
    for module in ("builtins", "__builtin__"):
        for name, obj in (("bytes", bytes), ("bytearray", bytearray), ("set", set), ("frozenset", frozenset)):
            table[(module, name)] = obj
    return table


def _torch_numpy_allowlist() -> list[Any]:
    """The same numpy names, in the form ``torch.serialization.safe_globals`` takes.

    torch matches globals by their dotted name, so each spelling gets its own entry;
    it also checks the *type* of objects whose state it sets, hence the dtype classes.
    """
    entries: list[Any] = [
        (obj, f"{module}.{name}") for (module, name), obj in _numpy_globals().items()
    ]
    for scalar_type in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                        np.uint32, np.uint64, np.float16, np.float32, np.float64,
                        np.complex64, np.complex128):
        entries.append(type(np.dtype(scalar_type)))
    return entries


def _numpy_safe_globals() -> contextlib.AbstractContextManager:
    """Context admitting numpy arrays/scalars to ``weights_only`` loads.

    The ``(object, name)`` form needed for the numpy 1.x spellings arrived in torch 2.6;
    older torch loads with its default allow-list, so numpy values there are refused.
    """
    major, minor = (int(part) for part in re.findall(r"\d+", torch.__version__)[:2])
    if (major, minor) < (2, 6):
        return contextlib.nullcontext()
    return torch.serialization.safe_globals(_torch_numpy_allowlist())


# ------------------------------------------------------------------- torch reading


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``; never falls back to the full unpickler."""
    try:
        with _numpy_safe_globals():
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        message = str(e)
        if "Weights only load failed" in message:
            raise CheckpointError(_refusal_message(path, message)) from None
        raise CheckpointError(f"{path}: damaged PyTorch checkpoint: {_first_line(message)}") from e
    except Exception as e:  # noqa: BLE001 - torch raises many types for unreadable files
        raise CheckpointError(
            f"{path}: could not be read as a PyTorch checkpoint (damaged or truncated "
            f"download?): {type(e).__name__}: {_first_line(str(e))}"
        ) from e


def _refusal_message(path: Path, torch_message: str) -> str:
    """Explain a ``weights_only`` refusal, quoting every offending global torch names."""
    names = _unsafe_globals(path)
    if not names:
        names = re.findall(r"GLOBAL ([\w.]+) was not an allowed global", torch_message)
        names += re.findall(r"but got <class '([^']+)'>", torch_message)
    found = ", ".join(names) if names else "unknown objects (see torch's message below)"
    detail = "" if names else f"\ntorch said: {_first_line(torch_message.split('WeightsUnpickler error:')[-1])}"
    return (
        f"{path}: refused to load: the file contains Python objects "
        f"({found}) that would need arbitrary code to load, and deployzoo will not run "
        f"code from a checkpoint. Only tensors, numpy arrays and plain data are read "
        f"(torch.load with weights_only=True). If you trust where the file came from, "
        f"re-save just its weights once, in a sandbox, and load that file instead."
        f"{detail}"
    )


def _unsafe_globals(path: Path) -> list[str]:
    """All globals torch would refuse in a zip checkpoint (not just the first), minus ours."""
    lister = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if lister is None or not zipfile.is_zipfile(path):
        return []
    try:
        names = lister(str(path))
    except Exception:  # noqa: BLE001 - only used to enrich an error message
        return []
    ours = {f"{module}.{name}" for module, name in _numpy_globals()}
    return sorted(n for n in names if n not in ours)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


# ------------------------------------------------------------------ pickle reading


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that builds plain data and numpy arrays, and refuses every other global.

    Dicts, lists, tuples, strings, numbers and booleans need no globals at all; the
    allow-list covers only numpy arrays/dtypes/scalars and the builtins that protocol 2
    uses for bytes and sets. ``find_class`` is also what the EXT opcodes go through, so
    no global can reach the stack any other way.
    """

    def __init__(self, file: Any, path: Path):
        # latin1 lets Python 2 era pickles (str holding raw array bytes) load.
        super().__init__(file, encoding="latin1")
        self._path = path
        self._allowed = {**_numpy_globals(), **_plain_globals()}

    def find_class(self, module: str, name: str) -> Any:
        obj = self._allowed.get((module, name))
        if obj is None:
            raise CheckpointError(
                f"{self._path}: refused global {module}.{name}: this pickle asks to run code "
                "outside numpy arrays, dicts, lists, tuples, strings and numbers; deployzoo "
                "never runs such code"
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(
            f"{self._path}: the pickle refers to external objects (persistent id {pid!r}); "
            "it is not a plain .pkl checkpoint"
        )


def _restricted_pickle_load(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            return _NumpyOnlyUnpickler(f, path).load()
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt pickle can raise nearly anything
        raise CheckpointError(
            f"{path}: could not be read as a pickle checkpoint (damaged file, or "
            f"{_describe_content(_read_head(path), path)}): {type(e).__name__}: {_first_line(str(e))}"
        ) from e


# ------------------------------------------------------------------------ unwrapping


def _is_weight(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray, np.generic))


def _unwrap(path: Path, obj: Any, family: str) -> RawCheckpoint:
    """Find the weights dict inside a loaded checkpoint and split off the metadata."""
    if isinstance(obj, torch.Tensor):
        raise CheckpointError(f"{path}: holds a single tensor, not named weights")
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: holds a {type(obj).__name__}, not a dict of weights"
        )
    if "blobs" in obj and "model" not in obj:
        raise CheckpointError(
            f"{path}: a Detectron1/Caffe2-style pickle ('blobs'); deployzoo reads only "
            "detectron2 model-zoo pickles ({'model': {...}}) - convert it with detectron2 first"
        )

    notes: list[str] = []
    if obj and all(_is_weight(v) for v in obj.values()):
        kind, weights, rest = "bare", obj, {}
    elif isinstance(obj.get("state_dict"), Mapping):
        # mmdet / mmseg / mmengine: {"meta": ..., "state_dict": ..., "optimizer": ...}
        kind, weights = "state_dict", obj["state_dict"]
        rest = {k: v for k, v in obj.items() if k != "state_dict"}
    elif isinstance(obj.get("model"), Mapping):
        # detectron2 (.pth and model-zoo .pkl), DETR-style trainers: {"model": ...}
        kind = "detectron2" if family == "pkl" else "model"
        weights = obj["model"]
        rest = {k: v for k, v in obj.items() if k != "model"}
    elif any(_is_weight(v) for v in obj.values()):
        # A state dict with a few extra scalars beside it (e.g. "epoch"); keep both.
        kind = "bare"
        weights = {k: v for k, v in obj.items() if _is_weight(v)}
        rest = {k: v for k, v in obj.items() if not _is_weight(v)}
        notes.append(f"top-level non-tensor entries kept as meta: {', '.join(map(str, rest))}")
    else:
        keys = ", ".join(repr(k) for k in list(obj)[:10]) or "none"
        raise CheckpointError(
            f"{path}: a dict with no weights in it (no tensors, no 'state_dict' or "
            f"'model' entry; top-level keys: {keys})"
        )

    tensors = _to_tensors(path, weights)
    if not tensors:
        raise CheckpointError(f"{path}: the '{kind}' weights dict is empty")
    tensors = _strip_dataparallel(tensors, notes)
    meta, dropped = _split_meta(rest)
    if dropped:
        notes.append(f"non-weight entries not kept (not plain data): {', '.join(dropped)}")
    return RawCheckpoint(path=path, format=f"{family}-{kind}", tensors=tensors, meta=meta, notes=notes)


def _to_tensors(path: Path, weights: Mapping) -> dict[str, torch.Tensor]:
    """Check every entry is a tensor/array and convert arrays to (copied) torch tensors."""
    bad = [f"{k!r} ({type(v).__name__})" for k, v in weights.items() if not _is_weight(v)]
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} weights entr{'y is' if len(bad) == 1 else 'ies are'} "
            f"not tensors: {', '.join(bad)}"
        )
    tensors: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        if isinstance(value, torch.Tensor):
            # detach() also turns a saved nn.Parameter into a plain tensor.
            tensors[str(key)] = value.detach()
        else:
            tensors[str(key)] = _array_to_tensor(path, str(key), np.asarray(value))
    return tensors


def _array_to_tensor(path: Path, key: str, array: np.ndarray) -> torch.Tensor:
    """Copy a numpy array into a new tensor of the same dtype, in native byte order."""
    if array.dtype.kind not in "biufc":
        raise CheckpointError(
            f"{path}: weight {key!r} is a numpy array of dtype {array.dtype}, not numbers"
        )
    # torch only takes native-endian, C-contiguous memory; the copy also detaches the
    # tensor from the unpickler's buffer.
    native = array.astype(array.dtype.newbyteorder("="), order="C", copy=True)
    try:
        return torch.from_numpy(native)
    except TypeError as e:
        raise CheckpointError(f"{path}: weight {key!r}: dtype {array.dtype} has no torch equivalent") from e


def _strip_dataparallel(tensors: dict[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    """Drop DataParallel's ``module.`` prefix, but only when every key carries it."""
    if not all(k.startswith(_DATAPARALLEL_PREFIX) for k in tensors):
        return tensors
    notes.append(f"stripped the DataParallel prefix '{_DATAPARALLEL_PREFIX}' from all {len(tensors)} keys")
    return {k[len(_DATAPARALLEL_PREFIX):]: v for k, v in tensors.items()}


def _split_meta(rest: Mapping) -> tuple[dict[str, Any], list[str]]:
    """Keep the plain-data top-level entries; name the others (optimizer state etc.)."""
    meta: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in rest.items():
        plain, ok = _plain(value)
        if ok:
            meta[str(key)] = plain
        else:
            dropped.append(str(key))
    return meta, dropped


def _plain(value: Any) -> tuple[Any, bool]:
    """(value as plain Python data, True), or (None, False) if it holds anything else."""
    # numpy scalars first: np.float64 subclasses float but should come out as float.
    if isinstance(value, np.generic):
        return (value.item(), True) if value.dtype.kind in "biufcSU" else (None, False)
    if isinstance(value, np.ndarray):  # e.g. a palette or class counts kept by a trainer
        return (value.tolist(), True) if value.dtype.kind in "biufcSU" else (None, False)
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value, True
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(v) for v in value]
        if not all(ok for _, ok in items):
            return None, False
        return type(value)(v for v, _ in items), True
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            plain, ok = _plain(v)
            if not ok:
                return None, False
            out[k] = plain
        return out, True
    return None, False
