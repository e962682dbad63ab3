"""Set Transformer attention blocks (MAB, SAB, ISAB, PMA) on ``scaled_dot_product_attention``.

Masking: padded keys get exactly zero attention weight (a boolean mask, not zeroed keys), whatever values
they hold; padded queries come out as zero rows. A query set attending to an empty key set gets a zero
attention output (no NaN).

Two wirings of the multihead attention block ``MAB(Q, K)`` (PAPER.md), ``Att = softmax(q k^T / sqrt(H)) v``::

    clean path, pre-norm (Set Transformer++)       non-clean, post-norm (Set Transformer)

    Q ──┬──────────────────────(+)── h ──┬───(+)──  Q' = W_q Q ──┬─────────(+)─ norm0 ─ h ─┬──(+)─ norm1 ─
        └ norm_q ─ Att(., norm_k(K)) ┘   └ norm_h ─ W_o ─ ReLU ┘        └ Att(Q', W K) ─┘         └ W_o ─ ReLU ┘

In the clean wiring nothing sits on the skip path, so the identity reaches every block.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import fused
from .masking import zero_padding
from .norms import make_norm, norm_with_skip, resolve_choice

RESIDUALS = ("clean", "nonclean")


class Attention(nn.Module):
    """Multi-head attention as in the Set Transformer: a query projection and a fused key|value projection.

    The logits are scaled by ``1/sqrt(dim)`` (the paper's code), not ``1/sqrt(dim/heads)``. There is no
    output projection: the block's feed-forward layer follows.
    """

    def __init__(self, dim_q: int, dim_k: int, dim: int, heads: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} must be divisible by the number of heads {heads}")
        self.dim, self.heads = dim, heads
        self.q = nn.Linear(dim_q, dim)
        self.kv = nn.Linear(dim_k, 2 * dim)  # W_k and W_v fused into one matmul
        self.scale = 1.0 / math.sqrt(dim)

    def attend(self, q: Tensor, k: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """``q``: already projected queries ``[B, Nq, dim]``; ``k``: raw keys ``[B, Nk, dim_k]``."""
        return self.attend_kv(q, self.kv(k), key_mask)

    def attend_kv(self, q: Tensor, kv: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """``attend`` with the key|value projection ``kv = self.kv(k)`` ``[B, Nk, 2 * dim]`` already computed."""
        B, Nq, _ = q.shape
        Nk = kv.shape[1]
        h, dh = self.heads, self.dim // self.heads
        # Split K|V along its own axis, then move heads: the backward pass stacks the gradients of key and value
        # straight into the [B, Nk, 2 * dim] layout of the projection (one copy, no transposed intermediate).
        key, value = (t.transpose(1, 2) for t in kv.view(B, Nk, 2, h, dh).unbind(2))  # 2 x [B, h, Nk, dh]
        query = q.view(B, Nq, h, dh).transpose(1, 2)  # [B, h, Nq, dh]
        attn_mask = nonempty = None
        if key_mask is not None:
            nonempty = key_mask.any(dim=1)  # [B]
            # An empty key set attends to its (finite) padding and is zeroed below: no all--inf softmax rows.
            attn_mask = (key_mask | ~nonempty.unsqueeze(1))[:, None, None, :]  # [B, 1, 1, Nk]
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, scale=self.scale)
        out = out.transpose(1, 2).reshape(B, Nq, self.dim)  # [B, Nq, dim]
        if nonempty is not None:
            out = out * nonempty.to(out.dtype)[:, None, None]
        return out

    def forward(self, q: Tensor, k: Tensor, key_mask: Tensor | None = None) -> Tensor:
        return self.attend(self.q(q), k, key_mask)


class MAB(nn.Module):
    """Multihead attention block ``MAB(Q, K)`` in clean (pre-norm) or non-clean (post-norm) wiring.

    ``normalize_query=False`` leaves the queries un-normalized (the inducing points of an ISAB).
    """

    def __init__(self, dim_q: int, dim_k: int, dim: int, heads: int = 4, norm: str = "none",
                 residual: str = "clean", normalize_query: bool = True):
        super().__init__()
        self.residual = resolve_choice("residual for attention blocks", residual, RESIDUALS)
        self.attn = Attention(dim_q, dim_k, dim, heads)
        self.ff = nn.Linear(dim, dim)
        if residual == "clean":
            if dim_q != dim:
                raise ValueError(f"a clean-path MAB adds its queries to its output: dim_q ({dim_q}) must equal dim ({dim})")
            self.norm_q = make_norm(norm, dim_q) if normalize_query else None
            self.norm_k = make_norm(norm, dim_k)
            self.norm_h = make_norm(norm, dim)
        else:
            self.norm0 = make_norm(norm, dim)
            self.norm1 = make_norm(norm, dim)

    def forward(self, q: Tensor, k: Tensor, q_mask: Tensor | None = None, k_mask: Tensor | None = None) -> Tensor:
        return self.forward_keys(q, self.key_input(k, k_mask), q_mask, k_mask)

    def key_input(self, k: Tensor, k_mask: Tensor | None = None) -> Tensor:
        """What the key/value projection sees: the normalized keys (clean) or the keys themselves."""
        return self.norm_k(k, k_mask) if self.residual == "clean" else k

    def query_input(self, q: Tensor, q_mask: Tensor | None = None) -> Tensor:
        """What the query projection sees."""
        if self.residual == "clean" and self.norm_q is not None:
            return self.norm_q(q, q_mask)
        return q

    def after_attention(self, q: Tensor, qp: Tensor, att: Tensor, q_mask: Tensor | None = None,
                        skip: Tensor | None = None) -> Tensor:
        """The rest of the block once the attention output ``att`` is known (``qp`` = projected queries).

        ``skip``: what :func:`~deepsets.nn.norms.norm_with_skip` returned with the normalized queries (a
        private copy of ``q`` that the residual sum accumulates into in place, or ``q``); ``None`` without one.
        """
        if self.residual == "clean":
            h = _residual_add(q, skip, att)
            hn, skip_h = norm_with_skip(self.norm_h, h, q_mask)
            return zero_padding(_residual_add(h, skip_h, _linear_relu(hn, self.ff)), q_mask)
        h = self.norm0(qp + att, q_mask)
        return self.norm1(h + _linear_relu(h, self.ff), q_mask)

    def forward_keys(self, q: Tensor, k_in: Tensor, q_mask: Tensor | None = None,
                     k_mask: Tensor | None = None) -> Tensor:
        """``forward`` with the key input already computed by :meth:`key_input`."""
        if self.residual == "clean" and self.norm_q is not None:
            q_in, skip = norm_with_skip(self.norm_q, q, q_mask)
        else:
            q_in, skip = self.query_input(q, q_mask), None
        qp = self.attn.q(q_in)
        return self.after_attention(q, qp, self.attn.attend(qp, k_in, k_mask), q_mask, skip)


def _residual_add(x: Tensor, skip: Tensor | None, branch: Tensor) -> Tensor:
    """``x + branch``; accumulated in place into ``skip`` where it is a private ``[T, D]`` copy of ``x``."""
    if skip is None or skip is x:
        return x + branch
    return skip.add_(branch.reshape(skip.shape)).view(x.shape)


def _linear_relu(x: Tensor, fc: nn.Linear) -> Tensor:
    """``ReLU(fc(x))`` with the ReLU in place on the product's own 2-D output: on a reshaped view of it, the
    in-place op would cost autograd a copy of the whole gradient in the backward pass."""
    return F.relu(F.linear(x.reshape(-1, x.shape[-1]), fc.weight, fc.bias), inplace=True).view(*x.shape[:-1], -1)


class SAB(nn.Module):
    """Self-attention block ``SAB(X) = MAB(X, X)`` (equivariant, O(N^2))."""

    def __init__(self, dim_in: int, dim: int, heads: int = 4, norm: str = "none", residual: str = "clean"):
        super().__init__()
        self.mab = MAB(dim_in, dim_in, dim, heads, norm, residual)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.mab(x, x, mask, mask)


class ISAB(nn.Module):
    """Induced self-attention block ``ISAB(X) = MAB(X, MAB(I, X))`` with ``num_inducing`` learned points (O(N))."""

    def __init__(self, dim_in: int, dim: int, heads: int = 4, num_inducing: int = 32, norm: str = "none",
                 residual: str = "clean"):
        super().__init__()
        self.inducing = nn.Parameter(torch.empty(1, num_inducing, dim))
        nn.init.xavier_uniform_(self.inducing)
        # The inducing points are queries of the first MAB and are not normalized; its outputs are
        # normalized as a set of num_inducing elements where they serve as keys of the second.
        self.mab0 = MAB(dim, dim_in, dim, heads, norm, residual, normalize_query=False)
        self.mab1 = MAB(dim_in, dim, dim, heads, norm, residual)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.forward_stats(x, mask)[0]

    def forward_stats(self, x: Tensor, mask: Tensor | None = None,
                      stats: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``(forward(x, mask), stats of the output)``. Where the layer-level kernels apply (:mod:`.fused`: clean
        path, set norm, float32/float64 on CPU, padded or not) the three set norms over the elements run fused
        with the products they feed, and the per-set mean and rstd of the output come back (float64 ``[2, B]``)
        for the next block; ``stats`` are those of ``x`` or None. Elsewhere the returned stats are None."""
        if self._fused_applies(x, mask):
            return self._fused_forward(x, mask, stats)
        h = self.mab0(self.inducing.expand(x.shape[0], -1, -1), x, None, mask)  # [B, num_inducing, dim]
        return self.mab1(x, h, mask, None), None

    def _fused_applies(self, x: Tensor, mask) -> bool:
        m0, m1 = self.mab0, self.mab1
        return (m0.residual == m1.residual == "clean" and m1.norm_q is not None
                and fused.applies(x, mask, self.parameters(), (m0.norm_k, m1.norm_q, m1.norm_h), padded=True))

    def _fused_forward(self, x: Tensor, mask: Tensor | None, stats: Tensor | None) -> tuple[Tensor, Tensor]:
        m0, m1 = self.mab0, self.mab1
        # Both MABs normalize x (keys of the first, queries of the second): one set of statistics.
        kv, stats = fused.norm_linear(x, mask, stats, m0.norm_k, m0.attn.kv)  # [B, N, 2 * dim]
        qp1, _ = fused.norm_linear(x, mask, stats, m1.norm_q, m1.attn.q)  # [B, N, dim]
        inducing = self.inducing.expand(x.shape[0], -1, -1)
        qp0 = m0.attn.q(inducing)
        h = m0.after_attention(inducing, qp0, m0.attn.attend_kv(qp0, kv, mask))  # [B, num_inducing, dim]
        att = m1.attn.attend(qp1, m1.key_input(h))  # [B, N, dim]
        h1 = x + att
        out, _, stats_out = fused.norm_linear(h1, mask, None, m1.norm_h, m1.ff, fused.RELU_OUT | fused.RESIDUAL,
                                              want_stats=True)
        return zero_padding(out, mask), stats_out


class PMA(nn.Module):
    """Pooling by multihead attention: ``num_seeds`` learned queries attend to the set -> ``[B, num_seeds, dim]``."""

    def __init__(self, dim: int, heads: int = 4, num_seeds: int = 1, norm: str = "none", residual: str = "clean"):
        super().__init__()
        self.seeds = nn.Parameter(torch.empty(1, num_seeds, dim))
        nn.init.xavier_uniform_(self.seeds)
        self.mab = MAB(dim, dim, dim, heads, norm, residual)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.mab(self.seeds.expand(x.shape[0], -1, -1), x, None, mask)
