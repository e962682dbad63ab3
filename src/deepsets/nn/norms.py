"""Normalizations for sets, all mask-aware (PAPER.md, "Normalizations").

================  ===============================================  ==================
norm              statistics over                                   affine
================  ===============================================  ==================
``SetNorm``       each set: all valid elements x all features       per feature
``LayerNorm``     each element: its D features                      per feature
``FeatureNorm``   each feature: all valid elements of the batch     per feature
``NoNorm``        nothing (identity that still zeroes padding)      none
================  ===============================================  ==================

Set norm keeps per-element scale (layer norm does not: it maps x and a*x to the same output) and needs
no batch statistics (feature norm does), so it is per-set and permutation equivariant.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels
from .masking import PackedSets, stats_dtype, zero_padding

EPS = 1e-5  # PAPER.md: eps = 1e-5 for every norm


class _AffineNorm(nn.Module):
    def __init__(self, dim: int, eps: float = EPS):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))  # gamma = 1 at init
        self.bias = nn.Parameter(torch.zeros(dim))  # beta = 0 at init

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class SetNorm(_AffineNorm):
    """One mean and one variance per set, over its valid elements and all features.

    ``SN(X)_nd = gamma_d * (x_nd - mu) / sqrt(s2 + eps) + beta_d``. Statistics are computed in
    float32 (float64 for float64 input) even under autocast; padded rows are ignored and come out zero.
    ``relu=True`` returns ``ReLU(SN(X))`` from the same fused pass (what the Deep Sets++ blocks use).
    """

    def forward(self, x: Tensor, mask=None, relu: bool = False) -> Tensor:
        if _CHUNK_HOOK is not None and mask is None:  # exact chunked inference (deepsets.models.chunked)
            y = _CHUNK_HOOK(self, x)
            return F.relu(y) if relu else y
        dtype = stats_dtype(x)
        w, b = self.weight.to(dtype), self.bias.to(dtype)
        xs = x.to(dtype).contiguous()
        # mask None: unpadded [B, N, D]; PackedSets: packed rows [T, D]; bool mask: padded [B, N, D].
        use_kernels = kernels.applies(xs)
        if use_kernels or mask is None or isinstance(mask, PackedSets):
            y = _SetNormFunction.apply(xs, w, b, self.eps, relu, mask, use_kernels)
        else:
            y = self._padded_eager(xs, mask, w, b, relu)
        return y.to(x.dtype)

    def forward_with_skip(self, x: Tensor, mask=None, relu: bool = False) -> tuple[Tensor, Tensor]:
        """``(forward(x, mask, relu), skip)`` for a pre-norm residual block ``x + f(norm(x))``.

        Where the fused kernels apply, ``skip`` is a private copy of ``x`` as rows ``[T, D]``, written by the
        norm's own pass; the block may accumulate its branch into it in place, and its gradient joins the norm's
        input gradient in the norm's backward pass (no separate copy or gradient sum). Elsewhere ``skip`` is ``x``.
        """
        if _CHUNK_HOOK is None and kernels.applies(x) and x.dtype == stats_dtype(x) and x.is_contiguous():
            w, b = self.weight.to(x.dtype), self.bias.to(x.dtype)
            return _SetNormFunction.apply(x, w, b, self.eps, relu, mask, True, True)
        return self.forward(x, mask, relu), x

    def _padded_eager(self, xs: Tensor, mask: Tensor, w: Tensor, b: Tensor, relu: bool) -> Tensor:
        """Padded ``[B, N, D]`` with a bool mask in plain PyTorch ops (GPU, or where the kernels are unavailable)."""
        D = xs.shape[-1]
        m = mask.to(xs.dtype).unsqueeze(-1)  # [B, N, 1]
        count = (m.sum(dim=(1, 2), keepdim=True) * D).clamp_min(1.0)  # [B, 1, 1] valid values per set
        mean = (xs * m).sum(dim=(1, 2), keepdim=True) / count
        centered = (xs - mean).mul_(m)  # padded rows -> 0 before squaring, whatever they held
        var = torch.linalg.vector_norm(centered, dim=(1, 2), keepdim=True).square() / count  # one pass
        y = torch.addcmul(b, centered * torch.rsqrt(var + self.eps), w).mul_(m)
        return y.relu_() if relu else y

    def normalize(self, x: Tensor, mean: Tensor | float, rstd: Tensor | float) -> Tensor:
        """Apply the norm with given statistics (e.g. of a whole set that is seen in chunks)."""
        dtype = stats_dtype(x)
        y = (x.to(dtype) - mean) * rstd
        return torch.addcmul(self.bias.to(dtype), y, self.weight.to(dtype)).to(x.dtype)


class _SetNormFunction(torch.autograd.Function):
    """Set norm (optionally followed by ReLU) with a hand-written backward.

    ``sets`` says which rows form a set: ``None`` (``x`` is ``[B, N, D]``, set ``b`` is ``x[b]``), a
    :class:`PackedSets` (``x`` holds packed rows ``[T, D]``) or a bool mask ``[B, N]`` (padded ``x``; fused
    kernels only). ``use_kernels`` picks the fused C kernels (:mod:`deepsets.nn.kernels`) or PyTorch ops
    (:func:`_eager_forward`); both compute the same thing. A differentiated backward (``create_graph=True``)
    goes through plain autograd ops instead (:func:`plain_set_norm`), so higher-order gradients work.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, relu, sets, use_kernels, skip=False):
        # skip (kernels only): also return a copy of x as rows [T, D], written in the same pass
        if use_kernels:
            y, mean, rstd, copy = _kernel_forward(x, weight, bias, eps, relu, sets, skip)
            extra = ()  # the ReLU's gate is recomputed from x
        else:
            y, mean, rstd = _eager_forward(x, weight, bias, eps, relu, sets)
            copy = x.reshape(-1, x.shape[-1]).clone() if skip else None
            extra = (y,) if relu else ()
        ctx.save_for_backward(x, weight, bias, mean, rstd, *extra)
        ctx.eps, ctx.relu, ctx.sets, ctx.use_kernels = eps, relu, sets, use_kernels
        return (y, copy) if skip else y

    @staticmethod
    def backward(ctx, grad, grad_copy=None):
        x, weight, bias, mean, rstd = ctx.saved_tensors[:5]
        if torch.is_grad_enabled():
            dx, dw, db = grads_through(lambda *a: plain_set_norm(*a, ctx.eps, ctx.relu, ctx.sets), (x, weight, bias),
                                       grad)
            if grad_copy is not None:
                dx = dx + grad_copy.view(x.shape)
        elif ctx.use_kernels:
            dx, dw, db = _kernel_backward(grad, ctx.relu, x, weight, bias, mean, rstd, ctx.sets, grad_copy)
        else:
            y = ctx.saved_tensors[5] if ctx.relu else None
            dx, dw, db = _eager_backward(grad, y, x, weight, mean, rstd, ctx.sets, ctx.needs_input_grad)
            if grad_copy is not None:
                dx = dx + grad_copy.view(x.shape)
        return dx, dw, db, None, None, None, None, None


def _eager_forward(x, weight, bias, eps, relu, packed):
    """PyTorch ops: one reduction for the means, one centering pass, one reduction for the variances (of
    centered values: no cancellation), the affine (and ReLU) in place. Unpadded or packed sets."""
    if packed is None:
        B, N, D = x.shape
        count = float(N * D)
        mean = x.reshape(B, -1).sum(dim=1) / count  # [B]
        xc = x - mean.view(B, 1, 1)
        var = torch.linalg.vector_norm(xc.reshape(B, -1), dim=1).square_() / count
        rstd = (var + eps).rsqrt_()
        y = xc.mul_(rstd.view(B, 1, 1) * weight).add_(bias)
    else:
        count = (packed.sizes.to(x.dtype) * x.shape[1]).clamp_min(1.0)  # [B]; an empty set gets mean 0
        mean = packed.sum(x.sum(dim=1)) / count
        xc = x - packed.expand(mean).unsqueeze(1)
        var = packed.sum(torch.linalg.vector_norm(xc, dim=1).square_()) / count
        rstd = (var + eps).rsqrt_()
        y = xc.mul_(packed.expand(rstd).unsqueeze(1)).mul_(weight).add_(bias)
    return (y.relu_() if relu else y), mean, rstd


def _eager_backward(grad, y, x, weight, mean, rstd, packed, needs_input_grad):
    """With ``G`` the gradient at the norm's output (zero where the ReLU was off), ``xhat`` the normalized input::

        dx = rstd * (G w - mean(G w) - xhat * mean(G w xhat))      (means over the set's elements x features)

    from two per-set, per-feature sums (``sum_n G`` and ``sum_n G x``) and two passes.
    """
    G = torch.ops.aten.threshold_backward(grad, y, 0) if y is not None else grad.contiguous()
    Gx = G * x
    if packed is None:
        C, P = G.sum(dim=1), Gx.sum(dim=1)  # [B, D]: sum_n G, sum_n G x
        count = float(x.shape[1] * x.shape[2])
        per_row = lambda v: v.view(-1, 1, 1)  # noqa: E731 - a per-set value broadcast over its rows
    else:
        C, P = packed.sum(G), packed.sum(Gx)
        count = packed.sizes.to(x.dtype) * x.shape[1]
        per_row = lambda v: packed.expand(v).unsqueeze(1)  # noqa: E731
    Ph = (P - mean.unsqueeze(1) * C) * rstd.unsqueeze(1)  # sum_n G xhat
    m1 = (C @ weight) / count  # mean(G w) per set
    m2 = (Ph @ weight) / count  # mean(G w xhat) per set
    k = -rstd * rstd * m2  # dx = G (rstd w) + k x + c
    c = -rstd * m1 - k * mean
    dx = None
    if needs_input_grad[0]:
        dx = torch.addcmul(per_row(c), x, per_row(k), out=Gx)
        if packed is None:  # rstd w is [B, 1, D]: broadcast, no [rows, D] temporary
            dx.addcmul_(G, (rstd.unsqueeze(1) * weight).unsqueeze(1))
        else:
            dx.addcmul_(G * weight, per_row(rstd))
    dw = Ph.sum(dim=0) if needs_input_grad[1] else None
    db = C.sum(dim=0) if needs_input_grad[2] else None
    return dx, dw, db


def _kernel_rows(x, sets):
    """What the C kernels need: row offsets of the sets (NumPy int64) and an optional per-row validity."""
    if isinstance(sets, PackedSets):
        return sets.offsets(), None
    offsets = _dense_offsets(x.shape[0], x.shape[1])
    return offsets, (None if sets is None else sets.contiguous().view(-1))


def _kernel_forward(x, weight, bias, eps, relu, sets, skip=False):
    D = x.shape[-1]
    offsets, valid = _kernel_rows(x, sets)
    y = torch.empty_like(x)
    copy = torch.empty((x.numel() // D, D), dtype=x.dtype) if skip else None
    mean, rstd = kernels.set_norm_forward(x.view(-1, D), offsets, weight.contiguous(), bias.contiguous(), eps, relu,
                                          y.view(-1, D), valid, copy)
    return y, mean, rstd, copy


def _kernel_backward(grad, relu, x, weight, bias, mean, rstd, sets, grad_copy=None):
    D = x.shape[-1]
    offsets, valid = _kernel_rows(x, sets)
    dx, dw, db = kernels.set_norm_backward(grad.reshape(-1, D), relu, x.view(-1, D), offsets, weight.contiguous(),
                                           bias.contiguous(), mean, rstd, valid,
                                           None if grad_copy is None else grad_copy.reshape(-1, D))
    return dx.view(x.shape), dw, db


@functools.lru_cache(maxsize=64)
def _dense_offsets(B: int, N: int) -> np.ndarray:
    return np.arange(B + 1, dtype=np.int64) * N


def plain_set_norm(x, weight, bias, eps, relu, sets):
    """Set norm (+ ReLU) in plain differentiable PyTorch ops, any ``sets`` as in :class:`_SetNormFunction`.

    The reference for higher-order gradients (a differentiated backward pass goes through it)."""
    shape, D = x.shape, x.shape[-1]
    if isinstance(sets, PackedSets):
        index, valid, B = sets.index, None, sets.num_sets
    else:
        B = shape[0]
        index = torch.arange(B, device=x.device).repeat_interleave(shape[1])
        valid = None if sets is None else sets.reshape(-1)
    x2 = x.reshape(-1, D)
    v = (torch.ones(x2.shape[0], dtype=x.dtype, device=x.device) if valid is None else valid.to(x.dtype)).unsqueeze(1)
    count = (x2.new_zeros(B).index_add(0, index, v.squeeze(1)) * D).clamp_min(1.0)
    mean = x2.new_zeros(B).index_add(0, index, (x2 * v).sum(dim=1)) / count
    xc = (x2 - mean[index].unsqueeze(1)) * v
    var = x2.new_zeros(B).index_add(0, index, xc.square().sum(dim=1)) / count
    y = xc * torch.rsqrt(var + eps)[index].unsqueeze(1) * weight + bias
    return ((F.relu(y) if relu else y) * v).reshape(shape)


def grads_through(fn, args, grad) -> list:
    """Gradients of ``fn(*args)`` (weighted by ``grad``) for each of ``args`` that requires one (None for the
    others), by autograd through ``fn``'s ops, keeping the graph: how the hand-written backward passes of the fused
    functions are differentiated again (double backward)."""
    inputs = [v for v in args if v is not None and v.requires_grad]
    with torch.enable_grad():
        found = iter(torch.autograd.grad(fn(*args), inputs, grad, create_graph=True, allow_unused=True))
    return [next(found) if v is not None and v.requires_grad else None for v in args]


def norm_with_skip(norm: nn.Module, x: Tensor, mask=None, relu: bool = False) -> tuple[Tensor, Tensor]:
    """``(norm(x, mask, relu), skip)`` for a pre-norm residual branch ``x + f(norm(x))``: ``skip`` is a private
    ``[T, D]`` copy of ``x`` for a :class:`SetNorm` on the fused kernels (see :meth:`SetNorm.forward_with_skip`),
    else ``x`` itself. A block adds its branch in place only where ``skip is not x``."""
    if isinstance(norm, SetNorm):
        return norm.forward_with_skip(x, mask, relu)
    return norm(x, mask, relu=relu), x


# Set by deepsets.models.chunked while it evaluates a huge set chunk by chunk; None otherwise.
_CHUNK_HOOK = None


def set_chunk_hook(hook) -> None:
    global _CHUNK_HOOK
    _CHUNK_HOOK = hook


class LayerNorm(_AffineNorm):
    """Standard layer norm over each element's features; padded rows come out zero."""

    def forward(self, x: Tensor, mask=None, relu: bool = False) -> Tensor:
        y = F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps)
        return zero_padding(y.relu_() if relu else y, mask)


class FeatureNorm(_AffineNorm):
    """Batch norm over the valid elements of all sets in the batch; running statistics at eval.

    The only norm whose training-mode output depends on the other sets of the batch (by definition).
    """

    def __init__(self, dim: int, eps: float = EPS, momentum: float = 0.1):
        super().__init__(dim, eps)
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, x: Tensor, mask=None, relu: bool = False) -> Tensor:
        y = self._normalize(x, None if isinstance(mask, PackedSets) else mask)  # packed rows are all valid
        return y.relu_() if relu else y

    def _normalize(self, x: Tensor, mask: Tensor | None) -> Tensor:
        dtype = stats_dtype(x)
        xs = x.to(dtype)
        if mask is None and x.numel() == x.shape[-1] and self.training:
            mask = torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)  # one element: var 0, no error
        if mask is None:
            flat = xs.reshape(-1, self.dim)
            y = F.batch_norm(
                flat, self.running_mean, self.running_var, self.weight.to(dtype), self.bias.to(dtype),
                training=self.training, momentum=self.momentum, eps=self.eps,
            )
            return y.reshape(xs.shape).to(x.dtype)
        m = mask.unsqueeze(-1).to(dtype)
        if self.training:
            count = m.sum().clamp_min(1.0)
            rows = tuple(range(xs.dim() - 1))
            mean = (xs * m).sum(dim=rows) / count  # [D]
            centered = (xs - mean) * m
            var = centered.square().sum(dim=rows) / count
            with torch.no_grad():
                unbiased = var * count / (count - 1).clamp_min(1.0)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        else:
            mean, var = self.running_mean.to(dtype), self.running_var.to(dtype)
            centered = xs - mean
        y = centered * torch.rsqrt(var + self.eps)
        return (torch.addcmul(self.bias.to(dtype), y, self.weight.to(dtype)) * m).to(x.dtype)


class NoNorm(nn.Module):
    """Identity with the norm signature; zeroes padded rows like every other norm."""

    def __init__(self, dim: int | None = None, eps: float = EPS):
        super().__init__()

    def forward(self, x: Tensor, mask=None, relu: bool = False) -> Tensor:
        return zero_padding(F.relu(x) if relu else x, mask)


NORMS: dict[str, type[nn.Module]] = {
    "set": SetNorm,
    "layer": LayerNorm,
    "feature": FeatureNorm,
    "none": NoNorm,
}


def resolve_choice(kind: str, value: str, choices) -> str:
    """Return ``value`` if it is one of ``choices``, else raise an error that lists them."""
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; valid choices: {', '.join(repr(c) for c in choices)}")
    return value


def make_norm(name: str, dim: int) -> nn.Module:
    """Build a norm by name: one of ``set``, ``layer``, ``feature``, ``none``."""
    return NORMS[resolve_choice("norm", name, NORMS)](dim)
