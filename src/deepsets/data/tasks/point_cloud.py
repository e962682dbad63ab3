"""Point cloud: 1000 points x 3 -> ModelNet40 class (max pooling).

Real data: the PointNet ModelNet40 HDF5 release (``ply_data_*.h5``) or the combined ``tr_cloud``/``test_cloud``
file; offline: 12 procedurally generated 3-D shape classes.
"""
from __future__ import annotations

from pathlib import Path

from . import Task, call_with_options, generator_sizes, h5_shapes, register_task


def _load(task, split, data, base, opts):
    if data is None:
        from ..pointcloud import ShapesDataset

        return call_with_options(ShapesDataset, {"split": split, **generator_sizes(opts, split), **base}, task.name)
    from ..pointcloud import ModelNetH5Dataset, modelnet_parts

    return call_with_options(ModelNetH5Dataset, {"parts": modelnet_parts(data, split), **opts, **base}, task.name)


def _detect(p: Path) -> bool:
    if p.is_dir():
        return any(p.glob("ply_data_*.h5"))
    keys = set(h5_shapes(p))
    return bool({"tr_cloud", "test_cloud"} & keys or {"data", "label"} <= keys)


def _build(o):
    if not o["source"]:
        raise ValueError("point-cloud needs --source: the folder of the PointNet ModelNet40 HDF5 release "
                         "(ply_data_train*.h5, ply_data_test*.h5)")
    from ..pointcloud import build_modelnet_combined

    return build_modelnet_combined(o["source"], o["out"])


TASK = register_task(Task(
    name="point-cloud", target="classification", loader=_load, detect=_detect, build=_build, paper=True,
    in_dim=3, out_dim=40, pool="max", set_size=1000, epochs=50,
    description="1000 points x 3 (one scalar mean/std per cloud) -> ModelNet40 class",
    real_source="PointNet ModelNet40 HDF5 (ply_data_*.h5) or the combined tr_cloud/test_cloud file",
    offline_default="12 procedurally generated 3-D shape classes",
    offline_sizes="2,400 train / 600 test clouds of 2048 points, 12 classes", built_file="ModelNet40_cloud.h5",
    budgets={"cpu": dict(set_size=100)},
))
