"""Exact inference on huge sets (10^6 elements and more) in bounded memory.

A set is processed in chunks of rows. Everything per element (linear layers, activations, layer norm, feature
norm at eval) is computed chunk by chunk; what needs the whole set is computed exactly across chunks:

- **set norm statistics**: a stage (a function of one element's row that may contain set norms) is run over
  all chunks once per set norm it contains, accumulating that norm's mean and variance exactly (float64,
  pairwise combination of chunk moments); a final pass applies every norm with its whole-set statistics.
- **attention over all elements** (an ISAB's inducing points, PMA's seed): a streaming softmax keeps, per
  query and head, the running maximum logit, the running sum of exponentials and the weighted value sum.
- **pooling**: running sum / count / max.

How: :func:`chunked_forward` builds, for its own use, a copy of the model's module tree (parameters shared) in
which every set norm is a :class:`ChunkSetNorm` and every attention a :class:`StreamingAttention`, both bound to
one :class:`ChunkedRun`. Each family says how it is evaluated in chunks (``encode_chunked`` / ``pool_chunked``, in
terms of :meth:`ChunkedRun.rows`, :meth:`ChunkedRun.keys` and :meth:`ChunkedRun.pool`); the model itself and the
layers' code are not changed, and nothing outside the run holds state.

Memory: one ``[n, H]`` activation buffer (updated in place) plus chunk temporaries. The result equals
``model(x)`` up to float round-off (tested). Inference only: the model must be in eval mode.

This is the generic path, for any family that declares ``encode_chunked`` / ``pool_chunked``. Where a model has
one, :func:`chunked_forward` takes the fast path of :mod:`.huge` instead (clean-path Deep Sets++ and Set
Transformer++ with set norm, and models with element-wise norms only: one pass per layer, about the time of the forward's matrix products, memory bounded
by the input plus one ``[n, H]`` activation plus chunk temporaries, whatever the depth).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..nn.attention import Attention
from ..nn.norms import NORMS, SetNorm
from . import adopt, substitute


class Chunk(Tensor):
    """Rows ``[1, c, D]`` of the huge set, one chunk of a pass (tensors computed from them stay ``Chunk``s): set
    norms that see one use the whole set's statistics. Other tensors (inducing points, seeds) are whole sets."""


class Keys:
    """A huge set ``[n, D]`` used as keys of an attention block: its rows, produced chunk by chunk on demand,
    through the row-wise functions (norms with known statistics) applied to it so far."""

    def __init__(self, run: "ChunkedRun", rows: Tensor, fn=None):
        self.run, self.rows, self.fn = run, rows, fn
        self.shape = (1, rows.shape[0])  # batch of one set (what the attention blocks read)

    def then(self, f) -> "Keys":
        g = self.fn
        return Keys(self.run, self.rows, f if g is None else (lambda r: f(g(r))))

    def chunks(self):
        for i in range(0, self.rows.shape[0], self.run.chunk):
            r = self.rows[i : i + self.run.chunk].unsqueeze(0)
            yield r if self.fn is None else self.fn(r)


class _Moments:
    """Exact running mean / variance over chunks of values (float64, Chan et al. pairwise update)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: Tensor) -> None:
        xd = x.detach().as_subclass(Tensor).double()
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
        return self.mean, 1.0 / math.sqrt(self.m2 / max(self.n, 1) + eps)


class _Collecting(Exception):
    """Raised inside a stage when the set norm whose statistics are being collected has seen its chunk."""


class ChunkSetNorm(SetNorm):
    """Set norm inside a chunked run: whole-set statistics for :class:`Chunk` rows and :class:`Keys`, the
    ordinary set norm for small whole sets."""

    run: "ChunkedRun"

    def forward(self, x, mask=None):
        if isinstance(x, Keys):
            moments = _Moments()
            for r in x.chunks():
                moments.update(r)
                del r
            mean, rstd = moments.finalize(self.eps)
            return x.then(lambda r: self.normalize(r, mean, rstd))
        if isinstance(x, Chunk):
            return self.run.chunk_norm(self, x)
        return super().forward(x, mask)

    def normalize(self, x: Tensor, mean: float, rstd: float) -> Tensor:
        """The norm with given statistics."""
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        return self.affine((x.to(dtype) - mean) * rstd).to(x.dtype)


class RowNormOnKeys(nn.Module):
    """A row-wise norm (``elementwise = True``) that also maps :class:`Keys` lazily."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, x, mask=None):
        if isinstance(x, Keys):
            return x.then(self.norm)
        return self.norm(x, mask)


class StreamingAttention(Attention):
    """Attention that streams over :class:`Keys` (exact online softmax in float64); ordinary otherwise."""

    def attend(self, qp: Tensor, k, key_mask: Tensor | None = None) -> Tensor:
        if not isinstance(k, Keys):
            return super().attend(qp, k, key_mask)
        heads, dh = self.heads, self.dim // self.heads
        m = qp.shape[1]
        qh = qp[0].view(m, heads, dh).transpose(0, 1).double()  # [heads, m, dh]
        f64 = dict(dtype=torch.float64, device=qp.device)
        state = (torch.full((heads, m, 1), -math.inf, **f64), torch.zeros(heads, m, 1, **f64),
                 torch.zeros(heads, m, dh, **f64))  # running max logit, sum of exponentials, weighted values
        for rows in k.chunks():
            state = self._update(qh, rows[0], *state)
            del rows  # the chunk's temporaries go before the next chunk is computed
        run_max, run_sum, acc = state
        return (acc / run_sum).transpose(0, 1).reshape(1, m, self.dim).to(qp.dtype)

    def _update(self, qh, rows, run_max, run_sum, acc):
        heads, dh = self.heads, self.dim // self.heads
        key, value = self.kv(rows).view(-1, 2, heads, dh).permute(1, 2, 0, 3).double()  # 2 x [heads, c, dh]
        logits = qh @ key.transpose(1, 2) * self.scale  # [heads, m, c]
        new_max = torch.maximum(run_max, logits.amax(-1, keepdim=True))
        rescale = torch.exp(run_max - new_max)
        w = torch.exp(logits - new_max)
        return new_max, run_sum * rescale + w.sum(-1, keepdim=True), acc * rescale + w @ value


class ChunkedRun:
    """One chunked evaluation: the chunk size, the set norm statistics found so far, the buffers it owns."""

    def __init__(self, chunk: int):
        self.chunk = chunk
        self.stats: dict[int, tuple[float, float]] = {}
        self.collecting: ChunkSetNorm | None = None
        self.moments: _Moments | None = None
        self.buffer: Tensor | None = None  # the last buffer this run allocated (only it is overwritten in place)

    def model(self, model: nn.Module) -> nn.Module:
        """A copy of ``model``'s tree with this run's set norm and attention (parameters shared)."""
        def replace(m):
            if isinstance(m, SetNorm):
                new = adopt(m, ChunkSetNorm)
                new.run = self
                return new
            if isinstance(m, Attention):
                return adopt(m, StreamingAttention)
            if isinstance(m, tuple(NORMS.values())):
                if not getattr(m, "elementwise", False):
                    raise TypeError(f"chunked inference: norm {type(m).__name__} is neither a set norm nor declared "
                                    f"row-wise (elementwise = True)")
                return RowNormOnKeys(m)
            return None

        return substitute(model, replace)

    def chunk_norm(self, norm: ChunkSetNorm, x: Tensor) -> Tensor:
        key = id(norm)
        if key in self.stats:
            return norm.normalize(x, *self.stats[key])
        if self.collecting is None:
            self.collecting, self.moments = norm, _Moments()
        if norm is not self.collecting:  # pragma: no cover - a stage calls its norms in a fixed order
            raise RuntimeError("set norms were called in a different order in two chunks")
        self.moments.update(x)
        raise _Collecting

    def rows(self, fn, h: Tensor) -> Tensor:
        """``fn`` (a function of rows ``[1, c, D]``) on every row of ``h [n, D]`` with exact whole-set set norm
        statistics: one extra pass over the chunks per set norm inside ``fn``, in call order. The result is written
        into ``h`` where the run owns it and the width is unchanged."""
        n, out = h.shape[0], None
        while True:
            done = True
            for i in range(0, n, self.chunk):
                try:
                    y = fn(h[i : i + self.chunk].unsqueeze(0).as_subclass(Chunk))
                except _Collecting:
                    done = False
                    continue
                y = y.as_subclass(Tensor)[0]
                if out is None:
                    same = h is self.buffer and y.shape[-1] == h.shape[-1] and y.dtype == h.dtype
                    out = self.buffer = h if same else h.new_empty(n, y.shape[-1], dtype=y.dtype)
                out[i : i + y.shape[0]] = y
                del y
            if done:
                return out
            self.stats[id(self.collecting)] = self.moments.finalize(self.collecting.eps)
            self.collecting = self.moments = None

    def keys(self, h: Tensor) -> Keys:
        """``h`` as the keys of an attention block (streamed)."""
        return Keys(self, h)

    def pool(self, kind: str, h: Tensor) -> Tensor:
        """Streaming ``sum`` / ``mean`` / ``max`` pooling of ``h [n, H]`` -> ``[1, H]``."""
        parts = range(0, h.shape[0], self.chunk)
        if kind == "max":
            return torch.stack([h[i : i + self.chunk].amax(0) for i in parts]).amax(0, keepdim=True)
        if kind not in ("sum", "mean"):
            raise ValueError(f"chunked inference has no streaming {kind!r} pooling (sum, mean, max)")
        z = sum(h[i : i + self.chunk].double().sum(0) for i in parts).to(h.dtype)
        return (z / h.shape[0] if kind == "mean" else z).unsqueeze(0)


PATHS = ("auto", "fast", "generic")


@torch.no_grad()
def chunked_forward(model, x: Tensor, mask: Tensor | None = None, chunk_size: int = 65_536,
                    path: str = "auto") -> Tensor:
    """``model(x, mask)`` computed exactly, one set at a time, ``chunk_size`` elements at a time.

    Use for sets too large for memory (e.g. one set of 10^6 cells). Returns what ``model(x, mask)`` returns:
    ``[B, out]``, or ``[B, N, out]`` with ``output="elements"``.

    ``path``: ``"auto"`` runs the fast path of :mod:`.huge` where the model has one (clean-path Deep Sets++ and
    Set Transformer++ with set norm, float32/float64 on CPU with the kernels built; and every model of both
    families whose norms act element-wise: none, layer, feature): one pass per layer over one in-place ``[n, H]``
    activation, about the time of the forward's matrix products; memory: the input, one ``[n, H]`` activation
    and chunk temporaries of at most ``min(chunk_size, 16384)`` rows, whatever the depth), and the generic path
    (this module) elsewhere; ``"fast"`` insists on the fast path (error where there is none); ``"generic"``
    always takes the generic path.
    """
    from . import huge

    if model.training:
        raise ValueError("chunked inference needs model.eval() (feature norm must use running statistics)")
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; valid choices: {', '.join(map(repr, PATHS))}")
    mask = model.check_input(x, mask)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    members = getattr(model, "members", None)
    if members is not None:  # an ensemble: its preprocessing once, then each member, combined
        x = model.prepare(x)
        return model.combine([chunked_forward(m, x, mask, chunk_size, path) for m in members])
    outs = []
    for b in range(x.shape[0]):
        xb = model.prepare((x[b] if mask is None else x[b][mask[b]]).contiguous())
        fast = None if path == "generic" else huge.plan(model, xb)
        if fast is None and path == "fast":
            raise ValueError(f"chunked inference: no fast path for this model ({type(model).__name__}, "
                             f"{model.config}) on {xb.dtype} {xb.device.type} input")
        if fast is not None:
            per = fast(model, xb, min(chunk_size, huge.CHUNK))
        else:
            run = ChunkedRun(chunk_size)
            m = run.model(model)
            h = m.encode_chunked(xb, run)
            z = m.pool_chunked(h, run)
            if m.config.output == "elements":
                per = run.rows(lambda r: m.decode_elements(r, z, None), h)
            else:
                per = m.decode(z)[0]
        if model.config.output == "elements":
            full = per.new_zeros(x.shape[1], per.shape[-1])
            full[mask[b] if mask is not None else slice(None)] = per
            outs.append(full)
        else:
            outs.append(per)
    return torch.stack(outs)
