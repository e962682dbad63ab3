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
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .masking import zero_padding
from .norms import NoNorm, resolve_choice
from .residual import RESIDUALS


def attention(q: Tensor, kv: Tensor, heads: int, scale: float, key_mask: Tensor | None = None) -> Tensor:
    """``softmax(q k^T * scale) v`` per head, from projected queries ``q [B, Nq, dim]`` and the fused key|value
    projection ``kv [B, Nk, 2 * dim]`` -> ``[B, Nq, dim]``. Padded keys get zero weight; an empty key set gives 0."""
    B, Nq, dim = q.shape
    Nk, dh = kv.shape[1], dim // heads
    # Split K|V along its own axis, then move heads: the backward pass stacks the gradients of key and value
    # straight into the [B, Nk, 2 * dim] layout of the projection (one copy, no transposed intermediate).
    key, value = (t.transpose(1, 2) for t in kv.view(B, Nk, 2, heads, dh).unbind(2))  # 2 x [B, h, Nk, dh]
    query = q.view(B, Nq, heads, dh).transpose(1, 2)  # [B, h, Nq, dh]
    attn_mask = nonempty = None
    if key_mask is not None:
        nonempty = key_mask.any(dim=1)  # [B]
        # An empty key set attends to its (finite) padding and is zeroed below: no all--inf softmax rows.
        attn_mask = (key_mask | ~nonempty.unsqueeze(1))[:, None, None, :]  # [B, 1, 1, Nk]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, scale=scale)
    out = out.transpose(1, 2).reshape(B, Nq, dim)
    return out if nonempty is None else out * nonempty.to(out.dtype)[:, None, None]


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

    def forward(self, q: Tensor, k: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """``Att(W_q q, W_k k, W_v k)`` for raw queries ``q`` and keys ``k``."""
        return self.attend(self.q(q), k, key_mask)

    def attend(self, qp: Tensor, k: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """The same with the queries already projected (``qp = self.q(q)``)."""
        return attention(qp, self.kv(k), self.heads, self.scale, key_mask)


class MAB(nn.Module):
    """Multihead attention block ``MAB(Q, K)`` in clean (pre-norm) or non-clean (post-norm) wiring.

    ``normalize_query=False`` leaves the queries un-normalized (the inducing points of an ISAB).
    """

    def __init__(self, dim_q: int, dim_k: int, dim: int, heads: int = 4,
                 norm_layer: Callable[[int], nn.Module] = NoNorm, residual: str = "clean",
                 normalize_query: bool = True):
        super().__init__()
        self.residual = resolve_choice("residual for attention blocks", residual, RESIDUALS)
        self.attn = Attention(dim_q, dim_k, dim, heads)
        self.ff = nn.Linear(dim, dim)
        if residual == "clean":
            if dim_q != dim:
                raise ValueError(f"a clean-path MAB adds its queries to its output: dim_q ({dim_q}) must equal dim ({dim})")
            self.norm_q = norm_layer(dim_q) if normalize_query else NoNorm()
            self.norm_k = norm_layer(dim_k)
            self.norm_h = norm_layer(dim)
        else:
            self.norm0 = norm_layer(dim)
            self.norm1 = norm_layer(dim)

    def forward(self, q: Tensor, k: Tensor, q_mask: Tensor | None = None, k_mask: Tensor | None = None) -> Tensor:
        if self.residual == "clean":
            h = q + self.attn(self.norm_q(q, q_mask), self.norm_k(k, k_mask), k_mask)
            return zero_padding(h + self.feed_forward(self.norm_h(h, q_mask)), q_mask)
        qp = self.attn.q(q)
        h = self.norm0(qp + self.attn.attend(qp, k, k_mask), q_mask)
        return self.norm1(h + self.feed_forward(h), q_mask)

    def feed_forward(self, h: Tensor) -> Tensor:
        """``ReLU(W_o h)``."""
        return F.relu(self.ff(h))


class SAB(nn.Module):
    """Self-attention block ``SAB(X) = MAB(X, X)`` (equivariant, O(N^2))."""

    def __init__(self, dim_in: int, dim: int, heads: int = 4, norm_layer: Callable[[int], nn.Module] = NoNorm,
                 residual: str = "clean"):
        super().__init__()
        self.mab = MAB(dim_in, dim_in, dim, heads, norm_layer, residual)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.mab(x, x, mask, mask)


class ISAB(nn.Module):
    """Induced self-attention block ``ISAB(X) = MAB(X, MAB(I, X))`` with ``num_inducing`` learned points (O(N))."""

    def __init__(self, dim_in: int, dim: int, heads: int = 4, num_inducing: int = 32,
                 norm_layer: Callable[[int], nn.Module] = NoNorm, residual: str = "clean"):
        super().__init__()
        self.inducing = nn.Parameter(torch.empty(1, num_inducing, dim))
        nn.init.xavier_uniform_(self.inducing)
        # The inducing points are queries of the first MAB and are not normalized; its outputs are
        # normalized as a set of num_inducing elements where they serve as keys of the second.
        self.mab0 = MAB(dim, dim_in, dim, heads, norm_layer, residual, normalize_query=False)
        self.mab1 = MAB(dim_in, dim, dim, heads, norm_layer, residual)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        h = self.mab0(self.inducing.expand(x.shape[0], -1, -1), x, None, mask)  # [B, num_inducing, dim]
        return self.mab1(x, h, mask, None)


class PMA(nn.Module):
    """Pooling by multihead attention: ``num_seeds`` learned queries attend to the set -> ``[B, num_seeds, dim]``."""

    def __init__(self, dim: int, heads: int = 4, num_seeds: int = 1, norm_layer: Callable[[int], nn.Module] = NoNorm,
                 residual: str = "clean"):
        super().__init__()
        self.seeds = nn.Parameter(torch.empty(1, num_seeds, dim))
        nn.init.xavier_uniform_(self.seeds)
        self.mab = MAB(dim, dim, dim, heads, norm_layer, residual)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.mab(self.seeds.expand(x.shape[0], -1, -1), x, None, mask)
