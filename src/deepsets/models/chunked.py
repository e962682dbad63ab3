"""Exact inference on huge sets (10^6 elements and more) in bounded memory.

A set is processed in chunks of rows. Everything per element (linear layers, activations, layer norm, feature
norm at eval) is computed chunk by chunk; what needs the whole set is computed exactly across chunks:

- **set norm statistics**: a stage (a function of one element's row that may contain set norms) is run over
  all chunks once per set norm it contains, accumulating that norm's mean and variance exactly (float64,
  pairwise combination of chunk moments); a final pass applies every norm with its whole-set statistics.
- **attention over all elements** (an ISAB's inducing points, PMA's seed): a streaming softmax keeps, per
  query and head, the running maximum logit, the running sum of exponentials and the weighted value sum.
- **pooling**: running sum / count / max.

Memory: one ``[n, H]`` activation buffer (updated in place) plus chunk temporaries. The result equals
``model(x)`` up to float round-off (tested). Inference only: the model must be in eval mode.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn import norms as _norms
from ..nn.attention import ISAB, MAB, PMA
from .base import SetModel
from .deepsets import DeepSets
from .settransformer import SetTransformer


class _Moments:
    """Exact running mean / variance over chunks of values (float64, Chan et al. pairwise update)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: Tensor) -> None:
        xd = x.detach().double()
        n = xd.numel()
        if n == 0:
            return
        mean = xd.mean().item()
        m2 = (xd - mean).square().sum().item()
        delta = mean - self.mean
        tot = self.n + n
        self.mean += delta * n / tot
        self.m2 += m2 + delta * delta * self.n * n / tot
        self.n = tot

    def finalize(self, eps: float) -> tuple[float, float]:
        var = self.m2 / max(self.n, 1)
        return self.mean, 1.0 / math.sqrt(var + eps)


class _Collecting(Exception):
    """Raised inside a stage when the set norm whose statistics are being collected has seen its chunk."""


class _StatsHook:
    """Installed as the SetNorm hook: applies known whole-set statistics, or collects the next unknown one."""

    def __init__(self):
        self.stats: dict[int, tuple[float, float]] = {}
        self.collecting: int | None = None
        self.moments: _Moments | None = None
        self.module = None

    def __call__(self, norm, x: Tensor) -> Tensor:
        key = id(norm)
        if key in self.stats:
            mean, rstd = self.stats[key]
            return norm.normalize(x, mean, rstd)
        if self.collecting is None:
            self.collecting, self.moments, self.module = key, _Moments(), norm
        if key != self.collecting:  # pragma: no cover - a stage calls its norms in a fixed order
            raise RuntimeError("set norms were called in a different order in two chunks")
        self.moments.update(x)
        raise _Collecting

    def resolve(self) -> None:
        self.stats[self.collecting] = self.moments.finalize(self.module.eps)
        self.collecting = self.moments = self.module = None


def map_chunks(fn, x: Tensor, chunk: int, consume) -> None:
    """Run ``fn`` (rows ``[c, D]`` -> rows) on every chunk of ``x`` with exact whole-set set norm statistics.

    Extra passes over the chunks collect the statistics of each set norm inside ``fn``, in call order; the last
    pass calls ``consume(start, rows_out)`` for every chunk.
    """
    hook = _StatsHook()
    n = x.shape[0]
    _norms.set_chunk_hook(hook)
    try:
        while True:
            done = True
            for i in range(0, n, chunk):
                try:
                    y = fn(x[i : i + chunk])
                except _Collecting:
                    done = False
                    continue
                consume(i, y)
            if done:
                return
            hook.resolve()
    finally:
        _norms.set_chunk_hook(None)


def _no_hook(fn, *args):
    """Evaluate a small, whole set (inducing points, seeds) with ordinary set norms."""
    saved = _norms._CHUNK_HOOK
    _norms.set_chunk_hook(None)
    try:
        return fn(*args)
    finally:
        _norms.set_chunk_hook(saved)


def _map_rows(fn, h: Tensor, chunk: int, out_dim: int | None = None) -> Tensor:
    """``fn`` applied to every row of ``h``; written in place when the width is unchanged."""
    out = h if out_dim is None or out_dim == h.shape[1] else h.new_empty(h.shape[0], out_dim)

    def consume(i, y):
        out[i : i + y.shape[0]] = y

    map_chunks(fn, h, chunk, consume)
    return out


def _rows(module_fn):
    """Adapt a set layer ``f(x[B, N, D], mask)`` to rows ``[c, D]`` of one set."""
    return lambda r: module_fn(r.unsqueeze(0)).squeeze(0)


def _streaming_attention(mab: MAB, q: Tensor, h: Tensor, chunk: int) -> Tensor:
    """``mab(q, h)`` for a small query set ``q [m, H]`` attending to all rows of ``h`` (exact softmax)."""
    attn = mab.attn
    heads, dh = attn.heads, attn.dim // attn.heads
    qp = _no_hook(lambda: attn.q(mab.query_input(q.unsqueeze(0)))).squeeze(0)  # [m, H]
    qh = qp.view(-1, heads, dh).transpose(0, 1).double()  # [heads, m, dh]
    m = qh.shape[1]
    f64 = dict(dtype=torch.float64, device=qp.device)
    run_max = torch.full((heads, m, 1), -math.inf, **f64)
    run_sum = torch.zeros(heads, m, 1, **f64)
    acc = torch.zeros(heads, m, dh, **f64)

    def keys(rows):
        return mab.key_input(rows.unsqueeze(0)).squeeze(0)

    def consume(_, k_in):
        nonlocal run_max, run_sum, acc
        key, value = attn.kv(k_in).view(-1, 2, heads, dh).permute(1, 2, 0, 3).double()  # 2 x [heads, c, dh]
        logits = qh @ key.transpose(1, 2) * attn.scale  # [heads, m, c]
        new_max = torch.maximum(run_max, logits.amax(-1, keepdim=True))
        rescale = torch.exp(run_max - new_max)
        w = torch.exp(logits - new_max)
        run_sum = run_sum * rescale + w.sum(-1, keepdim=True)
        acc = acc * rescale + w @ value
        run_max = new_max

    map_chunks(keys, h, chunk, consume)
    att = (acc / run_sum).transpose(0, 1).reshape(1, m, attn.dim).to(q.dtype)
    return _no_hook(lambda: mab.after_attention(q.unsqueeze(0), qp.unsqueeze(0), att)).squeeze(0)


def _isab(block: ISAB, h: Tensor, chunk: int) -> Tensor:
    ind = _streaming_attention(block.mab0, block.inducing[0], h, chunk)  # [m, H], exact over all rows
    k_in = _no_hook(lambda: block.mab1.key_input(ind.unsqueeze(0)))  # the m inducing outputs, a whole set
    return _map_rows(lambda r: block.mab1.forward_keys(r.unsqueeze(0), k_in).squeeze(0), h, chunk,
                     block.mab1.ff.out_features)


@torch.no_grad()
def _encode_pool_one(model: SetModel, x: Tensor, chunk: int) -> tuple[Tensor, Tensor | None]:
    """Pooled representation ``[1, H']`` of one set ``x [n, D]`` (and per-element features if needed)."""
    if isinstance(model, DeepSets):
        h = x
        if model.config.residual != "none":
            h = _map_rows(model.input, h, chunk, model.input.out_features)
        for layer in model.layers:
            h = _map_rows(_rows(layer), h, chunk, model.config.dim)

        def tail(r):
            if model.final_norm is not None:
                r = F.relu(model.final_norm(r.unsqueeze(0)).squeeze(0))
            return model.output(r)

        h = _map_rows(tail, h, chunk)
        kind = model.config.pool
        if kind == "max":
            z = torch.stack([h[i : i + chunk].amax(0) for i in range(0, len(h), chunk)]).amax(0)
        else:
            z = sum(h[i : i + chunk].double().sum(0) for i in range(0, len(h), chunk)).to(h.dtype)
            if kind == "mean":
                z = z / len(h)
        return z.unsqueeze(0), h
    if isinstance(model, SetTransformer):
        h = x if model.input is None else _map_rows(model.input, x, chunk, model.input.out_features)
        for block in model.layers:
            h = _isab(block, h, chunk)
        if model.final_norm is not None:
            h = _map_rows(_rows(model.final_norm), h, chunk)
        pma: PMA = model.pma
        z = _streaming_attention(pma.mab, pma.seeds[0], h, chunk).unsqueeze(0)  # [1, seeds, H]
        for sab in model.sabs:
            z = sab(z)
        return z.flatten(1), h
    raise TypeError(f"chunked inference supports the registered families, not {type(model).__name__}")


@torch.no_grad()
def chunked_forward(model: SetModel, x: Tensor, mask: Tensor | None = None, chunk_size: int = 65_536) -> Tensor:
    """``model(x, mask)`` computed exactly, one set at a time, ``chunk_size`` elements at a time.

    Use for sets too large for memory (e.g. one set of 10^6 cells). Returns what ``model(x, mask)`` returns:
    ``[B, out]``, or ``[B, N, out]`` with ``output="elements"``.
    """
    from ..nn.masking import check_nonempty, check_sets

    if model.training:
        raise ValueError("chunked inference needs model.eval() (feature norm must use running statistics)")
    mask = check_sets(x, mask)
    if x.shape[-1] != model.config.in_dim:
        raise ValueError(f"x has {x.shape[-1]} features per element but the model expects in_dim={model.config.in_dim}")
    check_nonempty(mask, x.shape[1])
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    outs = []
    for b in range(x.shape[0]):
        xb = x[b] if mask is None else x[b][mask[b]]
        z, h = _encode_pool_one(model, xb.contiguous(), chunk_size)
        if model.config.output == "elements":
            per = torch.cat([model.decode_elements(h[i : i + chunk_size].unsqueeze(0), z, None)
                             for i in range(0, len(h), chunk_size)], 1)
            full = per.new_zeros(x.shape[1], per.shape[-1])
            full[mask[b] if mask is not None else slice(None)] = per[0]
            outs.append(full)
        else:
            outs.append(model.decode(z)[0])
    return torch.stack(outs)
