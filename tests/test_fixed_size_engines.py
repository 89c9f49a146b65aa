"""An engine built for one image size (an AOTInductor package, an ONNX file fixed to a size) meeting an image of
another size: the error names the image and says what takes every size, before the engine runs."""
from __future__ import annotations

import numpy as np
import pytest

from deployzoo.backends.base import Backend
from deployzoo.errors import BadInputError
from deployzoo.pipeline import Engine
from deployzoo.registry import get_spec


class _FixedSize(Backend):
    """Built for one input shape; records whether it ran."""

    name = "pytorch-aoti"

    def __init__(self, shapes):
        super().__init__()
        self.input_shapes = shapes
        self.ran = False

    def infer(self, inputs):
        self.check_inputs(inputs)
        self.ran = True
        return {}

    def describe(self):
        return {"backend": self.name}


def _feeds(h, w, extra=None):
    feeds = {"image": np.zeros((1, 3, h, w), np.float32)}
    if extra:
        feeds[extra] = np.zeros((1, 2), np.float32)
    return feeds


@pytest.mark.parametrize("model, extra", [("d2-cascade-mask-rcnn-r50-fpn-3x", "img_hw"),
                                          ("mmdet-fsaf-r50-fpn-1x", "img_hw"),
                                          ("mmseg-pspnet-r50-d8-voc12aug", None)])
def test_an_image_of_another_size_is_named_with_the_canvas_variant(model, extra):
    spec = get_spec(model)
    shapes = {"image": (1, 3, 800, 1088), **({extra: (1, 2)} if extra else {})}
    backend = _FixedSize(shapes)
    engine = Engine(spec, backend, None, None, "stand-in")
    engine.infer(_feeds(800, 1088, extra), ["landscape.jpg"])
    assert backend.ran
    backend.ran = False
    with pytest.raises(BadInputError) as caught:
        engine.infer(_feeds(1088, 800, extra), ["portrait.jpg"])
    assert not backend.ran
    assert caught.value.path == "portrait.jpg"
    message = str(caught.value)
    assert "engine expects (1, 3, 800, 1088)" in message and "takes one image size, 800x1088" in message
    assert f"{model}@HxW pads every image" in message


def test_no_canvas_variant_no_canvas_advice():
    spec = get_spec("mmseg-pspnet-r50-d8-voc12aug-labels")  # label maps: no fixed-canvas variant
    engine = Engine(spec, _FixedSize({"image": (1, 3, 512, 683), "orig_hw": (1, 2)}), None, None, "stand-in")
    with pytest.raises(BadInputError, match=r"^a\.jpg, b\.jpg: .*takes one image size, 512x683\)$"):
        engine.infer(_feeds(683, 512, "orig_hw"), ["a.jpg", "b.jpg"])


def test_a_fixed_size_model_gets_no_advice():
    spec = get_spec("refinedet320-vgg16-voc")  # every image is resized to 320x320: its graph is fixed anyway
    engine = Engine(spec, _FixedSize({"image": (1, 3, 320, 320)}), None, None, "stand-in")
    with pytest.raises(BadInputError) as caught:
        engine.infer(_feeds(300, 300), ["x.jpg"])
    assert str(caught.value) == "x.jpg: input 'image' has shape (1, 3, 300, 300), engine expects (1, 3, 320, 320)"
