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
        if mask is None or isinstance(mask, PackedSets):
            # Unpadded [B, N, D] (every row of x[b] belongs to set b) or packed rows [T, D] of a padded batch.
            xs = x.to(dtype).contiguous()
            if kernels.applies(xs):
                offsets = _dense_offsets(*xs.shape[:2]) if mask is None else mask.offsets()
                y = _SetNormKernelFunction.apply(xs, w, b, self.eps, relu, offsets)
            else:
                y = _SetNormFunction.apply(xs, w, b, self.eps, relu, mask)
            return y.to(x.dtype)
        xs = x.to(dtype).contiguous()
        if kernels.applies(xs):  # padded [B, N, D] with a bool mask: the kernels skip padded rows
            y = _SetNormKernelFunction.apply(xs, w, b, self.eps, relu, _dense_offsets(*xs.shape[:2]),
                                             mask.contiguous())
            return y.to(x.dtype)
        return self._padded_eager(xs, mask, w, b, relu).to(x.dtype)

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
    """Set norm (optionally followed by ReLU) with a hand-written backward, for unpadded or packed sets.

    Forward: one reduction for the means, one centering pass, one reduction for the variances, and the affine
    (and ReLU) applied in place; the variance is taken of centered values (no cancellation). Backward, with
    ``G`` the gradient at the norm's output (zero where the ReLU was off) and ``xhat`` the normalized input::

        dx = rstd * (G w - mean(G w) - xhat * mean(G w xhat))      (means over the set's elements x features)

    computed from two per-set, per-feature sums (``sum_n G`` and ``sum_n G x``) and two passes. Native layer
    norm over a whole ``[N, D]`` slab is several times slower on CPU (Welford statistics, a dense ``[N, D]``
    affine and its gradient).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, relu, packed):
        if packed is None:
            B, N, D = x.shape
            count = float(N * D)
            mean = x.reshape(B, -1).sum(dim=1) / count  # [B]
            xc = x - mean.view(B, 1, 1)
            var = torch.linalg.vector_norm(xc.reshape(B, -1), dim=1).square_() / count
            rstd = (var + eps).rsqrt_()
            y = xc.mul_(rstd.view(B, 1, 1) * weight).add_(bias)
        else:
            D = x.shape[1]
            count = packed.sizes.to(x.dtype) * D  # [B]
            mean = packed.sum(x.sum(dim=1)) / count
            xc = x - packed.expand(mean).unsqueeze(1)
            var = packed.sum(torch.linalg.vector_norm(xc, dim=1).square_()) / count
            rstd = (var + eps).rsqrt_()
            y = xc.mul_(packed.expand(rstd).unsqueeze(1)).mul_(weight).add_(bias)
        if relu:
            y.relu_()
        ctx.save_for_backward(x, weight, bias, mean, rstd, *((y,) if relu else ()))
        ctx.relu, ctx.packed, ctx.count, ctx.eps = relu, packed, count, eps
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, mean, rstd = ctx.saved_tensors[:5]
        packed, count = ctx.packed, ctx.count
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward (higher-order gradients)
            index = packed.index if packed is not None else _dense_index(x.shape[0], x.shape[1], x.device)
            B = packed.num_sets if packed is not None else x.shape[0]
            return (*_reference_grads(x, weight, bias, ctx.eps, ctx.relu, index, None, B, grad), None, None, None)
        G = torch.ops.aten.threshold_backward(grad, ctx.saved_tensors[5], 0) if ctx.relu else grad.contiguous()
        Gx = G * x
        if packed is None:
            C, P = G.sum(dim=1), Gx.sum(dim=1)  # [B, D]: sum_n G, sum_n G x
        else:
            C, P = packed.sum(G), packed.sum(Gx)
        Ph = (P - mean.unsqueeze(1) * C) * rstd.unsqueeze(1)  # sum_n G xhat
        m1 = (C @ weight) / count  # mean(G w) per set
        m2 = (Ph @ weight) / count  # mean(G w xhat) per set
        k = -rstd * rstd * m2  # dx = G (rstd w) + k x + c
        c = -rstd * m1 - k * mean
        dx = None
        if ctx.needs_input_grad[0]:
            if packed is None:
                B = x.shape[0]
                dx = torch.addcmul(c.view(B, 1, 1), x, k.view(B, 1, 1), out=Gx)
                dx.addcmul_(G, (rstd.unsqueeze(1) * weight).unsqueeze(1))
            else:
                dx = torch.addcmul(packed.expand(c).unsqueeze(1), x, packed.expand(k).unsqueeze(1), out=Gx)
                dx.addcmul_(G.mul_(weight) if G is not grad else G * weight, packed.expand(rstd).unsqueeze(1))
        dw = Ph.sum(dim=0) if ctx.needs_input_grad[1] else None
        db = C.sum(dim=0) if ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None, None


class _SetNormKernelFunction(torch.autograd.Function):
    """Set norm (+ ReLU) with the fused CPU kernels of :mod:`deepsets.nn.kernels`; same maths as above."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, relu, offsets, valid=None):
        x = x.contiguous()
        D = x.shape[-1]
        y = torch.empty_like(x)
        valid = None if valid is None else valid.reshape(-1)
        mean, rstd = kernels.set_norm_forward(x.view(-1, D), offsets, weight.contiguous(), bias.contiguous(),
                                              eps, relu, y.view(-1, D), valid)
        ctx.save_for_backward(x, weight, bias, mean, rstd, *((y,) if relu else ()))
        ctx.offsets, ctx.valid, ctx.eps, ctx.relu = offsets, valid, eps, relu
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, mean, rstd = ctx.saved_tensors[:5]
        y = ctx.saved_tensors[5] if len(ctx.saved_tensors) > 5 else None
        D = x.shape[-1]
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward (higher-order gradients)
            sizes = torch.from_numpy(np.diff(ctx.offsets)).to(x.device)
            index = torch.repeat_interleave(torch.arange(len(sizes), device=x.device), sizes)
            grads = _reference_grads(x.reshape(-1, D), weight, bias, ctx.eps, ctx.relu, index, ctx.valid, len(sizes),
                                     grad.reshape(-1, D))
            return (grads[0].view(x.shape), *grads[1:], None, None, None, None)
        dx, dw, db = kernels.set_norm_backward(
            grad.reshape(-1, D), None if y is None else y.view(-1, D), x.view(-1, D), ctx.offsets,
            weight.contiguous(), mean, rstd, ctx.valid,
        )
        return dx.view(x.shape), dw, db, None, None, None, None


@functools.lru_cache(maxsize=64)
def _dense_offsets(B: int, N: int) -> np.ndarray:
    return np.arange(B + 1, dtype=np.int64) * N


def _dense_index(B: int, N: int, device) -> Tensor:
    return torch.arange(B, device=device).repeat_interleave(N)


def _reference_grads(x, weight, bias, eps, relu, index, valid, B, grad):
    """Gradients of set norm (+ ReLU) by autograd through plain ops, keeping the graph (double backward).

    ``x``: rows ``[R, D]`` (or ``[B, N, D]``, flattened here); ``index[r]``: the set of row ``r``; ``valid``: an
    optional bool per row (False = padding). Used only when a backward pass is itself differentiated.
    """
    shape = x.shape
    D = shape[-1]
    x2, g2 = x.reshape(-1, D), grad.reshape(-1, D)
    v = (torch.ones(x2.shape[0], dtype=x.dtype, device=x.device) if valid is None
         else valid.reshape(-1).to(x.dtype)).unsqueeze(1)
    with torch.enable_grad():
        count = (x2.new_zeros(B).index_add(0, index, v.squeeze(1)) * D).clamp_min(1.0)
        mean = x2.new_zeros(B).index_add(0, index, (x2 * v).sum(dim=1)) / count
        xc = (x2 - mean[index].unsqueeze(1)) * v
        var = x2.new_zeros(B).index_add(0, index, xc.square().sum(dim=1)) / count
        y = xc * torch.rsqrt(var + eps)[index].unsqueeze(1) * weight + bias
        y = (F.relu(y) if relu else y) * v
        dx, dw, db = torch.autograd.grad(y, (x2, weight, bias), g2, create_graph=True, allow_unused=True)
    return dx.reshape(shape), dw, db


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
