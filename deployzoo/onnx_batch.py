"""The batch size an exported .onnx is fixed to, read before any benchmark or run starts.

``bench FILE --batch 1,4`` with a file exported for batch 1 used to time batch 1 and only then fail the
batch-4 row (the backend refuses it when it opens the session). Reading the graph inputs first lets the
command refuse the batch sizes the file cannot take, in one line, before any timing.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from deployzoo.errors import BadInputError


def fixed_batch(path: str | Path) -> int | None:
    """The first graph input's batch dimension when it is a fixed number, None when it is free (dynamic)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in proto.graph.initializer}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            return int(dims[0].dim_value)
        return None
    return None


def check_batch_sizes(path: str | Path, batch_sizes: Sequence[int]) -> None:
    """Raise BadInputError naming ``path`` when it is fixed to a batch size and ``batch_sizes`` asks for others."""
    fixed = fixed_batch(path)
    wrong = [b for b in batch_sizes if fixed is not None and b != fixed]
    if wrong:
        raise BadInputError(path, f"its input is fixed to batch {fixed}, but --batch asks for "
                                  f"{', '.join(str(b) for b in wrong)}; use --batch {fixed}, or export with "
                                  f"--dynamic-batch (nothing was measured)")
