"""A task whose loss overflows on one DDP process only: Normal Var whose labels become 3e38 (finite, but their
square is not) from epoch 1 on, in the process with ``LOCAL_RANK=1``.

Used by tests/test_train.py as ``--task tests/example_diverging_task.py:TASK`` to check that training on several
processes stops everywhere at the same step when one process's loss is not finite.
"""
import os

import torch

from deepsets.data import Task
from deepsets.data.normal_var import NormalVarDataset


class OverflowingLabels(NormalVarDataset):
    def __getitem__(self, index):
        x, y = super().__getitem__(index)
        if os.environ.get("LOCAL_RANK") == "1" and self.epoch >= 1:
            y = torch.full_like(y, 3e38)
        return x, y


def _load(task, split, data, base, options):
    n = options.get("n_train" if split == "train" else "n_test", 40)
    return OverflowingLabels(split=split, n_sets=n, elements=base.get("set_size") or 16, seed=base["seed"],
                             set_size=base["set_size"], fixed_subset=base.get("fixed_subset", False))


TASK = Task(name="overflow-on-rank-1", target="regression", loader=_load, description="diverges on rank 1",
            in_dim=1, out_dim=1, pool="sum", set_size=16, epochs=3, scale_output=False)
