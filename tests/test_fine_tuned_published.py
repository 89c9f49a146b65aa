"""A fine-tuned model on its own classes has no published figure: the official one is not shown as its own."""
from __future__ import annotations

from deployzoo.fine_tuned import ClassSetup, with_classes
from deployzoo.registry import get_spec
from deployzoo.run_report import accuracy_section


def test_other_classes_drop_the_published_figure_and_say_why():
    official = get_spec("refinedet320-vgg16-voc")
    spec = with_classes(official, ClassSetup(3, "3 classes", ("boat", "car", "bus"), "--classes"))
    assert spec.published.value is None and spec.published.metric == official.published.metric
    assert "fine-tuned model on its own 3 classes has none" in spec.published.source
    assert str(official.published.value) in spec.published.source  # the official figure is still named, apart
    acc = {"metric": spec.published.metric, "protocol": "refinedet-pytorch", "value": 1.0,
           "published": spec.published.value, "published_source": spec.published.source}
    text = "\n".join(accuracy_section(spec, acc, 3, "images", False, False, "", None))
    assert "Not applicable: a fine-tuned model" in text and "Reproduce it with the official" not in text


def test_the_official_names_keep_the_published_figure():
    official = get_spec("refinedet320-vgg16-voc")
    names = tuple(official.class_names)
    spec = with_classes(official, ClassSetup(len(names), "20 classes", names, "checkpoint"))
    assert spec.published == official.published
