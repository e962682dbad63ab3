"""Tasks and data for deep learning on sets.

Everything the training code needs::

    from deepsets.data import get_task, load_task, collate_sets
    task = get_task("hematocrit")                # Task: target, in_dim, out_dim, pool, set_size, epochs, ...
    train = load_task("hematocrit", "train")     # offline default (simulated); data=PATH reads the real format
    mine = load_task("classification", data="cells.csv", set_column="patient", label_column="diagnosis")
    loader = DataLoader(train, batch_size=64, shuffle=True, collate_fn=collate_sets)
    for epoch in range(epochs):
        train.set_epoch(epoch)                   # fresh random subsets of large sets each epoch
        for x, mask, y in loader: ...            # x [B, N, D] float32, mask [B, N] bool (True = present)

Items are ``(x [n_i, D] float32, y)``: ``y`` is float32 ``[out_dim]`` for regression, an int64 scalar for
classification and for the odd element's index (set anomaly). A task is a source of sets + a target kind
(:mod:`deepsets.data.targets`) + defaults (:mod:`deepsets.data.tasks`, one file per task); sources read tables,
AnnData, FCS folders, arrays and Python lists (:mod:`deepsets.data.sources`). See ``docs/data.md``.
"""
from ._base import DataError, SetDataset, data_dir, resized, subset_indices, subset_views
from .collate import collate_sets, pad_sets
from .finite import check_before_training, check_finite
from .flow_rbc import simulate_flow_rbc
from .sources import SourceDataset, open_source
from .sources.arrays import ListReader
from .sources.table import sets_from_table
from .targets import TARGETS, get_target
from .tasks import (TASKS, Task, UntrustedTaskError, detect_task, get_task, import_task, list_tasks, load_task,
                    paper_tasks, register_task)

__all__ = [
    "TARGETS",
    "TASKS",
    "DataError",
    "ListReader",
    "SetDataset",
    "SourceDataset",
    "Task",
    "UntrustedTaskError",
    "check_before_training",
    "check_finite",
    "collate_sets",
    "data_dir",
    "detect_task",
    "get_target",
    "get_task",
    "import_task",
    "list_tasks",
    "load_task",
    "open_source",
    "pad_sets",
    "paper_tasks",
    "register_task",
    "sets_from_table",
    "simulate_flow_rbc",
    "subset_indices",
    "subset_views",
    "resized",
]
