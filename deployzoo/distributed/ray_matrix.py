"""`deployzoo matrix --ray`: the matrix's cells as Ray tasks, each alone on the cores of one node.

How a cell is kept alone: the driver lists the cluster's alive nodes and keeps at most one cell per node in
flight, each task pinned to its node (NodeAffinitySchedulingStrategy, not soft) and asking for ALL of that
node's CPUs (``num_cpus`` = the node's CPU count). Ray's resource accounting then places no other task or
actor that asks for CPUs on that node while the cell runs, so its timings are not disturbed by our other
cells or by other Ray work that declares its CPUs. (Processes outside Ray, and the driver itself on the head
node, are not Ray's to keep away: start the head with ``ray start --head --num-cpus=0`` so no cell runs there.)

The driver exports each model's ONNX once and ships it through the object store; a task runs the cell as
the in-process matrix does (deployzoo.matrix.Matrix._run_cell: its own accuracy guard for precisions below
fp32, in a temporary folder of its node), and the driver stores the cell in ``--out`` as a local run does,
so a later run (with or without --ray) reuses finished cells. ``cell_timeout``: a cell past it is cancelled
(its worker process killed) and recorded as timed out.
"""
from __future__ import annotations

import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from deployzoo.distributed.ray_eval import connect


def _run_cell(model: str, backend: str, precision: str, batch: int, settings, onnx_bytes: bytes | None,
              onnx_name: str | None, export_error: str | None) -> dict[str, Any]:
    """In the Ray task: one cell, measured as the in-process matrix measures it."""
    from deployzoo.matrix import Matrix, _ModelState
    from deployzoo.registry import get_spec

    work = Path(tempfile.mkdtemp(prefix="deployzoo-cell-"))
    onnx = None
    if onnx_bytes is not None:
        onnx = work / (onnx_name or f"{model}.onnx")
        onnx.write_bytes(onnx_bytes)
    said: list[str] = []
    matrix = Matrix([model], [backend], [precision], [batch], work, settings, resume=False, say=said.append)
    state = _ModelState(get_spec(model), onnx=onnx, export_error=export_error)
    cell = matrix._run_cell(state, backend, precision, batch)
    cell.setdefault("ray", {})["messages"] = said
    return cell


def run_matrix_on_ray(matrix, address: str | None = "local") -> list[dict[str, Any]]:
    """Every cell of ``matrix`` (deployzoo.matrix.Matrix): cached ones as they are, the others run on the
    cluster at ``address`` one per node at a time (see the module's note). Returns them in the matrix's order."""
    from deployzoo.backends import ONNX_BACKENDS
    from deployzoo.matrix import _ModelState, new_cell
    from deployzoo.registry import get_spec

    ray, started_here = connect(address)
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]
        if not nodes:
            from deployzoo.errors import DeployzooError

            raise DeployzooError(f"the Ray cluster at {address} has no node with CPUs to run cells on")
        task = ray.remote(_run_cell)
        order, todo, cells = [], deque(), {}
        shipped: dict[str, tuple[Any, str | None, str | None]] = {}
        for model in matrix.models:
            state = _ModelState(get_spec(model))
            for backend in matrix.backends:
                for precision in matrix.precisions:
                    for batch in matrix.batch_sizes:
                        key = (model, backend, precision, batch)
                        order.append(key)
                        cached = matrix._cached(*key)
                        if cached is not None:
                            cells[key] = cached
                            continue
                        if backend in ONNX_BACKENDS and model not in shipped:
                            _export(matrix, state, backend)
                            ref = ray.put(state.onnx.read_bytes()) if state.onnx is not None else None
                            shipped[model] = (ref, state.onnx.name if state.onnx else None, state.export_error)
                        todo.append(key)
            state.loaded = None
        timeout = matrix.settings.cell_timeout
        idle = deque(n["NodeID"] for n in nodes)
        cpus = {n["NodeID"]: int(n["Resources"]["CPU"]) for n in nodes}
        running: dict[Any, tuple[tuple, str, float]] = {}
        total = len(order)
        while todo or running:
            while todo and idle:
                key, node = todo.popleft(), idle.popleft()
                none = (None, None, None)
                ref, name, error = shipped.get(key[0], none) if key[1] in ONNX_BACKENDS else none
                strategy = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
                future = task.options(num_cpus=cpus[node], scheduling_strategy=strategy, max_retries=0).remote(
                    *key, matrix.settings, ref, name, error)
                running[future] = (key, node, time.perf_counter())
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            now = time.perf_counter()
            for future in list(running):
                key, node, start = running[future]
                if future in ready:
                    try:
                        cell = ray.get(future)
                    except Exception as exc:  # the task's process or node died: the cell says so
                        cell = new_cell(*key, "failed", f"the Ray task ended without a result: {exc}".split("\n")[0])
                        cell["seconds"] = now - start
                elif timeout and now - start > timeout:
                    ray.cancel(future, force=True)
                    cell = new_cell(*key, "timed out", f"not finished after {timeout:g} s on Ray; cancelled")
                    cell["seconds"] = now - start
                else:
                    continue
                del running[future]
                idle.append(node)
                cell.setdefault("ray", {}).update({"node": node, "num_cpus": cpus[node]})
                matrix._store(cell)
                cells[key] = cell
                matrix.say(f"[{len(cells)}/{total}] {' '.join(map(str, key[:3]))} b{key[3]} on node "
                           f"{node[:8]} ({cpus[node]} CPUs, alone): {cell['status']}")
        return [cells[key] for key in order]
    finally:
        if started_here:
            ray.shutdown()


def _export(matrix, state, backend: str) -> None:
    """The model's dynamic-batch ONNX, exported once here (an export error is kept and passed to the cells)."""
    from deployzoo.matrix import _CellEnd

    try:
        matrix._ensure_model(state, backend)
    except _CellEnd:
        pass  # state.export_error holds it
