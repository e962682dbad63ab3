"""Exact inference on one huge set at the matrix-product rate (used by :func:`~deepsets.backends.chunked.chunked_forward`).

The generic chunked path (:mod:`.chunked`) runs each stage once per set norm it contains, through the reference
layers, chunk by chunk. For the paper's deep models with set norm this module needs no extra products: every
layer takes one pass over the set's activation ``h [n, H]``, which is updated **in place**, and the statistics
that the next set norm needs are accumulated while the pass writes ``h``:

- **Deep Sets++** (clean path, set norm): a block ``h <- h + W2 relu(SN2(t))``, ``t = W1 relu(SN1(h))`` takes two
  passes over tiles of 256 rows that stay in cache (C kernels, :mod:`.cpu.kernels`). SN1's statistics are the
  previous block's output statistics. SN2's need ``t`` for the whole set; instead of storing ``t`` (a second
  ``[n, H]`` buffer), the first pass accumulates the sum and the Gram matrix ``G = sum_n u u^T`` of
  ``u = relu(SN1(h)) - c`` (``c``: a per-feature shift close to the mean of ``u``, which keeps ``G`` a near
  covariance, free of cancellation), from which ``mean(t)`` and ``var(t)`` follow exactly
  (``sum ||t_n - mu||^2 = tr(W1 G W1^T) + ...``, in float64); the second pass applies the whole block in place and
  takes the moments of its output. Cost per block: the two products of the forward plus the Gram matrix's upper
  blocks (3/4 of one product). With sum or mean pooling the output layer is applied after pooling (it is linear),
  so it costs nothing per element.
- **Set Transformer++** (clean path, set norm): per ISAB, one pass streams the keys ``kv(SN(h))`` to the inducing
  points (online softmax: float32 within a chunk, float64 across chunks), one pass computes
  ``h <- h + Att(q(SN(h)), ...)`` in place with its moments, one pass ``h <- h + relu(ff(SN(h)))`` in place with its
  moments. The set norm + linear layer pairs run fused (:func:`.cpu.kernels.norm_linear_forward`).

Memory: the input, one ``[n, H]`` activation (``4 n H`` bytes in float32: 512 MB at ``n = 10^6``, ``H = 128``) and
chunk temporaries of at most ``CHUNK`` rows (a few times ``CHUNK x H``), independent of depth.

Results equal ``model(x)`` up to float round-off (tests: ``tests/test_chunked.py``). :func:`plan` says whether a
model has a fast path; everything else runs on the generic chunked path.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..nn.attention import ISAB, attention
from ..nn.norms import EPS, NoNorm, SetNorm
from ..nn.residual import DeepSetsBlock
from .cpu import kernels

CHUNK = 16_384  # rows per chunk of the Python-level passes (Set Transformer++): temporaries of a few x 8 MB


def _set_norm(m) -> bool:
    return isinstance(m, SetNorm) and m.eps == EPS


def _dtype_ok(model, x: Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and kernels.blocks_enabled()
            and kernels.block_applies(x)
            and not torch.is_autocast_enabled("cpu") and all(p.dtype == x.dtype for p in model.parameters()))


def plan(model, x: Tensor):
    """The fast path for ``model`` on rows ``x [n, D]`` (a function ``(model, x, chunk) -> output``), or None."""
    from ..models.deepsets import DeepSets
    from ..models.settransformer import SetTransformer

    if not _dtype_ok(model, x) or model.config.output not in ("set", "elements"):
        return None
    if type(model).encode_chunked is DeepSets.encode_chunked and isinstance(model, DeepSets):
        c = model.config
        if (c.residual == "clean" and len(model.layers) > 0 and _set_norm(model.final_norm)
                and model.input.bias is None and all(
                    isinstance(b, DeepSetsBlock) and b.residual == "clean" and _set_norm(b.norm1)
                    and _set_norm(b.norm2) and b.fc1.bias is None and b.fc2.bias is None for b in model.layers)):
            return deepsets_forward
    if type(model).encode_chunked is SetTransformer.encode_chunked and isinstance(model, SetTransformer):
        if (model.config.residual == "clean" and _set_norm(model.final_norm)
                and isinstance(model.pma.mab.norm_q, NoNorm) and isinstance(model.pma.mab.norm_k, NoNorm)
                and isinstance(model.pma.mab.norm_h, NoNorm) and all(
                    isinstance(b, ISAB) and b.mab0.residual == b.mab1.residual == "clean"
                    and isinstance(b.mab0.norm_q, NoNorm) and _set_norm(b.mab0.norm_k) and _set_norm(b.mab1.norm_q)
                    and _set_norm(b.mab1.norm_h) for b in model.layers)):
            return settransformer_forward
    return None


# --- statistics ---------------------------------------------------------------------------------------------------

class Moments:
    """Exact mean / variance of a set from chunk moments (float64, Chan et al.)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0.0, 0.0, 0.0

    def add(self, count: float, mean: float, var: float) -> None:
        tot = self.n + count
        if count == 0:
            return
        delta = mean - self.mean
        self.mean += delta * count / tot
        self.m2 += var * count + delta * delta * self.n * count / tot
        self.n = tot

    def stats(self) -> tuple[float, float]:
        """``(mean, variance)``."""
        return self.mean, (max(self.m2, 0.0) / self.n if self.n else 0.0)


def _rstd(var: float, eps: float = EPS) -> float:
    return 1.0 / math.sqrt(var + eps)


def scale_shift(norm, mean: float, rstd: float, dtype) -> tuple[Tensor, Tensor]:
    """A set norm with known statistics as ``x a + s`` (per feature), rounded as the CPU kernels round it."""
    w, b = norm.weight.detach().double(), norm.bias.detach().double()
    return (rstd * w).to(dtype).contiguous(), (b - mean * rstd * w).to(dtype).contiguous()


def gram_stats(W: Tensor, total: Tensor, gram: Tensor, shift: Tensor, n: int) -> tuple[float, float]:
    """Mean and variance over all ``n x H`` values of ``t_n = W (u_n + shift)`` from ``total = sum_n u_n`` and
    ``gram = sum_n u_n u_n^T`` (float64): ``sum ||t_n - mu||^2 = tr(W G W^T) + 2 v^T W total + n ||v||^2`` with
    ``v = W shift - mu``."""
    W = W.detach().double()
    count = n * W.shape[0]
    e, wt = W @ shift.double(), W @ total
    mean = float((wt.sum() + n * e.sum()) / count)
    v = e - mean
    ss = ((W @ gram) * W).sum() + 2.0 * (v @ wt) + n * (v @ v)
    return mean, max(float(ss), 0.0) / count


# --- Deep Sets++ --------------------------------------------------------------------------------------------------

@torch.no_grad()
def deepsets_forward(model, x: Tensor, chunk: int = CHUNK) -> Tensor:
    """A clean-path Deep Sets++ with set norm on one set ``x [n, D]`` -> ``[out]`` (or ``[n, out]``)."""
    n, dt = x.shape[0], x.dtype
    H = model.config.dim
    h = torch.empty(n, H, dtype=dt)
    torch.mm(x, model.input.weight.t(), out=h)  # the one [n, H] buffer, updated in place from here on
    mean, var = kernels.huge_moments(h)
    sample = h[:: max(1, n // 1024)][:1024]  # a view: rows spread over the set
    for b in model.layers:
        a1, s1 = scale_shift(b.norm1, mean, _rstd(var, b.norm1.eps), dt)
        shift = torch.addcmul(s1, sample, a1).relu_().mean(0)  # close to the mean of relu(SN1(h))
        total, gram = kernels.huge_sums(h, a1, s1, shift.contiguous(), gram=True)
        W1 = b.fc1.weight.detach().contiguous()
        tmean, tvar = gram_stats(W1, total, gram, shift, n)
        a2, s2 = scale_shift(b.norm2, tmean, _rstd(tvar, b.norm2.eps), dt)
        mean, rstd = kernels.huge_block(h, a1, s1, W1, a2, s2, b.fc2.weight.detach().contiguous(), EPS)
        var = 1.0 / (rstd * rstd) - EPS
    a, s = scale_shift(model.final_norm, mean, _rstd(var, model.final_norm.eps), dt)
    out = model.output
    kind = model.config.pool
    if model.config.output == "set" and kind in ("sum", "mean"):  # pool, then the (linear) output layer
        total, _ = kernels.huge_sums(h, a, s, None, gram=False)
        z = out.weight.double() @ total + n * out.bias.double()
        z = (z / n if kind == "mean" else z).to(dt).unsqueeze(0)
        return model.decode(z)[0]
    for i in range(0, n, chunk):  # output layer in place, chunk by chunk
        hc = h[i : i + chunk]
        r = torch.addcmul(s, hc, a).relu_()
        torch.addmm(out.bias, r, out.weight.t(), out=hc)
    z = model.pooling(h.unsqueeze(0))  # [1, H]
    if model.config.output == "set":
        return model.decode(z)[0]
    return torch.cat([model.decode_elements(h[i : i + chunk].unsqueeze(0), z, None)[0] for i in range(0, n, chunk)])


# --- Set Transformer++ --------------------------------------------------------------------------------------------

def _norm_linear(x: Tensor, mean: float, rstd: float, norm, fc, flags: int = 0, want_stats: bool = False):
    """``[x +] act(fc(norm(x)))`` for rows ``x [c, D]`` with the set's statistics (fused kernel)."""
    st = torch.tensor([[mean], [rstd]], dtype=torch.float64)
    offsets = np.array([0, x.shape[0]], dtype=np.int64)
    bias = None if fc.bias is None else fc.bias.detach().contiguous()
    y, _, _, st_y = kernels.norm_linear_forward(x, offsets, norm.weight.detach().contiguous(),
                                                norm.bias.detach().contiguous(), fc.weight.detach().contiguous(),
                                                bias, norm.eps, flags, st, want_stats)
    return y, st_y


def stream_attention(attn, qp: Tensor, kv_chunks) -> Tensor:
    """``Att(qp, keys)`` for projected queries ``qp [m, dim]`` over keys given as chunks of the fused key|value
    projection ``[c, 2 dim]``: an exact online softmax (float32 within a chunk, float64 across chunks)."""
    heads, dim = attn.heads, attn.dim
    dh = dim // heads
    m = qp.shape[0]
    q = (qp * attn.scale).view(m, heads, dh).transpose(0, 1)  # [heads, m, dh]
    run_max = torch.full((heads, m, 1), -math.inf, dtype=qp.dtype)
    run_sum = torch.zeros(heads, m, 1, dtype=torch.float64)
    acc = torch.zeros(heads, m, dh, dtype=torch.float64)
    for kv in kv_chunks:
        c = kv.shape[0]
        key = kv[:, :dim].view(c, heads, dh).permute(1, 2, 0)  # [heads, dh, c]
        value = kv[:, dim:].view(c, heads, dh).transpose(0, 1)  # [heads, c, dh]
        logits = torch.bmm(q, key)  # [heads, m, c]
        new_max = torch.maximum(run_max, logits.amax(-1, keepdim=True))
        w = logits.sub_(new_max).exp_()
        rescale = torch.exp(run_max - new_max).double()
        run_sum = run_sum * rescale + w.sum(-1, keepdim=True).double()  # float32 over one chunk
        acc = acc * rescale + torch.bmm(w, value).double()
        run_max = new_max
        del kv, w, logits
    return (acc / run_sum).transpose(0, 1).reshape(m, dim).to(qp.dtype)


def _mab_tail(mab, h: Tensor) -> Tensor:
    """The rest of a clean MAB on a small whole set: ``h + relu(ff(norm_h(h)))``."""
    return h + mab.feed_forward(mab.norm_h(h))


@torch.no_grad()
def settransformer_forward(model, x: Tensor, chunk: int = CHUNK) -> Tensor:
    """A clean-path Set Transformer++ with set norm on one set ``x [n, D]`` -> ``[out]`` (or ``[n, out]``)."""
    n, dt = x.shape[0], x.dtype
    H = model.config.dim
    h = torch.empty(n, H, dtype=dt)
    torch.addmm(model.input.bias, x, model.input.weight.t(), out=h)
    mean, var = kernels.huge_moments(h)
    parts = range(0, n, chunk)
    for blk in model.layers:
        m0, m1 = blk.mab0, blk.mab1
        rstd = _rstd(var)
        # MAB(I, X): the inducing points attend to kv(SN(X)), streamed.
        ind = blk.inducing[0]
        kvs = (_norm_linear(h[i : i + chunk], mean, rstd, m0.norm_k, m0.attn.kv)[0] for i in parts)
        h0 = ind + stream_attention(m0.attn, m0.attn.q(m0.norm_q(ind.unsqueeze(0))[0]), kvs)
        h0 = _mab_tail(m0, h0.unsqueeze(0))  # [1, m, H]
        kv1 = m1.attn.kv(m1.norm_k(h0))  # [1, m, 2H]
        # MAB(X, h0): h <- h + Att(q(SN(h)), kv1) in place, then h <- h + relu(ff(SN(h))) in place.
        acc = Moments()
        for i in parts:
            hc = h[i : i + chunk]
            qp, _ = _norm_linear(hc, mean, rstd, m1.norm_q, m1.attn.q)
            hc += attention(qp.unsqueeze(0), kv1, m1.attn.heads, m1.attn.scale)[0]
            acc.add(hc.shape[0] * H, *kernels.huge_moments(hc))
        mean, var = acc.stats()
        rstd, acc = _rstd(var, m1.norm_h.eps), Moments()
        for i in parts:
            hc = h[i : i + chunk]
            y, st = _norm_linear(hc, mean, rstd, m1.norm_h, m1.ff, kernels.RELU_OUT | kernels.RESIDUAL, True)
            hc.copy_(y)
            r = float(st[1, 0])
            acc.add(hc.shape[0] * H, float(st[0, 0]), 1.0 / (r * r) - EPS)
        mean, var = acc.stats()
    fn = model.final_norm
    a, s = scale_shift(fn, mean, _rstd(var, fn.eps), dt)
    pma = model.pma.mab
    if model.config.output == "elements":
        for i in parts:
            hc = h[i : i + chunk]
            torch.addcmul(s, hc, a, out=hc)
        kvs = (pma.attn.kv(h[i : i + chunk]) for i in parts)
    else:
        kvs = (torch.addmm(pma.attn.kv.bias, torch.addcmul(s, h[i : i + chunk], a), pma.attn.kv.weight.t())
               for i in parts)
    seeds = model.pma.seeds[0]
    p = seeds + stream_attention(pma.attn, pma.attn.q(seeds), kvs)
    z = model.sabs(_mab_tail(pma, p.unsqueeze(0))).flatten(1)  # [1, num_seeds * H]
    if model.config.output == "set":
        return model.decode(z)[0]
    return torch.cat([model.decode_elements(h[i : i + chunk].unsqueeze(0), z, None)[0] for i in parts])
