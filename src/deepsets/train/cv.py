"""``deepsets cv``: K-fold cross-validation of a training configuration.

The task's training split is cut into ``K`` folds (``StratifiedKFold`` for classification, ``KFold``
otherwise, shuffled with the config's seed; scikit-learn, the ``sklearn`` extra). Fold ``k`` trains in
``OUT/fold-k/`` on the other folds (holding out ``val_fraction`` of them for checkpoint selection, as ``train``
does) and tests its best checkpoint on the held-out fold. ``OUT/cv.json`` holds ``metric`` (``--metric``, else
the target's default: ``mse`` / ``accuracy``), ``folds`` (one value per fold), ``mean`` and ``se`` (standard error
over folds); ``metrics``: the same ``{"folds", "mean", "se"}`` for every metric of the target
(:mod:`deepsets.metrics`); ``fold_sets``: the ids of each fold's test sets. A fold whose ``result.json`` exists is
not trained again, so an interrupted cross-validation continues where it stopped (the same command:
``OUT/cv-plan.json`` records the folds, the config and the content fingerprint of the data files
(:mod:`deepsets.data.fingerprint`), and another plan in the same folder is refused unless ``--overwrite``; so are
finished folds of data that changed since, whatever their modification times).
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np
from torch.utils.data import Subset

from ..data import Task, get_task
from ..files import atomic_write_text
from .config import TrainConfig
from .guard import RunInterrupted, RunLock


def fold_splits(targets: np.ndarray, folds: int, stratify: bool, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    try:
        from sklearn.model_selection import KFold, StratifiedKFold
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("cross-validation needs scikit-learn: pip install 'deepsets[sklearn]'") from e
    n = len(targets)
    if folds < 2 or folds > n:
        raise ValueError(f"--folds must be between 2 and the number of sets ({n}), got {folds}")
    if stratify:
        counts = np.bincount(targets.astype(np.int64))
        smallest = int(counts[counts > 0].min())
        if smallest < folds:
            raise ValueError(f"--folds {folds}: the smallest class has only {smallest} sets; stratified "
                             f"cross-validation needs at least one per fold (use --folds {max(2, smallest)})")
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(n), targets))
    return list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(n)))


def mean_se(values: list[float]) -> tuple[float, float]:
    m = float(np.mean(values))
    se = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return m, se


def _plan(cfg: TrainConfig, folds: int, n_sets: int) -> dict:
    """What the folds' results depend on: a cross-validation continues only with the same plan."""
    c = {k: v for k, v in cfg.to_dict().items() if k not in ("out", "progress", "num_workers")}
    return json.loads(json.dumps({"folds": folds, "sets": n_sets, "config": c}, default=str))


def _same_plan(saved: dict, plan: dict) -> bool:
    """``saved == plan``, where a config field the saved plan lacks (one added in a later version) matches its
    default value."""
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        return saved == plan
    default = _plan(TrainConfig(), 0, 0)["config"]
    filled = {**{k: v for k, v in plan["config"].items() if k not in saved["config"] and v == default.get(k)},
              **saved["config"]}
    return {**saved, "config": filled} == plan


def data_fingerprints(cfg: TrainConfig) -> dict | None:
    """``{path: content fingerprint}`` of the files the folds read (``--data``, ``--labels``;
    :mod:`deepsets.data.fingerprint`), or ``None`` for generated data: folds of other data are never reused."""
    from ..data.fingerprint import fingerprint

    paths = [cfg.data, (cfg.task_options or {}).get("labels")]
    out = {str(p): fingerprint(p) for p in paths if p is not None and Path(p).exists()}
    return out or None


def data_changed_message(out: Path, saved: dict, fingerprints: dict | None) -> str:
    """Why the finished folds in ``out`` are not reused: their data changed, or their plan records no fingerprint."""
    hint = ("; choose another --out, or pass --overwrite to run every fold again on the data as they are now")
    if "data_fingerprint" not in saved:
        return (f"{out} holds finished folds whose data cannot be checked (the folder records no fingerprint of its "
                f"data, which may have changed since){hint}")
    old = saved.get("data_fingerprint") or {}
    changed = [p for p in sorted({*old, *(fingerprints or {})}) if old.get(p) != (fingerprints or {}).get(p)]
    return f"{out} holds finished folds of other data: {', '.join(changed)} changed since they were run{hint}"


def fold_set_ids(ds, indices) -> list[str]:
    """The ids of sets ``indices`` of ``ds`` as the data name them (``set_name``), else their index as text."""
    name = getattr(ds, "set_name", None)
    return [str(name(int(i))) if name is not None else str(int(i)) for i in indices]


def fold_data(cfg: TrainConfig, full=None, task: Task | None = None) -> tuple:
    """``(full, task)``: the task's training split and the task, as given (here) or loaded (in a job: its arguments
    come from the command, which checked the task, imported in the job)."""
    if task is None:
        task = get_task(cfg.task, trust_code=True)
    if full is None:
        full = task.load("train", data=cfg.data, set_size=cfg.set_size, seed=cfg.seed, fixed_subset=cfg.fixed_subset,
                         **cfg.task_options)
    return full, task


def run_fold(cfg: TrainConfig, k: int, train_idx: list[int], test_idx: list[int], fold_dir: str, full=None,
             task: Task | None = None) -> dict:
    """Train fold ``k`` in ``fold_dir`` and test its best checkpoint on the held-out sets (cached in
    ``result.json``); ``full`` is the task's training split and ``task`` the task (loaded here when not given,
    e.g. in a job)."""
    from ..checkpoint import open_checkpoint
    from .evaluation import evaluate_dataset
    from .fit import train

    fold_dir = Path(fold_dir)
    done = fold_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    full, task = fold_data(cfg, full, task)
    fcfg = copy.deepcopy(cfg)
    fcfg.out = str(fold_dir)
    try:
        train(fcfg, overwrite=True, dataset=Subset(full, train_idx), echo=lambda *a: None, task=task)
    except RunInterrupted as e:  # a fold is trained again from its start: the cv command continues
        raise RunInterrupted(e.signal, f"stopped by {e.signal} in fold {k + 1}; the folds done so far are kept "
                                       f"({fold_dir.parent}/fold-K/result.json); run the same deepsets cv command "
                                       f"again to continue") from None
    ckpt = open_checkpoint(fold_dir / "checkpoints" / "best.ckpt")
    fold_cfg = TrainConfig.of_checkpoint(ckpt.hparams)  # as the fold trained (values a regime chose included)
    # (None: evaluate_dataset's default: whole sets, or the model's subsets of its training size)
    subsets = next((v for v in (cfg.eval_subsets, fold_cfg.eval_subsets) if v is not None), None)
    batch_size = next((v for v in (cfg.batch_size, fold_cfg.batch_size) if v is not None), 64)
    r = evaluate_dataset(ckpt, Subset(copy.copy(full), test_idx), subsets, batch_size, task=task)
    r.update({"fold": k, "train_sets": len(train_idx), "test_sets": len(test_idx)})
    atomic_write_text(done, json.dumps(r, indent=1))
    return r


def cross_validate(cfg: TrainConfig, folds: int = 5, out: str | Path | None = None, overwrite: bool = False,
                   echo=print, executor: str | None = None, parallel: int = 2, slurm=None,
                   trust_code: bool = True) -> dict:
    """Run K-fold cross-validation; returns the ``cv.json`` contents plus ``path``.

    ``cfg.task`` given as code (``file.py:NAME``) is imported: the caller named it (``trust_code=False``: only a
    registered task, as the command line passes after importing ``--task`` itself).

    ``executor`` (``"local"`` / ``"slurm"``): one submitit job per fold, ``parallel`` at a time (see
    :mod:`deepsets.train.executors`); default: the folds run here, one after another.

    ``OUT/cv-plan.json`` records the folds and the config: rerunning the same command continues an interrupted
    cross-validation; another config or fold count in the same folder is refused unless ``overwrite``.
    """
    from .datamodule import resolve_task

    cfg = copy.deepcopy(cfg)
    task = resolve_task(cfg, echo=echo, trust_code=trust_code)  # (checks --metric against the target)
    out = Path(out or cfg.out or Path("runs") / f"cv-{task.name.rpartition(':')[2]}-{cfg.model}-s{cfg.seed}")
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):  # another cross-validation into OUT (--overwrite included) is refused while this one runs
        return _cross_validate(cfg, task, folds, out, overwrite, echo, executor, parallel, slurm)


def _cross_validate(cfg: TrainConfig, task, folds: int, out: Path, overwrite: bool, echo, executor, parallel,
                    slurm) -> dict:
    from .executors import run_jobs

    full = task.load("train", data=cfg.data, set_size=cfg.set_size, seed=cfg.seed, fixed_subset=cfg.fixed_subset,
                     **cfg.task_options)
    from ..data._base import require_labels

    require_labels(full)
    from ..data.sources import left_out_note

    if (note := left_out_note(full)) is not None:  # FCS/.h5ad: time, event length, beads, ...
        echo(note)
    targets = np.asarray([np.asarray(full.target_of(i)).reshape(-1)[0] for i in range(len(full))])
    stratify = task.target == "classification"
    splits = fold_splits(targets, folds, stratify, cfg.seed)
    from .regime import resolve_regime

    cfg = resolve_regime(cfg, task, min(len(tr) for tr, _ in splits), echo=echo)  # said once, the same every fold
    if not task.paper:  # what every fold's model applies to the raw elements (as train says)
        from .preprocessing import resolve_transform, summary

        names = getattr(full, "feature_names", None) or [str(i) for i in range(full.in_dim)]
        specs, why = resolve_transform(cfg.transform, names, full)
        echo(summary(specs, names, cfg.standardize, why))
    plan, plan_path = _plan(cfg, folds, len(full)), out / "cv-plan.json"
    saved = json.loads(plan_path.read_text()) if plan_path.is_file() else None
    fingerprints, stale = data_fingerprints(cfg), False
    if saved is not None and not _same_plan({k: v for k, v in saved.items() if k != "data_fingerprint"}, plan) \
            or saved is None and any(out.glob("fold-*")):
        if not overwrite:
            raise ValueError(f"{out} holds a cross-validation with other settings (folds, data or training "
                             f"flags); choose another --out, or pass --overwrite to replace it")
    elif saved is not None and saved.get("data_fingerprint") != fingerprints:
        if not overwrite and any(out.glob("fold-*/result.json")):  # finished folds of other data: never reused
            raise ValueError(data_changed_message(out, saved, fingerprints))
        stale = True  # no fold finished: start again on the data as they are now
    if overwrite or saved is None or stale:
        import shutil

        for old in list(out.glob("fold-*")) + [out / "cv.json"]:
            shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
        atomic_write_text(plan_path, json.dumps({**plan, "data_fingerprint": fingerprints}, indent=1))
    from ..metrics import metric_names

    metric = cfg.metric or task.metric
    names = list(dict.fromkeys([*metric_names(task.target), metric]))
    jobs = [(cfg, k, tr.tolist(), te.tolist(), str(out / f"fold-{k}")) for k, (tr, te) in enumerate(splits)]
    rows: dict[int, dict] = {}
    t0 = time.time()
    here = executor is None  # in this process the loaded data are reused; a job loads them itself

    def cached(*job):
        done = Path(job[4]) / "result.json"
        return json.loads(done.read_text()) if done.is_file() else None

    for k, r in run_jobs(run_fold, jobs if not here else [(*j, full, task) for j in jobs], executor, out / "jobs",
                         parallel, slurm, cached=cached):
        rows[k] = r
        echo(f"fold {k + 1}/{len(splits)} (fold-{k}): {metric} {r.get(metric, math.nan):.4g} ({r['test_sets']} test sets) "
             f"[{(time.time() - t0) / 60:.1f} min]")
    rows = [rows[k] for k in sorted(rows)]
    metrics = {}
    for name in names:  # a fold of an earlier version may lack the newer metrics: NaN
        values = [float(r.get(name, math.nan)) for r in rows]
        mean, se = mean_se(values)
        metrics[name] = {"folds": values, "mean": mean, "se": se}
    values, mean, se = metrics[metric]["folds"], metrics[metric]["mean"], metrics[metric]["se"]
    result = {"metric": metric, "folds": values, "mean": mean, "se": se, "metrics": metrics,
              "fold_sets": [fold_set_ids(full, te) for _, te in splits], "k": len(splits),
              "stratified": stratify, "task": cfg.task, "model": cfg.model, "seed": cfg.seed,
              "details": rows, "config": cfg.to_dict()}
    path = out / "cv.json"
    atomic_write_text(path, json.dumps(result, indent=1, default=str))
    result["path"] = str(path)
    return result
