"""Training one model: ``deepsets train`` and everything that trains (``cv``, ``tune``, ``reproduce``, the estimators)."""
from __future__ import annotations

import contextlib
import copy
import math
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from ..checkpoint import read_checkpoint
from ..data import DataError, Task, check_before_training, get_task
from ..data._base import unwrap
from ..data.sources import left_out_note
from ..data.tasks import UntrustedTaskError, is_code
from ..models.registry import preset_default
from ..runtime import tune_allocator
from .callbacks import AtomicCheckpointIO, MetricsCSV, NonFiniteLossError, StopRecorder, SubsetEpoch, read_metrics
from .config import TrainConfig
from .datamodule import SetDataModule, resolve_task
from .folder import (absolute_paths, changed_fields, check_resumable, default_out, launched_worker, prepare_out_dir,
                     resume_checkpoint, resume_config)
from .guard import RunGuard, RunLock, kept_checkpoint, write_error
from .loggers import close_loggers, make_logger
from .module import SetModule


def model_kwargs(cfg: TrainConfig, task: Task, info: dict) -> dict:
    """``create_model`` arguments: the task's sizes, pooling and output kind + the config's overrides, and for your
    own data the preprocessing (``info["transform"]``, standardisation), the training set size and the ensemble."""
    kw = {"in_dim": info["in_dim"], "out_dim": info["out_dim"], "output": task.output, **cfg.model_options}
    if not task.paper:
        if info.get("set_size"):
            kw["trained_set_size"] = int(info["set_size"])
        if info.get("transform"):
            kw["transform"] = list(info["transform"])
        if cfg.standardize:
            kw["standardize"] = True
    if (cfg.ensemble or 1) > 1:
        kw.update(ensemble=int(cfg.ensemble),
                  combine="probabilities" if task.target == "classification" else "mean")
    for k in ("depth", "dim", "norm", "residual", "pool"):
        if getattr(cfg, k) is not None:
            kw[k] = getattr(cfg, k)
    if cfg.pool is None and preset_default(cfg.model, "pool") not in (None, "pma"):
        kw["pool"] = task.pool  # families with a pooling choice (Deep Sets): the task's (max for point clouds)
    return kw


def quiet_lightning(verbose: bool = True) -> None:
    """Hide Lightning's advice that does not apply here (worker counts, tips); keep its real warnings."""
    import logging

    for pattern in (".*does not have many workers.*", ".*sync_dist=True.*", ".*LeafSpec.*is deprecated.*",
                    ".*weights_only.*", ".*litlogger.*", ".*isinstance\\(treespec, LeafSpec\\).*",
                    ".*smaller than the logging interval.*"):
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")  # --resume
    # DDP's final validation: the DistributedSampler repeats at most (processes - 1) sets to even out the shards
    warnings.filterwarnings("ignore", message=".*it is recommended to use `Trainer\\(devices=1, num_nodes=1\\)`.*")
    # "GPU available: False ...", "TPU available ..." and the logging tip: hardware banners, not advice
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.trainer.connectors.logger_connector.logger_connector",
                 *(("lightning.pytorch", "lightning.fabric") if not verbose else ())):
        logging.getLogger(name).setLevel(logging.WARNING)


def monitored(cfg: TrainConfig) -> str:
    """What picks the best epoch (and stops early with ``--patience``): ``val_loss``, or ``val_select`` for
    ``--metric NAME`` (the metric, negated where higher is better: lower is better for both; see SetModule)."""
    return "val_select" if cfg.metric not in (None, "loss") else "val_loss"


def build_trainer(cfg: TrainConfig, task: Task, out: Path, title: str, extra_callbacks=(),
                  resume: bool = False) -> pl.Trainer:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    monitor = monitored(cfg)
    ckpt = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor=monitor, mode="min",
                           save_last=False, save_top_k=1, every_n_epochs=cfg.eval_every,
                           save_on_train_epoch_end=True, enable_version_counter=False, save_on_exception=False)
    # last.ckpt: every validated epoch (Lightning's save_last writes it only when best.ckpt is written too) and
    # stays the end of the last complete epoch; after ``ckpt``, so it holds the best score of that epoch
    last = ModelCheckpoint(dirpath=out / "checkpoints", filename="last", monitor=None, save_top_k=1,
                           every_n_epochs=cfg.eval_every, save_on_train_epoch_end=True,
                           enable_version_counter=False, save_on_exception=False)
    if cfg.patience is not None:
        if cfg.patience < 1:
            raise ValueError(f"--patience must be at least 1 (validations without improvement), got {cfg.patience}")
        # a NaN value (ROC AUC of a one-class validation set) counts as no improvement, it does not stop the run
        extra_callbacks = [EarlyStopping(monitor=monitor, mode="min", patience=cfg.patience, check_finite=False,
                                         verbose=False), *extra_callbacks]
    epochs = cfg.epochs if cfg.epochs is not None else task.epochs
    return pl.Trainer(
        max_epochs=epochs, max_steps=cfg.max_steps, accelerator=cfg.accelerator, devices=cfg.devices,
        strategy=cfg.strategy, num_nodes=cfg.num_nodes, precision=cfg.precision,
        gradient_clip_val=cfg.grad_clip, check_val_every_n_epoch=cfg.eval_every,
        callbacks=[SubsetEpoch(), MetricsCSV(out, task.metric, title, resume), ckpt, last, *extra_callbacks],
        plugins=[AtomicCheckpointIO()], logger=make_logger(cfg.logger, cfg.logger_uri, out),
        enable_progress_bar=cfg.progress,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=out,
        deterministic=False, use_distributed_sampler=True,
    )


def init_output_scale(model, targets: np.ndarray) -> None:
    """Start a regression model's output layer at the targets' scale: ``y = std * (W h + b) + mean``."""
    t = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    if len(t) < 2:
        return
    mean, std = t.mean(0), t.std(0)
    std = np.where(std > 0, std, 1.0)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == t.shape[1]][-1]
    with torch.no_grad():
        s = torch.as_tensor(std, dtype=last.weight.dtype)
        last.weight.mul_(s[:, None])
        if last.bias is not None:
            last.bias.mul_(s).add_(torch.as_tensor(mean, dtype=last.bias.dtype))


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, dataset=None, echo=print,
          changed=None, trust_code: bool = True, task: Task | None = None) -> dict:
    """Train one model; returns a summary (and writes ``config.yaml``, ``metrics.csv``, checkpoints, PNG).

    ``dataset`` (a dataset or ``Subset`` of one) replaces the task's training split: cross-validation folds
    and the scikit-learn estimators train this way; ``config.yaml`` then records the task and options only.
    ``task``: the run's :class:`~deepsets.data.Task` where the caller has resolved it (else ``cfg.task`` is).

    ``resume=True`` continues the run in ``cfg.out`` exactly as saved in its ``config.yaml``; the fields named in
    ``changed`` (default: those of ``cfg`` that differ from :class:`TrainConfig`'s defaults) are taken from
    ``cfg``, and only the budget and hardware may change (see :func:`~deepsets.train.folder.resume_config`).

    ``cfg.task`` given as code (``file.py:NAME``, ``module:NAME``) is imported: the caller named it
    (``trust_code=False``, as the command line passes after importing ``--task`` itself: only a registered task).
    The task of a resumed run's ``config.yaml`` is never imported: name it again in ``cfg.task``.

    Like the ``deepsets`` command, this tunes the process's allocator (:func:`deepsets.runtime.tune_allocator`)
    unless ``DEEPSETS_TUNE_MALLOC=0``.

    While it runs, ``OUT/.lock`` keeps other runs out of ``OUT``; SIGTERM or Ctrl-C raise
    :class:`~deepsets.train.guard.RunInterrupted` and a failed write :class:`~deepsets.train.guard.StorageError`,
    both saying which checkpoint is kept and how to continue (see :mod:`deepsets.train.guard`).
    """
    with contextlib.ExitStack() as run:  # the run folder's lock and guard, entered in _train
        return _train(cfg, resume, overwrite, dataset, echo, changed, run, trust_code, task)


def _train(cfg: TrainConfig, resume: bool, overwrite: bool, dataset, echo, changed, run: contextlib.ExitStack,
           trust_code: bool, task: Task | None) -> dict:
    tune_allocator()
    cfg = copy.deepcopy(cfg)
    worker = launched_worker()
    quiet = (lambda *a: None) if worker else echo
    if trust_code and cfg.task is not None and task is None:  # the caller's own (imported before a resumed run
        task = get_task(cfg.task, trust_code=True)  # is read)
    if not resume or cfg.out is None:  # a bad task fails before any folder is made; the default folder is named
        task = resolve_task(cfg, echo=quiet, task=task)  # after the task, model, depth and seed
        absolute_paths(cfg)
    if cfg.out is None:
        cfg.out = default_out(cfg)
    if worker:  # a DDP process started by Lightning: rank 0 has prepared the folder
        out = Path(cfg.out)
        last = read_checkpoint(out / "checkpoints" / "last.ckpt") if resume else None
    else:  # the lock first: a run refused for a busy folder (even with --overwrite) touches nothing
        run.enter_context(RunLock(cfg.out, create=not resume))
        out = Path(cfg.out) if resume else prepare_out_dir(cfg.out, overwrite=overwrite)
        last = resume_checkpoint(out) if resume else None  # read once, checked
    recorder = StopRecorder()
    run.enter_context(RunGuard(out, recorder))
    if resume:
        cfg = resume_config(out, cfg, changed_fields(cfg) if changed is None else changed, last, echo=echo)
        if is_code(cfg.task):  # the saved config.yaml's task, not named by the caller: never imported
            raise UntrustedTaskError(cfg.task, f"the run to resume ({out / 'config.yaml'}) was trained with",
                                     python="TrainConfig(task=...)")
        task = resolve_task(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = SetDataModule(cfg, task, dataset)
    dm.setup("fit")
    if len(dm.train_set) + len(dm.val_set) < 2:
        where = getattr(unwrap(dm.train_set)[0], "source", None) or cfg.data or cfg.task
        raise DataError(f"{where}: {len(dm.train_set) + len(dm.val_set)} set(s) to train on; training needs at "
                        f"least 2 (one is held out for validation)")
    check_before_training(dm.train_set, dm.val_set, None if dataset is not None else lambda: dm.load("test"))
    if not resume:
        from .regime import resolve_regime

        cfg = resolve_regime(cfg, task, len(dm.train_set) + len(dm.val_set), echo=quiet)
        dm.cfg = cfg
    from .regime import threads, threads_of

    run.enter_context(threads(threads_of(cfg)))
    module = _module(cfg, task, dm, last, out, quiet)
    if not task.paper and not worker:
        _describe(cfg, module, dm, quiet, echo)
    if not worker and (not resume or TrainConfig.load(out / "config.yaml") != cfg):
        try:  # on resume: only when this resumption changed something
            cfg.save(out / "config.yaml")
        except OSError as e:
            raise write_error("config", out / "config.yaml", e) from None
    title = f"{cfg.model} depth {module.model.config.depth} on {cfg.task}"
    quiet_lightning(verbose=cfg.progress)  # before the Trainer prints its banners
    trainer = build_trainer(cfg, task, out, title, extra_callbacks=[recorder], resume=resume)
    start_step = last.get("global_step", 0) if resume else 0
    if cfg.max_steps > 0:  # a step budget may end before the first validation; the final one is done below
        warnings.filterwarnings("ignore", message=".*could not find the monitored key.*")
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(out / "checkpoints" / "last.ckpt") if resume else None)
    except NonFiniteLossError as e:
        kept = kept_checkpoint(out)
        kept = ("no checkpoint had been written yet" if kept is None else
                f"the checkpoint {kept[0]} could not be read" if kept[1] is None else
                f"the last good checkpoint {kept[0]} (end of epoch {kept[1]}) is kept")
        raise NonFiniteLossError(f"{e}; {kept}. Try a lower --lr or --grad-clip.") from None
    _finish(trainer, module, dm, out, start_step, resume, echo)
    close_loggers(trainer)  # the final row came after Lightning closed them
    rows = read_metrics(out / "metrics.csv")
    return {"out": str(out), "model": cfg.model, "task": cfg.task, "depth": module.model.config.depth,
            "metric": task.metric, "epochs_done": complete_epochs(trainer), "steps": trainer.global_step,
            "final": rows[-1] if rows else None, "best_val_loss": min((r["val_loss"] for r in rows), default=None)}


def _module(cfg: TrainConfig, task: Task, dm: SetDataModule, last: dict | None, out: Path, quiet) -> SetModule:
    """The Lightning module of the run: the model the config describes, fitted to the training sets' preprocessing
    and scale; on resume, checked against the checkpoint it continues from."""
    resume = last is not None
    base, idx = unwrap(dm.train_set)
    if not task.paper:
        from .preprocessing import resolve_transform, summary

        specs, why = resolve_transform(cfg.transform, dm.info.get("features") or range(dm.info["in_dim"]), base)
        dm.info["transform"] = specs
        quiet(summary(specs, dm.info.get("features"), cfg.standardize, why))
    kw = model_kwargs(cfg, task, dm.info)
    if resume and not task.paper:  # the size the run measured on its training sets (fit_to_training_sets below)
        saved = last["hyper_parameters"]["model_kwargs"]
        if saved.get("trained_set_size"):
            kw["trained_set_size"] = saved["trained_set_size"]
    module = SetModule(cfg.model, kw, cfg.task, task.target, cfg.lr, train_config=cfg.to_dict(),
                       data_info=dm.info, weight_decay=cfg.weight_decay or 0.0)
    if resume:
        check_resumable(module, last, out)
        return module
    if not task.paper:
        from .preprocessing import fit_to_training_sets

        largest = fit_to_training_sets(module.model, dm.train_set)
        if largest:  # the checkpoint rebuilds the model from these
            module.hparams["model_kwargs"]["trained_set_size"] = largest
    if task.scale_output and task.target == "regression" and hasattr(base, "targets"):
        for member in getattr(module.model, "members", [module.model]):
            init_output_scale(member, np.asarray(base.targets)[idx])
    return module


def _describe(cfg: TrainConfig, module: SetModule, dm: SetDataModule, quiet, echo) -> None:
    """Your own data: the model and the features the run trains on, said once."""
    c, base = module.model.config, unwrap(dm.train_set)[0]
    pool = getattr(c, "pool", "pma")
    quiet(f"model: {cfg.model} (depth {c.depth}, dim {c.dim}, norm {c.norm}, pool {pool}"
          + (f", ensemble of {c.ensemble}" if c.ensemble > 1 else "") + ")"
          + (f"; sets subsampled to {base.set_size:,} elements per training step" if base.set_size else ""))
    feats = dm.info.get("features")
    if feats:
        echo(f"features ({len(feats)}): {', '.join(feats[:12])}{' ...' if len(feats) > 12 else ''}")
        if (note := left_out_note(dm.train_set)) is not None:  # FCS/.h5ad: time, event length, beads, ...
            echo(note)


def _finish(trainer: pl.Trainer, module: SetModule, dm: SetDataModule, out: Path, start_step: int, resume: bool,
            echo) -> None:
    """The step budget ended mid-epoch: evaluate once more so the final state is in metrics.csv (and best.ckpt if it
    is the best). Rank zero keeps the metrics and decides; every rank then validates and checkpoints together (both
    are collective under DDP)."""
    metrics_cb = next(c for c in trainer.callbacks if isinstance(c, MetricsCSV))
    final = trainer.global_step > start_step and (not metrics_cb.rows
                                                  or metrics_cb.rows[-1]["step"] != trainer.global_step)
    if trainer.global_step == start_step and resume and not launched_worker():
        echo(f"nothing to train: the run in {out} already finished its budget (epoch {trainer.current_epoch}, step "
             f"{trainer.global_step}); pass a larger --epochs or --max-steps with --resume to train further")
    if not trainer.strategy.broadcast(bool(final), src=0):
        return
    trainer.validate(module, datamodule=dm, verbose=False)
    val_loss = module.last_monitored if module.last_val else math.nan  # the checkpoints' monitored quantity
    # collective (reduces the training means); rank zero writes
    metrics_cb.record(trainer, module, module.last_val, metrics_cb.last_step_epoch)
    if trainer.is_global_zero:
        metrics_cb.plot()
    # best.ckpt is the final state when no epoch finished or when the final validation is the best one
    best = out / "checkpoints" / "best.ckpt"
    improved = trainer.strategy.broadcast(final_is_best(trainer, val_loss, best), src=0)
    if improved:
        mark_best(trainer, val_loss, best)
    trainer.save_checkpoint(out / "checkpoints" / "last.ckpt")  # holds the checkpoint callback's best score
    if improved:
        trainer.save_checkpoint(best)


def final_is_best(trainer, val_loss: float, best: Path) -> bool:
    """Whether the final validation of a step budget (after the last epoch's) beats the best one so far;
    ``val_loss`` is the value of the monitored quantity (:func:`monitored`: lower is better)."""
    score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    if not best.exists() or score is None:
        return True
    if math.isfinite(val_loss) and not math.isfinite(float(score)):  # a NaN best (one-class ROC AUC) is beaten
        return True
    return math.isfinite(val_loss) and val_loss < float(score)


def mark_best(trainer, val_loss: float, best: Path) -> None:
    """Tell the checkpoint callback that ``best`` now holds the final state (so a resumed run compares with it),
    through its own state (``state_dict`` / ``load_state_dict``); ``val_loss`` is the monitored quantity's value."""
    cb = trainer.checkpoint_callback
    if cb is None:
        return
    score = torch.tensor(float(val_loss))
    cb.load_state_dict({**cb.state_dict(), "best_model_score": score, "best_model_path": str(best),
                        "best_k_models": {str(best): score}, "kth_best_model_path": str(best), "kth_value": score})


def complete_epochs(trainer) -> int:
    """Epochs trained to their end (Lightning's ``current_epoch`` also counts one a step budget stopped inside)."""
    per_epoch = trainer.num_training_batches
    if isinstance(per_epoch, int) and per_epoch > 0:
        return min(trainer.current_epoch, trainer.global_step // per_epoch)
    return trainer.current_epoch
