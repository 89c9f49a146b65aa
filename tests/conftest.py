"""Shared, session-scoped artefacts: the RefineDet model with the fixture's weights, its ONNX export, a synthetic VOC."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))

from dzinit import make_state_dict  # noqa: E402  (the fixtures' own weight rule, copied from shared/)

REFINEDET = "refinedet320-vgg16-voc"


def pytest_addoption(parser):
    parser.addoption("--heavy", action="store_true",
                     help="also run the tests marked heavy (left out by default; -m heavy runs only them)")


def pytest_collection_modifyitems(config, items):
    """Tests marked heavy (about 15 minutes on 2 cores) are deselected unless asked for, so that the README's
    test command stays near 20 minutes; CI runs `pytest -q -m heavy` after it (.ci/run)."""
    if config.getoption("--heavy") or "heavy" in (config.getoption("markexpr") or ""):
        return
    heavy = [item for item in items if item.get_closest_marker("heavy")]
    if heavy:
        config.hook.pytest_deselected(items=heavy)
        items[:] = [item for item in items if not item.get_closest_marker("heavy")]


def _openmmlab_checkpoint(tmp_path_factory, fixture: str, file_name: str, meta: dict) -> Path:
    """The fixture's weights (dz-init-v1, seed 0) in OpenMMLab's container: {'state_dict', 'meta'}."""
    keys = json.loads((FIXTURES / fixture / "keys.json").read_text())
    weights = make_state_dict(keys["tensors"], seed=0)
    path = tmp_path_factory.mktemp("ckpt") / file_name
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()}
    torch.save({"state_dict": state, "meta": meta}, path)
    return path


def _dynamic_export(tmp_path_factory, loaded, file_name: str) -> Path:
    """Dynamic batch (and size, where the spec leaves it free) export of a fixture-weights model."""
    from deployzoo.pipeline import export_model

    path = tmp_path_factory.mktemp("onnx") / file_name
    export_model(loaded, path, dynamic_batch=True)
    return path


def _case(fixture: str) -> dict:
    case = json.loads((FIXTURES / fixture / "case-1.json").read_text())
    arrays = dict(np.load(FIXTURES / fixture / "case-1.npz"))
    return {"json": case, "arrays": arrays, "image": FIXTURES / fixture / "case-1.png"}


@pytest.fixture(scope="session")
def refinedet_spec():
    from deployzoo.registry import get_spec

    return get_spec(REFINEDET)


@pytest.fixture(scope="session")
def refinedet_keys() -> dict:
    return json.loads((FIXTURES / REFINEDET / "keys.json").read_text())


@pytest.fixture(scope="session")
def refinedet_checkpoint(tmp_path_factory, refinedet_keys) -> Path:
    """The fixture's weights (dz-init-v1, seed 0) in the official container: a bare state dict."""
    weights = make_state_dict(refinedet_keys["tensors"], seed=0)
    path = tmp_path_factory.mktemp("ckpt") / "RefineDet320_VOC_final.pth"
    torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, path)
    return path


@pytest.fixture(scope="session")
def refinedet_loaded(refinedet_spec, refinedet_checkpoint):
    from deployzoo.engine import load_model

    return load_model(refinedet_spec, refinedet_checkpoint)


@pytest.fixture(scope="session")
def refinedet_onnx(tmp_path_factory, refinedet_loaded) -> Path:
    """Dynamic-batch export of the fixture-weights model."""
    from deployzoo.pipeline import export_model

    path = tmp_path_factory.mktemp("onnx") / "refinedet-dyn.onnx"
    export_model(refinedet_loaded, path, dynamic_batch=True)
    return path


@pytest.fixture(scope="session")
def synthetic_voc(tmp_path_factory) -> Path:
    from deployzoo.data.synthetic_voc import make_synthetic_voc

    return make_synthetic_voc(tmp_path_factory.mktemp("voc"), num_images=7, seed=3)


@pytest.fixture(scope="session")
def refinedet_case() -> dict:
    case = json.loads((FIXTURES / REFINEDET / "case-1.json").read_text())
    arrays = dict(np.load(FIXTURES / REFINEDET / "case-1.npz"))
    return {"json": case, "arrays": arrays, "image": FIXTURES / REFINEDET / "case-1.png"}


MASK_RCNN = "mmdet-mask-rcnn-r50-fpn-1x"


@pytest.fixture(scope="session")
def mask_rcnn_spec():
    from deployzoo.registry import get_spec

    return get_spec(MASK_RCNN)


@pytest.fixture(scope="session")
def mask_rcnn_checkpoint(tmp_path_factory) -> Path:
    return _openmmlab_checkpoint(tmp_path_factory, MASK_RCNN, "mask_rcnn_r50_fpn_1x_coco_20200205-d4b0c5d6.pth", {"mmdet_version": "2.0.0", "CLASSES": ["person"]})


@pytest.fixture(scope="session")
def mask_rcnn_loaded(mask_rcnn_spec, mask_rcnn_checkpoint):
    from deployzoo.engine import load_model

    return load_model(mask_rcnn_spec, mask_rcnn_checkpoint)


@pytest.fixture(scope="session")
def mask_rcnn_onnx(tmp_path_factory, mask_rcnn_loaded) -> Path:
    """Dynamic batch and size export of the fixture-weights Mask R-CNN."""
    return _dynamic_export(tmp_path_factory, mask_rcnn_loaded, "mask-rcnn-dyn.onnx")


@pytest.fixture(scope="session")
def mask_rcnn_case() -> dict:
    return _case(MASK_RCNN)


FSAF = "mmdet-fsaf-r50-fpn-1x"
FSAF_V3POST = "mmdet-fsaf-r50-fpn-1x-v3post"


@pytest.fixture(scope="session")
def fsaf_spec():
    """Post-processing algorithm B (mmdet 3.x), the one the fixture was made with."""
    from deployzoo.registry import get_spec

    return get_spec(FSAF_V3POST)


@pytest.fixture(scope="session")
def fsaf_checkpoint(tmp_path_factory) -> Path:
    return _openmmlab_checkpoint(tmp_path_factory, FSAF, "fsaf_r50_fpn_1x_coco-94ccc51f.pth", {"mmdet_version": "2.0.0", "CLASSES": ["person"]})


@pytest.fixture(scope="session")
def fsaf_loaded(fsaf_spec, fsaf_checkpoint):
    from deployzoo.engine import load_model

    return load_model(fsaf_spec, fsaf_checkpoint)


@pytest.fixture(scope="session")
def fsaf_onnx(tmp_path_factory, fsaf_loaded) -> Path:
    """Dynamic batch and size export of the fixture-weights FSAF (algorithm B)."""
    return _dynamic_export(tmp_path_factory, fsaf_loaded, "fsaf-v3post-dyn.onnx")


@pytest.fixture(scope="session")
def fsaf_case() -> dict:
    return _case(FSAF)


@pytest.fixture(scope="session")
def fsaf_a_loaded():
    """Algorithm A (the default FSAF) with stand-in weights of seed 2: with the fixture's (seed 0), A's 100
    best detections on synthetic COCO images are all empty boxes at the left image edge (top = bottom = 0
    after the head's ReLU; B drops them, A keeps them), which would make its comparisons nearly vacuous."""
    from deployzoo.engine import load_model
    from deployzoo.registry import get_spec

    return load_model(get_spec(FSAF), seed=2)


@pytest.fixture(scope="session")
def fsaf_a_onnx(tmp_path_factory, fsaf_a_loaded) -> Path:
    return _dynamic_export(tmp_path_factory, fsaf_a_loaded, "fsaf-dyn.onnx")


PSPNET = "mmseg-pspnet-r50-d8-voc12aug"


@pytest.fixture(scope="session")
def pspnet_spec():
    from deployzoo.registry import get_spec

    return get_spec(PSPNET)


@pytest.fixture(scope="session")
def pspnet_checkpoint(tmp_path_factory) -> Path:
    return _openmmlab_checkpoint(tmp_path_factory, PSPNET, "pspnet_r50-d8_512x512_20k_voc12aug_20200617_101958-ed5dfbd9.pth", {"mmseg_version": "0.5.0", "CLASSES": ["background"]})


@pytest.fixture(scope="session")
def pspnet_loaded(pspnet_spec, pspnet_checkpoint):
    from deployzoo.engine import load_model

    return load_model(pspnet_spec, pspnet_checkpoint)


@pytest.fixture(scope="session")
def pspnet_onnx(tmp_path_factory, pspnet_loaded) -> Path:
    """Dynamic batch, height and width export of the fixture-weights PSPNet (logits contract)."""
    return _dynamic_export(tmp_path_factory, pspnet_loaded, "pspnet-dyn.onnx")


@pytest.fixture(scope="session")
def pspnet_case() -> dict:
    return _case(PSPNET)


@pytest.fixture(scope="session")
def pspnet_labels_loaded(pspnet_checkpoint):
    """The label-map contract (resizes and argmax inside the graph) with the fixture's weights."""
    from deployzoo.engine import load_model
    from deployzoo.registry import get_spec

    return load_model(get_spec(PSPNET + "-labels"), pspnet_checkpoint)


@pytest.fixture(scope="session")
def pspnet_labels_onnx(tmp_path_factory, pspnet_labels_loaded) -> Path:
    return _dynamic_export(tmp_path_factory, pspnet_labels_loaded, "pspnet-labels-dyn.onnx")


@pytest.fixture(scope="session", autouse=True)
def _engine_cache(tmp_path_factory):
    """Every test session gets its own engine cache (deployzoo.cache): nothing is read from or left in the user's
    ~/.cache, and a session never reuses a graph exported by another run's code."""
    import os

    os.environ["DEPLOYZOO_CACHE"] = str(tmp_path_factory.mktemp("engine-cache"))
    yield
