"""One matrix cell in a process of its own, killed when it runs past the matrix's ``cell_timeout``.

A backend can hang where no Python code can interrupt it (an engine compilation that never returns), and one
such cell must not stop the matrix. The child is spawned, not forked: the parent's torch and OpenVINO thread
pools do not survive a fork. The parent exports the ONNX once and passes it on; the child loads the weights,
runs the cell as the in-process matrix would, and sends back the guard (cached for the next batch size) and
the finished cell.
"""
from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deployzoo.matrix import Matrix, MatrixSettings, _ModelState

POLL_SECONDS = 0.5


def run_cell_in_child(matrix: Matrix, state: _ModelState, backend: str, precision: str, batch: int) -> dict[str, Any]:
    """The cell of (``state``'s model, backend, precision, batch), measured in a child process."""
    from deployzoo.matrix import cell_end_before_loading, new_cell

    timeout = float(matrix.settings.cell_timeout)
    key = (backend, precision)
    if key in state.guard_timeouts:
        return new_cell(state.spec.name, backend, precision, batch, "timed out",
                        f"the accuracy guard of {backend} {precision} already ran past {timeout:g} s in this run")
    if cell_end_before_loading(backend, precision) is not None:  # no child needed to say so
        return matrix._run_cell(state, backend, precision, batch)
    _export_once(matrix, state, backend)
    context = multiprocessing.get_context("spawn")
    # A pipe, not a Queue: a killed child leaves no semaphore behind (the resource tracker would warn of it).
    messages, child_end = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, daemon=True, name=f"deployzoo cell {state.spec.name}",
                            args=(child_end, state.spec.name, backend, precision, batch, str(matrix.out),
                                  matrix.settings, state.onnx, state.export_error, state.guards.get(key)))
    start = time.perf_counter()
    child.start()
    child_end.close()  # the child holds its own copy; ours must go, so a dead child reads as end of file
    cell = None
    while cell is None and time.perf_counter() - start < timeout:
        if not messages.poll(POLL_SECONDS):
            continue
        try:
            kind, payload = messages.recv()
        except EOFError:  # the child ended without sending its cell
            break
        if kind == "say":
            matrix.say(payload)
        elif kind == "guard":
            state.guards[key] = payload
        else:
            cell = payload
    seconds = time.perf_counter() - start
    if cell is None:
        cell = _unfinished(state, backend, precision, batch, child, timeout, key in state.guards)
        cell["seconds"] = seconds
        if cell["status"] == "timed out" and precision != "fp32" and key not in state.guards:
            state.guard_timeouts.add(key)
    child.join(timeout=10)
    if child.is_alive():
        child.kill()
        child.join()
    messages.close()
    return cell


def _export_once(matrix: Matrix, state: _ModelState, backend: str) -> None:
    """Export the model's ONNX here, once, so children share it (an export error is passed on to them)."""
    from deployzoo.backends import ONNX_BACKENDS
    from deployzoo.matrix import _CellEnd

    if backend not in ONNX_BACKENDS or state.onnx is not None or state.export_error is not None:
        return
    try:
        matrix._ensure_model(state, backend)
    except _CellEnd:
        pass  # state.export_error holds it; the child reports it as the cell's status


def _unfinished(state: _ModelState, backend: str, precision: str, batch: int, child, timeout: float,
                guard_done: bool) -> dict[str, Any]:
    from deployzoo.matrix import new_cell

    if child.is_alive():
        child.kill()
        child.join()
        where = ("in the accuracy guard (building or evaluating its engines)"
                 if precision != "fp32" and not guard_done else "building or benchmarking the engine")
        return new_cell(state.spec.name, backend, precision, batch, "timed out",
                        f"not finished after {timeout:g} s, {where}; killed")
    code = child.exitcode
    status = "out of memory" if code == -9 else "failed"  # SIGKILL from outside: most often the OOM killer
    return new_cell(state.spec.name, backend, precision, batch, status,
                    f"the cell's process ended without a result (exit code {code})")


def _child_main(messages, model: str, backend: str, precision: str, batch: int, out: str,
                settings: MatrixSettings, onnx: Path | None, export_error: str | None, guard) -> None:
    from deployzoo.matrix import Matrix, _ModelState, model_spec

    matrix = Matrix([model], [backend], [precision], [batch], out, settings, resume=True,
                    say=lambda text: messages.send(("say", text)))
    matrix.on_guard = lambda key, result: messages.send(("guard", result))
    state = _ModelState(model_spec(model, settings), onnx=onnx, export_error=export_error)
    if guard is not None:
        state.guards[(backend, precision)] = guard
    messages.send(("cell", matrix._run_cell(state, backend, precision, batch)))
    messages.close()
