"""Whole layers on the fused CPU kernels: a set norm and the linear layer it feeds in one kernel call.

The kernels (:mod:`deepsets.nn.kernels`, ``setnorm.c``) cut the rows into tiles, normalize each tile into a
buffer that stays in the cache and multiply it there with the BLAS routine PyTorch itself uses, so normalized
activations never go to memory (the backward pass recomputes them). They also return the per-set statistics
of what they write where the next layer normalizes it, which saves that layer a pass. They take over only
where they compute exactly what the plain layers compute: float32/float64 on CPU, unpadded ``[B, N, D]``, packed
rows, or (where the caller masks its output) padded ``[B, N, D]`` with a bool mask; no autocast, and not under
tracing or a dispatch mode (``deepsets bench`` counts FLOPs with one).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import kernels, norms
from .masking import PackedSets
from .norms import grads_through, plain_set_norm

RELU_IN, RELU_OUT, RESIDUAL = kernels.RELU_IN, kernels.RELU_OUT, kernels.RESIDUAL


def applies(x: Tensor, mask, params, set_norms, padded: bool = False) -> bool:
    """Whether the layer-level kernels may run on ``x`` (with ``mask``), parameters ``params`` and the set norms
    ``set_norms`` they fuse; ``padded``: the caller also handles padded ``[B, N, D]`` with a bool mask."""
    if not kernels.blocks_enabled():
        return False
    if not all(isinstance(n, norms.SetNorm) and n.eps == norms.EPS for n in set_norms):
        return False  # statistics pass from layer to layer as (mean, rstd): every fused norm has the same eps
    if not (mask is None and x.dim() == 3 or isinstance(mask, PackedSets) and x.dim() == 2
            or padded and isinstance(mask, Tensor) and mask.dtype == torch.bool and x.dim() == 3):
        return False
    if (norms._CHUNK_HOOK is not None or torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None
            or torch.is_autocast_enabled(x.device.type)):
        return False  # chunked inference, tracing, dispatch modes (e.g. FLOP counting) and autocast see plain ops
    return x.is_contiguous() and all(p.dtype == x.dtype for p in params) and kernels.block_applies(x)


def set_offsets(x: Tensor, sets):
    """Row offsets of the sets (NumPy int64 ``[B + 1]``) of ``x`` (``[B, N, D]``, or packed rows with ``sets``)."""
    return sets.offsets() if isinstance(sets, PackedSets) else norms._dense_offsets(x.shape[0], x.shape[1])


def _valid_rows(sets):
    """Per-row validity (contiguous bool ``[B * N]``) for a padded batch's bool mask, else None."""
    return sets.contiguous().view(-1) if isinstance(sets, Tensor) else None


class _NormLinear(torch.autograd.Function):
    """``y = [x +] act2(fc(act1(SN(x))))`` (:func:`deepsets.nn.kernels.norm_linear_forward`); also returns the
    statistics of ``x`` and (``want_stats``) of ``y``, not differentiable: their dependence on ``x`` is part of
    the backward of the layers that use them. A differentiated backward goes through plain ops."""

    @staticmethod
    def forward(ctx, x, stats, sets, eps, flags, want_stats, w, b, W, bias):
        D = x.shape[-1]
        offsets = set_offsets(x, sets)
        w, b, W = w.contiguous(), b.contiguous(), W.contiguous()
        bias = None if bias is None else bias.contiguous()
        y, gate, st_x, st_y = kernels.norm_linear_forward(x.view(-1, D), offsets, w, b, W, bias, eps, flags, stats,
                                                          want_stats, _valid_rows(sets))
        st_x = st_x.clone() if stats is not None else st_x
        ctx.save_for_backward(x, st_x, gate, w, b, W, bias)
        ctx.sets, ctx.eps, ctx.flags, ctx.offsets = sets, eps, flags, offsets
        outs = (y.view(*x.shape[:-1], W.shape[0]), st_x) + ((st_y,) if want_stats else ())
        ctx.mark_non_differentiable(*outs[1:])
        return outs

    @staticmethod
    def backward(ctx, grad, *_stats_grads):
        x, st_x, gate, w, b, W, bias = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: the same layer in plain differentiable ops
            grads = grads_through(lambda *a: reference(*a, ctx.eps, ctx.flags, ctx.sets), (x, w, b, W, bias), grad)
        else:
            D = x.shape[-1]
            dx, dw, db, dW, dbias = kernels.norm_linear_backward(grad.reshape(-1, W.shape[0]), x.view(-1, D),
                                                                 ctx.offsets, w, b, W, bias is not None, ctx.flags,
                                                                 st_x, gate, _valid_rows(ctx.sets))
            grads = [dx.view(x.shape), dw, db, dW, dbias]
        return grads[0], None, None, None, None, None, *grads[1:]


def reference(x, w, b, W, bias, eps, flags, sets):
    """What :class:`_NormLinear` computes, in plain PyTorch ops."""
    y = F.linear(plain_set_norm(x, w, b, eps, bool(flags & RELU_IN), sets), W, bias)
    y = F.relu(y) if flags & RELU_OUT else y
    return x + y if flags & RESIDUAL else y


def norm_linear(x: Tensor, sets, stats: Tensor | None, norm: nn.Module, fc: nn.Linear, flags: int = 0,
                want_stats: bool = False):
    """``[x +] act2(fc(act1(norm(x))))`` for a :class:`~deepsets.nn.norms.SetNorm` ``norm`` in one kernel call.

    ``sets``: None (unpadded ``[B, N, D]``), a :class:`PackedSets` (packed rows) or a padded batch's bool mask
    ``[B, N]`` (padded rows are left out of the statistics and normalized to zero; what ``y`` holds there is for
    the caller to mask). ``stats``: the per-set mean and rstd of ``x`` (float64 ``[2, B]``) if known, else None.
    Returns ``(y, stats of x)``, plus the statistics of ``y`` with ``want_stats``. Check :func:`applies` first.
    """
    return _NormLinear.apply(x, stats, sets, norm.eps, flags, want_stats, norm.weight, norm.bias, fc.weight, fc.bias)


# --- a whole clean-path Deep Sets++ block ------------------------------------------------------------------------

class _FusedCleanBlock(torch.autograd.Function):
    """A whole clean-path block ``x + W2 relu(SN2(W1 relu(SN1(x))))`` on the fused CPU kernel
    (:func:`deepsets.nn.kernels.ds_block_forward`), with its hand-written backward. Returns ``(out, stats)``;
    ``stats`` (per-set mean and rstd of ``out``) is not differentiable: its dependence on ``out`` is part of the
    next block's backward. A differentiated backward (``create_graph=True``) goes through plain ops."""

    @staticmethod
    def forward(ctx, x, stats, eps, sets, w1, b1, W1, w2, b2, W2):
        D = x.shape[-1]
        offsets = set_offsets(x, sets)
        params = tuple(p.contiguous() for p in (w1, b1, W1, w2, b2, W2))
        out, t, st_x, st_t, st_out = kernels.ds_block_forward(x.view(-1, D), offsets, params, eps, stats)
        ctx.save_for_backward(x, t, st_x, st_t, *params)
        ctx.mark_non_differentiable(st_out)
        ctx.eps, ctx.sets, ctx.offsets = eps, sets, offsets
        return out.view(x.shape), st_out

    @staticmethod
    def backward(ctx, grad, _grad_stats):
        x, t, st_x, st_t, *params = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: the same block in plain differentiable ops
            grads = grads_through(lambda *a: clean_block_reference(*a, ctx.eps, ctx.sets), (x, *params), grad)
        else:
            D = x.shape[-1]
            dx, *pgrads = kernels.ds_block_backward(grad.reshape(-1, D), x.view(-1, D), t, ctx.offsets, params,
                                                    st_x, st_t)
            grads = [dx.view(x.shape), *pgrads]
        return grads[0], None, None, None, *grads[1:]


def clean_block_reference(x, w1, b1, W1, w2, b2, W2, eps, sets):
    """The clean-path block in plain PyTorch ops (what :class:`_FusedCleanBlock` computes)."""
    r = plain_set_norm(x, w1, b1, eps, True, sets)
    h = plain_set_norm(F.linear(r, W1), w2, b2, eps, True, sets)
    return x + F.linear(h, W2)


def clean_block(x: Tensor, sets, stats: Tensor | None, norm1: nn.Module, fc1: nn.Linear, norm2: nn.Module,
                fc2: nn.Linear):
    """``(x + fc2(relu(norm2(fc1(relu(norm1(x)))))), stats of the output)`` in one kernel call (bias-free
    linear layers, set norms with the library's eps). ``sets``: None or a :class:`PackedSets`; ``stats``: those of
    ``x`` if known, else None. Check :func:`applies` first."""
    return _FusedCleanBlock.apply(x, stats, norm1.eps, sets, norm1.weight, norm1.bias, fc1.weight, norm2.weight,
                                  norm2.bias, fc2.weight)
