"""Arrays: ``.npy`` and HDF5 files ``[sets, elements, features]``, and Python lists of ``[n_i, D]`` arrays.

``.npy`` is memory-mapped; HDF5 is read one set at a time from ``key`` (default: ``{split}_data`` where the file
has it, else the first of ``test_data``, ``data``, ``train_data``, ``test_cloud``, ``tr_cloud``). Labels: a labels
file (``set`` = the 0-based index), or for HDF5 the dataset ``KEY_labels`` / ``{split}_labels`` beside the data.
Set ids are the indices.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .._base import DataError, open_h5
from ..finite import scan_array
from . import SetReader, Source, labels_from_file

H5_KEYS = ("test_data", "data", "train_data", "test_cloud", "tr_cloud")


def check_numeric(dtype, where: str) -> None:
    """Real numbers (bool, integer, float) only: text is refused, and so are complex values, whose imaginary part
    a conversion to float32 would drop silently."""
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise DataError(f"{where}: holds complex numbers ({dtype}); sets must be real-valued (converting would drop "
                        f"the imaginary part): store the real and imaginary parts as two features")
    if dtype.kind not in "biuf":
        raise DataError(f"{where}: holds {dtype} values, not numbers; sets must be numeric arrays")


class ListReader(SetReader):
    """Sets held in memory: a list of ``[n_i, D]`` arrays, optionally labels and set ids."""

    def __init__(self, sets, labels=None, set_ids=None, feature_names=None, source: str = "sets"):
        self.source = source
        try:
            raw = [np.asarray(s) for s in sets]
        except (TypeError, ValueError) as e:
            raise DataError(f"{source}: every set must be a numeric array [n_i, D]: {e}") from None
        for i, s in enumerate(raw):
            check_numeric(s.dtype, f"{source}: set {i}")
        self.sets = [s.astype(np.float32, copy=False) for s in raw]
        if not self.sets:
            raise DataError(f"{source}: no sets given")
        for i, s in enumerate(self.sets):
            if s.ndim != 2:
                raise DataError(f"{source}: set {i} has shape {s.shape}; expected [n_i, D] (one row per element)")
        dims = sorted({s.shape[1] for s in self.sets})
        if len(dims) != 1:
            first = next(i for i, s in enumerate(self.sets) if s.shape[1] != self.sets[0].shape[1])
            raise DataError(f"{source}: sets have different numbers of features {dims} (set 0 has "
                            f"{self.sets[0].shape[1]}, set {first} has {self.sets[first].shape[1]})")
        if labels is not None and len(labels) != len(self.sets):
            raise DataError(f"{source}: {len(self.sets)} sets but {len(labels)} labels")
        self.labels = None if labels is None else list(labels)
        self.set_ids = [str(s) for s in set_ids] if set_ids is not None else [str(i) for i in range(len(self.sets))]
        d = dims[0]
        self.feature_names = list(feature_names) if feature_names is not None else [f"x{j}" for j in range(d)]

    def __len__(self):
        return len(self.sets)

    def read(self, index):
        return self.sets[index]


class NpyReader(SetReader):
    def __init__(self, path, split=None, labels=None):
        self.path = Path(path)
        try:
            self.arr = np.load(self.path, mmap_mode="r")
        except Exception as e:  # noqa: BLE001 - numpy's errors on damaged files
            raise DataError(f"{self.path}: not a readable .npy file: {e}") from None
        if self.arr.ndim != 3:
            raise DataError(f"{self.path}: expected an array [sets, elements, features], found shape {self.arr.shape}")
        check_numeric(self.arr.dtype, str(self.path))
        self.source = str(self.path)
        self.set_ids = [str(i) for i in range(self.arr.shape[0])]
        self.feature_names = [f"x{j}" for j in range(self.arr.shape[2])]
        self.labels = labels_from_file(labels, self.set_ids, split) if labels is not None else None

    def __len__(self):
        return self.arr.shape[0]

    def read(self, index):
        return np.asarray(self.arr[index], dtype=np.float32)

    def scan_finite(self, indices):
        return scan_array(self.arr, indices)


class H5Reader(SetReader):
    def __init__(self, path, split=None, key=None, labels=None):
        self.path = Path(path)
        with open_h5(self.path) as f:
            if key is None:
                key = f"{split}_data" if split is not None and f"{split}_data" in f else \
                    next((k for k in H5_KEYS if k in f), None)
                if key is None:
                    raise DataError(f"{self.path}: none of the keys {list(H5_KEYS)} found; pass --key "
                                    f"(keys in the file: {sorted(f.keys())})")
            if key not in f:
                raise DataError(f"{self.path}: no key {key!r}; keys in the file: {sorted(f.keys())}")
            shape = f[key].shape
            check_numeric(f[key].dtype, f"{self.path}:{key}")
            self.has_test_split = key == "train_data" and "test_data" in f
            if len(shape) != 3:
                raise DataError(f"{self.path}: {key} must be [sets, elements, features], found shape {shape}")
            lab_key = key[: -len("_data")] + "_labels" if key.endswith("_data") else f"{key}_labels"
            file_labels = f[lab_key][()] if labels is None and lab_key in f else None
        self.key, self.n = key, shape[0]
        self.source = f"{self.path}:{key}"
        self.set_ids = [str(i) for i in range(self.n)]
        self.feature_names = [f"x{j}" for j in range(shape[2])]
        if labels is not None:
            self.labels = labels_from_file(labels, self.set_ids, split)
        elif file_labels is not None:
            a = np.asarray(file_labels)
            a = a.reshape(len(a), -1) if a.ndim > 1 and a.shape[-1] != 1 else a.reshape(len(a))
            if len(a) != self.n:
                raise DataError(f"{self.path}: {lab_key} has {len(a)} labels for {self.n} sets")
            self.labels = [v.decode() if isinstance(v, bytes) else v.tolist() if hasattr(v, "tolist") else v
                           for v in a]
        else:
            self.labels = None
        self._f = None

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_f"] = None
        return d

    def __len__(self):
        return self.n

    def read(self, index):
        if self._f is None:
            self._f = open_h5(self.path)
        try:
            return np.asarray(self._f[self.key][index], dtype=np.float32)
        except Exception as e:  # noqa: BLE001 - h5py's errors on damaged files
            raise DataError(f"{self.path}: cannot read {self.key}[{index}] (corrupt or truncated?): {e}") from e

    def scan_finite(self, indices):
        with open_h5(self.path) as f:
            return scan_array(f[self.key], indices)


def _open(path, split=None, key=None, labels=None):
    if path.suffix.lower() == ".npy":
        if key is not None:
            raise ValueError(f"{path}: --key applies to HDF5 files, not .npy")
        return NpyReader(path, split, labels)
    return H5Reader(path, split, key, labels)


SOURCE = Source("arrays", ".npy or .h5/.hdf5 arrays [sets, elements, features]",
                lambda p: p.is_file() and p.suffix.lower() in (".npy", ".h5", ".hdf5", ".hdf"), _open)
