"""Tasks and data for deep learning on sets.

Everything the training code needs::

    from deepsets.data import get_task, load_task, collate_sets
    spec = get_task("hematocrit")                # TaskSpec: in_dim, out_dim, loss, metric, pool, output, ...
    train = load_task("hematocrit", "train")     # offline default (simulated); data=PATH reads the real format
    loader = DataLoader(train, batch_size=64, shuffle=True, collate_fn=collate_sets)
    for epoch in range(epochs):
        train.set_epoch(epoch)                   # fresh random subsets of large sets each epoch
        for x, mask, y in loader: ...            # x [B, N, D] float32, mask [B, N] bool (True = present)

Items are ``(x [n_i, D] float32, y)``: ``y`` is float32 ``[out_dim]`` for regression, an int64 scalar for
classification and for the odd element's index (set anomaly). See ``docs/data.md`` for every task's sources.
"""
from ._base import DataError, SetDataset, data_dir, subset_indices, subset_views
from .collate import collate_sets, pad_sets
from .flow_rbc import simulate_flow_rbc
from .tasks import TASKS, TaskSpec, detect_task, get_task, list_tasks, load_task

__all__ = [
    "TASKS",
    "DataError",
    "SetDataset",
    "TaskSpec",
    "collate_sets",
    "data_dir",
    "detect_task",
    "get_task",
    "list_tasks",
    "load_task",
    "pad_sets",
    "simulate_flow_rbc",
    "subset_indices",
    "subset_views",
]
