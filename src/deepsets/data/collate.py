"""The one place where sets are padded into a batch."""
from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["collate_sets", "pad_sets"]


def pad_sets(sets: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad ``[n_i, D]`` sets into ``x [B, N, D]`` (float32) and ``mask [B, N]`` (bool, True = present).

    ``N`` is the largest ``n_i``. Empty sets (``n_i = 0``) give an all-False mask row. All sets must have the
    same feature dimension ``D``.
    """
    if len(sets) == 0:
        raise ValueError("cannot collate an empty batch")
    sets = [torch.as_tensor(s) for s in sets]
    dims = {tuple(s.shape[1:]) for s in sets}
    if any(s.ndim != 2 for s in sets) or len(dims) != 1:
        shapes = [tuple(s.shape) for s in sets]
        raise ValueError(f"collate_sets expects sets of shape [n_i, D] with one D, got {shapes}")
    d = sets[0].shape[1]
    n = max(s.shape[0] for s in sets)
    x = torch.zeros(len(sets), n, d, dtype=torch.float32)
    mask = torch.zeros(len(sets), n, dtype=torch.bool)
    for i, s in enumerate(sets):
        k = s.shape[0]
        if k:
            x[i, :k] = s.to(torch.float32)
            mask[i, :k] = True
    return x, mask


def collate_sets(batch):
    """``DataLoader`` collate function: list of ``(x [n_i, D], y)`` -> ``(x [B, N, D], mask [B, N], y)``.

    ``x`` is float32 and zero-padded, ``mask`` is True for present elements, ``y`` is the targets stacked
    (``float32 [B, out_dim]`` for regression, ``int64 [B]`` for classes and odd-element indices).
    """
    if len(batch) == 0:
        raise ValueError("cannot collate an empty batch")
    xs, ys = zip(*batch)
    x, mask = pad_sets(xs)
    y = torch.stack([torch.as_tensor(v) for v in ys])
    return x, mask, y
