"""The CPU backend's autograd functions: set norm (C kernels or PyTorch ops with a hand-written backward), a set
norm feeding a linear layer, and a whole clean-path Deep Sets++ block, on unpadded, packed or padded rows.

Each function computes exactly what the reference layers of :mod:`deepsets.nn` compute (tested against them); a
differentiated backward pass (``create_graph=True``) goes through plain PyTorch ops, so higher-order gradients work.

Rows of a set are contiguous for the kernels (``offsets[b]:offsets[b+1]``): ``sets`` is ``None`` (``x`` is
``[B, N, D]``, set ``b`` is ``x[b]``), a :class:`PackedSets` (``x`` holds the valid rows back to back, ``[T, D]``) or
a padded batch's bool mask ``[B, N]`` (kernels only: padded rows are skipped).
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn.masking import stats_dtype
from . import kernels

RELU_IN, RELU_OUT, RESIDUAL = kernels.RELU_IN, kernels.RELU_OUT, kernels.RESIDUAL


class _SetNormFunction(torch.autograd.Function):
    """Set norm (optionally followed by ReLU) with a hand-written backward.

    ``sets`` says which rows form a set: ``None`` (``x`` is ``[B, N, D]``, set ``b`` is ``x[b]``), a
    :class:`PackedSets` (``x`` holds packed rows ``[T, D]``) or a bool mask ``[B, N]`` (padded ``x``; fused
    kernels only). ``use_kernels`` picks the fused C kernels (:mod:`.kernels`) or PyTorch ops
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


def set_norm(norm: nn.Module, x: Tensor, sets=None, relu: bool = False, use_kernels: bool | None = None) -> Tensor:
    """``norm(x)`` (then ReLU with ``relu``) for a :class:`~deepsets.nn.SetNorm` ``norm`` in one pass: the C kernels
    where they apply, else PyTorch ops with the hand-written backward (unpadded or packed rows only)."""
    dtype = stats_dtype(x)
    xs = x.to(dtype).contiguous()
    use = kernels.applies(xs) if use_kernels is None else use_kernels
    y = _SetNormFunction.apply(xs, norm.weight.to(dtype), norm.bias.to(dtype), norm.eps, relu, sets, use)
    return y.to(x.dtype)


def set_norm_with_skip(norm: nn.Module, x: Tensor, sets=None, relu: bool = False) -> tuple[Tensor, Tensor]:
    """``(set_norm(norm, x, sets, relu), skip)`` for a pre-norm residual branch ``x + f(norm(x))``.

    Where the C kernels apply, ``skip`` is a private copy of ``x`` as rows ``[T, D]``, written by the norm's own
    pass: the caller may accumulate its branch into it in place, and its gradient joins the norm's input gradient
    in the norm's backward pass (no separate copy or gradient sum). Elsewhere ``skip`` is ``x``."""
    if kernels.applies(x) and x.dtype == stats_dtype(x) and x.is_contiguous():
        return _SetNormFunction.apply(x, norm.weight.to(x.dtype), norm.bias.to(x.dtype), norm.eps, relu, sets, True,
                                      True)
    return set_norm(norm, x, sets, relu), x


def add_linear(x: Tensor, skip: Tensor, r: Tensor, fc: nn.Linear) -> Tensor:
    """``x + fc(r)`` with the residual add folded into the matrix product (bias-free ``fc``).

    ``skip`` comes from :func:`set_norm_with_skip`: where it is a private ``[T, D]`` copy of ``x``, the product
    accumulates into it in place; where it is ``x`` itself, into a new output."""
    r2 = r.reshape(-1, r.shape[-1])
    if skip is not x:
        return skip.addmm_(r2, fc.weight.t()).view(x.shape)
    return torch.addmm(x.reshape(-1, x.shape[-1]), r2, fc.weight.t()).view(x.shape)


def set_offsets(x: Tensor, sets):
    """Row offsets of the sets (NumPy int64 ``[B + 1]``) of ``x`` (``[B, N, D]``, or packed rows with ``sets``)."""
    return sets.offsets() if isinstance(sets, PackedSets) else _dense_offsets(x.shape[0], x.shape[1])


def _valid_rows(sets):
    """Per-row validity (contiguous bool ``[B * N]``) for a padded batch's bool mask, else None."""
    return sets.contiguous().view(-1) if isinstance(sets, Tensor) else None


class _NormLinear(torch.autograd.Function):
    """``y = [x +] act2(fc(act1(SN(x))))`` (:func:`deepsets.backends.cpu.kernels.norm_linear_forward`); also returns the
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
    """``[x +] act2(fc(act1(norm(x))))`` for a :class:`~deepsets.nn.SetNorm` ``norm`` in one kernel call.

    ``sets``: None (unpadded ``[B, N, D]``), a :class:`PackedSets` (packed rows) or a padded batch's bool mask
    ``[B, N]`` (padded rows are left out of the statistics and normalized to zero; what ``y`` holds there is for
    the caller to mask). ``stats``: the per-set mean and rstd of ``x`` (float64 ``[2, B]``) if known, else None.
    Returns ``(y, stats of x)``, plus the statistics of ``y`` with ``want_stats``. Check :func:`applies` first.
    """
    return _NormLinear.apply(x, stats, sets, norm.eps, flags, want_stats, norm.weight, norm.bias, fc.weight, fc.bias)


# --- a whole clean-path Deep Sets++ block ------------------------------------------------------------------------

class _FusedCleanBlock(torch.autograd.Function):
    """A whole clean-path block ``x + W2 relu(SN2(W1 relu(SN1(x))))`` on the fused CPU kernel
    (:func:`deepsets.backends.cpu.kernels.ds_block_forward`), with its hand-written backward. Returns ``(out, stats)``;
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


class PackedSets:
    """The valid elements of a padded batch stored back to back: ``rows = x[mask]``, ``[T, D]``.

    The backend's Deep Sets++ stack runs on packed rows when a mask is given, so no work is spent on padding;
    per-set statistics reduce the rows of each set (``index[t]`` is the set of row ``t``). Packing costs one host
    sync (the number of valid elements).
    """

    def __init__(self, mask: Tensor):
        self.mask = mask
        self.sizes = mask.sum(dim=1)  # [B] long
        self.num_sets = mask.shape[0]
        self.index = torch.repeat_interleave(torch.arange(self.num_sets, device=mask.device), self.sizes)
        self._offsets = None

    def offsets(self):
        """Row offsets of the sets as a NumPy int64 array ``[B + 1]`` (set ``b`` is rows ``o[b]:o[b+1]``)."""
        if self._offsets is None:
            self._offsets = np.concatenate([[0], np.cumsum(self.sizes.cpu().numpy())]).astype(np.int64)
        return self._offsets

    def pack(self, x: Tensor) -> Tensor:
        """``[B, N, ...]`` -> ``[T, ...]``: the valid rows, set by set."""
        return x[self.mask]

    def unpack(self, rows: Tensor) -> Tensor:
        """``[T, ...]`` -> ``[B, N, ...]`` with zeros in padded rows."""
        out = rows.new_zeros(*self.mask.shape, *rows.shape[1:])
        out[self.mask] = rows
        return out

    def sum(self, rows: Tensor) -> Tensor:
        """Sum of each set's rows: ``[T, ...]`` -> ``[B, ...]``."""
        return rows.new_zeros(self.num_sets, *rows.shape[1:]).index_add(0, self.index, rows)

    def expand(self, per_set: Tensor) -> Tensor:
        """Broadcast a per-set value to its rows: ``[B, ...]`` -> ``[T, ...]``."""
        return per_set[self.index]
