"""Latency statistics over repeated runs, and per-stage wall time for real-data runs.

All clocks are ``time.perf_counter`` (monotonic, highest available resolution).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np

# What a sample measures. Reports print this next to every number so that figures taken
# with different boundaries are never compared by accident.
BASES = ("compute only", "host latency", "end to end")

# The "noisy" rule, kept here so the docstring, the warning and the tests share one source.
NOISY_CV = 0.10  # coefficient of variation (std / mean) above 10 %
NOISY_TAIL = 1.5  # or p99 above 1.5 x p50

STAGES = ("read", "preprocess", "infer", "postprocess")


@dataclass(frozen=True)
class LatencyStats:
    """Summary of per-batch latency samples.

    ``basis`` says where the clock started and stopped:
      * "compute only": device execution alone (e.g. a profiler's or device event's kernel
        time); host-device copies and framework overhead excluded.
      * "host latency": wall time of one ``backend.infer`` call with the inputs already in host
        memory and the outputs back in host memory (copies and framework overhead included;
        reading and preprocessing images excluded).
      * "end to end": in real-data mode, read + preprocess + infer + postprocess wall time,
        per image.

    Latencies are in ms per batch; ``throughput`` is images/s = batch_size * n / sum(samples).
    ``std`` is the sample standard deviation (ddof=1; 0 for a single sample). Percentiles use
    linear interpolation between the closest ranks (numpy's default).

    The run is ``noisy`` when CV = std / mean > 10 % or p99 > 1.5 x p50.
    """

    n: int
    batch_size: int
    basis: str
    total_s: float
    min_ms: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    std_ms: float
    cv: float
    throughput: float  # images/s

    @classmethod
    def from_samples(cls, seconds: list[float], batch_size: int, basis: str) -> "LatencyStats":
        """Build the summary from per-batch wall times in seconds (len n >= 1)."""
        if basis not in BASES:
            raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(seconds) == 0:
            raise ValueError("no latency samples")
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        if not np.all(np.isfinite(ms)) or np.any(ms < 0):
            raise ValueError("latency samples must be finite and non-negative")
        total_s = float(ms.sum() / 1e3)
        mean = float(ms.mean())
        std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
        p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
        return cls(
            n=int(ms.size),
            batch_size=int(batch_size),
            basis=basis,
            total_s=total_s,
            min_ms=float(ms.min()),
            mean_ms=mean,
            p50_ms=p50,
            p90_ms=p90,
            p99_ms=p99,
            max_ms=float(ms.max()),
            std_ms=std,
            cv=std / mean if mean > 0 else 0.0,
            # A zero total only happens with a clock too coarse for the work; report inf, not a crash.
            throughput=batch_size * ms.size / total_s if total_s > 0 else float("inf"),
        )

    @property
    def noisy(self) -> bool:
        """True when CV > 10 % or p99 > 1.5 x p50."""
        return self.cv > NOISY_CV or self.p99_ms > NOISY_TAIL * self.p50_ms

    def variation_warning(self) -> str | None:
        """A one-line warning for reports when the run is noisy, else None."""
        if not self.noisy:
            return None
        reasons = []
        if self.cv > NOISY_CV:
            reasons.append(f"CV {self.cv:.0%} > {NOISY_CV:.0%}")
        if self.p99_ms > NOISY_TAIL * self.p50_ms:
            reasons.append(f"p99 {self.p99_ms:.3g} ms > {NOISY_TAIL}x p50 {self.p50_ms:.3g} ms")
        return "noisy timing (" + "; ".join(reasons) + "): check for other load, frequency scaling or too few iterations"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["noisy"] = self.noisy
        d["warning"] = self.variation_warning()
        return d


@dataclass
class StageTimer:
    """Wall seconds per named stage plus an end-to-end wall clock, for real-data mode.

    Stages timed in worker processes are added with ``add``; those timed here use ``stage``.
    The end-to-end row is the wall clock between ``start()`` and ``stop()`` (or around ``run()``)
    and is measured on its own: when stages overlap in workers it is less than the stage sum.

    Usage::

        timer = StageTimer()
        with timer.run():
            for batch in loader:              # read + preprocess timed by the workers
                timer.add("read", batch.read_s); timer.add("preprocess", batch.prep_s)
                with timer.stage("infer"):
                    out = backend.infer(batch.inputs)
                timer.count(len(batch))
    """

    seconds: dict[str, float] = field(default_factory=dict)
    items: int = 0
    wall_s: float | None = None
    startup_s: float | None = None  # set by ``started()``: wall time before the first image was ready
    _t0: float | None = field(default=None, repr=False)
    # (perf_counter, images) at each ``count``: when each batch's results were finished, for ``steady_rate``.
    finished: list[tuple[float, int]] = field(default_factory=list, repr=False)
    # perf_counter when the first batch's inference ended (``inferred()``), where ``steady_rate`` starts.
    first_inferred: float | None = field(default=None, repr=False)
    # perf_counter at the end of every batch's inference (``inferred()``), in batch order, where it may end.
    inference_ends: list[float] = field(default_factory=list, repr=False)

    def add(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` of wall time to ``stage`` (created on first use)."""
        self.seconds[stage] = self.seconds.get(stage, 0.0) + float(seconds)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` body and add it to stage ``name`` (also when the body raises)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def count(self, n: int = 1) -> None:
        """Record that ``n`` more images went through all stages."""
        self.items += int(n)
        self.finished.append((time.perf_counter(), int(n)))

    def inferred(self) -> None:
        """Mark the end of a batch's inference (call once per inferred batch, in order); the first call also sets
        ``first_inferred``, later calls do not move it."""
        now = time.perf_counter()
        if self.first_inferred is None:
            self.first_inferred = now
        self.inference_ends.append(now)

    def steady_rate(self, batches: int | None = None) -> dict[str, Any] | None:
        """The pipeline's steady throughput over batches 2..N: their images over the window from the end of the
        first batch's inference (``inferred()``; without it, the first batch's results) to the end of batch N's
        inference or of batch N-1's post-processing, whichever is later. In a steady pipeline each period holds one
        batch's inference and, overlapped with it, the previous batch's post-processing, so this window holds N-1
        whole periods: neither filling the pipeline (the first batch read and preprocessed with nothing to
        overlap, worker start-up) nor draining it (batch N's own post-processing, after the last inference) is
        counted, as a long run amortises both. A pipeline whose post-processing is slower than inference ends on
        batch N-1's post-processing, so it is measured at the post-processing's pace. Without an inference end per
        batch (timers filled by hand) the window ends at batch N's results, one post-processing longer.
        ``batches``: only the first that many finished batches. None with fewer than two finished batches."""
        finished = self.finished if batches is None else self.finished[:batches]
        if len(finished) < 2:
            return None
        start = self.first_inferred if self.first_inferred is not None else finished[0][0]
        per_batch = len(self.inference_ends) >= len(finished)
        end = max(self.inference_ends[len(finished) - 1], finished[-2][0]) if per_batch else finished[-1][0]
        seconds = end - start
        images = sum(n for _, n in finished[1:])
        if seconds <= 0 or images <= 0:
            return None
        basis = ("images of the batches after the first / seconds from the end of the first batch's inference to "
                 "the end of the last batch's inference or of the previous batch's post-processing, whichever is "
                 "later (the pipeline's filling and draining not counted)" if per_batch else
                 "images finished after the first batch / seconds from the end of the first batch's "
                 + ("inference" if self.first_inferred is not None else "results") + " to the last results")
        return {"images_per_s": images / seconds, "images": images, "seconds": seconds,
                "batches": len(finished) - 1, "basis": basis}

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def started(self) -> None:
        """The pipeline is running (its first image is ready): the end-to-end clock restarts here and the
        time before it (worker processes starting) is kept apart as ``startup_s``, so the end-to-end rate
        is the steady one, whatever the number of images."""
        if self._t0 is not None and self.startup_s is None:
            now = time.perf_counter()
            self.startup_s = now - self._t0
            self._t0 = now

    def stop(self) -> float:
        """Stop the end-to-end clock; returns the wall seconds since ``start()``."""
        if self._t0 is None:
            raise RuntimeError("StageTimer.stop() called before start()")
        self.wall_s = time.perf_counter() - self._t0
        self._t0 = None
        return self.wall_s

    @contextmanager
    def run(self) -> Iterator["StageTimer"]:
        """``start()`` on entry, ``stop()`` on exit."""
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def _ordered_stages(self) -> list[str]:
        # The usual pipeline order first, then any custom stages in insertion order.
        known = [s for s in STAGES if s in self.seconds]
        return known + [s for s in self.seconds if s not in STAGES]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per stage, then "end to end" (only once stopped): stage, seconds, ms_per_image, images_per_s."""
        out = [self._row(s, self.seconds[s]) for s in self._ordered_stages()]
        if self.wall_s is not None:
            out.append(self._row("end to end", self.wall_s))
        return out

    def _row(self, name: str, seconds: float) -> dict[str, Any]:
        n = self.items
        return {
            "stage": name,
            "seconds": seconds,
            "ms_per_image": seconds * 1e3 / n if n else None,
            "images_per_s": n / seconds if n and seconds > 0 else None,
        }

    def table(self) -> str:
        """Markdown table: stage | total s | ms/image | images/s."""
        lines = [
            "| stage | total s | ms/image | images/s |",
            "|---|---:|---:|---:|",
        ]
        for r in self.rows():
            ms = "-" if r["ms_per_image"] is None else f"{r['ms_per_image']:.3f}"
            ips = "-" if r["images_per_s"] is None else f"{r['images_per_s']:.1f}"
            lines.append(f"| {r['stage']} | {r['seconds']:.3f} | {ms} | {ips} |")
        lines.append("")
        note = f"{self.items} images; end to end is wall clock of the whole run (stages may overlap in workers)"
        if self.startup_s is not None:
            note += f", from the first prepared image on ({self.startup_s:.2f} s of start-up before it not counted)"
        steady = self.steady_rate()
        if steady is not None:
            note += (f"; steady rate {steady['images_per_s']:.2f} images/s ({steady['images']} images of the "
                     f"batches after the first in {steady['seconds']:.2f} s: {steady['basis']})")
        lines.append(note + ".")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "wall_s": self.wall_s,
            "startup_s": self.startup_s,
            "stages": {s: self.seconds[s] for s in self._ordered_stages()},
            "rows": self.rows(),
            "steady": self.steady_rate(),
        }
