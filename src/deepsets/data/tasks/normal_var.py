"""Normal Var (the paper's Table 1/2 task): 1000 scalars from N(m, v) -> the sample variance. Always generated."""
from __future__ import annotations

from . import Task, call_with_options, generator_sizes, register_task


def _load(task, split, data, base, opts):
    if data is not None:
        raise ValueError("normal-var has no file format: it is always generated (use data=None)")
    from ..normal_var import NormalVarDataset

    opts = generator_sizes(opts, split)
    opts.setdefault("elements", base["set_size"] or 1000)
    return call_with_options(NormalVarDataset, {"split": split, **opts, **base}, task.name)


def _build(options):
    raise ValueError("normal-var is generated on the fly; nothing to build (use load_task('normal-var'))")


TASK = register_task(Task(
    name="normal-var", target="regression", loader=_load, build=_build, paper=True,
    in_dim=1, out_dim=1, pool="sum", set_size=1000, epochs=50,
    description="1000 scalars from N(m, v), m~U(-10,10), v~U(0,10) -> sample variance",
    real_source="generator (the paper's recipe)", offline_default="same generator",
    offline_sizes="10,000 train / 1,000 test sets of 1000 scalars",
    budgets={"cpu": dict(set_size=100)},
))
