"""Modules of the CPU backend. Each is a subclass of a reference module of :mod:`deepsets.nn` with the same
parameters (so the same ``state_dict`` keys); its ``forward`` runs the kernels where they apply and the reference
``forward`` everywhere else (GPU, other dtypes, autocast, ``torch.compile`` / tracing / export).

- :class:`CPUSetNorm` replaces every :class:`~deepsets.nn.SetNorm`: one pass forward, two backward (C kernels, or
  PyTorch ops with a hand-written backward where the kernels cannot be built or are turned off).
- :class:`DeepSetsStack` replaces a stack of clean-path Deep Sets++ blocks: padded batches run on packed rows (the
  valid elements back to back), each block is one kernel call that also returns the per-set statistics of its
  output, which the next block uses instead of a pass of its own.
- :class:`ISABStack` replaces a stack of clean-path ISABs with set norm: the three set norms over the elements run
  fused with the products they feed, and statistics pass from block to block.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from ...nn.attention import ISAB, attention
from ...nn.masking import zero_padding
from ...nn.norms import EPS, SetNorm
from ...nn.residual import DeepSetsBlock
from ...nn.sequential import SetSequential
from . import functions as fn
from . import kernels


def plain_context(x: Tensor) -> bool:
    """CPU float32/float64, no autocast, and not under ``torch.compile``, tracing or export: where the backend runs."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing())


def layer_kernels_apply(x: Tensor, params) -> bool:
    """Whether the layer-level kernels may run on ``x`` with parameters ``params`` (not under a dispatch mode,
    e.g. the FLOP counting of ``deepsets bench``, which must see the products)."""
    return (kernels.blocks_enabled() and _get_current_dispatch_mode() is None and x.is_contiguous()
            and all(p.dtype == x.dtype for p in params) and kernels.block_applies(x))


def _is_set_norm(m) -> bool:
    return isinstance(m, SetNorm) and m.eps == EPS  # statistics pass between layers as (mean, rstd) for this eps


class CPUSetNorm(SetNorm):
    """:class:`~deepsets.nn.SetNorm` on the CPU kernels (unpadded, or padded with a mask) or on PyTorch ops with a
    hand-written backward (unpadded, kernels off)."""

    reference = SetNorm

    @classmethod
    def fits(cls, module) -> bool:
        return type(module) is SetNorm

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if plain_context(x) and (mask is None or kernels.applies(x)):
            return fn.set_norm(self, x, mask)
        return super().forward(x, mask)


class DeepSetsStack(SetSequential):
    """Clean-path Deep Sets++ blocks ``x + W2 ReLU(SN(W1 ReLU(SN(x))))`` on the CPU backend."""

    reference = SetSequential

    @classmethod
    def fits(cls, module) -> bool:
        return (type(module) is SetSequential and len(module) > 0 and all(
            isinstance(b, DeepSetsBlock) and b.residual == "clean" and _is_set_norm(b.norm1) and _is_set_norm(b.norm2)
            and b.fc1.bias is None and b.fc2.bias is None for b in module))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if not (plain_context(x) and x.dim() == 3 and all(p.dtype == x.dtype for p in self.parameters())):
            return super().forward(x, mask)
        sets = None if mask is None else fn.PackedSets(mask)
        rows = x.contiguous() if sets is None else sets.pack(x)  # padded rows are never computed
        if layer_kernels_apply(rows, self.parameters()):
            stats = None  # each block hands the next the per-set mean and rstd of its output
            for b in self:
                rows, stats = fn.clean_block(rows, sets, stats, b.norm1, b.fc1, b.norm2, b.fc2)
        else:
            for b in self:
                r, skip = fn.set_norm_with_skip(b.norm1, rows, sets, relu=True)  # norm + ReLU (+ copy of x) in one pass
                rows = fn.add_linear(rows, skip, fn.set_norm(b.norm2, b.fc1(r), sets, relu=True), b.fc2)
        return rows if sets is None else sets.unpack(rows)


class ISABStack(SetSequential):
    """Clean-path ISABs with set norm on the CPU backend's layer-level kernels."""

    reference = SetSequential

    @classmethod
    def fits(cls, module) -> bool:
        return (type(module) is SetSequential and len(module) > 0 and all(
            isinstance(b, ISAB) and b.mab0.residual == b.mab1.residual == "clean" and _is_set_norm(b.mab0.norm_k)
            and _is_set_norm(b.mab1.norm_q) and _is_set_norm(b.mab1.norm_h) for b in module))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if not (plain_context(x) and x.dim() == 3 and layer_kernels_apply(x, self.parameters())):
            return super().forward(x, mask)
        stats = None
        for block in self:
            x, stats = self._block(block, x, mask, stats)
        return x

    @staticmethod
    def _block(block: ISAB, x: Tensor, mask: Tensor | None, stats: Tensor | None) -> tuple[Tensor, Tensor]:
        """One ISAB; returns its output and the output's per-set statistics (float64 ``[2, B]``)."""
        m0, m1 = block.mab0, block.mab1
        # Both MABs normalize x (keys of the first, queries of the second): one set of statistics.
        kv, stats = fn.norm_linear(x, mask, stats, m0.norm_k, m0.attn.kv)  # [B, N, 2 * dim]
        qp1, _ = fn.norm_linear(x, mask, stats, m1.norm_q, m1.attn.q)  # [B, N, dim]
        inducing = block.inducing.expand(x.shape[0], -1, -1)
        h = inducing + attention(m0.attn.q(inducing), kv, m0.attn.heads, m0.attn.scale, mask)
        h = h + m0.feed_forward(m0.norm_h(h))  # [B, num_inducing, dim]: the rest of MAB(I, X), as in the reference
        h1 = x + m1.attn.attend(qp1, m1.norm_k(h))
        out, _, stats_out = fn.norm_linear(h1, mask, None, m1.norm_h, m1.ff, fn.RELU_OUT | fn.RESIDUAL,
                                           want_stats=True)
        return zero_padding(out, mask), stats_out


#: What the backend substitutes, tried in order on every module of a model (children first).
MODULES = (CPUSetNorm, DeepSetsStack, ISABStack)
