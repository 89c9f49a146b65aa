"""Deterministic stand-in weights ("dz-init-v1") for runs without an official checkpoint.

Every tensor is a pure function of (key name, shape, dtype, gain, seed), the rule the reference
fixtures were made with, so a run on the embedded default is reproducible everywhere and the tests can
rebuild exactly the weights a reference framework was run with:
  - integer entries: zeros;  *running_var: U(0.5, 1.5);  *running_mean: N(0, 0.1)
  - >= 2-D weights: N(0, gain / sqrt(fan_in)), fan_in = prod(shape[1:]);  1-D *bias: N(0, 0.05)
  - other 1-D entries (norm scales): U(0.5, 1.0) * gain
Gains come from per-model (regex, gain) rules, last match wins, so activations stay in a sane range.
"""
from __future__ import annotations

import re
import zlib
from typing import Callable, Sequence

import numpy as np
import torch


def synthetic_tensor(name: str, shape: Sequence[int], dtype: str = "float32", gain: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([zlib.crc32(name.encode()), seed])
    shape = tuple(int(s) for s in shape)
    if not dtype.startswith("float"):
        return np.zeros(shape, dtype=dtype)
    if name.endswith("running_var"):
        values = rng.uniform(0.5, 1.5, shape)
    elif name.endswith("running_mean"):
        values = rng.normal(0.0, 0.1, shape)
    elif len(shape) >= 2:
        values = rng.normal(0.0, gain / np.sqrt(float(np.prod(shape[1:]))), shape)
    elif name.endswith("bias"):
        values = rng.normal(0.0, 0.05, shape)
    else:
        values = rng.uniform(0.5, 1.0, shape) * gain
    return values.astype(dtype)


def gain_for(name: str, ndim: int, rules: Sequence[tuple[str, float]]) -> float:
    """Gain of a weight (>= 2-D) or scale (1-D, not a bias/running stat): the last matching rule's."""
    gain = 1.0
    if name.endswith(("bias", "running_mean", "running_var", "num_batches_tracked")):
        return gain
    for pattern, value in rules:
        applies_to_weights = not pattern.startswith("1d:")
        regex = pattern[3:] if pattern.startswith("1d:") else pattern
        if (ndim >= 2) == applies_to_weights and re.fullmatch(regex, name):
            gain = value
    return gain


def synthetic_state_dict(
    model: torch.nn.Module,
    gain_rules: Sequence[tuple[str, float]] = (),
    seed: int = 0,
    checkpoint_key: Callable[[str], str] | None = None,
) -> dict[str, torch.Tensor]:
    """dz-init-v1 values for every entry of ``model.state_dict()``, keyed by model name.

    Each value is generated under the name the official checkpoint gives it (``checkpoint_key(model
    name)``; the model name itself by default), so the stand-in equals the fixtures' weights.
    ``gain_rules``: (regex on the checkpoint name, gain); a "1d:" prefix applies to 1-D scales, others to
    >= 2-D weights.
    """
    out = {}
    for name, tensor in model.state_dict().items():
        official = checkpoint_key(name) if checkpoint_key is not None else name
        dtype = str(tensor.dtype).replace("torch.", "")
        gain = gain_for(official, tensor.dim(), gain_rules)
        out[name] = torch.from_numpy(synthetic_tensor(official, tensor.shape, dtype, gain, seed))
    return out
