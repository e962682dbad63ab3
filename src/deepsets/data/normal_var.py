"""Normal Var: sets of scalars drawn from N(m, v), m ~ U(-10, 10), v ~ U(0, 10); target = sample variance.

The paper's recipe: 1000 scalars per set, 10,000 training and 1,000 test sets. Set ``i`` of a split is generated
on access from a random stream keyed by ``(data_seed, split, i)``, so nothing is stored and the data are
identical on every machine. The target is the sample variance of the generated elements (``numpy.var``,
i.e. the mean squared deviation from the set's own mean, ``ddof=0``).
"""
from __future__ import annotations

import numpy as np

from ._base import SetDataset, _rng

__all__ = ["NormalVarDataset", "normal_var_set"]

_SPLIT_ID = {"train": 0, "test": 1}


def normal_var_set(data_seed: int, split: str, index: int, elements: int) -> tuple[np.ndarray, float, float, float]:
    """One Normal Var set: returns ``(x [elements, 1] float32, target, mean, var)``."""
    rng = _rng(data_seed, _SPLIT_ID[split], index, 0xA7)
    m = rng.uniform(-10.0, 10.0)
    v = rng.uniform(0.0, 10.0)
    x = rng.normal(m, np.sqrt(v), size=(elements, 1)).astype(np.float32)
    return x, float(np.var(x.astype(np.float64))), m, v


class NormalVarDataset(SetDataset):
    """Generated Normal Var sets (see module docstring). ``elements`` scalars per set, ``n_sets`` sets."""

    task = "normal-var"
    generated = True  # made on access from a generator or an integer image pool: no NaN to scan for
    target_kind = "regression"
    in_dim = 1
    out_dim = 1

    def __init__(self, split: str = "train", n_sets: int | None = None, elements: int = 1000,
                 data_seed: int = 0, **kw):
        super().__init__(**kw)
        if split not in _SPLIT_ID:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.split = split
        self.n_sets = int(n_sets if n_sets is not None else (10_000 if split == "train" else 1_000))
        self.elements = int(elements)
        if self.elements < 1 or self.n_sets < 0:
            raise ValueError("elements must be >= 1 and n_sets >= 0")
        self.data_seed = int(data_seed)
        self.source = f"generated (data_seed={self.data_seed})"

    def __len__(self):
        return self.n_sets

    def _item(self, index):
        return normal_var_set(self.data_seed, self.split, index, self.elements)

    def _raw_set(self, index):
        return self._item(index)[0]

    def _target(self, index):
        return self._item(index)[1]

    def __getitem__(self, index):
        # generate once per item (set and target come from the same stream)
        import torch

        index = self._check_index(index)
        x, t, _, _ = self._item(index)
        if self.set_size is not None and x.shape[0] > self.set_size:
            from ._base import subset_indices

            x = x[subset_indices(x.shape[0], self.set_size, self.seed, self._subset_epoch(), index)]
        return torch.from_numpy(np.ascontiguousarray(x)), torch.tensor([t], dtype=torch.float32)
