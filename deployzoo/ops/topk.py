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
    """The min(k, length) largest values of each row of ``x`` [B, N] (``dim`` 1 or -1), sorted descending,
    with their indices [B, K] int64.

    Equal values come lowest index first, as ONNX TopK specifies: stand-in weights saturate sigmoids
    into exact ties, and a tie at the cut must pick the same element in eager mode and in every engine.
    Engines do not all keep that rule (OpenVINO's CPU TopK orders ties arbitrarily unless asked for a
    stable sort, which costs it seconds on a million scores; TensorRT leaves it unspecified), so the
    graph never lets a TopK decide between equal values:

    1. a plain TopK gives the values, which are the same whatever order ties take; its k-th value is the cut;
    2. every element above the cut is chosen, and of those equal to it the first (in index order) that fit;
    3. the chosen, exactly K a row, are put in order by their rank among each other (values descending,
       then index), counted by comparing every pair: K x K, cheap for the K <= 1000 used here.

    One code path in eager mode and in export: the same result as a stable descending sort.
    """
    if dim not in (1, -1) or x.dim() != 2:
        raise ValueError(f"topk_clamped takes rows [B, N] along dim 1, got shape {tuple(x.shape)} and dim {dim}")
    batch = x.shape[0]
    k = clamped_k(x, k, 1)
    cut = torch.topk(x, k, dim=1, largest=True, sorted=True).values[:, -1:]  # [B, 1]
    above = x > cut
    at_cut = x == cut
    room = k - above.sum(dim=1, keepdim=True)  # how many of the values equal to the cut are among the best k
    chosen = above | (at_cut & (torch.cumsum(at_cut.to(torch.int64), dim=1) <= room))
    index = chosen.nonzero()[:, 1]
    if torch.compiler.is_exporting():
        # Exactly K are chosen per row. torch.export cannot know that of nonzero's length, and would build the
        # rest of the graph on a free size (and assert guesses about it when the package runs): say so.
        torch._check(index.shape[0] == batch * k)
    index = index.reshape(batch, -1)  # [B, K], ascending: nonzero lists row-major
    values = torch.gather(x, 1, index)
    position = torch.arange(values.shape[1], device=x.device)
    earlier = position[None, :] < position[:, None]  # [K, K]: j (column) has a lower index than i (row)
    a, b = values[:, :, None], values[:, None, :]
    rank = ((b > a) | ((b == a) & earlier)).sum(dim=2)  # [B, K]: the chosen that come before each; a permutation
    return torch.zeros_like(values).scatter(1, rank, values), torch.zeros_like(index).scatter(1, rank, index)


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, N, ...] gathered along dim 1 by index [B, K] -> [B, K, ...]."""
    expanded = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return torch.gather(x, 1, expanded)
