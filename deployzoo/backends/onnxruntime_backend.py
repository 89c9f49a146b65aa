"""ONNX Runtime on CPU."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from deployzoo.backends.base import Backend
from deployzoo.errors import BadInputError


class OnnxRuntimeBackend(Backend):
    """Runs an exported .onnx with onnxruntime's CPU execution provider.

    ``threads``: intra-op threads (0 = onnxruntime's default, one per physical core).
    ``lower_roi_align``: run avg-mode RoiAlign nodes as standard ops (deployzoo.export.roi_align_lowering:
    gathered crops and batched MatMuls, same results to float32 rounding), in memory; the file is not
    changed. onnxruntime's own RoiAlign kernel is scalar per channel: on Cascade Mask R-CNN it took a
    quarter of the image's time (2-core AVX2 EPYC, 2026-12-01). False runs the file as it is.
    The file's input batch must be ``batch_size`` or free; anything else is refused at load time.
    """

    name = "onnxruntime"

    def __init__(self, model_path: str | Path, batch_size: int = 1, threads: int = 0, lower_roi_align: bool = True):
        super().__init__()
        self.source = str(model_path)
        if not Path(model_path).is_file():
            raise BadInputError(model_path, "model file not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.lowered = 0
        self.session = None
        if lower_roi_align:
            try:
                lowered = _lowered_model(model_path)
                if lowered is not None:
                    session = ort.InferenceSession(lowered[1], options, providers=["CPUExecutionProvider"])
                    self.lowered, self.session = lowered[0], session
            except Exception:  # noqa: BLE001  a graph the rewrite does not fit (fp16 maps, say): the file as it is
                self.lowered, self.session = 0, None
        if self.session is None:
            try:
                self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own exception types
                raise BadInputError(model_path, f"onnxruntime cannot load it: {exc}") from exc
        self.threads = threads
        self.batch_size = batch_size
        for node in self.session.get_inputs():
            dims = tuple(d if isinstance(d, int) else None for d in node.shape)
            if dims and dims[0] is not None and dims[0] != batch_size:
                raise BadInputError(
                    model_path,
                    f"input '{node.name}' is fixed to batch {dims[0]}, but batch {batch_size} was asked for; "
                    f"export with --batch {batch_size} or --dynamic-batch",
                )
            self.input_shapes[node.name] = (batch_size,) + dims[1:] if dims else dims
        self.output_names = [o.name for o in self.session.get_outputs()]

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs(inputs)
        feed = {name: np.ascontiguousarray(inputs[name], dtype=np.float32) for name in self.input_shapes}
        results = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, results))

    def native_call(self, inputs: dict[str, np.ndarray]):
        feed = {name: np.ascontiguousarray(inputs[name], dtype=np.float32) for name in self.input_shapes}
        names = self.output_names
        run = self.session.run
        return lambda: run(names, feed)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "version": ort.__version__,
            "device": "CPU",
            "providers": self.session.get_providers(),
            "threads": self.threads or f"default ({os.cpu_count()} logical cores)",
            "precision": self.precision,
            "batch_size": self.batch_size,
            "model": self.source,
            **({"roi_align": f"{self.lowered} RoiAlign node{'s' if self.lowered != 1 else ''} run as gathered crops "
                             "and MatMuls (deployzoo.export.roi_align_lowering)"}
               if self.lowered else {}),
        }

    def close(self) -> None:
        self.session = None


def _lowered_model(model_path: str | Path) -> tuple[int, bytes] | None:
    """The file's model with its RoiAlign nodes lowered, serialized (None when it has none: run the file).

    The bytes are searched for the op name first, so graphs without RoiAlign (RefineDet, PSPNet, FSAF) are
    not parsed. Raises whatever onnx parsing or the rewrite raises; the caller then runs the file as it is."""
    import onnx

    from deployzoo.export.roi_align_lowering import lower_roi_align

    data = Path(model_path).read_bytes()
    if b"RoiAlign" not in data:
        return None
    model = onnx.load_from_string(data)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        return None  # weights in side files: the session must read them from the file's folder
    count = lower_roi_align(model)  # ValueError for an opset below 16: the caller runs the file
    return (count, model.SerializeToString()) if count else None
