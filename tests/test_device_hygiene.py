"""Every model's forward creates its tensors on its input's device, so the PyTorch backend can run it on CUDA.

No GPU here: a tensor made without ``device=`` lands on the CPU, which only a CUDA run would reveal (as
"Expected all tensors to be on the same device"). So the forward pass runs on the CPU under a mode that
records each tensor factory called without a device, with the line that called it.
"""
from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import deployzoo
from deployzoo.engine import load_model
from deployzoo.registry import get_spec, model_names

FACTORIES = {torch.arange, torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.full, torch.empty,
             torch.linspace, torch.eye, torch.rand, torch.randn, torch.randint, torch.from_numpy}
PACKAGE = str(Path(deployzoo.__file__).parent)


class FactoriesWithoutDevice(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.found: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            caller = next((f for f in reversed(traceback.extract_stack()[:-1]) if f.filename.startswith(PACKAGE)), None)
            if caller is not None:
                self.found.add(f"{Path(caller.filename).relative_to(PACKAGE)}:{caller.lineno}: {caller.line}")
        return func(*args, **kwargs)


def test_the_mode_sees_a_factory_without_device():
    with FactoriesWithoutDevice() as mode:
        from deployzoo.ops.anchors import base_anchors

        base_anchors(8, [1.0], [1.0])  # built once at construction (a buffer, moved with the module): fine there
    assert any("anchors.py" in f for f in mode.found)


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n.startswith("refinedet") else pytest.mark.slow)
                                  for n in model_names()])
def test_forward_makes_no_tensor_off_the_input_device(name):
    spec = get_spec(name)
    model = load_model(spec, None).model.eval()
    args = [torch.from_numpy(a) for a in spec.make_example_inputs(1).values()]
    with torch.inference_mode(), FactoriesWithoutDevice() as mode:
        model(*args)
    assert not mode.found, "tensors made without device= in the forward pass:\n" + "\n".join(sorted(mode.found))
