"""Your own sets: ``regression`` and ``classification`` read any source of :mod:`deepsets.data.sources`.

``deepsets train --data PATH --target regression|classification`` (or no ``--target``: classification for string
or boolean labels and for labels with two distinct values, regression otherwise). Sets larger than ``set_size``
(1000) are subsampled afresh each epoch in training; evaluation and prediction see whole sets. Regression starts
its output layer at the training targets' mean and standard deviation, so labels in any units (ages,
concentrations) train at the default learning rate.
"""
from __future__ import annotations

from . import Task, load_sources, register_task


def _load(task, split, data, base, opts):
    if data is None:
        raise ValueError(f"task {task.name!r} reads your own sets: pass data=PATH (--data FILE_OR_FOLDER): a "
                         f".csv/.tsv/.parquet table, an .h5ad file, a folder of .fcs files, .npy or .h5")
    return load_sources(task, split, data, base, opts)


_SOURCES = "tables (.csv/.tsv/.parquet), .h5ad, FCS folders, .npy/.h5, Python lists"
REGRESSION = register_task(Task(
    name="regression", target="regression", loader=_load, set_size=1000, epochs=50, scale_output=True,
    description="your sets -> one or more real numbers per set (MSE)", real_source=_SOURCES,
    offline_default="none: needs --data"))
CLASSIFICATION = register_task(Task(
    name="classification", target="classification", loader=_load, set_size=1000, epochs=50,
    description="your sets -> one class per set, labels of any type (cross-entropy, accuracy)",
    real_source=_SOURCES, offline_default="none: needs --data"))
