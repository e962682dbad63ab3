"""Masked pooling over the elements of each set: ``[B, N, D] -> [B, D]``.

An empty set (no valid element) pools to a zero vector for every kind, never NaN or -inf.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .norms import resolve_choice


def sum_pool(x: Tensor, mask: Tensor | None = None) -> Tensor:
    if mask is None:
        return x.sum(dim=1)
    # A batched matvec skips the [B, N, D] masked copy: [B, 1, N] @ [B, N, D].
    return torch.bmm(mask.unsqueeze(1).to(x.dtype), x).squeeze(1)


def mean_pool(x: Tensor, mask: Tensor | None = None) -> Tensor:
    if mask is None:
        return x.mean(dim=1)
    count = mask.sum(dim=1, keepdim=True).clamp_min(1).to(x.dtype)
    return sum_pool(x, mask) / count


def max_pool(x: Tensor, mask: Tensor | None = None) -> Tensor:
    if mask is None:
        return x.amax(dim=1)
    out = x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
    return out.masked_fill(~mask.any(dim=1, keepdim=True), 0.0)  # empty set -> 0


POOLS = {"sum": sum_pool, "mean": mean_pool, "max": max_pool}


class Pool(nn.Module):
    """Permutation-invariant masked pooling by name: ``sum`` | ``mean`` | ``max``."""

    def __init__(self, kind: str = "sum"):
        super().__init__()
        self.kind = resolve_choice("pool", kind, POOLS)
        self.fn = POOLS[kind]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.fn(x, mask)

    def extra_repr(self) -> str:
        return self.kind
