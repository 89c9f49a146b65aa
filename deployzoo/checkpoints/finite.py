"""Refuse weights holding NaN or infinity before anything is exported or run.

A checkpoint whose tensors hold NaN (a diverged training run, a broken conversion or download) gives NaN
outputs for every image: without this check the model is exported and run, and only then every image is
reported as having non-finite engine outputs. Only the tensors the model uses are checked (after mapping),
so a broken auxiliary head that the model ignores by name does not block a run.
"""
from __future__ import annotations

from pathlib import Path

import torch

from deployzoo.checkpoints.remap import MappingReport
from deployzoo.errors import CheckpointError

_SHOWN = 5


def check_finite_weights(model: torch.nn.Module, checkpoint: str | Path,
                         report: MappingReport | None = None) -> None:
    """Raise CheckpointError naming ``checkpoint`` and the first tensors with NaN/inf values.

    Args:
        model: the model after the checkpoint was loaded into it (parameters and buffers are checked).
        checkpoint: the file, for the message.
        report: the mapping report, to name each tensor by its checkpoint key where it was renamed.
    """
    origin = {}
    if report is not None:
        origin = {e.model_key: e.checkpoint_key for e in report.entries if e.model_key and e.checkpoint_key}
    bad: list[str] = []
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            continue
        finite = torch.isfinite(tensor)
        if bool(finite.all()):
            continue
        nan = int(torch.isnan(tensor).sum())
        inf = int(tensor.numel() - int(finite.sum()) - nan)
        key = origin.get(name, name)
        bad.append(f"{key} ({nan} NaN, {inf} inf of {tensor.numel()})")
    if bad:
        more = f" and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
        raise CheckpointError(f"{checkpoint}: {len(bad)} weight tensor(s) hold NaN or infinity, so the outputs "
                              f"computed from them would be NaN: {'; '.join(bad[:_SHOWN])}{more}. The checkpoint "
                              f"is broken (a diverged training run or a damaged file); nothing was exported or run")
