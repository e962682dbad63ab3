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

from . import fused
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
        return self.forward_stats(x, mask)[0]

    def forward_stats(self, x: Tensor, mask=None, stats: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``(forward(x, mask), stats of the output)``. Where the fused block kernel applies (clean path, set norm,
        float32/float64 on CPU, unpadded or packed sets) the whole block is one kernel call, which also returns the
        per-set mean and rstd of its output (float64 ``[2, B]``); passing them to the next block as ``stats``
        saves it a pass over its input. Elsewhere the stats are ``None``, and ``stats`` must be those of ``x``
        or ``None``."""
        if self._fused_applies(x, mask):
            return fused.clean_block(x, mask, stats, self.norm1, self.fc1, self.norm2, self.fc2)
        if self.residual == "clean":
            r, skip = norm_with_skip(self.norm1, x, mask, relu=True)  # norm and ReLU in one pass (+ copy of x)
            out = _add_linear(x, skip, self.norm2(self.fc1(r), mask, relu=True), self.fc2)  # x + W2 r
        else:
            h = self.norm1(self.fc1(x), mask, relu=True)
            out = F.relu(x + self.norm2(self.fc2(h), mask))
        # Without biases padded rows stay exactly zero (norms output zero there), so no extra pass is needed.
        return (out if self.fc1.bias is None else zero_padding(out, mask)), None

    def _fused_applies(self, x: Tensor, mask) -> bool:
        return (self.residual == "clean" and self.fc1.bias is None
                and fused.applies(x, mask, self.parameters(), (self.norm1, self.norm2)))


def _add_linear(x: Tensor, skip: Tensor, r: Tensor, fc: nn.Linear) -> Tensor:
    """``x + fc(r)`` with the residual add folded into the matrix product.

    ``skip`` comes from :func:`norm_with_skip`: where it is a private ``[T, D]`` copy of ``x``, the product
    accumulates into it in place; where it is ``x`` itself, into a new output.
    """
    if fc.bias is not None or r.dtype != fc.weight.dtype or torch.is_autocast_enabled(r.device.type):
        return x + fc(r)  # (under autocast the product runs in the low-precision type: no in-place addmm)
    r2 = r.reshape(-1, r.shape[-1])
    if skip is not x:
        return skip.addmm_(r2, fc.weight.t()).view(x.shape)
    return torch.addmm(x.reshape(-1, x.shape[-1]), r2, fc.weight.t()).view(x.shape)
