"""The error for head shapes that fit no class count says so in words (it printed '(None)' as a count)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from deployzoo.checkpoints.head_classes import HeadTensor, infer_num_classes
from deployzoo.errors import CheckpointError

ODM = (HeadTensor(r"odm_conf\.\d+\.(weight|bias)", per=3, extra=3),)  # RefineDet: 3 anchors x (C + 1)


def _shapes(*rows):
    return {f"odm_conf.{i}.weight": SimpleNamespace(shape=(n, 256, 3, 3)) for i, n in enumerate(rows)}


def test_heads_with_zero_classes_are_named_as_fitting_no_count():
    with pytest.raises(CheckpointError) as err:
        infer_num_classes(_shapes(3, 3), ODM, "zero.pth")
    text = str(err.value)
    assert text.startswith("zero.pth: no class-dependent head tensor fits a class count of at least 1:")
    assert "None" not in text and text.count("(dim 0 = 3C + 3: no class count of at least 1)") == 2  # each tensor


def test_a_count_beside_an_unfit_shape_names_the_count_and_the_misfit():
    with pytest.raises(CheckpointError) as err:
        infer_num_classes(_shapes(12, 13), ODM, "mixed.pth")
    text = str(err.value)
    assert "disagree on the number of classes (3, and shapes that fit no count)" in text and "None" not in text
    assert "odm_conf.1.weight  [13, 256, 3, 3]  (dim 0 = 3C + 3: no class count of at least 1)" in text


def test_agreeing_heads_give_the_count():
    assert infer_num_classes(_shapes(12, 12), ODM).num_classes == 3
