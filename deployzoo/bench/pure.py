"""Pure-inference benchmark: time ``backend.infer`` on synthetic inputs already in host memory.

Reading and preprocessing images is excluded, so the figures are "host latency" (see
``deployzoo.bench.timing.LatencyStats``). Before any timing the run checks that the engine
really processes ``batch_size`` images per call: an engine exported with a static batch of 1
loaded "for batch 8" would otherwise report an 8x inflated throughput.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from deployzoo.backends.base import Backend
from deployzoo.bench.timing import LatencyStats
from deployzoo.errors import BadInputError

BASIS = "host latency"


@dataclass
class PureBenchResult:
    """One benchmark cell (one backend at one batch size).

    ``stats`` is None and ``error`` holds the message when the cell failed (sweeps only).
    ``input_shapes`` are the shapes actually run, e.g. {"images": (8, 3, 640, 640)}.
    """

    backend: dict[str, Any]
    name: str
    precision: str
    batch_size: int
    input_shapes: dict[str, tuple[int, ...]]
    stats: LatencyStats | None
    error: str | None = None
    outputs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    samples_ms: list[float] = field(default_factory=list)  # per-batch latencies, for distribution plots
    overhead: dict[str, Any] | None = None  # our figure against the backend's own loop (see bench_pure)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "precision": self.precision,
            "batch_size": self.batch_size,
            "backend": self.backend,
            "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
            "output_shapes": {k: list(v) for k, v in self.outputs.items()},
            "stats": None if self.stats is None else self.stats.to_dict(),
            "error": self.error,
            "samples_ms": self.samples_ms,
            "overhead": self.overhead,
        }


def _source(backend: Backend) -> str:
    return backend.source or backend.name


def make_inputs(backend: Backend, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic float32 inputs, one per ``backend.input_shapes`` entry.

    A free dim 0 becomes ``backend.batch_size``; any other free dim raises ValueError
    (pass ``inputs`` to ``bench_pure`` instead). Values are standard normal from ``seed``.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in backend.input_shapes.items():
        if len(shape) == 0:
            raise ValueError(f"{_source(backend)}: input '{name}' is a scalar; pass inputs= explicitly")
        dims = [backend.batch_size if shape[0] is None else shape[0]]
        for i, d in enumerate(shape[1:], start=1):
            if d is None:
                raise ValueError(
                    f"{_source(backend)}: input '{name}' has free dimension {i} in shape "
                    f"{tuple('?' if x is None else x for x in shape)}; pass inputs= with the shape to benchmark"
                )
            dims.append(d)
        out[name] = rng.standard_normal(dims, dtype=np.float32)
    return out


def _check_batch(backend: Backend, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray] | None) -> None:
    """Raise BadInputError (naming the model source) unless inputs/outputs carry ``batch_size`` in dim 0."""
    bs = backend.batch_size
    if outputs is None:
        for name, arr in inputs.items():
            if arr.ndim == 0 or arr.shape[0] != bs:
                raise BadInputError(
                    _source(backend),
                    f"input '{name}' has shape {tuple(arr.shape)} but the backend was loaded for batch {bs}",
                )
        return
    if not outputs:
        raise BadInputError(_source(backend), "infer returned no outputs")
    for name, arr in outputs.items():
        shape = tuple(np.shape(arr))
        if len(shape) == 0 or shape[0] != bs:
            raise BadInputError(
                _source(backend),
                f"output '{name}' has shape {shape} for a batch of {bs}: the engine does not run batch {bs} "
                "(static batch at export? re-export with a dynamic or matching batch)",
            )


def bench_pure(
    backend: Backend,
    warmup: int = 3,
    min_iters: int = 10,
    min_seconds: float = 2.0,
    max_seconds: float | None = None,
    inputs: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    native: bool = False,
) -> PureBenchResult:
    """Time ``backend.infer`` until both ``min_iters`` iterations and ``min_seconds`` have passed.

    ``max_seconds``, when given, stops the run early once ``min_iters`` is reached.
    At least one untimed warm-up call is always made: it is the one whose outputs are checked
    to have ``batch_size`` in dim 0. Latency samples are per batch, in seconds of wall time.

    ``native``: where the backend has a ``native_call`` (its own run call, no deployzoo code around it),
    blocks of our timed calls alternate with equally long tight loops of the native call, so both see the
    same machine state; the result's ``overhead`` gives both throughputs and their ratio (ours / native).
    The reported figures are ours, from our samples alone.
    """
    if min_iters < 1:
        raise ValueError(f"min_iters must be >= 1, got {min_iters}")
    if inputs is None:
        inputs = make_inputs(backend, seed)
    else:
        inputs = {k: np.ascontiguousarray(v) for k, v in inputs.items()}
    backend.check_inputs(inputs)
    _check_batch(backend, inputs, None)

    outputs = backend.infer(inputs)
    _check_batch(backend, inputs, outputs)
    for _ in range(max(warmup, 1) - 1):
        backend.infer(inputs)
    native_call = backend.native_call(inputs) if native else None
    if native_call is not None:
        native_call()  # its own warm-up

    samples: list[float] = []
    native_seconds, native_calls = 0.0, 0
    block = _block_length(backend, inputs) if native_call is not None else 1
    start = time.perf_counter()
    rounds = 0
    while True:
        # The order alternates too, so neither side always runs right after the other's caches and clocks.
        if native_call is not None and rounds % 2:
            native_seconds += _tight_loop(native_call, block)
            native_calls += block
        for _ in range(block):
            t0 = time.perf_counter()
            backend.infer(inputs)
            samples.append(time.perf_counter() - t0)
        if native_call is not None and not rounds % 2:
            native_seconds += _tight_loop(native_call, block)
            native_calls += block
        rounds += 1
        if len(samples) < min_iters:
            continue
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds * (2 if native_call is not None else 1) or (max_seconds is not None and elapsed >= max_seconds):
            break

    stats = LatencyStats.from_samples(samples, backend.batch_size, BASIS)
    overhead = None
    if native_call is not None:
        native_ips = backend.batch_size * native_calls / native_seconds
        overhead = {"ours_images_per_s": stats.throughput, "native_images_per_s": native_ips,
                    "ratio": stats.throughput / native_ips, "iterations": native_calls, "block": block,
                    "method": f"alternating blocks of {block}: our timed infer calls, then a tight loop of "
                              f"{backend.name}'s own run call on the same inputs"}
    return PureBenchResult(
        backend=backend.describe(),
        name=backend.name,
        precision=backend.precision,
        batch_size=backend.batch_size,
        input_shapes={k: tuple(v.shape) for k, v in inputs.items()},
        stats=stats,
        outputs={k: tuple(np.shape(v)) for k, v in outputs.items()},
        samples_ms=[1e3 * x for x in samples],
        overhead=overhead,
    )


def _tight_loop(call: Callable[[], Any], count: int) -> float:
    t0 = time.perf_counter()
    for _ in range(count):
        call()
    return time.perf_counter() - t0


def _block_length(backend: Backend, inputs: dict[str, np.ndarray], block_seconds: float = 0.25) -> int:
    """Calls per alternating block: about ``block_seconds`` of work (1 for slow models, at most 50)."""
    t0 = time.perf_counter()
    backend.infer(inputs)
    one = time.perf_counter() - t0
    return int(min(50, max(1, block_seconds // max(one, 1e-6))))


def bench_sweep(
    make_backend: Callable[[int], Backend],
    batch_sizes: Iterable[int],
    inputs_for: Callable[[int], dict[str, np.ndarray]] | None = None,
    **kw: Any,
) -> list[PureBenchResult]:
    """``bench_pure`` once per batch size, with a fresh backend each (closed afterwards).

    A batch size whose backend fails to load or run becomes a cell with ``error`` set and
    ``stats`` None; the sweep goes on. ``inputs_for(batch)`` gives the inputs of each cell (needed
    when the graph has free spatial dims); ``kw`` is passed to ``bench_pure``.
    """
    results: list[PureBenchResult] = []
    for bs in batch_sizes:
        backend: Backend | None = None
        try:
            backend = make_backend(bs)
            inputs = inputs_for(bs) if inputs_for is not None else None
            results.append(bench_pure(backend, inputs=inputs, **kw))
        except Exception as e:  # one bad cell (OOM, unsupported batch) must not lose the others
            results.append(_failed_cell(backend, bs, e))
        finally:
            if backend is not None:
                try:
                    backend.close()
                except Exception:
                    pass  # a close failure says nothing about the measurement
    return results


def _failed_cell(backend: Backend | None, bs: int, e: Exception) -> PureBenchResult:
    description: dict[str, Any] = {}
    if backend is not None:
        try:
            description = backend.describe()
        except Exception:
            pass
    return PureBenchResult(
        backend=description,
        name=backend.name if backend is not None else "?",
        precision=backend.precision if backend is not None else "?",
        batch_size=bs,
        input_shapes={},
        stats=None,
        error=f"{type(e).__name__}: {e}",
    )
