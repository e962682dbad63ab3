"""Train, evaluate and predict: the functions behind ``deepsets train|eval|predict``."""
from __future__ import annotations

import contextlib
import copy
import json
import math
import shutil
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from ..data import DataError, check_before_training, collate_sets, get_task
from ..data.tasks import UntrustedTaskError, is_code, recorded_task
from ..data._base import loader_timeout, require_labels
from ..data.targets import explain_target
from .callbacks import AtomicCheckpointIO, MetricsCSV, NonFiniteLossError, SubsetEpoch, read_metrics
from .config import TrainConfig
from .loggers import make_logger
from .guard import LOCK_FILES, RunGuard, RunLock
from .module import SetModule

RUN_FILES = ("config.yaml", "metrics.csv", "learning_curve.png", "checkpoints", "results.json",
             "logs", "tensorboard", "mlflow.db", "wandb")  # the last four: --logger csv|tensorboard|mlflow|wandb


# ---------------------------------------------------------------------------------------------------- data
def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic train/validation split of ``n`` training sets (at least one of each when n >= 2)."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, int(round(n * val_fraction))), n - 1) if n >= 2 and val_fraction > 0 else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def unwrap(ds) -> tuple:
    """``(base dataset, indices)`` of a dataset or a (nested) torch ``Subset`` of one."""
    idx = np.arange(len(ds))
    while isinstance(ds, Subset):
        idx = np.asarray(ds.indices)[idx]
        ds = ds.dataset
    return ds, idx


def resolve_task(cfg: TrainConfig, echo=print, trust_code: bool = False, where: str | None = None):
    """The run's :class:`~deepsets.data.Task`: ``--task``, else ``--target`` on ``--data``, else the target the
    labels of ``--data`` imply (said once), else the default ``normal-var``. Sets ``cfg.task`` to its name.

    A task given as code (``file.py:NAME``) is imported only with ``trust_code`` (the caller named it); otherwise
    it must be registered already (:class:`~deepsets.data.UntrustedTaskError` naming ``where`` if not)."""
    if cfg.task is None:
        if cfg.target is not None:
            cfg.task = cfg.target
        elif cfg.data is not None:
            from ..data.sources import open_source
            from ..data.tasks import source_options

            opts = source_options({k: v for k, v in cfg.task_options.items() if k != "classes"})
            reader = open_source(cfg.data, "train", **opts)
            if reader.labels is None:
                raise DataError(f"{cfg.data}: no labels found (give --label-column, or --labels FILE with columns "
                                f"set,label); training needs a label per set")
            cfg.target, why = explain_target(reader.labels)
            echo(f"target: {cfg.target} ({why}; pass --target to choose)")
            cfg.task = cfg.target
        else:
            cfg.task = "normal-var"
    task = get_task(cfg.task, trust_code=trust_code, where=where)
    if cfg.target is not None and cfg.target != task.target:
        raise ValueError(f"--target {cfg.target} does not match task {task.name!r}, whose target is {task.target}")
    from ..metrics import check_selection

    check_selection(getattr(cfg, "metric", None), task.target)  # --metric: one of the target's (or loss)
    return task


class SetDataModule(pl.LightningDataModule):
    """Train/validation sets from the task's training split (or ``dataset``), held out by ``val_fraction``."""

    def __init__(self, cfg: TrainConfig, dataset=None):
        super().__init__()
        self.cfg = cfg
        self.dataset = dataset
        self.train_set = self.val_set = self.test_set = None

    def load(self, split: str):
        c = self.cfg
        return get_task(c.task).load(split, data=c.data, set_size=c.set_size, seed=c.seed,
                                     fixed_subset=c.fixed_subset, **c.task_options)

    def setup(self, stage: str | None = None):
        if self.train_set is not None:
            return
        full = self.dataset if self.dataset is not None else self.load("train")
        base, idx = unwrap(full)
        require_labels(base)
        if len(idx) == 0:
            raise DataError(f"{getattr(base, 'source', 'data')}: no training sets found (expected at least one)")
        train_idx, val_idx = split_indices(len(idx), self.cfg.val_fraction, self.cfg.seed)
        self.train_set = Subset(base, idx[train_idx].tolist())
        # validation sees one fixed subset of each set (epoch 0), whatever epoch training is in
        self.val_set = Subset(copy.copy(base), idx[val_idx].tolist())
        self.info = describe_dataset(base, len(idx))

    def _loader(self, ds, shuffle: bool):
        workers = self.cfg.num_workers  # a worker blocked inside the HDF5 library (damaged chunk) ends with an error
        return DataLoader(ds, batch_size=self.cfg.batch_size, shuffle=shuffle, collate_fn=collate_sets,
                          num_workers=workers, persistent_workers=False, drop_last=False,
                          timeout=loader_timeout() if workers > 0 else 0)

    def train_dataloader(self):
        return self._loader(self.train_set, True)

    def val_dataloader(self):
        return self._loader(self.val_set, False)


def describe_dataset(ds, n_sets: int | None = None) -> dict:
    """What a checkpoint records about its training data (sizes, classes, feature names)."""
    from ..data.targets import plain

    classes = getattr(ds, "classes", None)
    feats = getattr(ds, "feature_names", None) or getattr(ds, "channel_names", None)
    return {"in_dim": int(ds.in_dim), "out_dim": int(ds.out_dim), "num_classes": ds.num_classes,
            "set_size": getattr(ds, "set_size", None),
            "source": str(getattr(ds, "source", "")), "sets": len(ds) if n_sets is None else int(n_sets),
            "classes": None if classes is None else [plain(c) for c in classes],
            "features": None if feats is None else [str(f) for f in feats]}


def model_kwargs(cfg: TrainConfig, info: dict) -> dict:
    """``create_model`` arguments: the task's sizes, pooling and output kind + the config's overrides, and for your
    own data the preprocessing (``info["transform"]``, standardisation), the training set size and the ensemble."""
    from ..models import preset_default

    task = get_task(cfg.task)
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


# ---------------------------------------------------------------------------------------------------- train
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


def prepare_out_dir(out: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Create the run folder; an existing non-empty one is refused unless resuming or overwriting."""
    out = Path(out)
    if resume:
        last = out / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint to resume from at {last} (the run stopped before its "
                                    f"first checkpoint); start it again with --overwrite")
        if not (out / "config.yaml").is_file():
            raise FileNotFoundError(f"--resume: {out / 'config.yaml'} is missing; cannot tell how the run was "
                                    f"configured; start it again with --overwrite")
        for stale in list(out.glob(".*.tmp")) + list((out / "checkpoints").glob(".*.tmp")):
            stale.unlink(missing_ok=True)  # half-written files of a killed run (never renamed into place)
        read_checkpoint(last)  # a clear error now rather than deep inside Lightning
        return out
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(p.name not in LOCK_FILES for p in out.iterdir()):
        if not overwrite:
            raise ValueError(
                f"output folder {out} already holds files; pass --resume to continue that run, "
                f"--overwrite to replace it, or choose another --out"
            )
        links = [name for name in RUN_FILES if (out / name).is_symlink()]
        if links:  # checked before anything is removed: --overwrite never follows a link into other files
            raise ValueError(f"--overwrite: {out / links[0]} is a symbolic link; a run only replaces files it wrote "
                             f"itself: remove or move the link, or choose another --out")
        for name in RUN_FILES:  # only what a run writes; anything else of the user's stays
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"output folder {out} cannot be created: {e.strerror or e}") from None
    probe = out / ".write-test"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"output folder {out} is not writable: {e.strerror}") from None
    return out


def launched_worker() -> bool:
    """True in the extra processes Lightning's DDP launcher starts (they re-run the same command)."""
    import os

    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def default_out(cfg: TrainConfig) -> str:
    """``runs/TASK-MODEL-dDEPTH-sSEED`` (a task given as ``file.py:NAME`` uses ``NAME``)."""
    depth = cfg.depth if cfg.depth is not None else "default"
    task = str(cfg.task).rpartition(":")[2] or str(cfg.task)
    return str(Path("runs") / f"{task}-{cfg.model}-d{depth}-s{cfg.seed}")


def monitored(cfg: TrainConfig) -> str:
    """What picks the best epoch (and stops early with ``--patience``): ``val_loss``, or ``val_select`` for
    ``--metric NAME`` (the metric, negated where higher is better: lower is better for both; see SetModule)."""
    return "val_select" if cfg.metric not in (None, "loss") else "val_loss"


def build_trainer(cfg: TrainConfig, out: Path, metric_name: str, title: str, extra_callbacks=(),
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
    epochs = cfg.epochs if cfg.epochs is not None else get_task(cfg.task).epochs
    return pl.Trainer(
        max_epochs=epochs, max_steps=cfg.max_steps, accelerator=cfg.accelerator, devices=cfg.devices,
        strategy=cfg.strategy, num_nodes=cfg.num_nodes, precision=cfg.precision,
        gradient_clip_val=cfg.grad_clip, check_val_every_n_epoch=cfg.eval_every,
        callbacks=[SubsetEpoch(), MetricsCSV(out, metric_name, title, resume), ckpt, last, *extra_callbacks],
        plugins=[AtomicCheckpointIO()], logger=make_logger(cfg.logger, cfg.logger_uri, out),
        enable_progress_bar=cfg.progress,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=out,
        deterministic=False, use_distributed_sampler=True,
    )


def _absolute_paths(cfg: TrainConfig) -> None:
    """Data paths as absolute paths, so ``eval``/``predict`` of the checkpoint work from any folder."""
    if isinstance(cfg.data, str) and Path(cfg.data).expanduser().exists():
        cfg.data = str(Path(cfg.data).expanduser().resolve())
    lab = cfg.task_options.get("labels")
    if isinstance(lab, str) and Path(lab).expanduser().exists():
        cfg.task_options["labels"] = str(Path(lab).expanduser().resolve())


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


#: what ``--resume`` may change: the budget, the hardware and the bookkeeping. Everything else (task, data, model,
#: optimizer) is the saved run's; the checkpoint's weights and optimizer state hold it.
RESUMABLE = ("epochs", "max_steps", "eval_every", "grad_clip", "progress", "accelerator", "devices", "strategy",
             "num_nodes", "num_workers", "precision", "logger", "logger_uri", "out")


def changed_fields(cfg: TrainConfig) -> set[str]:
    """The fields of ``cfg`` that differ from :class:`TrainConfig`'s defaults (what a Python caller set)."""
    default = TrainConfig()
    return {k for k in TrainConfig.field_names() if getattr(cfg, k) != getattr(default, k)}


def resume_config(out: str | Path, cfg: TrainConfig, changed, echo=print) -> TrainConfig:
    """The saved config of the run in ``out`` with the fields named in ``changed`` taken from ``cfg``.

    Only :data:`RESUMABLE` fields may differ from the saved run (a larger ``epochs``, other devices, ...); each
    change is said once. Another field that differs (``--depth``, ``--lr``, ``--data``, ...) is refused with
    ``ValueError`` naming it: the checkpoint's weights and optimizer state belong to the saved values.
    """
    out = Path(out)
    saved = TrainConfig.load(out / "config.yaml")
    cfg = copy.deepcopy(cfg)
    _absolute_paths(cfg)
    said = []
    for name in sorted(set(changed) - {"out"}, key=TrainConfig.field_names().index):
        new, old = getattr(cfg, name), getattr(saved, name)
        if name == "task_options":  # data options: each given one must match the saved run's
            diff = {k: v for k, v in new.items() if old.get(k) != v}
            if diff:
                k = next(iter(diff))
                raise ValueError(f"--resume: {flag_name(k)} {diff[k]!r} differs from the run's saved "
                                 f"{old.get(k)!r} ({out / 'config.yaml'}); the data of a run cannot change when it "
                                 f"is resumed: start a new run with another --out")
            continue
        if new == old:
            continue
        if name not in RESUMABLE:
            raise ValueError(f"--resume: {flag_name(name)} {new!r} differs from the run's saved {old!r} "
                             f"({out / 'config.yaml'}); only the budget and hardware flags "
                             f"({', '.join(flag_name(k) for k in RESUMABLE if k != 'out')}) can change when a run "
                             f"is resumed: start a new run with another --out")
        setattr(saved, name, new)
        said.append(f"{flag_name(name)} {old} -> {new}")
    saved.out = str(out)
    if not launched_worker():
        ckpt = read_checkpoint(out / "checkpoints" / "last.ckpt")
        where = f"saved at epoch {ckpt.get('epoch')}, step {ckpt.get('global_step')}"
        echo(f"resuming {out} from its last checkpoint ({where}) as configured in config.yaml"
             + (f", except {'; '.join(said)}" if said else ""))
    return saved


def flag_name(field_name: str) -> str:
    """The command-line flag of a config field or task option (``max_steps`` -> ``--max-steps``)."""
    from dataclasses import fields

    meta = next((f.metadata for f in fields(TrainConfig) if f.name == field_name), {})
    return meta.get("flag") or "--" + field_name.replace("_", "-")


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, dataset=None, echo=print,
          changed=None, trust_code: bool = True) -> dict:
    with contextlib.ExitStack() as run:  # the run folder's lock and guard (deepsets.train.guard), entered in _train
        return _train(cfg, resume, overwrite, dataset, echo, changed, run, trust_code)


def _train(cfg: TrainConfig, resume: bool, overwrite: bool, dataset, echo, changed, run: contextlib.ExitStack,
           trust_code: bool = True) -> dict:
    """Train one model; returns a summary (and writes ``config.yaml``, ``metrics.csv``, checkpoints, PNG).

    ``dataset`` (a dataset or ``Subset`` of one) replaces the task's training split: cross-validation folds
    and the scikit-learn estimators train this way; ``config.yaml`` then records the task and options only.

    ``resume=True`` continues the run in ``cfg.out`` exactly as saved in its ``config.yaml``; the fields named in
    ``changed`` (default: those of ``cfg`` that differ from :class:`TrainConfig`'s defaults) are taken from
    ``cfg``, and only the budget and hardware may change (see :func:`resume_config`).

    ``cfg.task`` given as code (``file.py:NAME``, ``module:NAME``) is imported: the caller named it
    (``trust_code=False``, as the command line passes after importing ``--task`` itself: only a registered task).
    The task of a resumed run's ``config.yaml`` is never imported: name it again in ``cfg.task``.

    Like the ``deepsets`` command, this tunes the process's allocator (:func:`deepsets.runtime.tune_allocator`)
    unless ``DEEPSETS_TUNE_MALLOC=0``.

    While it runs, ``OUT/.lock`` keeps other runs out of ``OUT``; SIGTERM or Ctrl-C raise
    :class:`~deepsets.train.guard.RunInterrupted` and a failed write :class:`~deepsets.train.guard.StorageError`,
    both saying which checkpoint is kept and how to continue (see :mod:`deepsets.train.guard`).
    """
    from ..runtime import tune_allocator

    tune_allocator()
    cfg = copy.deepcopy(cfg)
    quiet = (lambda *a: None) if launched_worker() else echo
    if trust_code and cfg.task is not None:  # the caller's own task (imported before a resumed run is read)
        get_task(cfg.task, trust_code=True)
    if not resume or cfg.out is None:  # a bad task fails before any folder is made; the default folder is named
        resolve_task(cfg, echo=quiet)  # after the task, model, depth and seed
        _absolute_paths(cfg)
    if cfg.out is None:
        cfg.out = default_out(cfg)
    if launched_worker():  # a DDP process started by Lightning: rank 0 has prepared the folder
        out = Path(cfg.out)
    else:  # the lock first: a run refused for a busy folder (even with --overwrite) touches nothing
        run.enter_context(RunLock(cfg.out, create=not resume))
        out = prepare_out_dir(cfg.out, resume, overwrite)
    guard = run.enter_context(RunGuard(out))
    if resume:
        cfg = resume_config(out, cfg, changed_fields(cfg) if changed is None else changed, echo=echo)
    if resume and is_code(cfg.task):  # the saved config.yaml's task, not named by the caller: never imported
        raise UntrustedTaskError(cfg.task, f"the run to resume ({out / 'config.yaml'}) was trained with",
                                 python="TrainConfig(task=...)")
    task = resolve_task(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = SetDataModule(cfg, dataset)
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
    base, idx = unwrap(dm.train_set)
    if not task.paper:
        from .preprocessing import resolve_transform, summary

        specs, why = resolve_transform(cfg.transform, dm.info.get("features") or range(dm.info["in_dim"]), base)
        dm.info["transform"] = specs
        quiet(summary(specs, dm.info.get("features"), cfg.standardize, why))
    kw = model_kwargs(cfg, dm.info)
    last = read_checkpoint(out / "checkpoints" / "last.ckpt") if resume else None
    if resume and not task.paper:  # the size the run measured on its training sets (fit_to_training_sets below)
        saved = last["hyper_parameters"]["model_kwargs"]
        if saved.get("trained_set_size"):
            kw["trained_set_size"] = saved["trained_set_size"]
    module = SetModule(cfg.model, kw, cfg.task, task.target, cfg.lr, train_config=cfg.to_dict(),
                       data_info=dm.info, weight_decay=cfg.weight_decay or 0.0)
    if resume:
        check_resumable(module, last, out)
    if not resume and not task.paper:
        from .preprocessing import fit_to_training_sets

        largest = fit_to_training_sets(module.model, dm.train_set)
        if largest:  # the checkpoint rebuilds the model from these
            module.hparams["model_kwargs"]["trained_set_size"] = largest
    if task.scale_output and task.target == "regression" and hasattr(base, "targets") and not resume:
        for member in getattr(module.model, "members", [module.model]):
            init_output_scale(member, np.asarray(base.targets)[idx])
    if not task.paper and not launched_worker():
        c = module.model.config
        pool = getattr(c, "pool", "pma")
        quiet(f"model: {cfg.model} (depth {c.depth}, dim {c.dim}, norm {c.norm}, pool {pool}"
              + (f", ensemble of {c.ensemble}" if c.ensemble > 1 else "") + ")"
              + (f"; sets subsampled to {base.set_size:,} elements per training step" if base.set_size else ""))
    if not task.paper and dm.info.get("features") and not launched_worker():
        feats = dm.info["features"]
        echo(f"features ({len(feats)}): {', '.join(feats[:12])}{' ...' if len(feats) > 12 else ''}")
        from ..data.sources import left_out_note

        if (note := left_out_note(dm.train_set)) is not None:  # FCS/.h5ad: time, event length, beads, ...
            echo(note)
    if not launched_worker() and (not resume or TrainConfig.load(out / "config.yaml") != cfg):
        try:  # on resume: only when this resumption changed something
            cfg.save(out / "config.yaml")
        except OSError as e:
            from .guard import write_error

            raise write_error("config", out / "config.yaml", e) from None
    title = f"{cfg.model} depth {module.model.config.depth} on {cfg.task}"
    quiet_lightning(verbose=cfg.progress)  # before the Trainer prints its banners
    trainer = build_trainer(cfg, out, task.metric, title, extra_callbacks=[guard.recorder], resume=resume)
    ckpt_path = str(out / "checkpoints" / "last.ckpt") if resume else None
    start_step = read_checkpoint(ckpt_path).get("global_step", 0) if resume else 0
    if cfg.max_steps > 0:  # a step budget may end before the first validation; the final one is done below
        warnings.filterwarnings("ignore", message=".*could not find the monitored key.*")
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    except NonFiniteLossError as e:
        last = out / "checkpoints" / "last.ckpt"
        if last.is_file():
            try:
                epoch = read_checkpoint(last).get("epoch")
                kept = f"the last good checkpoint {last} (end of epoch {epoch}) is kept"
            except ValueError:
                kept = f"the checkpoint {last} could not be read"
        else:
            kept = "no checkpoint had been written yet"
        raise NonFiniteLossError(f"{e}; {kept}. Try a lower --lr or --grad-clip.") from None
    metrics_cb = next(c for c in trainer.callbacks if isinstance(c, MetricsCSV))
    # The step budget ended mid-epoch: evaluate once more so the final state is in metrics.csv. Rank zero keeps
    # the metrics and decides; every rank then validates and checkpoints together (both are collective under DDP).
    final = trainer.global_step > start_step and (not metrics_cb.rows or metrics_cb.rows[-1]["step"] != trainer.global_step)
    if trainer.global_step == start_step and resume and not launched_worker():
        echo(f"nothing to train: the run in {out} already finished its budget (epoch {trainer.current_epoch}, step "
             f"{trainer.global_step}); pass a larger --epochs or --max-steps with --resume to train further")
    if trainer.strategy.broadcast(bool(final), src=0):
        trainer.validate(module, datamodule=dm, verbose=False)
        val_loss = module.last_monitored if module.last_val else math.nan  # the checkpoints' monitored quantity
        metrics_cb.record(trainer, module, module.last_val, metrics_cb.last_step_epoch)  # collective (reduces the training means); rank zero writes
        if trainer.is_global_zero:
            metrics_cb.plot()
        # best.ckpt is the final state when no epoch finished or when the final validation is the best one
        improved = trainer.strategy.broadcast(final_is_best(trainer, val_loss, out / "checkpoints" / "best.ckpt"), src=0)
        if improved:
            mark_best(trainer, val_loss, out / "checkpoints" / "best.ckpt")
        trainer.save_checkpoint(out / "checkpoints" / "last.ckpt")  # holds the checkpoint callback's best score
        if improved:
            trainer.save_checkpoint(out / "checkpoints" / "best.ckpt")
    from .loggers import close_loggers

    close_loggers(trainer)  # the final row came after Lightning closed them
    rows = read_metrics(out / "metrics.csv")
    summary = {"out": str(out), "model": cfg.model, "task": cfg.task, "depth": module.model.config.depth,
               "metric": task.metric,
               "epochs_done": complete_epochs(trainer), "steps": trainer.global_step,
               "final": rows[-1] if rows else None, "best_val_loss": min((r["val_loss"] for r in rows), default=None)}
    return summary


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
    """Tell the checkpoint callback that ``best`` now holds the final state (so a resumed run compares with it);
    ``val_loss`` is the value of the monitored quantity."""
    cb = trainer.checkpoint_callback
    if cb is None:
        return
    score = torch.tensor(float(val_loss))
    cb.best_model_score, cb.best_model_path = score, str(best)
    cb.best_k_models = {str(best): score}
    cb.kth_best_model_path, cb.kth_value = str(best), score


def check_resumable(module, ckpt: dict, out: Path) -> None:
    """The checkpoint of ``--resume`` holds the weights of the model that ``config.yaml`` describes, or a clear
    ValueError names both (instead of a raw state_dict error from deep inside Lightning)."""
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    if want == have:
        return
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    shape = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    hp = ckpt["hyper_parameters"]
    first = (f"{len(missing)} weights missing, e.g. {missing[0]}" if missing else
             f"{len(extra)} unexpected weights, e.g. {extra[0]}" if extra else
             f"{len(shape)} weights of another shape, e.g. {shape[0]}: {have[shape[0]]} vs {want[shape[0]]}")
    raise ValueError(f"--resume: {out / 'checkpoints' / 'last.ckpt'} does not match {out / 'config.yaml'}: the "
                     f"checkpoint holds a {hp.get('model')} model, config.yaml describes {module.hparams['model']} "
                     f"({first}); restore the run's own checkpoint, or start again with --overwrite")


def complete_epochs(trainer) -> int:
    """Epochs trained to their end (Lightning's ``current_epoch`` also counts one a step budget stopped inside)."""
    per_epoch = trainer.num_training_batches
    if isinstance(per_epoch, int) and per_epoch > 0:
        return min(trainer.current_epoch, trainer.global_step // per_epoch)
    return trainer.current_epoch


train.__doc__ = _train.__doc__


# ---------------------------------------------------------------------------------------------------- eval
def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The contents of a deepsets checkpoint file, checked; a missing, corrupt or foreign file gives a clear
    error (``FileNotFoundError`` or ``ValueError`` naming the file).

    Loaded with ``weights_only=True``: a checkpoint can hold tensors and plain values only, never code.
    """
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{p}: expected a checkpoint file (.ckpt), found a folder")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint does not exist: {p}")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0].split(". ")[0][:200] if str(e).strip() else ""
        raise ValueError(f"{p}: not a readable checkpoint (corrupt or truncated?): {type(e).__name__}: "
                         f"{first}") from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or "model" not in hp or "model_kwargs" not in hp or "state_dict" not in ckpt:
        found = sorted(map(str, ckpt))[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{p}: not a deepsets training checkpoint (expected hyper_parameters with a model "
                         f"description and a state_dict, found {found})")
    return ckpt


def load_checkpoint(path: str | Path, map_location="cpu", trust_code: bool = False) -> SetModule:
    """Load a training checkpoint; a missing, corrupt or foreign file gives a clear error.

    A checkpoint trained with a task given as code (``file.py:NAME`` / ``module:NAME``) that is not registered in
    this process raises :class:`~deepsets.data.UntrustedTaskError`; ``trust_code=True`` imports that task (do so only
    for a checkpoint whose task you would run yourself: ``--task`` on the command line)."""
    p = Path(path)
    ckpt = read_checkpoint(p, map_location)
    hp = ckpt["hyper_parameters"]
    recorded_task(hp.get("task"), f"checkpoint {p} was trained with", trust_code)
    try:
        module = SetModule(**hp)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{p}: the model described in the checkpoint cannot be built: {e}") from None
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else first[0] if first else ""
        raise ValueError(f"{p}: weights do not match the model described in the checkpoint (a checkpoint of a "
                         f"different model?): {detail[:300]}") from None
    return module.eval()


@torch.no_grad()
def predict_dataset(model, ds, batch_size: int = 64, subsets: int = 1, device="cpu") -> torch.Tensor:
    """Model outputs for every set of ``ds``, averaged over ``subsets`` random subsets of large sets."""
    model = model.to(device).eval()
    outs = []
    base = getattr(ds, "dataset", ds)
    for j in range(subsets):
        if hasattr(base, "set_epoch"):
            base.set_epoch(j)
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate_sets)
        preds = [model(x.to(device), mask.to(device)).float().cpu() for x, mask, _ in loader]
        if preds and preds[0].dim() == 3:  # per-element outputs: pad every batch to the largest set
            n = max(p.shape[1] for p in preds)
            preds = [torch.nn.functional.pad(p, (0, 0, 0, n - p.shape[1])) for p in preds]
        outs.append(torch.cat(preds))
    if hasattr(base, "set_epoch"):
        base.set_epoch(0)
    return torch.stack(outs).mean(0)


#: options that describe the layout of a data file (kept when evaluating or predicting on another file)
LAYOUT_OPTIONS = ("set_column", "label_column", "split_column", "features", "channels", "channel_map", "layer",
                  "no_header", "key", "label_key")


def checkpoint_trust(checkpoint: str | Path, task: str | None) -> bool:
    """``--task`` of ``eval``/``predict``/``export``: the checkpoint's task named again, which trusts it (a task given
    as code is then imported: the ``trust_code`` this returns). Another task than the checkpoint's is refused."""
    if task is None:
        return False
    recorded = read_checkpoint(checkpoint)["hyper_parameters"].get("task")
    if recorded != task:
        raise ValueError(f"{checkpoint}: the checkpoint was trained on task {recorded!r}, not {task!r}"
                         + (f"; to run its task give --task {recorded}" if is_code(recorded) else ""))
    return True


def checkpoint_config(module) -> TrainConfig:
    hp = module.hparams
    return TrainConfig.from_dict(hp["train_config"]) if hp.get("train_config") else TrainConfig(task=hp["task"])


def evaluate_dataset(module, ds, subsets: int | None = None, batch_size: int = 64, seed: int = 0,
                     skip_unreadable: bool = False, echo=None) -> dict:
    """``{"sets", "loss", METRIC[, "label_variance"], OTHER METRICS}`` of a model on a labeled dataset (or Subset).

    The other metrics are every metric of the target (:mod:`deepsets.metrics`: ``accuracy``,
    ``balanced_accuracy``, ``roc_auc``, ``log_loss`` / ``mse``, ``mae``, ``r2``); none for per-element targets.

    Your own data are predicted on whole sets, or on ``subsets`` random subsets of the training size per larger
    set (:func:`deepsets.train.predict.subset_plan`; ``None``: the model's default; ``seed``: of the subsets); the
    paper's tasks average ``subsets`` (default 1) subsets of the task's set size, as the paper evaluates.

    Your own data: every set that cannot be read (a damaged file) is reported (:func:`~deepsets.train.predict.
    report_unreadable`, through ``echo``), then :class:`DataError` is raised, unless ``skip_unreadable``: then the
    other sets are evaluated and ``"skipped"`` counts the left-out ones."""
    base, idx = unwrap(ds)
    require_labels(base)
    if base.in_dim != module.model.config.in_dim:
        raise ValueError(f"{getattr(base, 'source', 'data')}: sets have {base.in_dim} features but the checkpoint's "
                         f"model expects {module.model.config.in_dim}")
    target = module.target
    task = get_task(module.hparams["task"], where="the model was trained with")  # registered (load_checkpoint)
    own = target.output != "elements" and not task.paper
    if own:  # your own data: whole sets, or the mean over subsets of the training size (predict.subset_plan)
        from .predict import predict_sets

        from .predict import sets_are_files

        unreadable = [] if skip_unreadable or sets_are_files(ds) else None  # else: the first error stops it
        outs = predict_sets(module.model, ds, batch_size=batch_size, subsets=subsets, seed=seed,
                            classify=target.name == "classification", progress=False, unreadable=unreadable,
                            predict_after_unreadable=skip_unreadable)
        if unreadable:
            from .predict import report_unreadable

            report_unreadable(ds, unreadable, skip_unreadable and len(unreadable) < len(idx), echo, "evaluate")
            bad = {j for j, _ in unreadable}
            idx = np.asarray([i for k, i in enumerate(idx) if k not in bad])
        out = torch.from_numpy(np.stack(outs)) if outs else torch.zeros(0, base.out_dim)
        ys = torch.stack([base.target_of(int(i)) for i in idx])
        items = None
    else:
        out = predict_dataset(module.model, ds, batch_size, subsets or 1)
        items = [ds[i] for i in range(len(ds))]
        ys = torch.stack([y for _, y in items])
    mask = None
    if target.output == "elements":
        mask = torch.zeros(out.shape[:2], dtype=torch.bool)
        for i, (x, _) in enumerate(items):
            mask[i, : x.shape[0]] = True
    loss, metric = target.loss(out, ys, mask)
    result = {"sets": len(ys), "loss": loss.item(), target.metric: metric.item()}
    if len(ys) < len(ds):  # skip_unreadable
        result["skipped"] = len(ds) - len(ys)
    if target.metric == "mse":  # the MSE of always predicting the test labels' mean
        ys_f = ys.float().view_as(out)
        result["label_variance"] = ((ys_f - ys_f.mean()) ** 2).mean().item()
    if target.output != "elements":
        from ..metrics import set_metrics

        for name, value in set_metrics(target.name, out.numpy(), ys.numpy()).items():
            result.setdefault(name, value)  # the task's metric keeps the loss function's value
    return result


def evaluate(checkpoint: str | Path, data: str | None = None, split: str = "test", subsets: int | None = None,
             batch_size: int = 64, task_options: dict | None = None, seed: int = 0, set_sizes=None,
             echo=None, trust_code: bool = False, skip_unreadable: bool = False) -> dict:
    """Test metrics of a checkpoint on the task's test split (offline default or ``data``).

    With ``data``, the layout options the model was trained with (set and label columns, features, layer, ...)
    are kept and ``task_options`` may override them; classes keep the training order. ``subsets`` and ``seed``:
    how sets larger than the training set size are predicted (see :func:`evaluate_dataset`); ``echo`` receives the
    line that says which. ``set_sizes``: also the metrics with every set cut to each of these sizes (a random
    subset; smaller sets stay whole), under ``"set_sizes"``: the set-size generalisation report. ``trust_code``:
    import the checkpoint's task if it is given as code (see :func:`load_checkpoint`). ``skip_unreadable``: sets
    that cannot be read (damaged files) are listed through ``echo`` and left out (see :func:`evaluate_dataset`).
    """
    module = load_checkpoint(checkpoint, trust_code=trust_code)
    hp = module.hparams
    cfg = checkpoint_config(module)
    if data is None:
        opts = dict(cfg.task_options)
    else:  # the training run's layout options that the new file's format takes
        from ..data.sources import source_options_of

        accepted = source_options_of(data) | {"channels"}
        if "features" in (task_options or {}) or "channels" in (task_options or {}):
            accepted -= {"features", "channels"}
        opts = {k: v for k, v in cfg.task_options.items() if k in LAYOUT_OPTIONS and k in accepted}
    opts.update(task_options or {})
    classes = (hp.get("data_info") or {}).get("classes")
    task = get_task(hp["task"])
    source = data if data is not None else cfg.data
    features = (hp.get("data_info") or {}).get("features")
    if not task.paper and isinstance(source, (str, Path)) and features and "features" not in opts \
            and "channels" not in opts:
        from ..data.sources import source_for

        if source_for(source).name in ("fcs", "h5ad"):  # the model's channels, by name (as predict does)
            opts["features"] = list(features)
    if classes is not None and task.classes is None:
        opts["classes"] = classes
    ds = task.load(split, data=data if data is not None else cfg.data, set_size=cfg.set_size, seed=cfg.seed,
                   **opts)
    k = subsets if subsets is not None else cfg.eval_subsets
    result = {"checkpoint": str(checkpoint), "task": hp["task"], "model": hp["model"],
              "depth": module.model.config.depth, "split": split, "subsets": k}
    if not task.paper:
        from .predict import describe_plan

        line = describe_plan(module.model, k)
        result["prediction"] = line.partition(": ")[2]
    result.update(evaluate_dataset(module, ds, k, batch_size, seed, skip_unreadable=skip_unreadable, echo=echo))
    if not task.paper and echo is not None:  # said once the evaluation went through
        echo(line)
    if set_sizes:
        from ..data import resized

        result["set_sizes"] = [{"set_size": int(n), **evaluate_dataset(module, resized(ds, int(n), seed), k,
                                                                       batch_size, seed, skip_unreadable,
                                                                       echo=lambda line: None)}  # listed once
                               for n in set_sizes]
    return result


def format_table(result: dict) -> str:
    width = max(len(k) for k in result)
    lines = []
    for k, v in result.items():
        val = f"{v:.6g}" if isinstance(v, float) else str(v)
        lines.append(f"{k:<{width}}  {val}")
    return "\n".join(lines)


def write_json(path: str | Path, obj) -> None:
    from .io import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2))
