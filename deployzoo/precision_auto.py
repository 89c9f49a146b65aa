"""``--precision auto``: measure every candidate precision on this machine, keep the fastest whose guard holds.

Precision speed is a property of the machine (bf16 is twice as fast as fp32 on one Xeon and slower on
another), so nothing is assumed: each candidate's engine is built, all of them are timed in interleaved
rounds on the model's example inputs (so a load that comes and goes hits them alike), and each one below
fp32 goes through the accuracy guard. fp32 is always a candidate and is the answer when no other holds.

A candidate fails when its guard fails (the guard itself fails on non-finite outputs of its images), when
its timed outputs hold more non-finite values than fp32's on the same inputs, or when it cannot be built
(listed with the reason). The table it chose from is printed and returned (``AutoChoice.to_dict``).
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deployzoo.errors import DeployzooError
from deployzoo.precision import PRECISIONS, UnsupportedPrecision, supports
from deployzoo.precision_guard import GuardResult

TIMED_ROUNDS = 3


@dataclass
class Candidate:
    """One row of auto's table."""

    precision: str
    images_per_s: float | None = None  # batch 1, host latency, median of the interleaved rounds
    non_finite: int = 0  # NaN/inf values in its outputs on the example inputs (timed run)
    guard: GuardResult | None = None  # None for fp32 (the reference) and for rows not measured
    skipped: str | None = None  # why it was not measured: not offered here, not tried, failed to build
    fails: str | None = None  # why its result is not kept (None: it holds)

    @property
    def holds(self) -> bool:
        return self.skipped is None and self.fails is None

    def guard_text(self) -> str:
        if self.precision == "fp32":
            return "reference"
        if self.guard is None:
            return "-"
        g = self.guard
        if getattr(g, "non_finite", None) is not None:
            return "non-finite outputs"
        text = f"{g.metric} {round(g.delta, 2) + 0.0:+.2f}"  # + 0.0: a drop that rounds away prints +0.00
        return text + ("" if g.agreement is None else f", agreement {g.agreement:.1f}")

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "images_per_s": self.images_per_s, "non_finite": self.non_finite,
                "guard": None if self.guard is None else self.guard.to_dict(), "holds": self.holds,
                "skipped": self.skipped, "fails": self.fails}


@dataclass
class AutoChoice:
    backend: str
    chosen: str
    candidates: list[Candidate] = field(default_factory=list)
    basis: str = ""

    @property
    def guard(self) -> GuardResult | None:
        """The chosen precision's guard (None for fp32)."""
        return next(c.guard for c in self.candidates if c.precision == self.chosen)

    def table(self) -> str:
        rows = ["| precision | images/s | guard (vs fp32) | non-finite | verdict |", "|---|---:|---|---:|---|"]
        for c in self.candidates:
            speed = "-" if c.images_per_s is None else f"{c.images_per_s:.3g}"
            verdict = c.skipped or ("holds" if c.holds else f"fails: {c.fails}")
            if c.precision == self.chosen:
                verdict += " (chosen)"
            rows.append(f"| {c.precision} | {speed} | {c.guard_text()} | {c.non_finite or '-'} | {verdict} |")
        return "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "chosen": self.chosen, "basis": self.basis,
                "rule": "the fastest candidate whose accuracy guard holds (fp32 always qualifies)",
                "candidates": [c.to_dict() for c in self.candidates]}


def auto_candidates(backend: str, requested: Sequence[str] | None = None, bf16_native: Callable[[], bool] | None = None,
                    int8_available: Callable[[], bool] | None = None,
                    openvino_refusal: Callable[[str], str | None] | None = None) -> tuple[list[str], dict[str, str]]:
    """The precisions auto measures for ``backend`` and, for the others, why not.

    ``requested`` (``--auto-precisions``) narrows or widens the list; by default every precision the backend
    offers is measured, except OpenVINO fp16 on a CPU with native bf16: bf16 has the same width and fp32's
    range, and OpenVINO's CPU compilation at fp16 has been seen not to return (Mask R-CNN, over 35 minutes).
    OpenVINO fp16/bf16 that this CPU does not run natively (``openvino_refusal``, default
    ``openvino_backend.precision_refusal``) are not tried, asked for or not: the engine would refuse them.
    ``bf16_native`` given (tests) stands for the CPU's bf16 in both checks.
    """
    notes: dict[str, str] = {}
    if requested is not None:
        unknown = [p for p in requested if p not in PRECISIONS]
        if unknown:
            raise DeployzooError(f"unknown precision {', '.join(unknown)} in --auto-precisions; choose from "
                                 f"{', '.join(PRECISIONS)}")
    wanted = ["fp32", *[p for p in (requested or PRECISIONS) if p != "fp32"]]
    candidates = []
    for p in wanted:
        if not supports(backend, p):
            notes[p] = f"not offered by {backend}"
        elif backend == "openvino" and p in ("fp16", "bf16") and (refusal := _refusal(p, openvino_refusal, bf16_native)):
            notes[p] = f"not tried: {refusal}"
        elif p == "int8" and not (int8_available or _int8_available)():
            notes[p] = "not tried: NNCF is not installed (pip install 'deployzoo[int8]')"
        elif (requested is None and backend == "openvino" and p == "fp16"
              and (bf16_native or _openvino_bf16_native)()):
            notes[p] = ("not tried: this CPU has native bf16 (same width, fp32's range), and OpenVINO's fp16 "
                        "compilation may not return on the R-CNN graphs; ask with --auto-precisions")
        else:
            candidates.append(p)
    return candidates, notes


def _refusal(precision: str, openvino_refusal: Callable[[str], str | None] | None,
             bf16_native: Callable[[], bool] | None) -> str | None:
    if openvino_refusal is not None:
        return openvino_refusal(precision)
    if bf16_native is not None and precision == "bf16":
        return None if bf16_native() else "this CPU has no native bf16 for OpenVINO"
    if bf16_native is not None:
        return None  # a test's CPU: fp16 as asked
    from deployzoo.backends.openvino_backend import precision_refusal

    return precision_refusal(precision)


def _int8_available() -> bool:
    from deployzoo.backends.openvino_int8 import nncf_available

    return nncf_available()


def _openvino_bf16_native() -> bool:
    from deployzoo.backends.openvino_backend import precision_refusal

    return precision_refusal("bf16") is None


def _non_finite(outputs: Mapping[str, np.ndarray]) -> int:
    """NaN and infinite values over all floating-point outputs (the fixed-size padding rows included: the
    same graph and inputs give fp32 the same padding, and a candidate is compared with fp32's count)."""
    values = (np.asarray(v) for v in outputs.values())
    return sum(int(v.size - np.isfinite(v).sum()) for v in values if np.issubdtype(v.dtype, np.floating))


def choose_precision(backend: str, candidates: Sequence[str], open_engine: Callable[[str], Any],
                     guard: Callable[[str, Callable[[str], Any]], GuardResult], inputs: dict[str, np.ndarray],
                     notes: Mapping[str, str] | None = None, rounds: int = TIMED_ROUNDS,
                     say: Callable[[str], None] = print) -> AutoChoice:
    """Build, time and guard each of ``candidates`` (fp32 first); the fastest that holds wins.

    ``open_engine(precision)`` builds an engine (pipeline.Engine: ``.backend.infer``, ``.backend.close``);
    ``guard(precision, opener)`` runs the accuracy guard, opening its engines with ``opener`` (which hands it
    the candidate engine built here, so the engine that was timed is the one that is guarded).
    """
    rows = {p: Candidate(p, skipped=reason) for p, reason in (notes or {}).items()}
    engines: dict[str, Any] = {}
    try:
        for p in candidates:
            try:
                engines[p] = open_engine(p)
            except DeployzooError as exc:
                if p == "fp32":
                    raise
                kind = "not offered here" if isinstance(exc, UnsupportedPrecision) else "could not be built"
                rows[p] = Candidate(p, skipped=f"{kind}: {exc}")
        samples: dict[str, list[float]] = {p: [] for p in engines}
        for round_ in range(rounds + 1):  # round 0 warms up and gives the outputs checked for NaN/inf
            for p, engine in engines.items():
                t0 = time.perf_counter()
                outputs = engine.backend.infer(inputs)
                seconds = time.perf_counter() - t0
                if round_ == 0:
                    rows[p] = Candidate(p, non_finite=_non_finite(outputs))
                else:
                    samples[p].append(seconds)
        for p in engines:
            batch = engines[p].backend.batch_size
            rows[p].images_per_s = batch / statistics.median(samples[p])
        engines.pop("fp32").backend.close()
        reference_bad = rows["fp32"].non_finite
        for p in [p for p in candidates if p in engines]:
            engine = engines.pop(p)

            def opener(precision: str, _engine=engine) -> Any:
                return _engine if precision == p else open_engine(precision)

            row = rows[p]
            try:
                row.guard = guard(p, opener)
            finally:
                engine.backend.close()
            say(row.guard.describe())
            if row.non_finite > reference_bad:
                row.fails = f"{row.non_finite} non-finite output values on the example inputs (fp32: {reference_bad})"
            elif not row.guard.holds:
                row.fails = "accuracy guard"
    finally:
        for engine in engines.values():
            engine.backend.close()
    ordered = [rows[p] for p in dict.fromkeys([*candidates, *(notes or {})]) if p in rows]
    holding = [c for c in ordered if c.holds and c.images_per_s is not None]
    chosen = max(holding, key=lambda c: c.images_per_s).precision
    basis = (f"batch 1 on the model's example inputs, host latency, median of {rounds} calls per precision in "
             "interleaved rounds after one warm-up round")
    choice = AutoChoice(backend, chosen, ordered, basis)
    say(f"precision auto for {backend} ({basis}):")
    say(choice.table())
    say(f"precision auto: {chosen} for {backend} (the fastest whose accuracy guard holds)")
    return choice
