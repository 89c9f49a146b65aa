"""Inference backends. Each lives in its own module and is imported only when chosen."""
from __future__ import annotations

# openvino: pip extra deployzoo[openvino]. pytorch-compile: torch.compile; pytorch-aoti: torch.export +
# AOTInductor, packages cached on disk (both need a C++ compiler on CPU).
BACKENDS = ("onnxruntime", "openvino", "pytorch", "pytorch-compile", "pytorch-aoti")
ONNX_BACKENDS = ("onnxruntime", "openvino")
