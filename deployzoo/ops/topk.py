"""Top-k with k clamped to the tensor's length, in eager mode and in a dynamic-shape ONNX export."""
from __future__ import annotations

import torch


def clamped_k(x: torch.Tensor, k: int, dim: int = -1):
    """min(k, x.shape[dim]): an int in eager mode, a traced scalar during ONNX export (the length of a
    level or of the candidate list depends on the input size, so a constant k would break other sizes)."""
    if torch.onnx.is_in_onnx_export():
        length = torch._shape_as_tensor(x)[dim]
        return torch.clamp(length, max=k)
    return min(k, x.shape[dim])


def topk_clamped(x: torch.Tensor, k: int, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """The min(k, length) largest values along ``dim``, sorted descending, with their indices.

    Equal values come lowest index first, as ONNX TopK specifies: stand-in weights saturate sigmoids
    into exact ties, and a tie at the cut must pick the same element in eager mode and in every engine.
    """
    if torch.onnx.is_in_onnx_export():
        return torch.topk(x, clamped_k(x, k, dim), dim=dim, largest=True, sorted=True)
    values, index = torch.sort(x, dim=dim, descending=True, stable=True)
    k = clamped_k(x, k, dim)
    return values.narrow(dim, 0, k), index.narrow(dim, 0, k)


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, N, ...] gathered along dim 1 by index [B, K] -> [B, K, ...]."""
    expanded = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return torch.gather(x, 1, expanded)
