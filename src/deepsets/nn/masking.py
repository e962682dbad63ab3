"""Masked set maths, written once.

Convention (used by every layer and model): a batch of sets is ``x: float[B, N, D]`` with
``mask: bool[B, N]``, True = element present, ``mask=None`` = every element present.
Padded rows never influence valid rows. Models accept anything in padded rows (inf and NaN included: they
are cleared once at the input, see :func:`clear_padding`) and return zeros there. Layers keep zero padding
zero: norms and attention blocks always output zeros in padded rows; a residual block without biases passes
its input's padded rows through (zero in, zero out), which saves a pass over the data.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def check_mask(x: Tensor, mask: Tensor | None, name: str = "mask") -> Tensor | None:
    """Validate ``mask`` against ``x[B, N, ...]`` and return it (``None`` stays ``None``).

    Only shape and dtype are checked, so no device synchronisation happens here.
    """
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of dtype bool, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{name} must have dtype torch.bool (True = element present), got {mask.dtype}; "
            f"convert with mask.bool() if it holds 0/1"
        )
    if mask.dim() != 2 or tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(
            f"{name} must have shape [B, N] = {list(x.shape[:2])} to match x of shape {list(x.shape)}, "
            f"got {list(mask.shape)}"
        )
    return mask


def check_sets(x: Tensor, mask: Tensor | None = None) -> Tensor | None:
    """Validate a model input: ``x`` is ``[B, N, D]`` and ``mask`` matches it."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape [B, N, D], got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(
            f"x must have shape [B, N, D] (sets, elements, features), got {x.dim()} dims: {list(x.shape)}; "
            f"for a single set use x.unsqueeze(0)"
        )
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    return check_mask(x, mask)


def is_tracing() -> bool:
    """True while the model is being exported or traced (``torch.export``, ONNX export, ``torch.jit.trace``).

    Checks that read the values of the inputs (not only their shapes) are skipped then: a graph cannot branch on
    data, and the exported file is checked against the eager model instead.
    """
    return torch.compiler.is_exporting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def check_nonempty(mask: Tensor | None, n: int) -> None:
    """Raise a clear error if any set has no elements (one host sync; models call it once per forward).

    The per-set check reads the mask's values, so it is skipped while exporting (:func:`is_tracing`).
    """
    if n == 0:
        raise ValueError("every set is empty (N = 0 elements); deep set models need at least one element per set")
    if mask is None or is_tracing():
        return
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        idx = empty.nonzero().flatten().tolist()
        shown = ", ".join(map(str, idx[:10])) + (" ..." if len(idx) > 10 else "")
        raise ValueError(
            f"{len(idx)} set(s) in the batch have no elements (mask all False) at batch index {shown}; "
            f"drop empty sets before calling the model"
        )


def clear_padding(x: Tensor, mask: Tensor | None) -> Tensor:
    """Set padded rows to exactly zero, whatever they held (inf and NaN included)."""
    if mask is None:
        return x
    return x.masked_fill(~mask.unsqueeze(-1), 0.0)


def zero_padding(x: Tensor, mask: Tensor | None) -> Tensor:
    """Zero the padded rows of a layer output (finite values assumed; cheaper than ``clear_padding``)."""
    if mask is None:
        return x
    return x * mask.unsqueeze(-1).to(x.dtype)


def set_sizes(x: Tensor, mask: Tensor | None) -> Tensor:
    """Number of valid elements per set, ``[B]`` (long)."""
    if mask is None:
        return torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
    return mask.sum(dim=1)


def stats_dtype(x: Tensor) -> torch.dtype:
    """Statistics are accumulated in at least float32 (half/bfloat16 inputs under autocast)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def masked_moments(x: Tensor, mask: Tensor | None, dims: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, (biased) variance and count of ``x [B, N, D]`` over ``dims``, valid elements only (keepdim).

    The one place where masked statistics are computed: ``dims=(1, 2)`` gives one mean and variance per set
    (set norm), ``dims=(0, 1)`` one per feature over the batch (feature norm). The variance is that of the
    centered values (no cancellation); statistics are in at least float32.
    """
    x = x.to(stats_dtype(x))
    if mask is None:
        var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
        return mean, var, torch.full_like(mean, math.prod(x.shape[d] for d in dims))
    m = mask.unsqueeze(-1).to(x.dtype)  # [B, N, 1]
    count = torch.broadcast_to(m, x.shape).sum(dim=dims, keepdim=True).clamp_min(1.0)
    mean = (x * m).sum(dim=dims, keepdim=True) / count
    var = ((x - mean) * m).square().sum(dim=dims, keepdim=True) / count
    return mean, var, count
