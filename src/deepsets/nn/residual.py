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
from .norms import SetNorm, make_norm, resolve_choice


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
            if isinstance(self.norm1, SetNorm):  # the norm's pass also copies x into the block's output buffer
                r, skip = self.norm1.forward_with_skip(x, mask, relu=True)
            else:
                r, skip = self.norm1(x, mask, relu=True), x
            h = self.fc1(r)  # norm and ReLU in one pass
            out = _add_linear(skip, self.norm2(h, mask, relu=True), self.fc2, x.shape, skip is not x)  # x + W2 r
        else:
            h = self.norm1(self.fc1(x), mask, relu=True)
            out = F.relu(x + self.norm2(self.fc2(h), mask))
        # Without biases padded rows stay exactly zero (norms output zero there), so no extra pass is needed.
        return out if self.fc1.bias is None else zero_padding(out, mask)


def _add_linear(x: Tensor, r: Tensor, fc: nn.Linear, shape, inplace: bool = False) -> Tensor:
    """``x + fc(r)`` with the residual add folded into the matrix product, viewed as ``shape``.

    ``inplace``: ``x`` is a private ``[T, D]`` copy of the residual stream (from
    :meth:`SetNorm.forward_with_skip`) that the product accumulates into directly.
    """
    if fc.bias is not None:
        return x.view(shape) + fc(r)
    r2 = r.reshape(-1, r.shape[-1])
    if inplace:
        return x.addmm_(r2, fc.weight.t()).view(shape)
    return torch.addmm(x.reshape(-1, shape[-1]), r2, fc.weight.t()).view(shape)
