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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .masking import stats_dtype, zero_padding

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
    """

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if _CHUNK_HOOK is not None and mask is None:  # exact chunked inference (deepsets.models.chunked)
            return _CHUNK_HOOK(self, x)
        dtype = stats_dtype(x)
        xs = x.to(dtype)
        B, N, D = xs.shape
        if mask is None:
            # Unpadded: set norm is a layer norm over the whole [N, D] slab of each set, with the per-feature
            # affine broadcast over the N rows: one fused kernel forward and one backward.
            w, b = self.weight.to(dtype), self.bias.to(dtype)
            return F.layer_norm(xs, (N, D), w.expand(N, D), b.expand(N, D), self.eps).to(x.dtype)
        m = mask.to(dtype).unsqueeze(-1)  # [B, N, 1]
        count = (m.sum(dim=(1, 2), keepdim=True) * D).clamp_min(1.0)  # [B, 1, 1] valid values per set
        mean = (xs * m).sum(dim=(1, 2), keepdim=True) / count
        centered = (xs - mean).mul_(m)  # padded rows -> 0 before squaring, whatever they held
        var = torch.linalg.vector_norm(centered, dim=(1, 2), keepdim=True).square() / count  # one pass
        y = torch.addcmul(self.bias.to(dtype), centered * torch.rsqrt(var + self.eps), self.weight.to(dtype))
        return y.mul_(m).to(x.dtype)


    def normalize(self, x: Tensor, mean: Tensor | float, rstd: Tensor | float) -> Tensor:
        """Apply the norm with given statistics (e.g. of a whole set that is seen in chunks)."""
        dtype = stats_dtype(x)
        y = (x.to(dtype) - mean) * rstd
        return torch.addcmul(self.bias.to(dtype), y, self.weight.to(dtype)).to(x.dtype)


# Set by deepsets.models.chunked while it evaluates a huge set chunk by chunk; None otherwise.
_CHUNK_HOOK = None


def set_chunk_hook(hook) -> None:
    global _CHUNK_HOOK
    _CHUNK_HOOK = hook


class LayerNorm(_AffineNorm):
    """Standard layer norm over each element's features; padded rows come out zero."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        y = F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps)
        return zero_padding(y, mask)


class FeatureNorm(_AffineNorm):
    """Batch norm over the valid elements of all sets in the batch; running statistics at eval.

    The only norm whose training-mode output depends on the other sets of the batch (by definition).
    """

    def __init__(self, dim: int, eps: float = EPS, momentum: float = 0.1):
        super().__init__(dim, eps)
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        dtype = stats_dtype(x)
        xs = x.to(dtype)
        if mask is None and x.shape[0] * x.shape[1] == 1 and self.training:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)  # one element: var 0, no error
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
            mean = (xs * m).sum(dim=(0, 1)) / count  # [D]
            centered = (xs - mean) * m
            var = centered.square().sum(dim=(0, 1)) / count
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

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return zero_padding(x, mask)


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
