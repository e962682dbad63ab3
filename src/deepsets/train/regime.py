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

#: the values each regime gives the fields left unset (``None``)
RECIPES: dict[str, dict] = {
    "paper": {"lr": 1e-4, "batch_size": 64, "weight_decay": 0.0, "ensemble": 1},
    "small": {"depth": 2, "dim": 64, "lr": 1e-3, "batch_size": 16, "weight_decay": 1e-2, "ensemble": 1,
              "epochs": 60, "patience": 10},
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
    regime, why = choose_regime(cfg, task, n_sets)
    cfg = copy.deepcopy(cfg)
    filled = {}
    for k, v in RECIPES[regime].items():
        if hasattr(cfg, k) and getattr(cfg, k) is None:
            setattr(cfg, k, v)
            filled[k] = v
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
