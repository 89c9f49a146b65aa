"""Session fixtures of the detectron2 Cascade Mask R-CNN tests, loaded as a plugin (``pytest_plugins``) by
the modules that use them, so the model and its ONNX export are built once per session."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from dzinit import make_state_dict  # tests/fixtures is on sys.path (conftest)

FIXTURES = Path(__file__).parent / "fixtures"
D2_CASCADE = "d2-cascade-mask-rcnn-r50-fpn-3x"


def write_d2_pkl(path: Path, weights: dict[str, np.ndarray]) -> Path:
    """``weights`` in detectron2's model-zoo container: a pickled {'model': {name: ndarray}, '__author__'}."""
    with open(path, "wb") as f:
        pickle.dump({"model": {k: np.asarray(v) for k, v in weights.items()}, "__author__": "Detectron2 Model Zoo"}, f)
    return path


@pytest.fixture(scope="session")
def d2_spec():
    from deployzoo.registry import get_spec

    return get_spec(D2_CASCADE)


@pytest.fixture(scope="session")
def d2_weights() -> dict[str, np.ndarray]:
    """The fixture's weights (dz-init-v1, seed 0) under detectron2's names."""
    keys = json.loads((FIXTURES / D2_CASCADE / "keys.json").read_text())
    return make_state_dict(keys["tensors"], seed=0)


@pytest.fixture(scope="session")
def d2_checkpoint(tmp_path_factory, d2_weights) -> Path:
    return write_d2_pkl(tmp_path_factory.mktemp("ckpt") / "model_final_480dd8.pkl", d2_weights)


@pytest.fixture(scope="session")
def d2_loaded(d2_spec, d2_checkpoint):
    from deployzoo.engine import load_model

    return load_model(d2_spec, d2_checkpoint)


@pytest.fixture(scope="session")
def d2_onnx(tmp_path_factory, d2_loaded) -> Path:
    """Dynamic batch and size export of the fixture-weights Cascade Mask R-CNN."""
    from deployzoo.pipeline import export_model

    path = tmp_path_factory.mktemp("onnx") / "d2-cascade-dyn.onnx"
    export_model(d2_loaded, path, dynamic_batch=True)
    return path


@pytest.fixture(scope="session")
def d2_case() -> dict:
    case = json.loads((FIXTURES / D2_CASCADE / "case-1.json").read_text())
    arrays = dict(np.load(FIXTURES / D2_CASCADE / "case-1.npz"))
    return {"json": case, "arrays": arrays, "image": FIXTURES / D2_CASCADE / "case-1.png"}
