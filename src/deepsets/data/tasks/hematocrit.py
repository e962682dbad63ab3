"""Flow-RBC hematocrit: red blood cells x (volume fL, hemoglobin pg) -> hematocrit (%).

Real data: the Flow-RBC HDF5 file, a folder of FCS files (one file = one patient, ``labels.csv``) or an AnnData
``.h5ad`` with a set column; offline: the physiology-based simulator of :mod:`deepsets.data.flow_rbc`.
"""
from __future__ import annotations

from pathlib import Path

from .._base import check_exists
from . import Task, call_with_options, h5_shapes, load_sources, register_task


def load_flow_rbc(task, split, data, base, opts, classes=None):
    """Flow-RBC sets for hematocrit and anemia: the simulator, the Flow-RBC HDF5 file, FCS or h5ad."""
    from ..flow_rbc import FlowRBCDataset, default_simulation

    if data is None:
        sim = {k: opts.pop(k) for k in ("n_train", "n_test", "cells", "data_seed") if k in opts}
        path = default_simulation(**sim)
        ds = call_with_options(FlowRBCDataset, {"path": path, "split": split, "task": task.name, **opts, **base},
                               task.name)
        ds.generated = True  # the simulator's file: nothing to scan for NaN
        return ds
    p = check_exists(data)
    if p.is_dir() or p.suffix.lower() in (".fcs", ".lmd", ".h5ad"):
        return load_sources(task, split, p, base, opts, classes=classes, expect_dim=task.in_dim)
    return call_with_options(FlowRBCDataset, {"path": p, "split": split, "task": task.name, **opts, **base},
                             task.name)


def detect_flow_rbc(p: Path) -> bool:
    """Only the Flow-RBC HDF5 layout (``train_data``/``test_data`` of ``[sets, cells, 2]``). FCS files and folders
    and ``.h5ad`` files can hold any cytometry data: they are your own sets (``regression``/``classification``),
    read as hematocrit only when asked (``--task hematocrit``)."""
    shapes = h5_shapes(p)
    return any(len(s) >= 3 and s[-1] == 2 for k, s in shapes.items() if k in ("train_data", "test_data"))


def _build(o):
    if not o["simulate"]:
        if o["source"]:
            return None  # the file is used as downloaded: `data build` describes it
        raise ValueError("the Flow-RBC HDF5 file is used as downloaded (pass it as data=PATH); "
                         "use --simulate to write the simulator's file")
    from ..flow_rbc import simulate_flow_rbc

    return simulate_flow_rbc(o["out"], n_train=4000 if o["n_train"] is None else o["n_train"],
                             n_test=1000 if o["n_test"] is None else o["n_test"], cells=o["cells"], seed=o["seed"])


TASK = register_task(Task(
    name="hematocrit", target="regression", loader=load_flow_rbc, detect=detect_flow_rbc, build=_build, paper=True,
    in_dim=2, out_dim=1, pool="sum", set_size=1000, epochs=30,
    description="red blood cells x (volume fL, hemoglobin pg) -> hematocrit (%)",
    real_source="Flow-RBC HDF5, FCS folder, AnnData .h5ad",
    offline_default="physiology-based RBC simulator (same HDF5 layout)",
    offline_sizes="4,000 train / 1,000 test patients of 1000 cells", built_file="flow_rbc_sim.h5",
    budgets={"cpu": dict(set_size=100),
             "smoke": dict(cells=64)},
))
