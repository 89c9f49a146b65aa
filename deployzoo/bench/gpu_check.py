"""The GPU measurement behind ``scripts/gpu-check.sh``: every zoo model on the PyTorch CUDA backend.

For each model and precision (fp32, fp16, bf16): pure inference (host latency of one ``infer`` call, inputs
and outputs in host memory, so the copies are included) at batch 1, then doubling the batch while the
throughput still grows by more than 5% (up to ``--max-batch``); the best batch is reported beside batch 1.
Then, where shapes are fixed (RefineDet; the ``@HxW`` canvas variants of the others), the same model through
``torch.compile(mode="reduce-overhead")``, which replays CUDA graphs, at batch 1.

Everything runs inside a time budget: cells that would not fit are listed as skipped, never silently left
out, and the JSON / Markdown are rewritten after every cell, so a run stopped from outside keeps what it
measured. ``--device cpu`` (with ``--dry-run``: one small model, tiny timings) runs the same code on the CPU,
CUDA graphs replaced by eager mode and said so, so the logic is tested where there is no GPU.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any, Sequence

GRAPH_CANVAS = {  # the fixed-shape variant used for CUDA graphs (RefineDet is fixed already)
    "mmdet-mask-rcnn-r50-fpn-1x": "@800x1216",
    "d2-cascade-mask-rcnn-r50-fpn-3x": "@800x1216",
    "mmdet-fsaf-r50-fpn-1x": "@800x1216",
    "mmseg-pspnet-r50-d8-voc12aug": "@512x704",
}
MODELS = ("refinedet320-vgg16-voc", *GRAPH_CANVAS)
PRECISIONS = ("fp32", "fp16", "bf16")
MAX_BATCH = {"refinedet320-vgg16-voc": 64}  # others: 16 (R-CNN inputs are 800x1088 each)
COMPILE_RESERVE_S = 150.0  # a compile cell starts only with this much budget left (Inductor compiles first)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deployzoo.bench.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu-check.json and gpu-check.md")
    p.add_argument("--device", default="cuda", help="cuda (the real run) or cpu (a check of the logic)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    p.add_argument("--max-batch", type=int, default=None, help="largest batch tried (default: 64 RefineDet, 16 others)")
    p.add_argument("--budget-s", type=float, default=330.0, help="time for all measurements, in seconds")
    p.add_argument("--min-seconds", type=float, default=1.0, help="at least this long per cell")
    p.add_argument("--iters", type=int, default=10, help="at least this many timed calls per cell")
    p.add_argument("--no-graphs", dest="graphs", action="store_false", help="skip the CUDA-graph cells")
    p.add_argument("--dry-run", action="store_true",
                   help="a quick check of the logic: RefineDet only, fp32, batches 1-2, one timed call per cell")
    args = p.parse_args(argv)
    if args.dry_run:
        args.models, args.precisions, args.max_batch, args.iters, args.min_seconds = (
            "refinedet320-vgg16-voc", "fp32", 2, 1, 0.0)
    models, precisions = _names(args.models), _names(args.precisions)
    return 0 if run_check(models, precisions, Path(args.out), device=args.device, max_batch=args.max_batch,
                          budget_s=args.budget_s, min_seconds=args.min_seconds, iters=args.iters,
                          graphs=args.graphs) else 1


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def run_check(models: Sequence[str], precisions: Sequence[str], out: Path, device: str = "cuda", max_batch: int | None = None,
              budget_s: float = 330.0, min_seconds: float = 1.0, iters: int = 10, graphs: bool = True) -> bool:
    """Measure and write ``out/gpu-check.json`` and ``out/gpu-check.md``; True when no cell failed."""
    import torch

    from deployzoo.engine import load_model
    from deployzoo.registry import get_spec

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"no CUDA device: this torch ({torch.__version__}) sees none; nothing measured")
    deadline = time.perf_counter() + budget_s
    out.mkdir(parents=True, exist_ok=True)
    cells: list[dict[str, Any]] = []
    header = _environment(device)
    loaded_models = {}

    def save() -> None:
        _write(out, header, cells)

    for name in models:  # eager: batch 1 and the best batch, per precision
        spec = get_spec(name)
        loaded_models[name] = load_model(spec)
        top = min(MAX_BATCH.get(name, 16), max_batch or 1 << 30)
        for precision in precisions:
            best = None
            batch = 1
            while batch <= max(1, top):
                if time.perf_counter() > deadline:
                    cells.append(_skipped(name, "eager", precision, batch, "time budget spent"))
                    break
                cell = _measure(spec, loaded_models[name], precision, batch, device, "eager", min_seconds, iters)
                cells.append(cell)
                save()
                if cell["status"] != "ok":
                    break
                if best is not None and cell["images_per_s"] < 1.05 * best["images_per_s"]:
                    break
                if best is None or cell["images_per_s"] > best["images_per_s"]:
                    best = cell
                batch *= 2
            if best is not None:
                best["best_batch"] = True
        save()
    if graphs:  # CUDA graphs where shapes are fixed: each model at batch 1, the last precision asked first
        for name in models:
            for precision in reversed(precisions):
                variant = name + GRAPH_CANVAS.get(name, "")
                if time.perf_counter() + COMPILE_RESERVE_S > deadline:
                    cells.append(_skipped(variant, "compile + CUDA graphs", precision, 1,
                                          f"less than {COMPILE_RESERVE_S:.0f} s of the time budget left for a compile"))
                    continue
                spec = get_spec(variant)
                loaded = loaded_models.get(name) or load_model(get_spec(name))
                cells.append(_measure(spec, loaded, precision, 1, device, "graphs", min_seconds, iters))
                save()
    save()
    return all(c["status"] in ("ok", "skipped") for c in cells)


def _measure(spec, loaded, precision: str, batch: int, device: str, mode: str, min_seconds: float,
             iters: int) -> dict[str, Any]:
    """One cell: a fresh backend on ``device``, pure-inference timing, the backend freed afterwards."""
    import torch

    from deployzoo.backends.pytorch_backend import PyTorchBackend
    from deployzoo.bench.pure import bench_pure

    on_cuda = device.startswith("cuda")
    label = "compile + CUDA graphs" if mode == "graphs" else "eager"
    note = ""
    if mode == "graphs" and not on_cuda:
        label, note = "eager (dry run: CUDA graphs need a GPU)", "CPU check of the logic: compile + CUDA graphs replaced by eager"
    cell: dict[str, Any] = {"model": spec.name, "mode": label, "precision": precision, "batch": batch,
                            "device": device, "note": note}
    backend = None
    t0 = time.perf_counter()
    try:
        model = copy.deepcopy(loaded.model)  # the backend casts and moves its module
        graphs = mode == "graphs" and on_cuda
        backend = PyTorchBackend(model, spec.graph_input_dims(), spec.output_names, batch, source=spec.name,
                                 precision=precision, device=device, mode="compile" if graphs else "eager",
                                 cast_inputs=(spec.input_name,), cuda_graphs=graphs)
        result = bench_pure(backend, inputs=spec.make_example_inputs(batch), warmup=3 if graphs else 2,
                            min_iters=iters, min_seconds=min_seconds, native=False)
        stats = result.stats
        cell |= {"status": "ok", "images_per_s": stats.throughput, "p50_ms": stats.p50_ms, "p90_ms": stats.p90_ms,
                 "cv": stats.cv, "iterations": stats.n, "basis": stats.basis,
                 "input_shapes": {k: list(v) for k, v in result.input_shapes.items()},
                 "backend": result.backend, "warning": stats.variation_warning()}
    except Exception as exc:  # one cell (out of memory, a compile failure) must not lose the others
        cell |= {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    finally:
        if backend is not None:
            backend.close()
        del backend
        if on_cuda:
            torch.cuda.empty_cache()
    cell["wall_s"] = time.perf_counter() - t0
    print(_row(cell), flush=True)
    return cell


def _skipped(model: str, mode: str, precision: str, batch: int, why: str) -> dict[str, Any]:
    cell = {"model": model, "mode": mode, "precision": precision, "batch": batch, "status": "skipped", "note": why}
    print(_row(cell), flush=True)
    return cell


def _environment(device: str) -> dict[str, Any]:
    import torch

    from deployzoo.bench.report import environment

    env = environment()
    env["torch"] = torch.__version__
    env["cuda"] = torch.version.cuda
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _row(c: dict[str, Any]) -> str:
    if c["status"] != "ok":
        return (f"| {c['model']} | {c['mode']} | {c['precision']} | {c['batch']} | {c['status']} | - | - | "
                f"{c.get('error') or c.get('note', '')} |")
    best = " (best batch)" if c.get("best_batch") and c["batch"] > 1 else ""
    note = "; ".join(x for x in (c.get("note"), c.get("warning")) if x)
    return (f"| {c['model']} | {c['mode']} | {c['precision']} | {c['batch']}{best} | ok | {c['images_per_s']:.1f} "
            f"| {c['p50_ms']:.2f} | {note} |")


def _write(out: Path, env: dict[str, Any], cells: list[dict[str, Any]]) -> None:
    from deployzoo.bench.report import write_json

    write_json(out / "gpu-check.json", {"mode": "pure inference, PyTorch backend", "basis": "host latency",
                                        "environment": env, "cells": cells})
    shown = [c for c in cells if c["status"] != "ok" or c["batch"] == 1 or c.get("best_batch")]
    lines = [
        f"# GPU check: PyTorch backend on {env.get('gpu', env.get('cpu_model'))}",
        "",
        f"Date {env.get('date')}; torch {env.get('torch')} (CUDA {env.get('cuda')}); host {env.get('cpu_model')}, "
        f"{env.get('logical_cores')} logical cores. Stand-in weights (speed does not depend on them).",
        "",
        "Basis: host latency of one infer call (inputs from and outputs back to host memory, copies included); "
        "images/s = batch / latency. Batch 1 and the best batch of the doubling sweep are shown; every cell is "
        "in gpu-check.json.",
        "",
        "| model | mode | precision | batch | status | images/s | p50 ms/batch | note |",
        "|---|---|---|---:|---|---:|---:|---|",
        *(_row(c) for c in shown),
        "",
    ]
    (out / "gpu-check.md").write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
