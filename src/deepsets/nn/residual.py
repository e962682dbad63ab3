"""Equivariant residual blocks of the Deep Sets family (PAPER.md, "Deep Sets++")::

    clean path (pre-norm, Deep Sets++)                non-clean (the paper's "non-clean path" rows)

    x ──┬──────────────────────────────────(+)──       x ──┬──────────────────────────────────(+)── ReLU ──
        └ norm ─ ReLU ─ W1 ─ norm ─ ReLU ─ W2 ┘            └ W1 ─ norm ─ ReLU ─ W2 ─ norm ───┘

With a clean path the identity reaches every block, so gradients neither vanish nor explode at depth.
Linear layers that feed a norm have no bias (with ``norm="none"`` they do, as in the paper's code).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import RESIDUALS
from .masking import zero_padding
from .norms import make_norm, norm_with_skip, resolve_choice


class DeepSetsBlock(nn.Module):
    """Two-layer residual block applied to every element; equivariant (the norms see the whole set)."""

    def __init__(self, dim: int, norm: str = "set", residual: str = "clean"):
        super().__init__()
        self.residual = resolve_choice("residual for Deep Sets blocks", residual, RESIDUALS)
        bias = norm == "none"
        self.norm1 = make_norm(norm, dim)
        self.fc1 = nn.Linear(dim, dim, bias=bias)
        self.norm2 = make_norm(norm, dim)
        self.fc2 = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: Tensor, mask=None) -> Tensor:
        """``x``: ``[B, N, D]`` with a bool ``mask`` (or ``None``), or packed rows ``[T, D]`` with ``PackedSets``."""
        if self.residual == "clean":
            r, skip = norm_with_skip(self.norm1, x, mask, relu=True)  # norm and ReLU in one pass (+ copy of x)
            out = _add_linear(x, skip, self.norm2(self.fc1(r), mask, relu=True), self.fc2)  # x + W2 r
        else:
            h = self.norm1(self.fc1(x), mask, relu=True)
            out = F.relu(x + self.norm2(self.fc2(h), mask))
        # Without biases padded rows stay exactly zero (norms output zero there), so no extra pass is needed.
        return out if self.fc1.bias is None else zero_padding(out, mask)


def _add_linear(x: Tensor, skip: Tensor, r: Tensor, fc: nn.Linear) -> Tensor:
    """``x + fc(r)`` with the residual add folded into the matrix product.

    ``skip`` comes from :func:`norm_with_skip`: where it is a private ``[T, D]`` copy of ``x``, the product
    accumulates into it in place; where it is ``x`` itself, into a new output.
    """
    if fc.bias is not None:
        return x + fc(r)
    r2 = r.reshape(-1, r.shape[-1])
    if skip is not x:
        return skip.addmm_(r2, fc.weight.t()).view(x.shape)
    return torch.addmm(x.reshape(-1, x.shape[-1]), r2, fc.weight.t()).view(x.shape)
