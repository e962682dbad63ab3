"""Training recipes (``--regime``): which values the flags a user left unset take.

``paper``
    the paper's settings (PAPER.md): Adam lr 1e-4, batch 64, the preset's depth and width, the task's epochs.
``small``
    for your own data with few sets: a shallow, narrow, regularised model with early stopping on the validation
    metric; the recipe and the evidence it was chosen on are in ``benchmarks/RESULTS.md`` ("Own-data regime").
``auto`` (the default)
    ``small`` for your own data with fewer than :data:`SMALL_BELOW` training sets, else ``paper``; the paper's
    tasks always train with ``paper``.

Only fields left at ``None`` take the regime's value: a flag the user gives always wins. The run prints what it
chose and why.
"""
from __future__ import annotations

import copy

SMALL_BELOW = 2000

#: the values each regime gives the fields left unset (``None``). ``steps`` and ``patience_steps`` of the small
#: recipe are a budget in optimizer steps, turned into ``epochs``/``max_steps`` and ``patience`` (in validations,
#: one per epoch) for the data at hand: a data set of 40 sets has 3 steps per epoch, one of 1,500 has 85, and both
#: need a few hundred steps before a set model's first layers move.
RECIPES: dict[str, dict] = {
    "paper": {"lr": 1e-4, "batch_size": 64, "weight_decay": 0.0, "ensemble": 1},
    "small": {"depth": 2, "dim": 64, "pool": "mean", "lr": 1e-3, "batch_size": 8, "weight_decay": 1e-2,
              "ensemble": 3, "steps": 800, "patience_steps": 250},
}


def choose_regime(cfg, task, n_sets: int) -> tuple[str, str]:
    """``(regime, why)`` for a run on ``n_sets`` training sets."""
    asked = cfg.regime or "auto"
    if asked != "auto":
        return asked, f"--regime {asked}"
    if task.paper:
        return "paper", f"the paper's task {task.name}"
    if n_sets < SMALL_BELOW:
        return "small", f"your own data with {n_sets} training sets (< {SMALL_BELOW:,})"
    return "paper", f"your own data with {n_sets} training sets (>= {SMALL_BELOW:,})"


def resolve_regime(cfg, task, n_sets: int, echo=print):
    """A copy of ``cfg`` with every field the regime sets and ``cfg`` leaves unset filled in, and ``regime`` set
    to the one chosen (so resolving again changes nothing); says what it chose once."""
    import math

    from ..models.registry import preset_default

    regime, why = choose_regime(cfg, task, n_sets)
    cfg = copy.deepcopy(cfg)
    filled = {}
    recipe = dict(RECIPES[regime])
    steps, patience_steps = recipe.pop("steps", None), recipe.pop("patience_steps", None)
    if preset_default(cfg.model, "pool") in (None, "pma"):
        recipe.pop("pool", None)  # the Set Transformer family pools by attention
    for k, v in recipe.items():
        if hasattr(cfg, k) and getattr(cfg, k) is None:
            setattr(cfg, k, v)
            filled[k] = v
    if steps and cfg.epochs is None and cfg.max_steps <= 0:  # the step budget, as epochs of these data
        n_train = n_sets - min(max(1, int(round(n_sets * cfg.val_fraction))), n_sets - 1) \
            if n_sets >= 2 and cfg.val_fraction > 0 else n_sets
        per_epoch = max(1, math.ceil(n_train / cfg.batch_size))
        cfg.epochs, cfg.max_steps = math.ceil(steps / per_epoch), steps
        filled.update(max_steps=steps, epochs=cfg.epochs)
        if cfg.patience is None:
            cfg.patience = max(5, math.ceil(patience_steps / (per_epoch * cfg.eval_every)))
            filled["patience"] = cfg.patience
    if cfg.regime != regime or filled:
        settings = ", ".join(f"{k} {v}" for k, v in filled.items()) or "every setting given"
        echo(f"regime: {regime} ({why}): {settings}")
    cfg.regime = regime
    return cfg


#: torch threads per training process in the small regime: a small model's matrix products are too short to gain
#: from a second thread, and on a busy machine threads that wait for each other cost far more than they give
SMALL_THREADS = 1


class threads:
    """``with threads(n):`` torch's intra-op threads set to ``n`` (unchanged for ``None``), restored on exit."""

    def __init__(self, n: int | None):
        self.n, self.before = n, None

    def __enter__(self):
        import torch

        if self.n is not None:
            self.before = torch.get_num_threads()
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        import torch

        if self.before is not None:
            torch.set_num_threads(self.before)
        return False


def threads_of(cfg) -> int | None:
    """The thread count a run of this (resolved) config uses: :data:`SMALL_THREADS` for the small regime on the
    CPU, else torch's default."""
    return SMALL_THREADS if cfg.regime == "small" and cfg.accelerator in ("cpu", "auto") else None
