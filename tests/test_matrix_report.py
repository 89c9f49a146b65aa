"""Matrix reports: Markdown tables, CSV rows, JSON round trip and the two plots, on hand-made cells."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from deployzoo.bench.matrix_report import (
    best_batch_table,
    matrix_rows,
    matrix_table,
    plot_latency,
    plot_throughput,
    status_counts,
    write_matrix_reports,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ENV = {
    "date": "2024-05-01T10:00:00+00:00",
    "hostname": "bench-host",
    "platform": "Linux-6.1-x86_64",
    "python": "3.11.7",
    "cpu_model": "Fake CPU 9000",
    "logical_cores": 16,
    "versions": {"torch": "2.3.0", "onnxruntime": "1.18.0", "numpy": "1.26.4", "onnx": None},
    "OMP_NUM_THREADS": "8",
}


def _stats(p50: float, batch: int, warning: str | None = None) -> dict[str, Any]:
    return {
        "n": 20, "batch_size": batch, "basis": "host latency", "total_s": p50 * 20 / 1000,
        "min_ms": p50 * 0.9, "mean_ms": p50 * 1.05, "p50_ms": p50, "p90_ms": p50 * 1.2,
        "p99_ms": p50 * 1.5, "max_ms": p50 * 1.6, "std_ms": p50 * 0.1, "cv": 0.1,
        "throughput": batch * 1000.0 / p50, "noisy": warning is not None, "warning": warning,
    }


def _cell(model: str, backend: str, precision: str, batch: int, status: str = "ok", p50: float | None = 10.0,
          samples: bool = True, **extra: Any) -> dict[str, Any]:
    stats = None if p50 is None else _stats(p50, batch)
    cell = {
        "model": model, "backend": backend, "precision": precision, "batch_size": batch,
        "status": status, "error": None, "stats": stats,
        "samples_ms": [p50 * (0.9 + 0.01 * i) for i in range(20)] if stats and samples else [],
        "guard": None, "overhead": None, "backend_info": {"name": backend}, "seconds": 1.5,
    }
    cell.update(extra)
    return cell


def _cells() -> list[dict[str, Any]]:
    guard_ok = {"metric": "mAP", "fp32": 41.2, "candidate": 40.9, "delta": -0.3, "tolerance": 0.5,
                "holds": True, "images": 8, "agreement": 97.25}
    guard_bad = {**guard_ok, "candidate": 39.0, "delta": -2.2, "holds": False, "agreement": None}
    # Deliberately out of order: the reports sort by model, backend, precision, batch.
    return [
        _cell("ssd", "openvino", "fp32", 4, p50=30.0, samples=False),
        _cell("ssd", "onnxruntime", "fp32", 4, p50=20.0,
              overhead={"ours_images_per_s": 200.0, "native_images_per_s": 199.6, "ratio": 1.002, "method": "x"}),
        _cell("ssd", "onnxruntime", "fp32", 1, p50=8.0),
        _cell("ssd", "onnxruntime", "fp16", 1, status="accuracy failed", p50=5.0, guard=guard_bad),
        _cell("ssd", "onnxruntime", "fp16", 4, status="accuracy failed", p50=12.0, guard=guard_bad),
        _cell("refinedet", "pytorch", "bf16", 1, status="ok", p50=9.0, guard=guard_ok),
        _cell("refinedet", "pytorch", "bf16", 4, status="ok", p50=40.0, guard=guard_ok,
              stats=_stats(40.0, 4, warning="noisy: cv 0.3 | rerun\non an idle machine")),
        _cell("refinedet", "tensorrt", "fp16", 1, status="backend missing", p50=None,
              error="tensorrt is not installed | pip install deployzoo[tensorrt]\nsee README"),
        _cell("refinedet", "openvino", "bf16", 4, status="unsupported", p50=None, error="x" * 300),
    ]


def _rows(table: str) -> list[list[str]]:
    """Data rows of a Markdown table, split on unescaped '|'."""
    out = []
    for line in table.splitlines()[2:]:
        parts = line.replace("\\|", "\0").strip().strip("|").split("|")
        out.append([p.strip().replace("\0", "\\|") for p in parts])
    return out


def test_matrix_table_rows_and_order():
    table = matrix_table(_cells())
    rows = _rows(table)
    assert all(len(r) == 12 for r in rows)
    assert [tuple(r[:4]) for r in rows] == [
        ("refinedet", "openvino", "bf16", "4"),
        ("refinedet", "pytorch", "bf16", "1"),
        ("refinedet", "pytorch", "bf16", "4"),
        ("refinedet", "tensorrt", "fp16", "1"),
        ("ssd", "onnxruntime", "fp16", "1"),
        ("ssd", "onnxruntime", "fp16", "4"),
        ("ssd", "onnxruntime", "fp32", "1"),
        ("ssd", "onnxruntime", "fp32", "4"),
        ("ssd", "openvino", "fp32", "4"),
    ]
    by_key = {tuple(r[:4]): r for r in rows}
    ort4 = by_key[("ssd", "onnxruntime", "fp32", "4")]
    assert ort4[4:11] == ["ok", "200.0", "20.0", "24.0", "30.0", "-", "1.002"]
    assert by_key[("refinedet", "pytorch", "bf16", "1")][9] == "mAP -0.30 (tol 0.5), agreement 97.2"
    failed = by_key[("ssd", "onnxruntime", "fp16", "1")]
    assert failed[4] == "accuracy failed" and failed[5] == "200.0" and failed[9] == "mAP -2.20 (tol 0.5)"
    missing = by_key[("refinedet", "tensorrt", "fp16", "1")]
    assert missing[4:11] == ["backend missing", "-", "-", "-", "-", "-", "-"]


def test_matrix_table_escapes_and_cuts_notes():
    table = matrix_table(_cells())
    lines = table.splitlines()
    assert len(lines) == 2 + len(_cells())  # no newline leaked into a row
    assert "tensorrt is not installed \\| pip install deployzoo[tensorrt] see README" in table
    assert "noisy: cv 0.3 \\| rerun on an idle machine" in table
    long_note = _rows(table)[0][11]
    assert long_note.endswith("...") and len(long_note) <= 120


def test_best_batch_table():
    rows = {tuple(r[:3]): r[3:] for r in _rows(best_batch_table(_cells()))}
    # Only groups with stats: tensorrt (missing) and openvino bf16 (unsupported) are left out.
    assert set(rows) == {
        ("refinedet", "pytorch", "bf16"), ("ssd", "onnxruntime", "fp16"),
        ("ssd", "onnxruntime", "fp32"), ("ssd", "openvino", "fp32"),
    }
    assert rows[("ssd", "onnxruntime", "fp32")] == ["125.0", "4", "200.0", "1.60x", ""]
    assert rows[("refinedet", "pytorch", "bf16")][:3] == ["111.1", "1", "111.1"]
    assert rows[("ssd", "onnxruntime", "fp16")][4] == "accuracy failed"
    assert rows[("ssd", "openvino", "fp32")] == ["-", "4", "133.3", "-", ""]


def test_matrix_rows_columns_and_values():
    rows = matrix_rows(_cells())
    assert list(rows[0]) == [
        "model", "backend", "precision", "batch_size", "status", "error", "throughput", "min_ms", "mean_ms",
        "p50_ms", "p90_ms", "p99_ms", "max_ms", "cv", "guard_metric", "guard_fp32", "guard_candidate",
        "guard_delta", "guard_tolerance", "guard_holds", "guard_agreement", "overhead_ratio", "seconds",
    ]
    by_key = {(r["model"], r["backend"], r["precision"], r["batch_size"]): r for r in rows}
    fp16 = by_key[("ssd", "onnxruntime", "fp16", 4)]
    assert fp16["throughput"] == pytest.approx(4000 / 12) and fp16["p50_ms"] == 12.0
    assert (fp16["guard_metric"], fp16["guard_delta"], fp16["guard_holds"]) == ("mAP", -2.2, False)
    assert fp16["guard_agreement"] is None and by_key[("refinedet", "pytorch", "bf16", 1)]["guard_agreement"] == 97.25
    assert by_key[("ssd", "onnxruntime", "fp32", 4)]["overhead_ratio"] == 1.002
    missing = by_key[("refinedet", "tensorrt", "fp16", 1)]
    assert missing["throughput"] is None and missing["guard_metric"] is None and missing["seconds"] == 1.5


def test_status_counts():
    assert status_counts(_cells()) == "9 cells: 5 ok, 2 accuracy failed, 1 backend missing, 1 unsupported"
    assert status_counts([]) == "0 cells"


def test_write_matrix_reports(tmp_path: Path):
    cells = _cells()
    paths = write_matrix_reports(tmp_path / "out", cells, ENV, title="test matrix")
    assert set(paths) == {"md", "json", "csv", "throughput_png", "latency_png"}
    for key in ("throughput_png", "latency_png"):
        assert paths[key].read_bytes()[:8] == PNG_MAGIC

    loaded = json.loads(paths["json"].read_text())
    assert loaded["environment"] == ENV
    assert loaded["cells"] == sorted(cells, key=lambda c: (c["model"], c["backend"], c["precision"], c["batch_size"]))

    with paths["csv"].open(newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(cells) and list(csv_rows[0]) == list(matrix_rows(cells)[0])
    ort4 = next(r for r in csv_rows if (r["model"], r["backend"], r["precision"], r["batch_size"])
                == ("ssd", "onnxruntime", "fp32", "4"))
    assert float(ort4["throughput"]) == 200.0 and ort4["overhead_ratio"] == "1.002" and ort4["guard_metric"] == ""

    md = paths["md"].read_text()
    assert md.startswith("# test matrix\n")
    for text in ("Fake CPU 9000, 16 logical cores", "python: 3.11.7", "torch 2.3.0", "onnx not installed",
                 "threads: 8", "hostname: bench-host", matrix_table(cells), best_batch_table(cells),
                 "Status: 9 cells: 5 ok", "![throughput](throughput.png)", "![latency](latency.png)"):
        assert text in md


def test_plots_with_nothing_to_plot(tmp_path: Path):
    cells = [c for c in _cells() if c["stats"] is None]
    assert plot_throughput(cells, tmp_path / "t.png") is None
    assert plot_latency(cells, tmp_path / "l.png") is None
    assert plot_throughput([], tmp_path / "t.png") is None
    assert not list(tmp_path.iterdir())

    paths = write_matrix_reports(tmp_path / "out", cells, ENV)
    assert set(paths) == {"md", "json", "csv"}
    assert "png" not in paths["md"].read_text()


def test_latency_plot_without_samples_falls_back(tmp_path: Path):
    cells = [_cell("ssd", "onnxruntime", "fp32", b, samples=False) for b in (1, 4)]
    path = plot_latency(cells, tmp_path / "sub" / "latency.png", subtitle="Fake CPU")
    assert path == tmp_path / "sub" / "latency.png" and path.read_bytes()[:8] == PNG_MAGIC
