"""Flow-RBC anemia: the hematocrit task's cells -> anemic (1) or not (0) (WHO hemoglobin thresholds)."""
from __future__ import annotations

from . import Task, register_task
from .hematocrit import _build, load_flow_rbc


def _load(task, split, data, base, opts):
    return load_flow_rbc(task, split, data, base, opts, classes=list(task.classes))


TASK = register_task(Task(
    name="anemia", target="classification", classes=(0, 1), loader=_load, build=_build, paper=True,
    in_dim=2, out_dim=2, pool="sum", set_size=1000, epochs=50,
    description="red blood cells x (volume fL, hemoglobin pg) -> anemic (1) or not (0)",
    real_source="HDF5 with {split}_anemia labels, FCS folder, AnnData .h5ad",
    offline_default="physiology-based RBC simulator (WHO hemoglobin thresholds)",
    offline_sizes="4,000 train / 1,000 test patients of 1000 cells", built_file="flow_rbc_sim.h5",
    budgets={"cpu": dict(set_size=100, n_train=1000, n_test=300),
             "smoke": dict(cells=64)},
))
