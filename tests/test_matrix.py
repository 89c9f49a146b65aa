"""deployzoo matrix: statuses per cell, the run going on past bad cells, resuming, reports; harness overhead."""
from __future__ import annotations

import json

import numpy as np
import pytest
from native_precision import native, native_half_precision

import deployzoo.matrix as matrix_module
from deployzoo.bench.pure import bench_pure
from deployzoo.cli import main
from deployzoo.engine import make_backend
from deployzoo.matrix import Matrix, MatrixSettings
from deployzoo.precision_guard import GuardResult

MODEL = "refinedet320-vgg16-voc"
QUICK = dict(warmup=1, min_iters=1, min_seconds=0.0, guard_images=2)


def _by_key(cells):
    return {(c["backend"], c["precision"], c["batch_size"]): c for c in cells}


@pytest.fixture
def fake_guard(monkeypatch):
    """Guards without evaluating: fp16 'scores' 1 point lower than fp32 (over a 0.5 tolerance)."""
    def guard(self, state, backend, precision):
        return GuardResult(backend, precision, "mAP", 10.0, 9.0, 0.5, 2, "fake")

    monkeypatch.setattr(Matrix, "_guard", guard)


@pytest.fixture
def cheap_emulated_fp16(monkeypatch):
    """Where PyTorch fp16 is emulated (minutes per RefineDet batch), the fp16 cells time a stand-in infer call
    that returns a batch of zeros: these tests check the matrix's statuses and files, not fp16 speed."""
    if native("fp16"):
        return
    real_bench = matrix_module.bench_pure

    def bench(engine, **kw):
        if engine.precision == "fp16":
            engine.infer = lambda inputs: {"stand_in": np.zeros((engine.batch_size, 1), np.float32)}
        return real_bench(engine, **kw)

    monkeypatch.setattr(matrix_module, "bench_pure", bench)


def test_matrix_statuses_and_resume(tmp_path, monkeypatch, fake_guard, cheap_emulated_fp16):
    monkeypatch.setattr(matrix_module, "backend_missing",
                        lambda b: "OpenVINO is not installed" if b == "openvino" else None)
    out = tmp_path / "m"
    m = Matrix([MODEL], ["onnxruntime", "openvino", "pytorch"], ["fp32", "fp16"], [1], out, MatrixSettings(**QUICK),
               say=lambda s: None)
    cells = _by_key(m.run())
    assert cells[("onnxruntime", "fp32", 1)]["status"] == "ok"
    assert cells[("onnxruntime", "fp32", 1)]["stats"]["throughput"] > 0
    assert cells[("onnxruntime", "fp16", 1)]["status"] == "unsupported"
    assert cells[("openvino", "fp32", 1)]["status"] == "backend missing"
    assert cells[("pytorch", "fp32", 1)]["status"] == "ok"
    failed = cells[("pytorch", "fp16", 1)]
    assert failed["status"] == "accuracy failed" and failed["stats"] is not None  # measured, and marked
    assert failed["guard"]["delta"] == -1.0 and failed["backend_info"]["precision"] == "fp16"
    assert all(c["precision"] in ("fp32", "fp16") for c in cells.values())

    # Resume: every finished cell is read back, nothing is measured again.
    def no_measuring(*a, **k):
        raise AssertionError("a cached cell was measured again")

    monkeypatch.setattr(Matrix, "_run_cell", no_measuring)
    again = _by_key(Matrix([MODEL], ["onnxruntime", "openvino", "pytorch"], ["fp32", "fp16"], [1], out,
                           MatrixSettings(**QUICK), say=lambda s: None).run())
    assert again == cells


def test_matrix_goes_on_past_export_failure_and_out_of_memory(tmp_path, monkeypatch):
    def broken_export(*a, **k):
        raise RuntimeError("exporter exploded")

    real_bench = bench_pure

    def bench_out_of_memory(backend, **kw):
        if backend.batch_size == 2:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: out of memory")
        return real_bench(backend, **kw)

    monkeypatch.setattr(matrix_module, "cached_onnx", broken_export)  # the export into the engine cache
    monkeypatch.setattr(matrix_module, "bench_pure", bench_out_of_memory)
    m = Matrix([MODEL], ["onnxruntime", "pytorch"], ["fp32"], [1, 2], tmp_path, MatrixSettings(**QUICK), say=lambda s: None)
    cells = _by_key(m.run())
    assert cells[("onnxruntime", "fp32", 1)]["status"] == "export failed"
    assert "exporter exploded" in cells[("onnxruntime", "fp32", 2)]["error"]
    assert cells[("pytorch", "fp32", 1)]["status"] == "ok"
    assert cells[("pytorch", "fp32", 2)]["status"] == "out of memory"
    # Failed cells are cached too: they are what happened, and --fresh measures them again.
    assert (tmp_path / "cells" / MODEL / "pytorch-fp32-b2.json").is_file()


def test_cli_matrix_writes_reports(tmp_path, capsys, fake_guard, cheap_emulated_fp16):
    out = tmp_path / "cli"
    code = main(["matrix", "--models", MODEL, "--backends", "onnxruntime,pytorch", "--precisions", "fp32,fp16",
                 "--batch", "1", "--iters", "1", "--min-seconds", "0", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| refinedet320-vgg16-voc | onnxruntime | fp32 | 1 | ok |" in printed
    assert "unsupported" in printed and "accuracy failed" in printed
    report = json.loads((out / "matrix.json").read_text())
    assert {c["precision"] for c in report["cells"]} == {"fp32", "fp16"}
    assert report["environment"]["versions"]["onnxruntime"]
    assert (out / "matrix.csv").is_file() and (out / "matrix.md").is_file()
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "latency.png").is_file()


def test_cli_matrix_refuses_unknown_names(capsys, tmp_path):
    assert main(["matrix", "--models", "nope", "--out", str(tmp_path)]) == 2
    assert main(["matrix", "--models", MODEL, "--backends", "tensorrt", "--out", str(tmp_path)]) == 2
    assert "unknown backend 'tensorrt'" in capsys.readouterr().err


@pytest.mark.skipif(native_half_precision() is None,
                    reason="PyTorch fp16/bf16 are emulated on this CPU (no AVX-512 FP16/BF16, no AMX): a real guard "
                           "would take many minutes; the matrix's guard handling is covered by "
                           "test_matrix_statuses_and_resume with a stand-in guard")
def test_guard_runs_for_real_in_the_matrix(tmp_path):
    precision = native_half_precision()
    m = Matrix([MODEL], ["pytorch"], [precision], [1], tmp_path, MatrixSettings(**QUICK), say=lambda s: None)
    (cell,) = m.run()
    guard = cell["guard"]
    assert guard["images"] == 2 and guard["metric"].startswith("VOC07")
    assert guard["agreement"] is not None  # scored against fp32's own predictions
    assert cell["status"] == ("ok" if guard["holds"] else "accuracy failed")
    assert (tmp_path / "guard" / MODEL / "pytorch-fp32" / "metrics.json").is_file()


def test_overhead_ratio_against_onnxruntime_own_loop(refinedet_spec, refinedet_onnx):
    backend = make_backend("onnxruntime", refinedet_spec, 1, onnx_path=refinedet_onnx)
    result = bench_pure(backend, warmup=1, min_iters=2, min_seconds=0, inputs=refinedet_spec.make_example_inputs(1),
                        native=True)
    o = result.overhead
    assert o["iterations"] >= 2 and o["native_images_per_s"] > 0
    assert o["ratio"] == pytest.approx(o["ours_images_per_s"] / o["native_images_per_s"])
    assert o["ours_images_per_s"] == result.stats.throughput
    assert len(result.samples_ms) == result.stats.n


def test_native_call_runs_the_same_computation(refinedet_spec, refinedet_onnx):
    pytest.importorskip("openvino")
    inputs = refinedet_spec.make_example_inputs(1)
    for name in ("onnxruntime", "openvino"):
        backend = make_backend(name, refinedet_spec, 1, onnx_path=refinedet_onnx)
        native = backend.native_call(inputs)()
        ours = backend.infer(inputs)
        first = native[0] if isinstance(native, list) else next(iter(native.values()))
        assert np.array_equal(np.asarray(first), ours[backend.output_names[0]])


def test_a_cell_past_its_time_limit_is_killed_and_the_matrix_goes_on(tmp_path):
    said = []
    settings = MatrixSettings(**{**QUICK, "min_seconds": 120.0}, cell_timeout=3.0)
    m = Matrix([MODEL], ["onnxruntime", "pytorch"], ["fp32", "fp16"], [1, 2], tmp_path, settings, say=said.append)
    cells = _by_key(m.run())
    slow = cells[("onnxruntime", "fp32", 1)]
    assert slow["status"] == "timed out" and "not finished after 3 s, building or benchmarking" in slow["error"]
    assert slow["stats"] is None and slow["seconds"] < 60
    assert cells[("onnxruntime", "fp16", 1)]["status"] == "unsupported"  # decided without a child process
    # The fp16 guard ran past the limit at batch 1, so batch 2 does not wait for it again.
    first, second = cells[("pytorch", "fp16", 1)], cells[("pytorch", "fp16", 2)]
    assert first["status"] == "timed out" and "in the accuracy guard" in first["error"]
    assert second["status"] == "timed out" and "already ran past 3 s" in second["error"]
    assert json.loads(m.cell_path(MODEL, "pytorch", "fp16", 2).read_text())["status"] == "timed out"


@pytest.mark.slow
@pytest.mark.skipif(native_half_precision() is None,
                    reason="PyTorch fp16/bf16 are emulated on this CPU (no AVX-512 FP16/BF16, no AMX): its cells "
                           "and shared guard would take many minutes")
def test_cells_in_child_processes_measure_and_share_the_guard(tmp_path):
    said = []
    half = native_half_precision()
    settings = MatrixSettings(**QUICK, cell_timeout=600.0)
    cells = _by_key(Matrix([MODEL], ["onnxruntime", "pytorch"], ["fp32", half], [1, 2], tmp_path, settings,
                           say=said.append).run())
    for key in (("onnxruntime", "fp32", 1), ("onnxruntime", "fp32", 2), ("pytorch", "fp32", 2)):
        assert cells[key]["status"] == "ok" and cells[key]["stats"]["throughput"] > 0, cells[key]
    fp16 = [cells[("pytorch", half, b)] for b in (1, 2)]
    assert all(c["stats"] is not None and c["guard"]["agreement"] is not None for c in fp16)
    assert fp16[0]["guard"] == fp16[1]["guard"]
    assert sum("accuracy guard" in line for line in said) == 1  # evaluated in the first child, reused by the second
    from deployzoo.cache import entries

    exported = [e for e in entries() if e.kind == "onnx" and e.record["fields"]["model"] == MODEL
                and e.record["fields"]["batch"] == "dynamic" and e.record["fields"]["stand_in"]]
    assert len(exported) == 1 and not list(tmp_path.rglob("*.onnx"))  # exported once, by the parent, to the cache
