"""The data of a training run: its task (resolved once), the training sets and the validation sets held out of them."""
from __future__ import annotations

import copy

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DataLoader, Subset

from ..data import DataError, Task, collate_sets, get_task
from ..data._base import loader_timeout, require_labels, unwrap
from ..data.sources import open_source
from ..data.targets import explain_target, plain
from ..data.tasks import source_options
from ..metrics import check_selection
from .config import TrainConfig


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic train/validation split of ``n`` training sets (at least one of each when n >= 2)."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, int(round(n * val_fraction))), n - 1) if n >= 2 and val_fraction > 0 else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def resolve_task(cfg: TrainConfig, echo=print, trust_code: bool = False, where: str | None = None,
                 task: Task | None = None) -> Task:
    """The run's :class:`~deepsets.data.Task`: ``task`` where the caller has it, else ``--task``, else ``--target``
    on ``--data``, else the target the labels of ``--data`` imply (said once), else the default ``normal-var``.
    Sets ``cfg.task`` to its name; checks ``--target`` and ``--metric`` against it.

    A task given as code (``file.py:NAME``) is imported only with ``trust_code`` (the caller named it); otherwise
    it must be registered already (:class:`~deepsets.data.UntrustedTaskError` naming ``where`` if not)."""
    if task is not None:
        cfg.task = task.name
    elif cfg.task is None:
        if cfg.target is not None:
            cfg.task = cfg.target
        elif cfg.data is not None:
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
    task = task or get_task(cfg.task, trust_code=trust_code, where=where)
    if cfg.target is not None and cfg.target != task.target:
        raise ValueError(f"--target {cfg.target} does not match task {task.name!r}, whose target is {task.target}")
    check_selection(getattr(cfg, "metric", None), task.target)  # --metric: one of the target's (or loss)
    return task


class SetDataModule(pl.LightningDataModule):
    """Train/validation sets from the task's training split (or ``dataset``), held out by ``val_fraction``."""

    def __init__(self, cfg: TrainConfig, task: Task, dataset=None):
        super().__init__()
        self.cfg, self.task = cfg, task
        self.dataset = dataset
        self.train_set = self.val_set = self.test_set = None

    def load(self, split: str):
        c = self.cfg
        return self.task.load(split, data=c.data, set_size=c.set_size, seed=c.seed, fixed_subset=c.fixed_subset,
                              **c.task_options)

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
    classes = getattr(ds, "classes", None)
    feats = getattr(ds, "feature_names", None) or getattr(ds, "channel_names", None)
    return {"in_dim": int(ds.in_dim), "out_dim": int(ds.out_dim), "num_classes": ds.num_classes,
            "set_size": getattr(ds, "set_size", None),
            "source": str(getattr(ds, "source", "")), "sets": len(ds) if n_sets is None else int(n_sets),
            "classes": None if classes is None else [plain(c) for c in classes],
            "features": None if feats is None else [str(f) for f in feats]}
