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

Every norm is ``norm_layer(dim)`` with ``forward(x, mask=None)``; layers take the class (``norm_layer=SetNorm``)
and model configs resolve the names of :data:`NORMS` once. Adding a norm is one class plus one entry in
:data:`NORMS` (or :func:`register_norm`). ``elementwise = True`` says that each output row depends only on its own
input row (at evaluation), which is what exact chunked inference needs to know about a norm it has no special
handling for.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .masking import masked_moments, stats_dtype, zero_padding

EPS = 1e-5  # PAPER.md: eps = 1e-5 for every norm


class _AffineNorm(nn.Module):
    def __init__(self, dim: int, eps: float = EPS):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))  # gamma = 1 at init
        self.bias = nn.Parameter(torch.zeros(dim))  # beta = 0 at init

    def affine(self, xhat: Tensor) -> Tensor:
        """``gamma * xhat + beta``."""
        return torch.addcmul(self.bias.to(xhat.dtype), xhat, self.weight.to(xhat.dtype))

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class SetNorm(_AffineNorm):
    """One mean and one variance per set, over its valid elements and all features.

    ``SN(X)_nd = gamma_d * (x_nd - mu) / sqrt(sigma^2 + eps) + beta_d``. Statistics are computed in
    float32 (float64 for float64 input) even under autocast; padded rows are ignored and come out zero.
    """

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        mu, var, _ = masked_moments(x, mask, dims=(1, 2))  # [B, 1, 1]
        y = self.affine((x - mu) * torch.rsqrt(var + self.eps))
        return zero_padding(y, mask).to(x.dtype)


class LayerNorm(_AffineNorm):
    """Standard layer norm over each element's features; padded rows come out zero."""

    elementwise = True

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return zero_padding(F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps), mask)


class FeatureNorm(_AffineNorm):
    """Batch norm over the valid elements of all sets in the batch; running statistics at eval.

    The only norm whose training-mode output depends on the other sets of the batch (by definition).
    """

    elementwise = True  # at evaluation (running statistics)

    def __init__(self, dim: int, eps: float = EPS, momentum: float = 0.1):
        super().__init__(dim, eps)
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        dt = stats_dtype(x)
        if self.training:
            mu, var, n = masked_moments(x, mask, dims=(0, 1))  # [1, 1, D]
            with torch.no_grad():  # running variance: the unbiased estimate, as torch.nn.BatchNorm keeps it
                self.running_mean.lerp_(mu.flatten().to(self.running_mean.dtype), self.momentum)
                unbiased = var.flatten() * n.flatten() / (n.flatten() - 1).clamp_min(1.0)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        else:
            mu, var = self.running_mean.to(dt), self.running_var.to(dt)
        y = self.affine((x.to(dt) - mu) * torch.rsqrt(var + self.eps))
        return zero_padding(y, mask).to(x.dtype)


class NoNorm(nn.Module):
    """Identity with the norm signature; zeroes padded rows like every other norm."""

    elementwise = True

    def __init__(self, dim: int | None = None, eps: float = EPS):
        super().__init__()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return zero_padding(x, mask)


NORMS: dict[str, type[nn.Module]] = {
    "set": SetNorm,
    "layer": LayerNorm,
    "feature": FeatureNorm,
    "none": NoNorm,
}


def register_norm(name: str, norm_layer: type[nn.Module]) -> type[nn.Module]:
    """Make ``norm=name`` build ``norm_layer(dim)`` in every model (``norm_layer(dim)(x, mask)`` -> same shape)."""
    if name in NORMS:
        raise ValueError(f"a norm named {name!r} is already registered")
    NORMS[name] = norm_layer
    return norm_layer


def resolve_choice(kind: str, value: str, choices) -> str:
    """Return ``value`` if it is one of ``choices``, else raise an error that lists them."""
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; valid choices: {', '.join(repr(c) for c in choices)}")
    return value


def norm_layer(name: str) -> type[nn.Module]:
    """The norm class registered as ``name`` (``set``, ``layer``, ``feature``, ``none``, ...)."""
    return NORMS[resolve_choice("norm", name, NORMS)]


def make_norm(name: str, dim: int) -> nn.Module:
    """Build a norm by name."""
    return norm_layer(name)(dim)
