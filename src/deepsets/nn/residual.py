"""Equivariant residual blocks of the Deep Sets family (PAPER.md, "Deep Sets++")::

    clean path (pre-norm, Deep Sets++)                non-clean (the paper's "non-clean path" rows)

    x ──┬──────────────────────────────────(+)──       x ──┬──────────────────────────────────(+)── ReLU ──
        └ norm ─ ReLU ─ W1 ─ norm ─ ReLU ─ W2 ┘            └ W1 ─ norm ─ ReLU ─ W2 ─ norm ───┘

With a clean path the identity reaches every block, so gradients neither vanish nor explode at depth.
Linear layers that feed a norm have no bias (with ``norm="none"`` they do, as in the paper's code).
"""
from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from .masking import zero_padding
from .norms import SetNorm, resolve_choice

RESIDUALS = ("clean", "nonclean")


class DeepSetsBlock(nn.Module):
    """Two-layer residual block applied to every element; equivariant (the norms see the whole set)."""

    def __init__(self, dim: int, norm_layer: Callable[[int], nn.Module] = SetNorm, residual: str = "clean",
                 bias: bool = False):
        super().__init__()
        self.residual = resolve_choice("residual for Deep Sets blocks", residual, RESIDUALS)
        self.norm1 = norm_layer(dim)
        self.fc1 = nn.Linear(dim, dim, bias=bias)
        self.norm2 = norm_layer(dim)
        self.fc2 = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.residual == "clean":
            out = x + self.f(x, mask)
            # f ends in W2: with a bias its padded rows hold the bias; without, they stay zero (zero in, zero out).
            return out if self.fc2.bias is None else zero_padding(out, mask)
        return F.relu(x + self.f(x, mask))

    def f(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The residual branch."""
        if self.residual == "clean":  # W2 ReLU(norm2(W1 ReLU(norm1(x))))
            return self.fc2(F.relu(self.norm2(self.fc1(F.relu(self.norm1(x, mask))), mask)))
        return self.norm2(self.fc2(F.relu(self.norm1(self.fc1(x), mask))), mask)  # norm2(W2 ReLU(norm1(W1 x)))
