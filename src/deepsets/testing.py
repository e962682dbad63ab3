"""Property checks for any set model ``model(x, mask=None)``: use them on your own models too.

Each check runs the model (in whatever mode it is in; call ``model.eval()`` first for models with batch
statistics), raises ``AssertionError`` with the largest deviation if the property fails, and returns that
deviation otherwise. Run them in float64 (``model.double()``) for tight tolerances.

>>> from deepsets.testing import check_permutation_invariance
>>> check_permutation_invariance(model, x, mask)
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "check_permutation_invariance",
    "check_permutation_equivariance",
    "check_padding_invariance",
    "check_batch_independence",
    "check_size_generalization",
    "random_padded_batch",
    "check_completeness",
    "check_deletion_beats_random",
    "check_planted_signal",
]


def _deviation(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().max().item() if a.numel() else 0.0


def _check(name: str, a: Tensor, b: Tensor, atol: float, rtol: float) -> float:
    if a.shape != b.shape:
        raise AssertionError(f"{name}: output shapes differ: {list(a.shape)} vs {list(b.shape)}")
    if not torch.isfinite(a).all() or not torch.isfinite(b).all():
        raise AssertionError(f"{name}: non-finite outputs")
    dev = _deviation(a, b)
    scale = max(a.abs().max().item() if a.numel() else 0.0, 1.0)
    if dev > atol + rtol * scale:
        raise AssertionError(f"{name} violated: max |difference| = {dev:.3g} > atol {atol:g} + rtol {rtol:g} x {scale:.3g}")
    return dev


def _valid_permutation(mask: Tensor | None, B: int, N: int, generator=None) -> Tensor:
    """Per-set permutation of element positions ``[B, N]`` that keeps padded slots where they are."""
    perm = torch.stack([torch.randperm(N, generator=generator) for _ in range(B)])
    if mask is None:
        return perm
    out = torch.arange(N).repeat(B, 1)
    for b in range(B):
        idx = mask[b].nonzero().flatten().cpu()
        out[b, idx] = idx[torch.randperm(len(idx), generator=generator)]
    return out


def _permute(x: Tensor, mask: Tensor | None, perm: Tensor):
    perm = perm.to(x.device)
    xp = torch.gather(x, 1, perm.unsqueeze(-1).expand_as(x))
    mp = None if mask is None else torch.gather(mask, 1, perm)
    return xp, mp


@torch.no_grad()
def check_permutation_invariance(model, x: Tensor, mask: Tensor | None = None, atol=1e-6, rtol=1e-6, seed=0) -> float:
    """Reordering the elements of each set leaves a set-level output unchanged."""
    g = torch.Generator().manual_seed(seed)
    xp, mp = _permute(x, mask, _valid_permutation(mask, x.shape[0], x.shape[1], g))
    return _check("permutation invariance", model(x, mask), model(xp, mp), atol, rtol)


@torch.no_grad()
def check_permutation_equivariance(model, x: Tensor, mask: Tensor | None = None, atol=1e-6, rtol=1e-6, seed=0) -> float:
    """Reordering the elements of each set reorders a per-element output ``[B, N, ...]`` the same way."""
    g = torch.Generator().manual_seed(seed)
    perm = _valid_permutation(mask, x.shape[0], x.shape[1], g)
    xp, mp = _permute(x, mask, perm)
    y, yp = model(x, mask), model(xp, mp)
    y_then_perm = torch.gather(y, 1, perm.to(y.device).unsqueeze(-1).expand_as(y))
    return _check("permutation equivariance", y_then_perm, yp, atol, rtol)


@torch.no_grad()
def check_padding_invariance(model, x: Tensor, mask: Tensor | None = None, extra: int = 7, fill_scale: float = 1e3,
                             atol=1e-6, rtol=1e-6, seed=0) -> float:
    """Appending ``extra`` padded rows filled with large random values leaves each set's output unchanged
    (per-element outputs: unchanged on the valid rows, zero on the padded ones)."""
    g = torch.Generator().manual_seed(seed)
    B, N, D = x.shape
    noise = torch.randn(B, extra, D, generator=g, dtype=x.dtype).to(x.device) * fill_scale
    base_mask = torch.ones(B, N, dtype=torch.bool, device=x.device) if mask is None else mask
    x2 = torch.cat([x, noise], 1)
    m2 = torch.cat([base_mask, torch.zeros(B, extra, dtype=torch.bool, device=x.device)], 1)
    y, y2 = model(x, mask), model(x2, m2)
    if y.dim() == 3:  # per-element output
        if y2[:, N:].abs().max().item() != 0.0 or (y2[:, :N] * (~base_mask).unsqueeze(-1)).abs().max().item() != 0.0:
            raise AssertionError("padding invariance violated: per-element outputs of padded rows are not zero")
        y2 = y2[:, :N]
    return _check("padding invariance", y, y2, atol, rtol)


@torch.no_grad()
def check_batch_independence(model, x: Tensor, mask: Tensor | None = None, atol=1e-6, rtol=1e-6) -> float:
    """Each set's output is the same in the batch as when the set is run alone (no cross-set leakage)."""
    y = model(x, mask)
    alone = []
    for b in range(x.shape[0]):
        xb, mb = x[b : b + 1], None if mask is None else mask[b : b + 1]
        if mb is not None:  # trim to the set's own valid elements: also checks padding-free equality
            keep = mb[0]
            xb, mb = xb[:, keep], None
            if y.dim() == 3:
                out = torch.zeros_like(y[b : b + 1])
                out[:, keep] = model(xb, mb)
                alone.append(out)
                continue
        alone.append(model(xb, mb))
    return _check("batch independence", y, torch.cat(alone, 0), atol, rtol)


@torch.no_grad()
def check_size_generalization(model, in_dim: int, sizes=(1, 2, 10, 100, 1000, 10_000), batch: int = 1,
                              dtype=torch.float32, device=None, seed=0) -> dict[int, tuple]:
    """One model runs on sets of every size in ``sizes`` and gives finite outputs; returns the output shapes."""
    g = torch.Generator().manual_seed(seed)
    shapes = {}
    for n in sizes:
        x = torch.randn(batch, n, in_dim, generator=g, dtype=dtype).to(device)
        y = model(x)
        if not torch.isfinite(y).all():
            raise AssertionError(f"size generalization: non-finite output for sets of {n} elements")
        shapes[n] = tuple(y.shape)
    return shapes


def random_padded_batch(batch: int, max_size: int, in_dim: int, min_size: int = 1, dtype=torch.float64,
                        pad_value: float | None = 1e4, seed: int = 0):
    """A batch of sets of random sizes in ``[min_size, max_size]``; padded rows hold ``pad_value`` times
    random noise (not zeros), so a model that leaks padding fails the checks."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(min_size, max_size + 1, (batch,), generator=g)
    sizes[0] = max_size
    x = torch.randn(batch, max_size, in_dim, generator=g, dtype=dtype)
    mask = torch.arange(max_size).unsqueeze(0) < sizes.unsqueeze(1)
    if pad_value is not None:
        noise = torch.randn(batch, max_size, in_dim, generator=g, dtype=dtype) * pad_value
        x = torch.where(mask.unsqueeze(-1), x, noise)
    return x, mask


# ------------------------------------------------------------------------------------------ attribution faithfulness
def check_completeness(model, x: Tensor, mask: Tensor | None = None, method: str = "integrated-gradients",
                       atol: float = 1e-3, rtol: float = 1e-2, **kw) -> float:
    """Scores of :func:`deepsets.explain` sum to ``f(X) - f(empty set)`` per set and output (integrated gradients:
    up to the quadrature error; Shapley values: exactly). Returns the largest deviation."""
    from .attribution import explain

    scores, info = explain(model, x, mask, method=method, return_info=True, **kw)
    s = scores if scores.dim() == 3 else scores.unsqueeze(-1)
    return _check(f"completeness of {method}", s.sum(1), info.output - info.empty, atol, rtol)


def check_deletion_beats_random(model, x: Tensor, scores, output: int = -1, repeats: int = 8, seed: int = 0,
                                margin: float = 0.0) -> tuple[float, float]:
    """Removing one set's ``x [n, D]`` top-scoring elements first lowers the output ``output`` faster than removing
    them in random order: the deletion curve's area is below the random curve's by more than ``margin``.
    Returns ``(auc_by_score, auc_random)``."""
    from .attribution.faithfulness import deletion_curve

    *_, auc, auc_random = deletion_curve(model, x, scores, output=output, repeats=repeats, seed=seed)
    if not auc < auc_random - margin:
        raise AssertionError(f"deletion curve: area {auc:.4g} by score is not below {auc_random:.4g} at random "
                             f"(margin {margin:g})")
    return auc, auc_random


def check_planted_signal(scores, planted, min_auc: float = 0.9, output: int = -1) -> float:
    """The elements that carry a planted signal get the highest scores: ROC-AUC of score vs planted is at least
    ``min_auc``. ``scores``/``planted``: matching arrays (padded elements left out). Returns the AUC."""
    from .attribution.faithfulness import planted_auc

    auc = planted_auc(scores, planted, output=output)
    if not auc >= min_auc:
        raise AssertionError(f"planted signal: ROC-AUC of score vs planted {auc:.3f} < {min_auc}")
    return auc
