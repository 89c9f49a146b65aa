"""PyTorch eager: the reference every engine is compared with."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from deployzoo.backends.base import Backend


class PyTorchBackend(Backend):
    """Runs a zoo model (nn.Module whose forward returns outputs in ``output_names`` order) on CPU, fp32."""

    name = "pytorch"

    def __init__(self, model: torch.nn.Module, input_dims: dict[str, tuple[int | None, ...]],
                 output_names: tuple[str, ...], batch_size: int = 1, threads: int = 0, source: str = ""):
        """``input_dims``: graph inputs in forward-argument order, per image (None = free dim)."""
        super().__init__()
        self.model = model.eval()
        self.batch_size = batch_size
        self.threads = threads
        self.input_shapes = {name: (batch_size, *dims) for name, dims in input_dims.items()}
        self.output_names = list(output_names)
        self.source = source or type(model).__name__
        if threads:
            torch.set_num_threads(threads)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs(inputs)
        args = [torch.from_numpy(np.ascontiguousarray(inputs[name], dtype=np.float32)) for name in self.input_shapes]
        with torch.inference_mode():
            outputs = self.model(*args)
        return {n: o.numpy() for n, o in zip(self.output_names, outputs)}

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "version": torch.__version__,
            "device": "CPU",
            "threads": torch.get_num_threads(),
            "precision": self.precision,
            "batch_size": self.batch_size,
            "model": self.source,
        }

    def close(self) -> None:
        self.model = None
