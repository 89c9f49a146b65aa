"""Inference backends. Each lives in its own module and is imported only when chosen."""
from __future__ import annotations

BACKENDS = ("onnxruntime", "openvino", "pytorch")  # openvino: pip extra deployzoo[openvino]
