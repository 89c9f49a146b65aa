"""The backend interface: load a model for a batch size, run a dict of arrays, describe itself.

Every backend feeds the same host-side post-processing, so all a backend has to do is turn
``{input_name: float32 array}`` into ``{output_name: array}`` in the graph contract's names and order.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import numpy as np

from deployzoo.errors import BadInputError, InputShapeError


class Backend(ABC):
    """One loaded engine.

    Attributes set by every implementation:
      name:          short name used on the command line ("onnxruntime", "pytorch", ...)
      batch_size:    the batch the engine was loaded for
      input_shapes:  {input name: shape}; a dimension the engine leaves free is None
      output_names:  names of the outputs, in graph order (dump index k = position here)
      precision:     "fp32", "fp16", ...
    """

    name: str = "base"

    def __init__(self) -> None:
        self.batch_size: int = 1
        self.input_shapes: dict[str, tuple[int | None, ...]] = {}
        self.output_names: list[str] = []
        self.precision: str = "fp32"
        self.source: str = ""

    @property
    def input_names(self) -> list[str]:
        return list(self.input_shapes)

    @abstractmethod
    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. Inputs must match ``input_shapes``; outputs are numpy arrays."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Backend name, version, device, threads, precision, model file: for reports."""

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        """Refuse inputs whose names or shapes the engine was not built for, naming both."""
        missing = [n for n in self.input_shapes if n not in inputs]
        if missing:
            raise BadInputError(self.source or self.name, f"missing inputs {missing}; engine expects {self.input_names}")
        for name, expected in self.input_shapes.items():
            got = tuple(inputs[name].shape)
            if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
                shown = tuple("?" if e is None else e for e in expected)
                raise InputShapeError(self.source or self.name, f"input '{name}' has shape {got}, engine expects {shown}")

    def native_call(self, inputs: dict[str, np.ndarray]) -> Callable[[], Any] | None:
        """A zero-argument call that runs one batch through the backend's own API with ``inputs`` already
        converted, and nothing of ours around it: the benchmark's reference for its harness overhead.
        None when the backend has no such call."""
        return None

    def close(self) -> None:
        """Release the engine (sessions, device memory). Safe to call twice."""
