"""``deployzoo matrix``: models x backends x precisions x batch sizes, one pure-inference cell each.

Every cell ends with a status and the run goes on:
  ok               benchmarked (and, below fp32, the accuracy guard held);
  accuracy failed  benchmarked, but the guard did not hold (the figures are there, marked);
  export failed    the model could not be exported for this backend (ONNX, torch.export);
  out of memory    the engine or a batch did not fit;
  backend missing  the backend is not installed here (or needs a C++ compiler that is not there);
  unsupported      the backend does not offer this precision here;
  timed out        the cell ran past ``cell_timeout`` (a compilation that never ends, say) and was killed;
  failed           anything else, with the error.
Each finished cell is written to ``<out>/cells/`` at once, so an interrupted matrix resumes where it stopped;
guard evaluations are kept under ``<out>/guard/`` the same way.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployzoo.backends import ONNX_BACKENDS
from deployzoo.bench.pure import bench_pure
from deployzoo.engine import LoadedModel, load_model, make_backend
from deployzoo.errors import DeployzooError
from deployzoo.cache import backend_cache_dir, cached_onnx
from deployzoo.pipeline import open_engine
from deployzoo.precision import supports
from deployzoo.precision_guard import (
    DEFAULT_IMAGES,
    DEFAULT_TOLERANCE,
    GuardResult,
    run_guard,
)
from deployzoo.registry import ModelSpec, get_spec

STATUSES = ("ok", "accuracy failed", "export failed", "out of memory", "backend missing", "unsupported", "timed out",
            "failed")


@dataclass
class MatrixSettings:
    """How each cell is measured and guarded."""

    warmup: int = 1
    min_iters: int = 3
    min_seconds: float = 2.0
    threads: int = 0
    overhead: bool = False  # also time the backend's own loop (ONNX Runtime, OpenVINO) and report the ratio
    guard_images: int = DEFAULT_IMAGES
    guard_tolerance: float = DEFAULT_TOLERANCE
    data: str | Path | None = None  # dataset for the guard; default: a synthetic one per dataset
    checkpoint: str | Path | None = None  # only with a single model
    classes: str | None = None  # --classes: a fine-tuned checkpoint's class names (deployzoo.fine_tuned)
    test_settings: dict[str, Any] | None = None  # --input-size ... (deployzoo.test_settings)
    device: str = "cpu"  # the PyTorch backends' device ("cuda" on a GPU machine)
    # Seconds a cell may take; each cell then runs in a process of its own, killed past it (status "timed out").
    # None: cells run in this process, without a limit.
    cell_timeout: float | None = None


def backend_missing(backend: str) -> str | None:
    """Why ``backend`` cannot run here, or None."""
    if backend == "openvino" and importlib.util.find_spec("openvino") is None:
        return "OpenVINO is not installed (pip install 'deployzoo[openvino]')"
    if backend in ("pytorch-compile", "pytorch-aoti"):
        if not any(shutil.which(c) for c in (os.environ.get("CXX", "c++"), "g++", "clang++")):
            return f"{backend} needs a C++ compiler (Inductor generates C++ on CPU); none found on PATH"
    return None


def cell_end_before_loading(backend: str, precision: str) -> _CellEnd | None:
    """How a cell ends before anything is loaded (backend missing, precision unsupported), or None."""
    missing = backend_missing(backend)
    if missing:
        return _CellEnd("backend missing", missing)
    if not supports(backend, precision):
        from deployzoo.precision import check_precision

        try:
            check_precision(backend, precision)
        except DeployzooError as exc:
            return _CellEnd("unsupported", str(exc))
    return None


def _status_of(exc: BaseException) -> str:
    from deployzoo.precision import UnsupportedPrecision

    if isinstance(exc, UnsupportedPrecision):  # found only when the engine was built (OpenVINO fp16 without f16)
        return "unsupported"
    text = f"{type(exc).__name__}: {exc}".lower()
    if isinstance(exc, MemoryError) or "out of memory" in text or "bad_alloc" in text:
        return "out of memory"
    return "failed"


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:500]


@dataclass
class _ModelState:
    """What the cells of one model share: weights, the ONNX export, guard figures."""

    spec: ModelSpec
    loaded: LoadedModel | None = None
    onnx: Path | None = None
    export_error: str | None = None
    guard_data: Path | None = None
    guards: dict[tuple[str, str], GuardResult | str] = field(default_factory=dict)
    guard_timeouts: set[tuple[str, str]] = field(default_factory=set)  # (backend, precision) whose guard timed out


class Matrix:
    """Runs and caches the cells; ``run()`` returns them all (cached ones included)."""

    def __init__(self, models: Sequence[str], backends: Sequence[str], precisions: Sequence[str],
                 batch_sizes: Sequence[int], out_dir: str | Path, settings: MatrixSettings | None = None,
                 resume: bool = True, say: Callable[[str], None] = print):
        self.models, self.backends = list(models), list(backends)
        self.precisions, self.batch_sizes = list(precisions), list(batch_sizes)
        self.out = Path(out_dir)
        self.settings = settings or MatrixSettings()
        self.resume, self.say = resume, say
        self.on_guard: Callable[[tuple[str, str], GuardResult | str], None] | None = None  # told of each guard run
        if self.settings.checkpoint is not None and len(self.models) != 1:
            raise DeployzooError("--checkpoint belongs to one model: give exactly one model with it")

    def cell_path(self, model: str, backend: str, precision: str, batch: int) -> Path:
        device = "" if self.settings.device == "cpu" or backend in ONNX_BACKENDS else f"-{self.settings.device}"
        return self.out / "cells" / model / f"{backend}{device}-{precision}-b{batch}.json"

    def run(self) -> list[dict[str, Any]]:
        cells = []
        total = len(self.models) * len(self.backends) * len(self.precisions) * len(self.batch_sizes)
        for model in self.models:
            state = _ModelState(model_spec(model, self.settings))
            for backend in self.backends:
                for precision in self.precisions:
                    for batch in self.batch_sizes:
                        cell = self._cached(model, backend, precision, batch)
                        if cell is None:
                            if self.settings.cell_timeout:
                                from deployzoo.cell_process import run_cell_in_child

                                cell = run_cell_in_child(self, state, backend, precision, batch)
                            else:
                                cell = self._run_cell(state, backend, precision, batch)
                            self._store(cell)
                        cells.append(cell)
                        self.say(f"[{len(cells)}/{total}] {model} {backend} {precision} b{batch}: {_summary(cell)}")
            if state.loaded is not None:
                state.loaded = None  # free the weights before the next model
        return cells

    def _cached(self, model: str, backend: str, precision: str, batch: int) -> dict[str, Any] | None:
        path = self.cell_path(model, backend, precision, batch)
        if not self.resume or not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # a cell cut off while written is measured again

    def _store(self, cell: dict[str, Any]) -> None:
        path = self.cell_path(cell["model"], cell["backend"], cell["precision"], cell["batch_size"])
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        from deployzoo.bench.report import to_json

        partial.write_text(to_json(cell) + "\n")
        partial.replace(path)

    # ----------------------------------------------------------------- one cell

    def _run_cell(self, state: _ModelState, backend: str, precision: str, batch: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        cell = new_cell(state.spec.name, backend, precision, batch)
        try:
            self._measure(state, backend, precision, batch, cell)
        except _CellEnd as end:
            cell["status"], cell["error"] = end.status, end.message
        except (Exception, MemoryError) as exc:  # one bad cell must not stop the matrix
            cell["status"], cell["error"] = _status_of(exc), _one_line(exc)
            if os.environ.get("DEPLOYZOO_DEBUG"):
                traceback.print_exc()
        cell["seconds"] = time.perf_counter() - t0
        return cell

    def _measure(self, state: _ModelState, backend: str, precision: str, batch: int, cell: dict[str, Any]) -> None:
        end = cell_end_before_loading(backend, precision)
        if end is not None:
            raise end
        self._ensure_model(state, backend)
        guard = self._guard(state, backend, precision) if precision != "fp32" else None
        if isinstance(guard, str):
            if guard.startswith("UnsupportedPrecision: "):  # _one_line of the guard's engine refusing the precision
                raise _CellEnd("unsupported", guard.split(": ", 1)[1])
            raise _CellEnd("failed", f"accuracy guard could not run: {guard}")
        spec = state.spec
        try:
            engine = make_backend(backend, spec, batch, onnx_path=state.onnx, model=self._model(state, backend),
                                  threads=self.settings.threads, precision=precision, cache_dir=backend_cache_dir(backend),
                                  device=self._device(backend))
        except DeployzooError as exc:
            if backend == "pytorch-aoti" and "torch.export failed" in str(exc):
                raise _CellEnd("export failed", str(exc)) from None
            raise
        try:
            result = bench_pure(engine, warmup=self.settings.warmup, min_iters=self.settings.min_iters,
                                min_seconds=self.settings.min_seconds, inputs=spec.make_example_inputs(batch),
                                native=self.settings.overhead)
        finally:
            engine.close()
        cell["stats"] = result.stats.to_dict()
        cell["samples_ms"] = result.samples_ms
        cell["overhead"] = result.overhead
        cell["backend_info"] = result.backend
        if guard is not None:
            cell["guard"] = guard.to_dict()
            if not guard.holds:
                cell["status"], cell["error"] = "accuracy failed", guard.describe()

    def _ensure_model(self, state: _ModelState, backend: str) -> None:
        """Load the weights, and export the dynamic-batch fp32 ONNX once for the ONNX backends."""
        if state.loaded is None:
            state.loaded = load_model(state.spec, self.settings.checkpoint)
        if backend not in ONNX_BACKENDS:
            return
        if state.export_error is not None:
            raise _CellEnd("export failed", state.export_error)
        if state.onnx is None:
            try:  # the engine cache keeps it between runs (deployzoo.cache)
                state.onnx = cached_onnx(state.loaded, dynamic_batch=True, say=self.say).path
            except Exception as exc:
                state.export_error = _one_line(exc)
                raise _CellEnd("export failed", state.export_error) from None

    def _device(self, backend: str) -> str:
        return "cpu" if backend in ONNX_BACKENDS else self.settings.device

    @staticmethod
    def _model(state: _ModelState, backend: str):
        return None if backend in ONNX_BACKENDS else state.loaded.model

    def _guard(self, state: _ModelState, backend: str, precision: str) -> GuardResult | str:
        """The guard of (backend, precision) on this model, run once; an error message if it cannot run."""
        key = (backend, precision)
        if key in state.guards:
            return state.guards[key]
        spec = state.spec
        if state.guard_data is None:
            state.guard_data = Path(self.settings.data) if self.settings.data else self._synthetic(spec)
        work = self.out / "guard" / spec.name

        def engine(p: str):
            return open_engine(spec, backend, 1, onnx_path=state.onnx, work_dir=self.out, threads=self.settings.threads,
                               loaded=state.loaded, precision=p, device=self._device(backend))

        try:
            state.guards[key] = run_guard(spec, engine, precision, state.guard_data, work, self.settings.guard_images,
                                          self.settings.guard_tolerance)
            self.say(state.guards[key].describe())
        except Exception as exc:
            state.guards[key] = _one_line(exc)
        if self.on_guard is not None:
            self.on_guard(key, state.guards[key])
        return state.guards[key]

    def _synthetic(self, spec: ModelSpec) -> Path:
        folder = self.out / "data" / spec.evaluation.dataset_name.replace(" ", "-")
        marker = folder / ".complete"
        if marker.is_file():
            return Path(marker.read_text())
        root = spec.evaluation.make_synthetic(folder, num_images=self.settings.guard_images, seed=0)
        marker.write_text(str(root))
        return Path(root)


def new_cell(model: str, backend: str, precision: str, batch: int, status: str = "ok",
             error: str | None = None) -> dict[str, Any]:
    """A cell's record before it is measured (or when it ends without measuring)."""
    return {"model": model, "backend": backend, "precision": precision, "batch_size": batch, "status": status,
            "error": error, "stats": None, "samples_ms": [], "guard": None, "overhead": None, "backend_info": {}}


class _CellEnd(Exception):
    """A cell ends with a known status (not an error of the matrix itself)."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _summary(cell: dict[str, Any]) -> str:
    stats = cell.get("stats") or {}
    figure = f"{stats['throughput']:.2f} images/s" if stats.get("throughput") else ""
    tail = f" ({cell['error']})" if cell.get("error") else ""
    return f"{cell['status']}{', ' + figure if figure else ''}{tail}"[:300]


def model_spec(model: str, settings: MatrixSettings) -> ModelSpec:
    """``model``'s spec for the matrix's checkpoint: a fine-tuned one's class count and names."""
    from deployzoo.fine_tuned import spec_for

    return spec_for(get_spec(model), settings.checkpoint, settings.classes, quiet=True,
                    settings=settings.test_settings)
