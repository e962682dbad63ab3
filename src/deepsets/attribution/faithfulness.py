"""How faithful are element scores? The deletion curve (remove the top-scoring elements first, against a random
order), completeness, and the recovery of a planted signal (ROC-AUC of score vs planted)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["deletion_curve", "planted_auc"]


def _output(model, x: Tensor, masks: Tensor, output: int) -> Tensor:
    outs = []
    with torch.no_grad():
        for i in range(0, masks.shape[0], 64):
            mk = masks[i:i + 64]
            outs.append(model(x.expand(mk.shape[0], -1, -1), mk)[:, output])
    return torch.cat(outs)


def deletion_curve(model, x: Tensor, scores, fractions=None, output: int = -1, repeats: int = 8, seed: int = 0):
    """The model's output on one set ``x [n, D]`` as the top-scoring elements are removed (``fractions`` of the set,
    default 0, 0.05, ..., 0.95; at least one element always stays), beside the mean over ``repeats`` random orders.

    Returns ``(fractions, by_score, random, auc_score, auc_random)``: the AUCs are the curves' means over the
    fractions; a faithful score for the output ``output`` makes the output fall faster than at random
    (``auc_score < auc_random``)."""
    x = torch.as_tensor(x)
    n = x.shape[0]
    s = np.asarray(scores, dtype=np.float64)
    s = s if s.ndim == 1 else s[:, output]
    if len(s) != n:
        raise ValueError(f"{len(s)} scores for a set of {n} elements")
    fr = np.arange(0, 1, 0.05) if fractions is None else np.asarray(fractions, dtype=np.float64)
    ks = np.minimum((fr * n).round().astype(int), n - 1)

    def curve(order):
        masks = torch.ones(len(ks), n, dtype=torch.bool)
        for j, k in enumerate(ks):
            masks[j, torch.as_tensor(order[:k].copy(), dtype=torch.long)] = False
        return _output(model, x[None], masks, output).double().numpy()

    by_score = curve(np.argsort(-s, kind="stable"))
    gen = np.random.default_rng(seed)
    rand = np.mean([curve(gen.permutation(n)) for _ in range(repeats)], axis=0)
    return fr, by_score, rand, float(by_score.mean()), float(rand.mean())


def planted_auc(scores, planted, output: int = -1) -> float:
    """ROC-AUC of element scores against a planted indicator (1 = the element carries the signal); ``scores`` has
    the shape of ``planted``, or that plus one axis of outputs (``output`` is taken)."""
    from ..metrics import _binary_auc

    s = np.asarray(scores, dtype=np.float64)
    p = np.asarray(planted).astype(bool)
    if s.shape != p.shape:
        if s.shape[:-1] != p.shape:
            raise ValueError(f"scores of shape {list(s.shape)} do not match planted of shape {list(p.shape)}")
        s = s[..., output]
    p = p.ravel()
    if p.all() or not p.any():
        raise ValueError("the planted indicator needs both planted and other elements")
    return float(_binary_auc(p, s.ravel()))


def planted_sets(n_sets: int = 200, n_elements: int = 500, frequency: float = 0.01, dims: int = 3,
                 seed: int = 0):
    """A planted-signal task: elements ~ N(0, 1) in ``dims`` channels; a positive set (half of them) also holds a
    rare subpopulation, ``frequency`` of its elements, in a region of channels 0 and 1 (around (2.5, 2.5), spread
    0.3) where ordinary elements are rare (about 1 in 2,500 reaches both). The label says only whether the
    subpopulation is there.

    Returns ``(sets, labels, planted)``: lists of ``[n, dims]`` float32 arrays, 0/1 labels and, per set, a bool
    array marking the planted elements."""
    gen = np.random.default_rng(seed)
    sets, labels, planted = [], [], []
    k = max(1, int(round(frequency * n_elements)))
    for i in range(n_sets):
        x = gen.normal(size=(n_elements, dims)).astype(np.float32)
        p = np.zeros(n_elements, dtype=bool)
        y = i % 2
        if y:
            idx = gen.choice(n_elements, k, replace=False)
            x[idx, :2] = (2.5 + 0.3 * gen.normal(size=(k, 2))).astype(np.float32)
            p[idx] = True
        sets.append(x), labels.append(y), planted.append(p)
    return sets, np.asarray(labels), planted
