"""Which elements drive a prediction: one score per element, for every set model.

Three methods (``explain(model, x, mask, method=...)``), all explaining the model's output (a regressor's
prediction, a classifier's logits), one set at a time:

- ``occlusion``: ``f(X) - f(X without x_i)``. The element is *removed* (masked out), never replaced by a zero
  vector: an absent element is not a zero vector. Sets up to ``exact_below`` elements are computed exactly, every
  removal one forward pass of the whole model, in batches. Larger sets take the **readout fast path**: the encoder
  runs once on the whole set, each element is removed at the pooling exactly, in closed form (sum: ``S - h_i``;
  mean: ``(S - h_i) / (n - 1)``; max: the second largest value where ``i`` holds the maximum; attention pooling:
  the softmax renormalised without ``i``), the decoder runs on every leave-one-out summary, and the element's
  effect on the others' encodings through the set's statistics (set norm's mean and variance, an ISAB's attention
  over the elements) is added to first order (:mod:`.linear`: exact per-element changes of each statistic,
  propagated through the model by forward- or reverse-mode differentiation). The error left is second order:
  the largest deviation from exact occlusion, relative to the largest score, fell from 0.03 (Deep Sets++) and
  0.23 (Set Transformer++) at 30 elements to 0.002 and 0.012 at 1,000 (``benchmarks/explain.py fastpath``);
  encoders that treat elements independently (element-wise norms) are exact.
- ``integrated-gradients``: the elements' presence weights ``w_i`` go from 0 (the empty set) to 1 (the set), the
  path scaling each element's term in the pooled summary (``pool = empty + sum_i w_i t_i``, the encoder seeing the
  whole set); score_i = ``t_i . integral_0^1 grad_pool f(empty + a sum_j t_j) da`` by the midpoint rule with
  ``steps`` points. The scores sum to ``f(X) - f(empty set)`` up to the quadrature error, reported as
  ``completeness_error``. ``f(empty set)`` is the model on a set without elements, as its layers define it (zero
  pooled vector, zero attention output).
- ``shapley``: Shapley values of element *groups* (``groups=``: a label per element, e.g. a cell type or cluster)
  by permutation sampling (``samples`` random orders, each with its reverse; every order, exactly, when there are
  no more than ``samples`` of them): the value of a coalition is the exact model output on the elements of its
  groups. The group values sum to ``f(X) - f(empty set)`` exactly; their standard error over the sampled orders
  is reported (``se``, 0 when exact). Each element's score is its group's value divided
  by the group's size (so that the element scores also sum to ``f(X) - f(empty set)``).

Padded elements score exactly 0. Huge sets stay in bounded memory: the encoder runs chunk by chunk
(:mod:`deepsets.backends.chunked`, exact) and everything after it on chunks of elements.

The readout decomposition that the fast path and integrated gradients use is declared per family in
:data:`READOUTS` (Deep Sets and Set Transformer families here); a family of your own without one gets exact
occlusion and Shapley values.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

__all__ = ["explain", "METHODS", "Readout", "READOUTS", "register_readout", "Explanation"]

METHODS = ("occlusion", "integrated-gradients", "shapley")
CHUNK = 4096  # elements per batch of leave-one-out summaries / decoder calls
HUGE = 65_536  # sets above this many elements are encoded chunk by chunk


@dataclass
class Readout:
    """A set's pooled summary as a sum of per-element terms, for one member model and one set.

    ``pool == empty + terms(all).sum(0)``; ``without(sl)`` is the summary with each element of the slice removed
    (the encoder's outputs of the others unchanged); ``finish`` maps summaries ``[k, ...]`` to outputs ``[k, out]``.
    """

    pool: Tensor
    empty: Tensor
    terms: Callable[[slice], Tensor]
    without: Callable[[slice], Tensor]
    finish: Callable[[Tensor], Tensor]
    n: int


READOUTS: dict[type, Callable] = {}


def register_readout(cls: type, fn: Callable) -> None:
    """Declare how a family's pooled summary splits into per-element terms: ``fn(model, h [n, H]) -> Readout``."""
    READOUTS[cls] = fn


def readout_of(model, h: Tensor) -> Readout | None:
    for cls in type(model).__mro__:
        if cls in READOUTS:
            return READOUTS[cls](model, h)
    return None


# ------------------------------------------------------------------------------------------------ Deep Sets family
def _deepsets_readout(model, h: Tensor) -> Readout:
    n, kind = h.shape[0], model.config.pool
    zero = h.new_zeros(h.shape[1])
    if kind == "sum":
        total = h.sum(0)
        return Readout(total, zero, lambda sl: h[sl], lambda sl: total - h[sl], model.decode, n)
    if kind == "mean":
        total = h.sum(0)
        return Readout(total / n, zero, lambda sl: h[sl] / n,
                       lambda sl: (total - h[sl]) / (n - 1) if n > 1 else zero.expand_as(h[sl]), model.decode, n)
    # max: the element holding a feature's maximum carries it; without it, the second largest value does
    top2 = h.topk(min(2, n), dim=0)
    first, arg = top2.values[0], top2.indices[0]
    second = top2.values[1] if n > 1 else zero

    def terms(sl):
        idx = torch.arange(n, device=h.device)[sl]
        return torch.where(idx[:, None] == arg[None, :], h[sl], torch.zeros_like(h[sl]))

    def without(sl):
        idx = torch.arange(n, device=h.device)[sl]
        return torch.where(idx[:, None] == arg[None, :], second.expand_as(h[sl]), first.expand_as(h[sl]))

    return Readout(first, zero, terms, without, model.decode, n)


# -------------------------------------------------------------------------------------------- Set Transformer family
def _mab_tail(mab, q: Tensor, a: Tensor) -> Tensor:
    """A MAB's output from its queries ``q`` and its attention output ``a`` (the MAB's forward after attending)."""
    if mab.residual == "clean":
        h = q + a
        return h + mab.feed_forward(mab.norm_h(h, None))
    h = mab.norm0(mab.attn.q(q) + a, None)
    return mab.norm1(h + mab.feed_forward(h), None)


def _settransformer_readout(model, h: Tensor) -> Readout:
    """PMA: per seed and head, softmax weights over the elements; each element's term is its weight times its value
    (``sum_i a_i v_i`` is the attention output); removing one renormalises the others' weights."""
    mab = model.pma.mab
    seeds = model.pma.seeds[0]  # [S, H]
    att = mab.attn
    if mab.residual == "clean":
        qp, k = att.q(mab.norm_q(seeds[None], None))[0], mab.norm_k(h[None], None)[0]
    else:
        qp, k = att.q(seeds), h
    S, dim, heads = qp.shape[0], qp.shape[1], att.heads
    dh = dim // heads
    kv = att.kv(k).view(h.shape[0], 2, heads, dh)
    key, value = kv[:, 0], kv[:, 1]  # [n, heads, dh]
    logits = torch.einsum("shd,nhd->nsh", qp.view(S, heads, dh), key) * att.scale  # [n, S, heads]
    acc = torch.float64
    m = logits.amax(0)
    e = (logits - m).to(acc).exp()  # [n, S, heads]
    den = e.sum(0)  # [S, heads]
    num = torch.einsum("nsh,nhd->shd", e, value.to(acc))  # [S, heads, dh]
    dtype = h.dtype
    pooled = (num / den[..., None]).to(dtype).reshape(S, dim)

    def terms(sl):
        w = e[sl] / den  # [c, S, heads]
        return (w[..., None] * value[sl].to(acc)[:, None]).to(dtype).reshape(-1, S, dim)

    def without(sl):
        ei = e[sl]
        rest = (den - ei).clamp_min(0)
        out = (num - ei[..., None] * value[sl].to(acc)[:, None]) / rest[..., None].clamp_min(1e-300)
        out = torch.where(rest[..., None] > 0, out, torch.zeros_like(out))  # the last element: the empty set
        return out.to(dtype).reshape(-1, S, dim)

    def finish(a):  # [k, S, dim] attention outputs -> [k, out]
        q = seeds.expand(a.shape[0], -1, -1)
        z = model.sabs(_mab_tail(mab, q, a))
        return model.decode(z.flatten(1))

    return Readout(pooled, torch.zeros_like(pooled), terms, without, finish, h.shape[0])


def _register_families():
    from ..models.deepsets import DeepSets
    from ..models.settransformer import SetTransformer

    register_readout(DeepSets, _deepsets_readout)
    register_readout(SetTransformer, _settransformer_readout)


_register_families()


# ---------------------------------------------------------------------------------------------------- helpers
def _members(model):
    members = getattr(model, "members", None)
    if members is None:
        return [model], (lambda outs: outs[0])
    return list(members), model.combine


def _encode(member, x: Tensor, chunk_size: int) -> Tensor:
    """The member's encoder output ``[n, H]`` for one set of prepared elements ``[n, D]``: exact, in chunks for a
    huge set."""
    if x.shape[0] <= chunk_size:
        return member.encode(x[None])[0]
    from ..backends.chunked import ChunkedRun

    run = ChunkedRun(chunk_size)
    return run.model(member).encode_chunked(x, run)


def _forward_subsets(model, x: Tensor, masks: Tensor, chunk_size: int) -> Tensor:
    """``model`` on the subsets ``masks [k, n]`` of one set ``x [n, D]`` (raw elements) -> ``[k, out]``; exact,
    chunked for huge subsets, batched for small ones."""
    n = x.shape[0]
    if n <= 2048:
        outs, step = [], max(1, 2 ** 22 // max(n * max(x.shape[1], model.config.dim), 1))
        for i in range(0, masks.shape[0], step):
            mk = masks[i:i + step]
            outs.append(model(x.expand(mk.shape[0], -1, -1), mk))
        return torch.cat(outs)
    from ..backends.chunked import chunked_forward

    return torch.cat([chunked_forward(model, x[mk][None], chunk_size=chunk_size) for mk in masks])


@dataclass
class Explanation:
    """What :func:`explain` computed besides the scores (``return_info=True``)."""

    method: str
    output: Tensor  # [B, out]: f(X)
    empty: Tensor | None = None  # [B, out]: f(empty set)
    completeness_error: Tensor | None = None  # [B, out]: |sum of scores - (f(X) - f(empty))|
    group_values: list | None = None  # shapley: per set, {group: tensor [out]}
    se: list | None = None  # shapley: per set, {group: tensor [out]}
    exact: list = field(default_factory=list)  # occlusion: per set, whether computed exactly


# ---------------------------------------------------------------------------------------------------- methods
def _occlusion(model, x, members, combine, exact, chunk_size, full):
    n = x.shape[0]
    if n == 1:  # removing the only element leaves the empty set
        empty = _empty_output(model, x, members, combine, chunk_size)
        if empty is None:
            raise ValueError(f"occlusion of a set of one element needs f(empty set), which "
                             f"{type(members[0]).__name__} does not declare (register_readout)")
        return (full - empty)[None]
    if exact:
        out = torch.empty(n, full.shape[-1], dtype=full.dtype, device=x.device)
        eye = ~torch.eye(n, dtype=torch.bool, device=x.device)
        step = max(1, 2 ** 22 // max(n * max(x.shape[1], model.config.dim), 1))
        for i in range(0, n, step):
            out[i:i + step] = full - _forward_subsets(model, x, eye[i:i + step], chunk_size)
        return out
    from .linear import leave_one_out

    xp = model.prepare(x)
    loos = [leave_one_out(m, xp, readout_of, full.shape[-1])[1] for m in members]
    out = torch.empty(n, full.shape[-1], dtype=full.dtype, device=x.device)
    for i in range(0, n, CHUNK):
        sl = slice(i, min(n, i + CHUNK))
        out[sl] = full - combine([loo(sl) for loo in loos])
    return out


def members_have_readout(members) -> bool:
    return all(any(c in READOUTS for c in type(m).__mro__) for m in members)


def _empty_output(model, x, members, combine, chunk_size):
    if not members_have_readout(members):
        return None
    xp = model.prepare(x[:1])
    reads = [readout_of(m, _encode(m, xp, chunk_size)) for m in members]
    return combine([r.finish(r.empty[None]) for r in reads])[0]


def _integrated_gradients(model, x, members, combine, steps, chunk_size):
    if not members_have_readout(members):
        raise ValueError(f"integrated-gradients needs the family's readout decomposition, which "
                         f"{type(members[0]).__name__} does not declare (register_readout); use occlusion or shapley")
    xp = model.prepare(x)
    reads = [readout_of(m, _encode(m, xp, chunk_size)) for m in members]
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps  # midpoint rule
    with torch.enable_grad():
        paths = [(r.empty + alphas.view(-1, *[1] * r.pool.dim()) * (r.pool - r.empty)).detach().requires_grad_(True)
                 for r in reads]
        outs = combine([r.finish(p) for r, p in zip(reads, paths)])  # [steps, out]
        k = outs.shape[-1]
        grads = []  # per output: per member, the mean gradient along the path
        for j in range(k):
            g = torch.autograd.grad(outs[:, j].sum(), paths, retain_graph=j < k - 1, allow_unused=True)
            grads.append([(gi if gi is not None else torch.zeros_like(p)).mean(0) for gi, p in zip(g, paths)])
    n = x.shape[0]
    scores = torch.zeros(n, k, dtype=x.dtype, device=x.device)
    for i in range(0, n, CHUNK):
        sl = slice(i, min(n, i + CHUNK))
        for mi, r in enumerate(reads):
            t = r.terms(sl).flatten(1)  # [c, P]
            scores[sl] += t @ torch.stack([grads[j][mi].flatten() for j in range(k)], 1)
    full = combine([r.finish(r.pool[None]) for r in reads])[0]
    empty = combine([r.finish(r.empty[None]) for r in reads])[0]
    return scores, full, empty


def _shapley(model, x, groups, samples, seed, chunk_size, full, empty):
    labels, inverse = np.unique(np.asarray(groups), return_inverse=True)
    G = len(labels)
    member = torch.as_tensor(inverse, device=x.device)
    gen = np.random.default_rng(seed)
    values = []
    exact = math.factorial(G) <= samples  # few groups: every order, exactly
    orders = list(itertools.permutations(range(G))) if exact else None
    for s in range(len(orders) if exact else samples):
        if exact:
            perm = np.asarray(orders[s])
        else:
            perm = gen.permutation(G) if s % 2 == 0 else perm[::-1]  # each order with its reverse (antithetic)
        masks = torch.zeros(G, x.shape[0], dtype=torch.bool, device=x.device)
        present = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for j, g in enumerate(perm):
            present = present | (member == int(g))
            masks[j] = present
        v = _forward_subsets(model, x, masks[:-1], chunk_size) if G > 1 else full[None][:0]
        v = torch.cat([empty[None], v, full[None]])  # value after 0, 1, ..., G groups
        phi = torch.empty(G, full.shape[-1], dtype=full.dtype, device=x.device)
        phi[torch.as_tensor(perm.copy())] = v[1:] - v[:-1]
        values.append(phi)
    values = torch.stack(values)  # [orders, G, out]
    mean = values.mean(0)
    if exact:
        se = torch.zeros_like(mean)
    else:
        pairs = values.view(-1, 2, G, values.shape[-1]).mean(1) if samples % 2 == 0 else values
        se = pairs.std(0) / math.sqrt(pairs.shape[0]) if pairs.shape[0] > 1 else torch.full_like(mean, float("nan"))
    sizes = torch.bincount(member, minlength=G).to(x.dtype)
    per_element = mean[member] / sizes[member][:, None]
    return per_element, dict(zip(labels.tolist(), mean)), dict(zip(labels.tolist(), se))


# ---------------------------------------------------------------------------------------------------- explain
def explain(model, x: Tensor, mask: Tensor | None = None, method: str = "occlusion", groups=None,
            steps: int = 64, samples: int = 32, seed: int = 0, exact_below: int = 1024, exact: bool | None = None,
            chunk_size: int = 65_536, return_info: bool = False):
    """One score per element of each set: ``[B, N]`` for a model with one output, ``[B, N, out]`` otherwise (a
    classifier: one score per class logit). Padded elements score 0.

    Args:
        model: a set model (any registered family, an ensemble); put in eval mode for the call.
        x, mask: the sets ``[B, N, D]`` (raw elements: the model's preprocessing applies) and ``mask [B, N]``.
        method: ``"occlusion"`` | ``"integrated-gradients"`` | ``"shapley"`` (see the module's docstring).
        groups: shapley: a label per element, ``[B, N]`` (array-like); elements of one label form one player.
            Without groups each element is its own group (sets of up to 64 elements).
        steps: integrated gradients: points of the midpoint rule.
        samples: shapley: sampled orders per set (each with its reverse).
        exact_below / exact: occlusion is exact (one forward pass per removed element) for sets of at most
            ``exact_below`` elements, or always with ``exact=True``; the readout fast path otherwise
            (``exact=False`` forces it).
        chunk_size: elements per chunk for huge sets (exact chunked encoding).
        return_info: also return an :class:`Explanation` (f(X), f(empty), completeness error, group values, s.e.).
    """
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; valid: {', '.join(METHODS)}")
    if getattr(model.config, "output", "set") == "elements":
        raise ValueError("explain attributes a set-level output; this model predicts one output per element")
    mask = model.check_input(x, mask)
    was_training = model.training
    model.eval()
    B, N = x.shape[:2]
    out_dim = model.config.out_dim
    scores = torch.zeros(B, N, out_dim, dtype=x.dtype, device=x.device)
    info = Explanation(method, torch.zeros(B, out_dim, dtype=x.dtype, device=x.device))
    if method != "occlusion":
        info.empty = torch.zeros_like(info.output)
        info.completeness_error = torch.zeros_like(info.output)
    if method == "shapley":
        info.group_values, info.se = [], []
    members, combine = _members(model)
    try:
        with torch.no_grad():
            for b in range(B):
                idx = torch.arange(N, device=x.device) if mask is None else mask[b].nonzero().flatten()
                xb = x[b, idx]
                n = xb.shape[0]
                if method == "integrated-gradients":
                    s, full, empty = _integrated_gradients(model, xb, members, combine, steps, chunk_size)
                else:
                    full = _forward_subsets(model, xb, torch.ones(1, n, dtype=torch.bool, device=x.device),
                                            chunk_size)[0]
                    if method == "occlusion":
                        use_exact = exact if exact is not None else n <= exact_below
                        if not use_exact and not members_have_readout(members):
                            use_exact = True
                        s = _occlusion(model, xb, members, combine, use_exact, chunk_size, full)
                        info.exact.append(bool(use_exact))
                    else:
                        empty = _empty_output(model, xb, members, combine, chunk_size)
                        if empty is None:
                            raise ValueError(f"shapley needs f(empty set), which {type(members[0]).__name__} "
                                             f"does not declare (register_readout)")
                        if groups is None:
                            if n > 64:
                                raise ValueError(f"shapley values of single elements are for small sets (set {b} "
                                                 f"has {n} elements): give groups= (a label per element)")
                            gb = np.arange(n)
                        else:
                            g = np.asarray(groups, dtype=object)
                            if g.shape[:2] != (B, N):
                                raise ValueError(f"groups must have shape [B, N] = {[B, N]}, got {list(g.shape)}")
                            gb = g[b][idx.cpu().numpy()]
                        s, gv, se = _shapley(model, xb, gb, samples, seed + b, chunk_size, full, empty)
                        info.group_values.append(gv)
                        info.se.append(se)
                info.output[b] = full
                if method != "occlusion":
                    info.empty[b] = empty
                    info.completeness_error[b] = (s.sum(0) - (full - empty)).abs()
                scores[b, idx] = s.to(scores.dtype)
    finally:
        model.train(was_training)
    scores = scores[..., 0] if out_dim == 1 else scores
    return (scores, info) if return_info else scores
