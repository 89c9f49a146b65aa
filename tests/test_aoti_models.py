"""AOTInductor packages of the R-CNN family and FSAF give eager PyTorch's detections and masks on the fixture images.

torch.export could not trace them before (RoIAlign's RoI loop and the NMS passes run host code: now custom ops),
and Inductor laid out the mask head's convolutions over a data-dependent batch with wrong strides (every mask
wrong, no error: those graphs now compile without the channels-last layout change). Heavy: each package takes
1-2 minutes to compile on 2 cores.
"""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from deployzoo.engine import make_backend

pytest_plugins = ["d2_fixtures"]
pytestmark = [pytest.mark.heavy,
              pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")),
                                 reason="AOTInductor compiles C++: no C++ compiler on PATH")]


@pytest.mark.parametrize("family", ["fsaf", "mask_rcnn", "d2"])
def test_aoti_package_gives_eager_detections_and_masks(tmp_path, request, family):
    spec = request.getfixturevalue(f"{family}_spec")
    loaded = request.getfixturevalue(f"{family}_loaded")
    case = request.getfixturevalue(f"{family}_case")
    bgr = cv2.imread(str(case["image"]), cv2.IMREAD_COLOR)
    array, meta = spec.preprocess(bgr)
    feeds = spec.make_feeds([array], [meta], 1)
    assert all(feeds[k].shape == v.shape for k, v in spec.make_example_inputs(1).items())  # the package's shapes
    eager = make_backend("pytorch", spec, 1, model=loaded.model).infer(feeds)
    engine = make_backend("pytorch-aoti", spec, 1, model=loaded.model, cache_dir=tmp_path)
    got = engine.infer(feeds)
    assert engine.package is not None and engine.package.is_file()
    assert set(got) == set(eager)
    count = int(eager["num_dets"][0])
    assert count > 0 and int(got["num_dets"][0]) == count
    np.testing.assert_array_equal(got["labels"], eager["labels"])
    boxes = "dets" if "dets" in eager else "boxes"
    np.testing.assert_allclose(got[boxes], eager[boxes], rtol=1e-5, atol=1e-3)  # pixels (and scores)
    if "scores" in eager:
        np.testing.assert_allclose(got["scores"], eager["scores"], atol=1e-5)
    if "masks" in eager:
        assert np.abs(eager["masks"][0, :count]).max() > 0  # real masks, not the padding
        np.testing.assert_allclose(got["masks"], eager["masks"], atol=1e-4)
