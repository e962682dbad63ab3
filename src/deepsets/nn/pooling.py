"""Masked pooling over the elements of each set: ``[B, N, D] -> [B, D]``.

An empty set (no valid element) pools to a zero vector for every kind, never NaN or -inf.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .masking import PackedSets
from .norms import resolve_choice

# Each pool takes x [B, N, D] with a bool mask [B, N] (or None), or packed rows [T, D] with a PackedSets.


def sum_pool(x: Tensor, mask=None) -> Tensor:
    if mask is None:
        return x.sum(dim=1)
    if isinstance(mask, PackedSets):
        return mask.sum(x)
    # A batched matvec skips the [B, N, D] masked copy: [B, 1, N] @ [B, N, D].
    return torch.bmm(mask.unsqueeze(1).to(x.dtype), x).squeeze(1)


def mean_pool(x: Tensor, mask=None) -> Tensor:
    if mask is None:
        return x.mean(dim=1)
    if isinstance(mask, PackedSets):
        return mask.sum(x) / mask.sizes.clamp_min(1).unsqueeze(1).to(x.dtype)
    count = mask.sum(dim=1, keepdim=True).clamp_min(1).to(x.dtype)
    return sum_pool(x, mask) / count


def max_pool(x: Tensor, mask=None) -> Tensor:
    if mask is None:
        return x.amax(dim=1)
    if isinstance(mask, PackedSets):  # sets without rows keep the initial 0
        index = mask.index.unsqueeze(1).expand_as(x)
        return x.new_zeros(mask.num_sets, x.shape[1]).scatter_reduce(0, index, x, "amax", include_self=False)
    out = x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
    return out.masked_fill(~mask.any(dim=1, keepdim=True), 0.0)  # empty set -> 0


POOLS = {"sum": sum_pool, "mean": mean_pool, "max": max_pool}


class Pool(nn.Module):
    """Permutation-invariant masked pooling by name: ``sum`` | ``mean`` | ``max``."""

    def __init__(self, kind: str = "sum"):
        super().__init__()
        self.kind = resolve_choice("pool", kind, POOLS)
        self.fn = POOLS[kind]

    def forward(self, x: Tensor, mask=None) -> Tensor:
        return self.fn(x, mask)

    def extra_repr(self) -> str:
        return self.kind
