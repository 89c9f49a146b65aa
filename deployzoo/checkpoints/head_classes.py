"""The class count of a (fine-tuned) checkpoint, read strictly from its head tensors' shapes.

A team that fine-tunes a detector on its own 3 or 12 classes changes only the class-dependent head tensors
(detectron2 ``roi_heads.box_predictor.k.cls_score.weight`` [C+1, 1024], the mask ``predictor`` [C, 256, 1, 1];
mmdet ``fc_cls`` [C+1, 1024], ``fc_reg`` [4C, 1024], ``conv_logits`` [C, 256, 1, 1]; FSAF ``retina_cls``
[A*C, 256, 3, 3]; mmseg ``conv_seg`` [C, 512, 1, 1]; RefineDet ``odm_conf.k`` [A*(C+1), 256, 3, 3]). Each
model states these tensors as :class:`HeadTensor` rules (``ModelSpec.class_heads``); every one present must
give the same count, else one :class:`~deployzoo.errors.CheckpointError` lists each tensor with its shape and
the count it implies. Everything else (backbone, neck, box regression of a class-agnostic head) stays as
strict as for the official file: the strict remapper still checks every other shape.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from deployzoo.errors import CheckpointError

__all__ = ["ClassCount", "HeadTensor", "infer_num_classes"]


@dataclass(frozen=True)
class HeadTensor:
    """A checkpoint tensor whose dimension ``dim`` is ``per * C + extra`` for C classes (background not counted).

    ``pattern``: regex full-matched on the checkpoint key (as stored, before renames). Examples: a softmax
    classifier with background row ``per=1, extra=1``; class-specific box deltas ``per=4``; RefineDet's ODM
    confidences (3 anchors, background class included) ``per=3, extra=3``.
    """

    pattern: str
    per: int = 1
    extra: int = 0
    dim: int = 0

    def count(self, shape: tuple[int, ...]) -> int | None:
        """C for a tensor of ``shape``, or None when the shape fits no whole, positive class count."""
        if len(shape) <= self.dim:
            return None
        rows = int(shape[self.dim]) - self.extra
        if rows <= 0 or rows % self.per:
            return None
        return rows // self.per


@dataclass(frozen=True)
class ClassCount:
    """The inferred count and the tensor it was read from (the first head tensor in file order)."""

    num_classes: int
    tensor: str
    shape: tuple[int, ...]

    def describe(self) -> str:
        """``3 classes, inferred from roi_heads.box_predictor.0.cls_score.weight [4, 1024]``."""
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.num_classes} classes, inferred from {self.tensor} [{dims}]"


def infer_num_classes(tensors: Mapping[str, object], heads: tuple[HeadTensor, ...],
                      source: str = "") -> ClassCount | None:
    """The one class count every head tensor of ``tensors`` (name -> tensor with ``.shape``) agrees on.

    Returns None when no head tensor is present (the strict mapping then reports the missing keys).

    Raises:
        CheckpointError: naming ``source`` and listing every head tensor (shape, implied count) when they
            disagree or a shape fits no count.
    """
    found: list[tuple[str, tuple[int, ...], int | None, HeadTensor]] = []
    for key, tensor in tensors.items():
        for head in heads:
            if re.fullmatch(head.pattern, key):
                shape = tuple(int(d) for d in tensor.shape)
                found.append((key, shape, head.count(shape), head))
                break
    if not found:
        return None
    counts = {count for _, _, count, _ in found}
    if len(counts) == 1 and None not in counts:
        key, shape, count, _ = found[0]
        return ClassCount(int(count), key, shape)
    lines = []
    for key, shape, count, head in found:
        rule = f"dim {head.dim} = {head.per if head.per != 1 else ''}C{f' + {head.extra}' if head.extra else ''}"
        implied = f"{count} classes" if count is not None else "no class count of at least 1"
        lines.append(f"  - {key}  [{', '.join(map(str, shape))}]  ({rule}: {implied})")
    # "None" in the headline read as a count; say in words which shapes fit no count at all
    known = ", ".join(str(c) for c in sorted(c for c in counts if c is not None))
    if not known:
        headline = "no class-dependent head tensor fits a class count of at least 1"
    else:
        headline = (f"the class-dependent head tensors disagree on the number of classes ({known}"
                    + (", and shapes that fit no count" if None in counts else "") + ")")
    raise CheckpointError(f"{source or 'checkpoint'}: {headline}:\n" + "\n".join(lines))
