"""Point clouds: ModelNet40 (PointNet HDF5 release) readers and procedurally generated 3-D shapes.

Every cloud is subsampled to ``set_size`` points (1000 in the paper; a fresh subset each epoch unless
``fixed_subset``) and then standardized with ONE scalar mean and ONE scalar standard deviation taken over all
its coordinates: ``x <- (x - mean(x)) / std(x)``.

Real sources:

* the PointNet release folder (``ply_data_train0..4.h5``, ``ply_data_test0..1.h5``, each with ``data [n, 2048, 3]``
  and ``label [n, 1]``), or a list of such files (split given by the ``train``/``test`` in their names);
* the combined file used by the set-model literature (``tr_cloud [n, 2048, 3]``, ``tr_labels [n]`` or ``[n, 1]``,
  ``test_cloud``, ``test_labels``), written by ``deepsets data build point-cloud``.

Offline default: 12 procedurally generated shape classes (:data:`SHAPES`), each cloud sampled uniformly on the
shape's surface (2048 points), with a random rotation, a random anisotropic scale (each axis x U(0.8, 1.25)) and
Gaussian jitter (sd 0.01). Cloud ``i`` has class ``i % 12`` and is generated on access from a random stream
keyed by ``(data_seed, split, i)``. ``dataset.num_classes`` is 12 for it (40 for ModelNet40).
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._base import DataError, H5Source, SetDataset, _rng, check_exists, open_h5, require_keys

__all__ = [
    "SHAPES",
    "ModelNetH5Dataset",
    "ShapesDataset",
    "build_modelnet_combined",
    "modelnet_files",
    "sample_shape",
    "standardize_cloud",
]

_SPLIT_ID = {"train": 0, "test": 1}


def standardize_cloud(x: np.ndarray) -> np.ndarray:
    """Subtract one scalar mean and divide by one scalar std (over all points and coordinates)."""
    x = x.astype(np.float32)
    s = x.std()
    return (x - x.mean()) / (s if s > 0 else 1.0)


# ---------------------------------------------------------------------------------------------------------------
# Surface samplers (numpy only)
# ---------------------------------------------------------------------------------------------------------------
def _sample_mesh(vertices: np.ndarray, faces: np.ndarray, n: int, rng) -> np.ndarray:
    tri = vertices[faces]  # [F, 3, 3]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    f = rng.choice(len(faces), size=n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[f]
    return t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])


def _quads_to_tris(quads):
    return np.array([[a, b, c] for a, b, c, d in quads] + [[a, c, d] for a, b, c, d in quads])


_CUBE_V = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=float)
_CUBE_F = _quads_to_tris([(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)])
_PYR_V = np.array([[-1, -1, -0.7], [1, -1, -0.7], [1, 1, -0.7], [-1, 1, -0.7], [0, 0, 1.1]], dtype=float)
_PYR_F = np.array([[0, 1, 2], [0, 2, 3], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]])
_TET_V = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float)
_TET_F = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])
_OCT_V = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=float)
_OCT_F = np.array([[a, b, c] for a in (0, 1) for b in (2, 3) for c in (4, 5)])
_ang = np.deg2rad([90.0, 210.0, 330.0])
_PRISM_V = np.array([[np.cos(a), np.sin(a), z] for z in (-1.0, 1.0) for a in _ang])
_PRISM_F = np.concatenate([np.array([[0, 1, 2], [3, 5, 4]]), _quads_to_tris([(0, 3, 4, 1), (1, 4, 5, 2), (2, 5, 3, 0)])])


def _sphere(n, rng):
    p = rng.normal(size=(n, 3))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def _disk(n, rng, r=1.0):
    rad = r * np.sqrt(rng.random(n))
    t = rng.uniform(0, 2 * np.pi, n)
    return np.stack([rad * np.cos(t), rad * np.sin(t)], 1)


def _split_counts(n, areas, rng):
    a = np.asarray(areas, dtype=float)
    return rng.multinomial(n, a / a.sum())


def _cylinder(n, rng, r=0.8, h=2.0):
    ns, nb, nt = _split_counts(n, [2 * np.pi * r * h, np.pi * r * r, np.pi * r * r], rng)
    t = rng.uniform(0, 2 * np.pi, ns)
    side = np.stack([r * np.cos(t), r * np.sin(t), rng.uniform(-h / 2, h / 2, ns)], 1)
    bot = np.column_stack([_disk(nb, rng, r), np.full(nb, -h / 2)])
    top = np.column_stack([_disk(nt, rng, r), np.full(nt, h / 2)])
    return np.concatenate([side, bot, top])


def _cone(n, rng, r=1.0, h=2.0):
    slant = np.hypot(r, h)
    ns, nb = _split_counts(n, [np.pi * r * slant, np.pi * r * r], rng)
    s = np.sqrt(rng.random(ns))  # fraction of the way from apex to base, area-uniform
    t = rng.uniform(0, 2 * np.pi, ns)
    side = np.stack([s * r * np.cos(t), s * r * np.sin(t), h / 2 - s * h], 1)
    base = np.column_stack([_disk(nb, rng, r), np.full(nb, -h / 2)])
    return np.concatenate([side, base])


def _torus(n, rng, R=1.0, r=0.35):
    out = []
    while sum(len(o) for o in out) < n:
        u = rng.uniform(0, 2 * np.pi, 2 * n)
        v = rng.uniform(0, 2 * np.pi, 2 * n)
        keep = rng.random(2 * n) < (R + r * np.cos(v)) / (R + r)
        u, v = u[keep], v[keep]
        out.append(np.stack([(R + r * np.cos(v)) * np.cos(u), (R + r * np.cos(v)) * np.sin(u), r * np.sin(v)], 1))
    return np.concatenate(out)[:n]


def _capsule(n, rng, r=0.55, h=1.6):
    ns, nc = _split_counts(n, [2 * np.pi * r * h, 4 * np.pi * r * r], rng)
    t = rng.uniform(0, 2 * np.pi, ns)
    side = np.stack([r * np.cos(t), r * np.sin(t), rng.uniform(-h / 2, h / 2, ns)], 1)
    caps = _sphere(nc, rng) * r
    caps[:, 2] += np.where(caps[:, 2] >= 0, h / 2, -h / 2)
    return np.concatenate([side, caps])


def _hemisphere(n, rng):
    nd, nb = _split_counts(n, [2 * np.pi, np.pi], rng)
    dome = _sphere(nd, rng)
    dome[:, 2] = np.abs(dome[:, 2])
    base = np.column_stack([_disk(nb, rng), np.zeros(nb)])
    return np.concatenate([dome, base]) - np.array([0, 0, 0.4])


SHAPES = {
    "sphere": lambda n, rng: _sphere(n, rng),
    "ellipsoid": lambda n, rng: _sphere(n, rng) * np.array([1.0, 0.55, 0.3]),
    "cube": lambda n, rng: _sample_mesh(_CUBE_V, _CUBE_F, n, rng),
    "cylinder": _cylinder,
    "cone": _cone,
    "torus": _torus,
    "capsule": _capsule,
    "pyramid": lambda n, rng: _sample_mesh(_PYR_V, _PYR_F, n, rng),
    "tetrahedron": lambda n, rng: _sample_mesh(_TET_V, _TET_F, n, rng),
    "octahedron": lambda n, rng: _sample_mesh(_OCT_V, _OCT_F, n, rng),
    "hemisphere": _hemisphere,
    "prism": lambda n, rng: _sample_mesh(_PRISM_V, _PRISM_F, n, rng),
}
SHAPE_NAMES = list(SHAPES)


def _random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def sample_shape(shape: str, n: int, rng, augment: bool = True) -> np.ndarray:
    """``n`` points on the surface of ``shape`` (a key of :data:`SHAPES`), float32 ``[n, 3]``.

    With ``augment``: random anisotropic scale (x U(0.8, 1.25) per axis), random rotation, jitter N(0, 0.01^2).
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; valid: {SHAPE_NAMES}")
    p = SHAPES[shape](n, rng)
    if augment:
        p = p * rng.uniform(0.8, 1.25, size=3)
        p = p @ _random_rotation(rng).T
        p = p + rng.normal(scale=0.01, size=p.shape)
    return p.astype(np.float32)


class ShapesDataset(SetDataset):
    """Offline point clouds: procedurally generated shapes (see module docstring)."""

    task = "point-cloud"
    generated = True  # made on access from a generator or an integer image pool: no NaN to scan for
    target_kind = "class"
    in_dim = 3

    def __init__(self, split: str = "train", n_sets: int | None = None, points: int = 2048,
                 data_seed: int = 0, shapes: Sequence[str] | None = None, **kw):
        super().__init__(**kw)
        if split not in _SPLIT_ID:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.shapes = list(shapes) if shapes is not None else SHAPE_NAMES
        for s in self.shapes:
            if s not in SHAPES:
                raise ValueError(f"unknown shape {s!r}; valid: {SHAPE_NAMES}")
        self.num_classes = self.out_dim = len(self.shapes)
        self.class_names = list(self.shapes)
        self.split = split
        per_class = 200 if split == "train" else 50
        self.n_sets = int(n_sets if n_sets is not None else per_class * self.num_classes)
        self.points = int(points)
        self.data_seed = int(data_seed)
        self.source = f"generated shapes (data_seed={self.data_seed})"

    def __len__(self):
        return self.n_sets

    def _target(self, index):
        return index % self.num_classes

    def _raw_set(self, index):
        rng = _rng(self.data_seed, _SPLIT_ID[self.split], index, 0xC1)
        return sample_shape(self.shapes[index % self.num_classes], self.points, rng)

    def _transform(self, x):
        return standardize_cloud(x)


# ---------------------------------------------------------------------------------------------------------------
# ModelNet40 HDF5
# ---------------------------------------------------------------------------------------------------------------
def modelnet_files(folder: str | os.PathLike, split: str) -> list[Path]:
    """The PointNet release files of a split in a folder (``ply_data_train*.h5`` / ``ply_data_test*.h5``)."""
    folder = check_exists(folder)
    files = sorted(folder.glob(f"ply_data_{split}*.h5"), key=lambda p: [int(t) if t.isdigit() else t
                                                                        for t in re.split(r"(\d+)", p.name)])
    if not files:
        raise DataError(f"{folder}: no ply_data_{split}*.h5 files (PointNet ModelNet40 HDF5 release) found")
    return files


class ModelNetH5Dataset(SetDataset):
    """ModelNet40 point clouds read lazily from one or more HDF5 files.

    ``parts`` is a list of ``(path, data_key, label_key)``; the dataset is their concatenation.
    """

    task = "point-cloud"
    target_kind = "class"
    in_dim = 3

    def __init__(self, parts: Sequence[tuple], num_classes: int | None = None, **kw):
        super().__init__(**kw)
        self.parts = []
        sizes = []
        max_label = -1
        for path, dk, lk in parts:
            with open_h5(path) as f:
                require_keys(f, path, [dk, lk])
                ds, ls = f[dk].shape, f[lk].shape
                if len(ds) != 3 or ds[2] != 3:
                    raise DataError(f"{path}: {dk} should be [n, points, 3], found {ds}")
                if len(ls) not in (1, 2) or (len(ls) == 2 and ls[1] != 1):
                    raise DataError(f"{path}: {lk} should be [n] or [n, 1], found {ls}")
                if ls[0] != ds[0]:
                    raise DataError(f"{path}: {dk} has {ds[0]} clouds but {lk} has {ls[0]} labels")
                if ls[0]:
                    try:
                        lab = f[lk][()]
                    except Exception as e:
                        raise DataError(f"{path}: cannot read {lk}: {e}") from e
                    max_label = max(max_label, int(np.max(lab)))
                    if np.min(lab) < 0:
                        raise DataError(f"{path}: {lk} has negative labels")
            self.parts.append((H5Source(path), dk, lk))
            sizes.append(int(ds[0]))
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        if num_classes is None:
            num_classes = 40 if max_label < 40 else max_label + 1  # ModelNet40 unless labels say otherwise
        if max_label >= num_classes:
            raise DataError(f"labels go up to {max_label} but num_classes={num_classes}")
        self.num_classes = self.out_dim = int(num_classes)
        self.source = ", ".join(str(p[0].path) for p in self.parts)

    def __len__(self):
        return int(self.offsets[-1])

    def _locate(self, index):
        k = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.parts[k], index - int(self.offsets[k])

    def _raw_set(self, index):
        (src, dk, _), j = self._locate(index)
        return np.asarray(src.read(dk, j), dtype=np.float32)

    def _target(self, index):
        (src, _, lk), j = self._locate(index)
        return int(np.asarray(src.read(lk, j)).reshape(-1)[0])

    def scan_finite(self, indices):
        from .finite import scan_array

        indices = np.asarray(indices)
        for (src, dk, _), a, b in zip(self.parts, self.offsets[:-1], self.offsets[1:]):
            mine = indices[(indices >= a) & (indices < b)]
            if len(mine):
                with open_h5(src.path) as f:
                    hit = scan_array(f[dk], mine, first=int(a))
                if hit is not None:
                    return hit
        return None

    def _transform(self, x):
        return standardize_cloud(x)


def modelnet_parts(data, split: str) -> list[tuple]:
    """Resolve ``data`` (folder, combined file, file or list of files) into ``(path, data_key, label_key)``."""
    if isinstance(data, (list, tuple)):
        files = [check_exists(p) for p in data]
        chosen = [p for p in files if split in p.name] or None
        if chosen is None:
            raise DataError(f"none of the files {[str(p) for p in files]} has {split!r} in its name")
        return [(p, "data", "label") for p in chosen]
    p = check_exists(data)
    if p.is_dir():
        return [(f, "data", "label") for f in modelnet_files(p, split)]
    with open_h5(p) as f:
        keys = set(f.keys())
    if "tr_cloud" in keys or "test_cloud" in keys:
        pre = "tr" if split == "train" else "test"
        return [(p, f"{pre}_cloud", f"{pre}_labels")]
    if "data" in keys and "label" in keys:
        return [(p, "data", "label")]
    raise DataError(
        f"{p}: not a point-cloud file: expected keys tr_cloud/tr_labels/test_cloud/test_labels (combined) or "
        f"data/label (PointNet release), found {sorted(keys)}"
    )


def build_modelnet_combined(source, out) -> Path:
    """Concatenate the PointNet release files into one file with ``tr_cloud``, ``tr_labels``, ``test_cloud``,
    ``test_labels`` (labels int64 ``[n]``), copying file by file."""
    import h5py

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with h5py.File(tmp, "w") as g:
        g.attrs["deepsets_task"] = "point-cloud"
        for split, pre in (("train", "tr"), ("test", "test")):
            parts = modelnet_parts(source, split)
            ds = ModelNetH5Dataset(parts)  # validates shapes and lengths
            n = len(ds)
            npts = None
            for path, dk, _ in parts:
                with open_h5(path) as f:
                    npts = npts or f[dk].shape[1]
                    if f[dk].shape[1] != npts:
                        raise DataError(f"{path}: {dk} has {f[dk].shape[1]} points per cloud, others {npts}")
            cl = g.create_dataset(f"{pre}_cloud", shape=(n, npts, 3), dtype=np.float32,
                                  chunks=(min(max(n, 1), 32), npts, 3))
            lb = g.create_dataset(f"{pre}_labels", shape=(n,), dtype=np.int64)
            off = 0
            for path, dk, lk in parts:
                with open_h5(path) as f:
                    m = f[dk].shape[0]
                    for a in range(0, m, 512):
                        b = min(m, a + 512)
                        cl[off + a: off + b] = f[dk][a:b]
                    lb[off: off + m] = np.asarray(f[lk][()]).reshape(-1)
                    off += m
    os.replace(tmp, out)
    return out
