"""Benchmark statistics, the pure-inference loop, sweeps, report writers and the stage timer."""
from __future__ import annotations

import csv
import json
import time
from typing import Any

import numpy as np
import pytest

from deployzoo.backends.base import Backend
from deployzoo.bench.pure import PureBenchResult, bench_pure, bench_sweep, make_inputs
from deployzoo.bench.report import environment, sweep_table, write_csv, write_json
from deployzoo.bench.timing import LatencyStats, StageTimer
from deployzoo.errors import BadInputError


class MatmulBackend(Backend):
    """[B, 4, 8] @ [8, 3] -> [B, 4, 3]; counts calls. ``out_batch`` fakes a static-batch engine."""

    name = "fake"

    def __init__(self, batch_size: int = 2, out_batch: int | None = None, free_dim0: bool = True):
        super().__init__()
        self.batch_size = batch_size
        self.input_shapes = {"x": (None if free_dim0 else batch_size, 4, 8)}
        self.output_names = ["y"]
        self.source = "fake_model.onnx"
        self.weight = np.arange(24, dtype=np.float32).reshape(8, 3)
        self.out_batch = out_batch
        self.calls = 0
        self.closed = False

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        y = inputs["x"] @ self.weight
        if self.out_batch is not None:
            y = y[: self.out_batch]
        return {"y": y}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "precision": self.precision, "model": self.source}

    def close(self) -> None:
        self.closed = True


# ----------------------------------------------------------------------------- LatencyStats


def test_stats_math_on_fixed_samples() -> None:
    samples = [i / 1000 for i in range(1, 11)]  # 1..10 ms
    s = LatencyStats.from_samples(samples, batch_size=4, basis="host latency")
    assert s.n == 10
    assert s.total_s == pytest.approx(0.055)
    assert s.min_ms == pytest.approx(1.0)
    assert s.max_ms == pytest.approx(10.0)
    assert s.mean_ms == pytest.approx(5.5)
    assert s.p50_ms == pytest.approx(5.5)
    assert s.p90_ms == pytest.approx(9.1)  # linear interpolation: rank 0.9 * 9 = 8.1
    assert s.p99_ms == pytest.approx(9.91)
    assert s.std_ms == pytest.approx(np.std(np.arange(1, 11), ddof=1))
    assert s.cv == pytest.approx(s.std_ms / 5.5)
    assert s.throughput == pytest.approx(4 * 10 / 0.055)
    assert s.noisy  # 1..10 ms spreads far beyond 10 %
    assert "CV" in s.variation_warning()


def test_stats_steady_runs_are_not_noisy() -> None:
    s = LatencyStats.from_samples([0.010] * 20 + [0.0101] * 20, batch_size=1, basis="end to end")
    assert not s.noisy
    assert s.variation_warning() is None
    d = s.to_dict()
    assert d["basis"] == "end to end" and d["warning"] is None and d["noisy"] is False


def test_stats_tail_rule() -> None:
    # A low CV is not enough: 2 slow runs in 100 put p99 above 1.5 x p50 while CV stays < 10 %.
    s = LatencyStats.from_samples([0.010] * 98 + [0.016] * 2, batch_size=1, basis="host latency")
    assert s.cv < 0.10
    assert s.p99_ms > 1.5 * s.p50_ms
    assert s.noisy and "p99" in s.variation_warning() and "CV" not in s.variation_warning()


def test_stats_single_sample_and_bad_args() -> None:
    s = LatencyStats.from_samples([0.002], batch_size=8, basis="compute only")
    assert s.std_ms == 0.0 and s.p99_ms == pytest.approx(2.0)
    assert s.throughput == pytest.approx(4000.0)
    with pytest.raises(ValueError):
        LatencyStats.from_samples([], 1, "host latency")
    with pytest.raises(ValueError):
        LatencyStats.from_samples([0.1], 1, "wall")


# -------------------------------------------------------------------------------- bench_pure


def test_make_inputs_deterministic_and_batched() -> None:
    b = MatmulBackend(batch_size=3)
    a1, a2 = make_inputs(b, seed=1)["x"], make_inputs(b, seed=1)["x"]
    assert a1.shape == (3, 4, 8) and a1.dtype == np.float32
    np.testing.assert_array_equal(a1, a2)


def test_make_inputs_refuses_free_inner_dim() -> None:
    b = MatmulBackend()
    b.input_shapes = {"x": (None, 4, None)}
    with pytest.raises(ValueError, match="free dimension 2"):
        bench_pure(b, min_iters=1, min_seconds=0)


def test_min_iters_honoured() -> None:
    b = MatmulBackend()
    r = bench_pure(b, warmup=2, min_iters=25, min_seconds=0.0)
    assert r.stats.n == 25
    assert b.calls == 2 + 25  # warm-up calls are not samples
    assert r.stats.basis == "host latency"
    assert r.input_shapes == {"x": (2, 4, 8)}
    assert r.batch_size == 2 and r.ok


def test_min_seconds_honoured() -> None:
    class Slow(MatmulBackend):
        def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            time.sleep(0.002)
            return super().infer(inputs)

    t0 = time.perf_counter()
    r = bench_pure(Slow(), warmup=1, min_iters=2, min_seconds=0.03)
    assert time.perf_counter() - t0 >= 0.03  # a lower bound only: never assert speed
    assert r.stats.n > 2  # min_iters alone would have stopped at 2


def test_max_seconds_stops_after_min_iters() -> None:
    b = MatmulBackend()
    r = bench_pure(b, warmup=0, min_iters=5, min_seconds=60.0, max_seconds=0.0)
    assert r.stats.n == 5
    assert b.calls == 1 + 5  # warmup=0 still makes the one checking call


def test_batch_mismatch_detected() -> None:
    b = MatmulBackend(batch_size=4, out_batch=1)  # engine silently runs batch 1
    with pytest.raises(BadInputError) as ei:
        bench_pure(b, min_iters=1, min_seconds=0)
    assert ei.value.path == "fake_model.onnx"
    assert "batch 4" in ei.value.problem


def test_static_input_batch_mismatch_detected() -> None:
    b = MatmulBackend(batch_size=1, free_dim0=False)
    b.batch_size = 8  # loaded "for batch 8" but the graph input is fixed at 1
    with pytest.raises(BadInputError, match="batch 8"):
        bench_pure(b, min_iters=1, min_seconds=0)


def test_given_inputs_are_checked() -> None:
    b = MatmulBackend(batch_size=2)
    with pytest.raises(BadInputError, match="input 'x'"):
        bench_pure(b, inputs={"x": np.zeros((2, 4, 7), np.float32)}, min_iters=1, min_seconds=0)
    r = bench_pure(b, inputs={"x": np.ones((2, 4, 8), np.float32)}, min_iters=2, min_seconds=0)
    assert r.stats.n == 2


def test_sweep_records_failed_cell_and_goes_on() -> None:
    made: list[MatmulBackend] = []

    def make(bs: int) -> MatmulBackend:
        if bs == 3:
            raise RuntimeError("engine refuses batch 3")
        b = MatmulBackend(batch_size=bs, out_batch=1 if bs == 4 else None)
        made.append(b)
        return b

    results = bench_sweep(make, [1, 3, 4, 8], warmup=1, min_iters=3, min_seconds=0.0)
    assert [r.batch_size for r in results] == [1, 3, 4, 8]
    assert [r.ok for r in results] == [True, False, False, True]
    assert "engine refuses batch 3" in results[1].error and results[1].stats is None
    assert "BadInputError" in results[2].error
    assert all(b.closed for b in made)
    assert results[3].stats.n == 3


# ------------------------------------------------------------------------------------ report


def _results() -> list[PureBenchResult]:
    ok = bench_pure(MatmulBackend(batch_size=2), warmup=1, min_iters=3, min_seconds=0)
    failed = bench_sweep(lambda bs: MatmulBackend(bs, out_batch=1), [2], min_iters=1, min_seconds=0)[0]
    return [ok, failed]


def test_sweep_table() -> None:
    table = sweep_table(_results())
    lines = table.splitlines()
    assert lines[0].startswith("| backend | precision | batch | images/s")
    assert len(lines) == 4
    assert all(line.count("|") == lines[0].count("|") for line in lines)  # error text cannot break a row
    assert "host latency" in lines[2]
    assert "FAILED" in lines[3]
    assert sweep_table([r.to_dict() for r in _results()]).splitlines()[0] == lines[0]


def test_write_json_numpy_safe(tmp_path) -> None:
    obj = {"results": _results(), "a": np.float32(1.5), "b": np.arange(3), "c": np.int64(7), "env": environment()}
    p = write_json(tmp_path / "sub" / "r.json", obj)
    back = json.loads(p.read_text())
    assert back["a"] == 1.5 and back["b"] == [0, 1, 2] and back["c"] == 7
    assert back["results"][0]["stats"]["n"] == 3
    assert back["results"][1]["error"]


def test_write_csv_union_of_keys(tmp_path) -> None:
    rows = [{"a": 1, "b": np.float64(2.5)}, {"a": 2, "c": {"x": [1, 2]}, "b": None}]
    p = write_csv(tmp_path / "r.csv", rows)
    with p.open(newline="") as f:
        back = list(csv.DictReader(f))
    assert list(back[0]) == ["a", "b", "c"]
    assert back[0] == {"a": "1", "b": "2.5", "c": ""}
    assert back[1]["b"] == "" and json.loads(back[1]["c"]) == {"x": [1, 2]}


def test_environment_fields() -> None:
    env = environment()
    for key in ("date", "hostname", "platform", "python", "cpu_model", "logical_cores", "versions", "OMP_NUM_THREADS"):
        assert key in env
    assert env["versions"]["numpy"] == np.__version__


# -------------------------------------------------------------------------------- StageTimer


def test_stage_timer_math() -> None:
    t = StageTimer()
    t.add("infer", 2.0)
    t.add("read", 1.0)
    t.add("read", 1.0)
    t.add("preprocess", 4.0)
    t.count(100)
    t.count(100)
    t.wall_s = 5.0  # less than the 8 s stage sum: stages overlapped in workers
    rows = {r["stage"]: r for r in t.rows()}
    assert [r["stage"] for r in t.rows()] == ["read", "preprocess", "infer", "end to end"]
    assert rows["read"]["ms_per_image"] == pytest.approx(10.0)
    assert rows["read"]["images_per_s"] == pytest.approx(100.0)
    assert rows["preprocess"]["ms_per_image"] == pytest.approx(20.0)
    assert rows["end to end"]["images_per_s"] == pytest.approx(40.0)
    table = t.table()
    assert "| end to end | 5.000 | 25.000 | 40.0 |" in table
    d = json.loads(json.dumps(t.to_dict()))
    assert d["items"] == 200 and d["stages"]["read"] == 2.0


def test_stage_timer_clocks() -> None:
    t = StageTimer()
    with t.run():
        with t.stage("postprocess"):
            pass
        with pytest.raises(KeyError):
            with t.stage("infer"):
                raise KeyError("boom")  # time still recorded
    assert set(t.seconds) == {"postprocess", "infer"}
    assert t.wall_s is not None and t.wall_s >= 0
    assert t.rows()[0]["ms_per_image"] is None  # no items counted: no per-image figure
    with pytest.raises(RuntimeError):
        StageTimer().stop()
