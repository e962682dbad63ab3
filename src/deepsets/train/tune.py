"""``deepsets tune``: hyperparameter search with Optuna, scored by nested cross-validation.

The sets are cut into ``K`` outer folds as ``deepsets cv`` cuts them. For each outer fold, an Optuna study (TPE,
seeded with ``--seed``) tries ``--trials`` settings from :data:`SPACE`; a setting's score is its mean metric over
``--inner-folds`` folds of the outer fold's **training** part only. The best setting is then trained on the whole
training part and tested on the outer fold's held-out sets, which no trial has seen: the mean over the outer folds
is an honest estimate of "tune, then train" (nested cross-validation). ``OUT/tune.json`` holds the contract keys
of ``cv.json`` (``metric``, ``folds``, ``mean``, ``se``, ``metrics``, ``fold_sets``) plus each fold's best setting,
its inner score and every trial; the settings chosen most often are printed as the recommendation.

A flag given on the command line (``--depth 4``, ``--lr 1e-3``, ...) is fixed and not searched; every other field of
:data:`SPACE` is. Optuna is an optional extra (``pip install 'deepsets[tune]'``). Outer folds run on the executors
of ``cv`` (here, ``--executor local|slurm``), one job per outer fold; a finished fold is not run again.
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np

from ..files import atomic_write_text
from .config import TrainConfig
from .guard import RunLock

#: the search space: field -> ("categorical", choices) | ("log", low, high); ``pool`` only for the Deep Sets family
SPACE: dict[str, tuple] = {
    "depth": ("categorical", [2, 4, 8]),
    "dim": ("categorical", [32, 64, 128]),
    "lr": ("log", 3e-4, 3e-3),
    "weight_decay": ("categorical", [0.0, 1e-4, 1e-3, 1e-2, 1e-1]),
    "batch_size": ("categorical", [8, 16, 32]),
    "pool": ("categorical", ["sum", "mean", "max"]),
}


def describe_space() -> str:
    parts = []
    for k, (kind, *args) in SPACE.items():
        parts.append(f"{k} in {args[0]}" if kind == "categorical" else f"{k} log-uniform in [{args[0]:g}, {args[1]:g}]")
    return "; ".join(parts)


def _optuna():
    try:
        import optuna
    except ImportError as e:
        raise ImportError("deepsets tune needs Optuna: pip install 'deepsets[tune]'") from e
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def searched_fields(cfg: TrainConfig) -> list[str]:
    """The fields of :data:`SPACE` that ``cfg`` leaves unset (``None``): those are searched."""
    from ..models.registry import preset_default

    names = [k for k in SPACE if getattr(cfg, k) is None]
    if "pool" in names and preset_default(cfg.model, "pool") in (None, "pma"):
        names.remove("pool")  # the Set Transformer family pools by attention
    return names


def _suggest(trial, name: str):
    kind, *args = SPACE[name]
    if kind == "categorical":
        return trial.suggest_categorical(name, args[0])
    return trial.suggest_float(name, args[0], args[1], log=True)


def tune_fold(cfg: TrainConfig, searched: list[str], metric: str, k: int, train_idx: list[int], test_idx: list[int],
              fold_dir: str, inner_folds: int, trials: int, full=None, task=None) -> dict:
    """Outer fold ``k``: the study on its training part, then the best setting tested on its held-out sets
    (cached in ``fold_dir/result.json``)."""
    from ..metrics import HIGHER_IS_BETTER
    from .cv import fold_data, fold_set_ids, fold_splits, run_fold

    fold_dir = Path(fold_dir)
    done = fold_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    optuna = _optuna()
    full, task = fold_data(cfg, full, task)
    train_idx = np.asarray(train_idx)
    targets = np.asarray([np.asarray(full.target_of(int(i))).reshape(-1)[0] for i in train_idx])
    stratify = getattr(full, "target_kind", "") == "class"
    inner = fold_splits(targets, inner_folds, stratify, cfg.seed + 1 + k)
    higher = HIGHER_IS_BETTER.get(metric, False)
    worst = -math.inf if higher else math.inf
    records = []

    def objective(trial):
        params = {name: _suggest(trial, name) for name in searched}
        tcfg = copy.deepcopy(cfg)
        for name, value in params.items():
            setattr(tcfg, name, value)
        trial_dir = fold_dir / f"trial-{trial.number}"
        scores = []
        for j, (itr, ite) in enumerate(inner):
            r = run_fold(tcfg, j, train_idx[itr].tolist(), train_idx[ite].tolist(), str(trial_dir / f"inner-{j}"),
                         full, task)
            scores.append(float(r[metric]))
        shutil.rmtree(trial_dir, ignore_errors=True)  # the trial's score is what is kept
        score = float(np.mean(scores)) if all(math.isfinite(s) for s in scores) else worst
        records.append({"trial": trial.number, "params": params, "inner": scores, "score": score})
        return score

    study = optuna.create_study(direction="maximize" if higher else "minimize",
                                sampler=optuna.samplers.TPESampler(seed=cfg.seed + k))
    study.optimize(objective, n_trials=trials)
    best = dict(study.best_params)
    fcfg = copy.deepcopy(cfg)
    for name, value in best.items():
        setattr(fcfg, name, value)
    r = run_fold(fcfg, k, train_idx.tolist(), list(test_idx), str(fold_dir / "best"), full, task)
    r.update({"best_params": best, "inner_score": float(study.best_value), "trials": records,
              "inner_sets": fold_set_ids(full, train_idx)})
    atomic_write_text(done, json.dumps(r, indent=1))
    return r


def tune(cfg: TrainConfig, folds: int = 5, inner_folds: int = 3, trials: int = 20, out: str | Path | None = None,
         overwrite: bool = False, echo=print, executor: str | None = None, parallel: int = 2, slurm=None,
         trust_code: bool = True) -> dict:
    """Nested cross-validation of an Optuna search (see the module docstring); returns ``tune.json``'s contents
    plus ``path``. ``trust_code`` as in :func:`deepsets.train.cv.cross_validate`."""
    from .datamodule import resolve_task

    if trials < 1 or inner_folds < 2:
        raise ValueError(f"--trials must be >= 1 and --inner-folds >= 2, got {trials} and {inner_folds}")
    _optuna()
    cfg = copy.deepcopy(cfg)
    task = resolve_task(cfg, echo=echo, trust_code=trust_code)
    out = Path(out or cfg.out or Path("runs") / f"tune-{task.name.rpartition(':')[2]}-{cfg.model}-s{cfg.seed}")
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        return _tune(cfg, task, folds, inner_folds, trials, out, overwrite, echo, executor, parallel, slurm)


def _tune(cfg, task, folds, inner_folds, trials, out: Path, overwrite, echo, executor, parallel, slurm) -> dict:
    from ..data._base import require_labels
    from ..metrics import default_metric
    from .cv import fold_set_ids, fold_splits, mean_se
    from .executors import run_jobs
    from .regime import resolve_regime

    full = task.load("train", data=cfg.data, set_size=cfg.set_size, seed=cfg.seed, fixed_subset=cfg.fixed_subset,
                     **cfg.task_options)
    require_labels(full)
    targets = np.asarray([np.asarray(full.target_of(i)).reshape(-1)[0] for i in range(len(full))])
    splits = fold_splits(targets, folds, task.target == "classification", cfg.seed)
    searched = searched_fields(cfg)
    cfg = resolve_regime(cfg, task, min(len(tr) for tr, _ in splits), echo=echo)  # the fields not searched
    metric = cfg.metric if cfg.metric not in (None, "loss") else default_metric(task.target)
    echo(f"search: {trials} trials per outer fold over {', '.join(searched) or 'nothing (every field given)'}, "
         f"scored by {metric} in {inner_folds}-fold cross-validation of the outer fold's training sets; space: "
         f"{describe_space()}")
    plan = json.loads(json.dumps({"folds": folds, "inner_folds": inner_folds, "trials": trials, "sets": len(full),
                                  "searched": searched, "config": {k: v for k, v in cfg.to_dict().items()
                                                                   if k not in ("out", "progress")}}, default=str))
    plan_path = out / "tune-plan.json"
    if plan_path.is_file() and json.loads(plan_path.read_text()) != plan and not overwrite:
        raise ValueError(f"{out} holds a search with other settings; choose another --out, or pass --overwrite")
    if overwrite or not plan_path.is_file():
        for old in list(out.glob("fold-*")) + [out / "tune.json"]:
            shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
        atomic_write_text(plan_path, json.dumps(plan, indent=1))
    here = executor is None
    jobs = [(cfg, searched, metric, k, tr.tolist(), te.tolist(), str(out / f"fold-{k}"), inner_folds, trials)
            for k, (tr, te) in enumerate(splits)]

    def cached(*job):
        done = Path(job[6]) / "result.json"
        return json.loads(done.read_text()) if done.is_file() else None

    t0, rows = time.time(), {}
    for k, r in run_jobs(tune_fold, jobs if not here else [(*j, full, task) for j in jobs], executor, out / "jobs",
                         parallel, slurm, cached=cached):
        rows[k] = r
        echo(f"outer fold {k + 1}/{len(splits)}: {metric} {r[metric]:.4g} with {r['best_params']} (inner "
             f"{r['inner_score']:.4g}) [{(time.time() - t0) / 60:.1f} min]")
    rows = [rows[k] for k in sorted(rows)]
    values = [r[metric] for r in rows]
    mean, se = mean_se(values)
    names = [m for m in rows[0] if m in _metric_names(task.target)]
    metrics = {}
    for m in names:
        mm, ms = mean_se([r[m] for r in rows])
        metrics[m] = {"folds": [r[m] for r in rows], "mean": mm, "se": ms}
    votes = {name: Counter(json.dumps(r["best_params"].get(name)) for r in rows).most_common(1)[0][0]
             for name in searched}
    recommended = {k: json.loads(v) for k, v in votes.items()}
    result = {"metric": metric, "folds": values, "mean": mean, "se": se, "metrics": metrics,
              "fold_sets": [fold_set_ids(full, te) for _, te in splits], "k": len(splits),
              "inner_folds": inner_folds, "trials": trials, "searched": searched, "space": describe_space(),
              "best_params": [r["best_params"] for r in rows], "recommended": recommended,
              "task": cfg.task, "model": cfg.model, "seed": cfg.seed, "details": rows, "config": cfg.to_dict()}
    path = out / "tune.json"
    atomic_write_text(path, json.dumps(result, indent=1, default=str))
    result["path"] = str(path)
    return result


def _metric_names(target: str) -> list[str]:
    from ..metrics import METRICS

    return list(METRICS.get(target, ()))
