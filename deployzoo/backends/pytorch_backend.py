"""PyTorch: eager (the reference every engine is compared with), torch.compile, and AOTInductor packages.

One class, three ways to run the same module:
  * ``eager``:   the module as it is;
  * ``compile``: ``torch.compile`` (Inductor), compiled on the first call of each input shape;
  * ``aoti``:    ``torch.export`` + AOTInductor, a ``.pt2`` package built once per model, weights, batch, shape,
                 precision, device, torch version, deployzoo's graph code and the caller's ``package_fields``
                 (make_backend: the test-time settings), and cached on disk like an engine file.
Precision: fp32, or the module cast to fp16 / bf16 (the image input too; size inputs stay fp32, since bf16
cannot even hold 375 exactly). Outputs always come back as fp32 / integer numpy arrays.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from deployzoo.backends.base import Backend
from deployzoo.errors import BadInputError, DeployzooError
from deployzoo.precision import check_precision, torch_dtype

MODES = {"eager": "pytorch", "compile": "pytorch-compile", "aoti": "pytorch-aoti"}



def resolve_device(device: str) -> torch.device:
    """``device`` ("cpu", "cuda", "cuda:N") as a torch device this torch can use.

    Raises:
        DeployzooError: not a device name, a device type other than cpu/cuda, or CUDA without a CUDA device.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeployzooError(f"--device '{device}' is not a device: give cpu or cuda[:N] ({exc})") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise DeployzooError(f"device '{device}' asked for, but this torch ({torch.__version__}) sees no CUDA device")
    if parsed.type not in ("cpu", "cuda"):
        raise DeployzooError(f"--device '{device}': the PyTorch backends run on cpu or cuda[:N]")
    return parsed


class PyTorchBackend(Backend):
    """Runs a zoo model (nn.Module whose forward returns outputs in ``output_names`` order).

    Args:
        input_dims: graph inputs in forward-argument order, per image (None = free dim).
        precision: fp32, fp16 or bf16; the module is cast (a copy is not made: pass a model you may change).
        device: "cpu" or "cuda" (or "cuda:N").
        mode: eager, compile or aoti (see the module docstring).
        cast_inputs: the inputs cast to ``precision`` (default: all); others stay fp32.
        example_inputs: the inputs an aoti package is built for (its shapes are then fixed).
        cache_dir: where aoti packages are kept (required for aoti).
        cuda_graphs: compile mode on CUDA only: ``torch.compile(mode="reduce-overhead")``, which replays CUDA graphs.
        package_fields: what else an aoti package depends on that the module's tensors do not show (JSON-able;
            make_backend passes the test-time settings, which are constructor arguments baked into the graph).
    """

    def __init__(self, model: torch.nn.Module, input_dims: dict[str, tuple[int | None, ...]],
                 output_names: tuple[str, ...], batch_size: int = 1, threads: int = 0, source: str = "",
                 precision: str = "fp32", device: str = "cpu", mode: str = "eager",
                 cast_inputs: tuple[str, ...] | None = None, example_inputs: dict[str, np.ndarray] | None = None,
                 cache_dir: str | Path | None = None, cuda_graphs: bool = False,
                 package_fields: dict[str, Any] | None = None):
        super().__init__()
        if mode not in MODES:
            raise DeployzooError(f"PyTorch mode must be one of {tuple(MODES)}, got {mode!r}")
        self.name = MODES[mode]
        check_precision(self.name, precision)
        self.device = resolve_device(device)
        if cuda_graphs and (mode != "compile" or self.device.type != "cuda"):
            raise DeployzooError("CUDA graphs need mode 'compile' on a CUDA device")
        self.mode, self.precision, self.cuda_graphs = mode, precision, cuda_graphs
        self.dtype = torch_dtype(precision)
        self.batch_size = batch_size
        self.threads = threads
        self.input_shapes = {name: (batch_size, *dims) for name, dims in input_dims.items()}
        self.cast_inputs = tuple(input_dims) if cast_inputs is None else tuple(cast_inputs)
        self.output_names = list(output_names)
        self.source = source or type(model).__name__
        self.package: Path | None = None
        self.package_fields = dict(package_fields or {})
        if threads:
            torch.set_num_threads(threads)
        model = model.eval().to(self.device, self.dtype)
        self._run: Callable[..., Any] = self._prepare(model, example_inputs, cache_dir)
        self.model = model

    def _prepare(self, model: torch.nn.Module, example_inputs, cache_dir) -> Callable[..., Any]:
        if self.mode == "eager":
            return model
        if self.mode == "compile":
            return torch.compile(model, mode="reduce-overhead" if self.cuda_graphs else "default", dynamic=False)
        if example_inputs is None or cache_dir is None:
            raise DeployzooError("an AOTInductor package needs example inputs (its fixed shapes) and a cache folder")
        # The package is built for these shapes: fix any free dim so other shapes are refused with a clear error.
        self.input_shapes = {name: tuple(example_inputs[name].shape) for name in self.input_shapes}
        from deployzoo.backends.aoti_package import load_or_build

        args = self._to_torch(example_inputs)
        fields = {"model": self.source, "batch": self.batch_size, "precision": self.precision,
                  "device": self.device.type, "inputs": [list(a.shape) for a in args], **self.package_fields}
        self.package = load_or_build(model, args, Path(cache_dir), self._package_name(model, args), fields)
        return torch._inductor.aoti_load_package(str(self.package))

    def _package_name(self, model: torch.nn.Module, args: list[torch.Tensor]) -> str:
        """Stem naming what the package was built from; the digest covers weights, shapes, torch version,
        deployzoo's version and graph source (as the ONNX cache key: a package traced from older model code must
        not be reused) and ``package_fields``."""
        from deployzoo import __version__
        from deployzoo.cache import source_digest

        digest = hashlib.sha256(torch.__version__.encode())
        fields = {"deployzoo": __version__, "source": source_digest(), **self.package_fields}
        digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        for a in args:
            digest.update(str(tuple(a.shape)).encode())
        stem = Path(self.source).stem if self.source else type(model).__name__
        return f"{stem}-b{self.batch_size}-{self.precision}-{self.device.type}-{digest.hexdigest()[:16]}"

    def _to_torch(self, inputs: dict[str, np.ndarray]) -> list[torch.Tensor]:
        args = []
        for name in self.input_shapes:
            tensor = torch.from_numpy(np.ascontiguousarray(inputs[name], dtype=np.float32)).to(self.device)
            args.append(tensor.to(self.dtype) if name in self.cast_inputs else tensor)
        return args

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs(inputs)
        args = self._to_torch(inputs)
        with torch.inference_mode():
            outputs = self._run(*args)
        if len(outputs) != len(self.output_names):
            raise BadInputError(self.source, f"the model returned {len(outputs)} outputs, expected {self.output_names}")
        # .cpu() waits for the device, so a timed infer call covers the whole computation.
        return {n: _to_numpy(o) for n, o in zip(self.output_names, outputs)}

    def describe(self) -> dict[str, Any]:
        device = "CPU" if self.device.type == "cpu" else f"CUDA ({torch.cuda.get_device_name(self.device)})"
        return {
            "backend": self.name,
            "version": torch.__version__,
            "device": device,
            "threads": torch.get_num_threads(),
            "precision": self.precision,
            "mode": self.mode + (" + CUDA graphs" if self.cuda_graphs else ""),
            "batch_size": self.batch_size,
            "model": self.source,
            **({"package": str(self.package)} if self.package else {}),
        }

    def close(self) -> None:
        self.model = None
        self._run = None


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point() and tensor.dtype != torch.float32:
        tensor = tensor.float()
    return tensor.numpy()
