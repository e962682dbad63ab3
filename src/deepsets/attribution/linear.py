"""The occlusion fast path's correction for the set's statistics: how removing one element moves the output through
the statistics every element's encoding depends on, to first order.

Removing element ``i`` from a set changes, besides its own term in the pooled summary (which the readout removes
exactly), every statistic computed over the set's elements: each set norm's mean and variance (over all elements
and features) and each ISAB's inducing-point attention over the elements. Each such change is of order 1/n and
is computed exactly per element, in closed form, from the values the full set's forward pass saw:

- set norm (mean ``mu``, variance ``var`` over ``N = n D`` values; ``s1_i``, ``s2_i`` the sum and sum of squares of
  element ``i``'s centred values): ``d_mu = -s1_i / (N - D)``,
  ``d_var = (N var - s2_i) / (N - D) - d_mu^2 - var``;
- attention of queries ``q`` over the elements (per query and head, weights ``e_i / den``, output ``A``):
  ``dA = e_i (A - v_i) / (den - e_i)``.

The output then moves by ``sum_l <df/d stat_l, d stat_l(i)>``, the derivatives taken once for the whole set
through a copy of the model (reference layers, parameters shared) in which every such statistic has a
perturbation added: for the Deep Sets family, those of the pooled summary, by one forward pass per statistic
(difference quotients), the decoder then run on each corrected summary; for the Set Transformer family, those
of the output, by one backward pass per output. They include how a statistic's change moves the later ones. What is left out
is second order: O(1/n^2) against an occlusion effect of order 1/n (benchmarks/explain.py measures it).
"""
from __future__ import annotations

import re

import torch
from torch import Tensor

from ..backends import adopt, reference, substitute
from ..nn.attention import Attention, attention
from ..nn.norms import SetNorm

#: set norms whose rows are not the set's elements: an ISAB's inducing points (the first MAB's queries and outputs,
#: the second MAB's keys) and the decoder (PMA seeds, SABs)
NOT_ELEMENTS = re.compile(r"mab0\.(norm_h|norm0|norm1)$|mab1\.norm_k$|^(pma|sabs)(\.|$)")
ELEMENT_KEYS = re.compile(r"mab0\.attn$")  # attention whose keys are the set's elements: an ISAB's first MAB
LARGE_BACKWARD = 200_000  # elements above which the Set Transformer's correction warns about its memory


class _Recorder:
    """What a probed forward pass saw, and the perturbations it added: ``mode`` ``"record"`` (none), ``"reverse"``
    (zero leaves that require grad) or ``"values"`` (given values, for difference quotients)."""

    def __init__(self, mode: str = "record", values: dict | None = None):
        self.mode, self.values = mode, values or {}
        self.norms = []  # (delta_mu, delta_var, mu, var, s1 [n], s2 [n], D)
        self.attns = []  # (delta [1, Q, dim], qp [Q, dim], kv [n, 2 dim], heads, scale)

    def delta(self, index: int, like: Tensor):
        zero = torch.zeros((), dtype=like.dtype, device=like.device)
        if self.mode == "reverse":
            return zero.clone().requires_grad_(True)
        return zero + self.values.get(index, 0.0)  # "record": 0; "values": a given perturbation


class ProbeSetNorm(SetNorm):
    recorder: _Recorder

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        rec = self.recorder
        k = len(rec.norms)
        d_mu, d_var = rec.delta(2 * k, x), rec.delta(2 * k + 1, x)
        m, v, _ = _moments(x)
        if rec.mode == "record":
            c = x.detach()[0] - m.detach().reshape(())  # one set, no padding: [n, D]; each row's own sums
            acc = torch.float64
            rec.norms.append((d_mu, d_var, m.detach().to(acc).reshape(()), v.detach().to(acc).reshape(()),
                              c.sum(1).to(acc), c.square().sum(1).to(acc), x.shape[-1]))
        else:
            rec.norms.append((d_mu, d_var))
        y = self.affine((x - (m + d_mu)) * torch.rsqrt(v + d_var + self.eps))
        return y.to(x.dtype)


def _moments(x: Tensor):
    from ..nn.masking import masked_moments

    return masked_moments(x, None, dims=(1, 2))


class ProbeAttention(Attention):
    recorder: _Recorder

    def attend(self, qp: Tensor, k: Tensor, key_mask: Tensor | None = None) -> Tensor:
        kv = self.kv(k)
        out = attention(qp, kv, self.heads, self.scale, key_mask)
        rec = self.recorder
        if rec.mode == "reverse":
            delta = torch.zeros_like(out, requires_grad=True)
            rec.attns.append((delta, qp.detach()[0], kv.detach()[0], self.heads, self.scale))
            return out + delta
        rec.attns.append(None)
        return out


def probe(member, mode: str = "record", values: dict | None = None):
    """A copy of ``member`` (reference layers, parameters shared) whose set statistics over the elements carry
    perturbations (zero, or ``values``: {index: value}, index ``2 k`` / ``2 k + 1`` the mean / variance of the
    ``k``-th set norm), and the recorder that collects them at the next forward pass."""
    rec = _Recorder(mode, values)
    ref = reference(member)
    names = {id(m): n for n, m in ref.named_modules()}

    def replace(m):  # set norms and attention blocks are leaves here: substitute passes the original modules
        path = names.get(id(m))
        if path is None:
            return None
        if type(m) is SetNorm and not NOT_ELEMENTS.search(path):
            new = adopt(m, ProbeSetNorm)
        elif type(m) is Attention and ELEMENT_KEYS.search(path):
            new = adopt(m, ProbeAttention)
        else:
            return None
        new.recorder = rec
        return new

    return substitute(ref, replace), rec


def stat_changes(rec: _Recorder, n: int) -> Tensor:
    """``[n, 2 L]``: each set norm's change of mean and variance when element ``i`` is removed (exact)."""
    cols = []
    for _, _, mu, var, s1, s2, D in rec.norms:
        N = n * D
        d_mu = -s1 / (N - D)
        cols += [d_mu, (N * var - s2) / (N - D) - d_mu.square() - var]
    return torch.stack(cols, 1)


def leave_one_out(member, x: Tensor, readout_of, n_out: int):
    """``(readout, loo)``: the member's readout of the set ``x [n, D]`` (prepared) and ``loo(slice) -> [c, out]``,
    its output without each element of the slice: removed from the pooled summary exactly, its effect on the
    others' encodings through the set's statistics to first order.

    Without attention over the elements (the Deep Sets family) the statistics' effect is added to the pooled
    summary (its derivatives by one forward pass per statistic) and the decoder runs on the corrected summaries,
    so the decoder's curvature is kept: needed for sum pooling, where the summary moves by O(1). With attention (the Set
    Transformer family) it is added to the output (reverse mode, one backward pass per output)."""
    net, rec = probe(member)
    n = x.shape[0]
    with torch.no_grad():
        h = net.encode(x[None])
        pooled = net.pool(h)[0]
    r = readout_of(member, h[0])
    if n < 2 or (not rec.norms and not any(a is None for a in rec.attns)):
        return r, lambda sl: r.finish(r.without(sl))
    if not rec.attns:
        # d pool / d statistic, one forward pass per statistic: the difference quotient at a step of 1e-3 of the
        # statistic's scale (the summary's response is piecewise linear; float32 keeps ~4 digits of it)
        cols = []
        for j in range(2 * len(rec.norms)):
            _, _, mu, var, *_ = rec.norms[j // 2]
            step = 1e-3 * float(var.sqrt() if j % 2 == 0 else var) or 1e-3
            net_j, _ = probe(member, "values", {j: step})
            with torch.no_grad():
                moved = net_j.pool(net_j.encode(x[None]))[0]
            cols.append(((moved - pooled).to(torch.float64) / step).flatten())
        J = torch.stack(cols, 1)  # [P, 2 L]
        d = stat_changes(rec, n)

        def loo(sl):
            w = r.without(sl)
            return r.finish(w + (d[sl] @ J.T).to(w.dtype).view_as(w))

        return r, loo
    if n > LARGE_BACKWARD:
        import warnings

        warnings.warn(f"occlusion of a {type(member).__name__} on {n:,} elements keeps the whole set's backward pass "
                      f"in memory (about 12 GB at 10^6 elements, dim 64, depth 2); integrated-gradients explains "
                      f"it in bounded memory", stacklevel=3)
    corr = output_correction(member, x, n_out)
    return r, lambda sl: r.finish(r.without(sl)) + corr[sl].to(r.pool.dtype)


def output_correction(member, x: Tensor, n_out: int, chunk: int = 4096) -> Tensor:
    """``[n, out]``: the first-order change of ``member``'s output, through the set's statistics, when each
    element of ``x [n, D]`` is removed (gradients by one backward pass per output)."""
    net, rec = probe(member, "reverse")
    n = x.shape[0]
    with torch.enable_grad():
        out = net.decode(net.pool(net.encode(x[None])))[0]  # [out]
        deltas = [t for d in rec.norms for t in d[:2]] + [a[0] for a in rec.attns]
        grads = []
        for k in range(n_out):
            g = torch.autograd.grad(out[k], deltas, retain_graph=k < n_out - 1, allow_unused=True)
            grads.append([torch.zeros_like(d) if gi is None else gi for gi, d in zip(g, deltas)])
    # the statistics themselves, from a recording pass (the reverse pass keeps only its perturbations)
    net_r, rec_r = probe(member)
    with torch.no_grad():
        net_r.encode(x[None])
    acc = torch.float64
    corr = torch.zeros(n, n_out, dtype=acc)
    if rec_r.norms:
        d = stat_changes(rec_r, n)
        for k in range(n_out):
            g = torch.stack([gi.to(acc).reshape(()) for gi in grads[k][:2 * len(rec_r.norms)]])
            corr[:, k] += d @ g
    base = 2 * len(rec.norms)
    for j, (_, qp, kv, heads, scale) in enumerate(rec.attns):
        Q, dim = qp.shape
        dh = dim // heads
        q = qp.view(Q, heads, dh).to(acc)
        kvv = kv.view(n, 2, heads, dh)

        def logits(i):
            return torch.einsum("qhd,nhd->nqh", q, kvv[i:i + chunk, 0].to(acc)) * scale

        m = torch.full((Q, heads), -torch.inf, dtype=acc)  # the softmax over all elements, once
        for i in range(0, n, chunk):
            m = torch.maximum(m, logits(i).amax(0))
        den = torch.zeros(Q, heads, dtype=acc)
        num = torch.zeros(Q, heads, dh, dtype=acc)
        for i in range(0, n, chunk):
            e = (logits(i) - m).exp()
            den += e.sum(0)
            num += torch.einsum("nqh,nhd->qhd", e, kvv[i:i + chunk, 1].to(acc))
        A = num / den[..., None]
        for k in range(n_out):
            g = grads[k][base + j][0].to(acc).view(Q, heads, dh)
            gA = (g * A).sum(-1)  # [Q, heads]
            for i in range(0, n, chunk):
                e = (logits(i) - m).exp()
                gv = torch.einsum("qhd,nhd->nqh", g, kvv[i:i + chunk, 1].to(acc))
                w = e / (den - e).clamp_min(torch.finfo(acc).tiny)
                corr[i:i + chunk, k] += (w * (gA - gv)).sum((1, 2))
    return corr
