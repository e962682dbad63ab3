"""Shared pieces of the data layer: errors, the cache folder, lazy HDF5 access and the set dataset base class.

Every dataset of :mod:`deepsets.data` is a :class:`SetDataset`: item ``i`` is ``(x, y)`` with ``x`` a float32
tensor ``[n_i, D]`` (``n_i`` may vary between sets) and ``y`` the target. Where a source set has more elements
than ``set_size``, a random subset of ``set_size`` elements is drawn; the subset is a deterministic function of
``(seed, epoch, index)`` and changes with :meth:`SetDataset.set_epoch` unless ``fixed_subset=True``.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "DataError",
    "H5Source",
    "SetDataset",
    "data_dir",
    "subset_indices",
    "subset_views",
    "target_tensor",
]


class DataError(ValueError):
    """A data file or folder is missing, corrupt, truncated or has an unexpected layout.

    The message names the file and says what was expected and what was found.
    """


def data_dir() -> Path:
    """Folder where generated and built data go: ``$DEEPSETS_DATA`` if set, else ``~/.cache/deepsets``."""
    env = os.environ.get("DEEPSETS_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "deepsets"


def check_exists(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"data path does not exist: {p}")
    return p


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in keys])


def subset_indices(n: int, set_size: int, seed: int, epoch: int, index: int) -> np.ndarray:
    """Indices of the random subset of ``set_size`` out of ``n`` elements for ``(seed, epoch, index)``.

    Returns ``arange(n)`` when ``n <= set_size``. Deterministic: the same arguments give the same subset.
    """
    if set_size is None or n <= set_size:
        return np.arange(n)
    rng = _rng(seed, epoch, index, 0x5E7)
    return np.sort(rng.choice(n, size=set_size, replace=False))


def subset_views(x, set_size: int, k: int, seed: int = 0) -> torch.Tensor:
    """``k`` random subsets of one set, for evaluation that averages predictions over subsets.

    ``x`` is ``[n, D]`` (tensor or array). Returns a float32 tensor ``[k, m, D]`` with ``m = min(n, set_size)``;
    when the set already fits (``n <= set_size``) all subsets are the whole set and ``[1, n, D]`` is returned.
    Subset ``j`` is deterministic in ``(seed, j)``.
    """
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).float()
    if t.ndim != 2:
        raise ValueError(f"subset_views expects one set [n, D], got shape {tuple(t.shape)}")
    n = t.shape[0]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n <= set_size:
        return t.unsqueeze(0)
    idx = np.stack([subset_indices(n, set_size, seed, j, 0) for j in range(k)])
    return t[torch.from_numpy(idx)]


def target_tensor(y: Any, kind: str) -> torch.Tensor:
    """Convert a target to the tensor form of the task: ``float32 [out_dim]`` (regression) or ``int64 []``."""
    if kind == "regression":
        return torch.as_tensor(np.atleast_1d(np.asarray(y, dtype=np.float32)).reshape(-1))
    return torch.as_tensor(int(np.asarray(y).reshape(-1)[0]), dtype=torch.int64)


class H5Source:
    """Lazy handle on an HDF5 file: opened on first access in each process, never read whole.

    Picklable (the open handle is dropped), so it works with ``DataLoader`` worker processes: each worker opens
    its own handle.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file = None
        self._pid = None

    def __getstate__(self):
        return {"path": self.path, "_file": None, "_pid": None}

    def __setstate__(self, state):
        self.__dict__.update(state)

    @property
    def file(self):

        if self._file is None or self._pid != os.getpid():
            self._file = open_h5(self.path)
            self._pid = os.getpid()
        return self._file

    def read(self, key: str, index) -> np.ndarray:
        try:
            return self.file[key][index]
        except DataError:
            raise
        except Exception as e:  # h5py raises OSError/KeyError/ValueError for damaged files
            raise DataError(f"{self.path}: cannot read {key}[{index}]: {e}") from e

    def close(self):
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # noqa: BLE001, S110 - closing a broken handle
                pass
            self._file = None


def open_h5(path: str | os.PathLike):
    """Open an HDF5 file read-only; a missing path raises FileNotFoundError, a damaged one DataError."""
    import h5py

    p = check_exists(path)
    if p.is_dir():
        raise DataError(f"{p}: expected an HDF5 file, found a folder")
    try:
        return h5py.File(p, "r")
    except Exception as e:
        raise DataError(f"{p}: not a readable HDF5 file (corrupt or truncated?): {e}") from e


def require_keys(f, path, keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in f]
    if missing:
        raise DataError(
            f"{path}: missing key(s) {missing}; expected {list(keys)}, found {sorted(f.keys())}"
        )


class SetDataset(Dataset):
    """Base class of all set datasets.

    Subclasses implement ``__len__``, ``_raw_set(i) -> ndarray [n, D]`` and ``_target(i)``; optionally
    ``_transform(x)`` (applied after subsampling, e.g. per-cloud standardization).

    Attributes: ``task`` (task name), ``in_dim``, ``out_dim``, ``num_classes`` (classification, else ``None``),
    ``set_size`` (``None`` = never subsample), ``seed``, ``epoch``, ``fixed_subset``, ``source`` (where the data
    came from, for messages and ``data info``).
    """

    task: str = ""
    target_kind: str = "regression"  # or "class"
    in_dim: int = 0
    out_dim: int = 1
    num_classes: int | None = None
    source: str = ""

    def __init__(self, set_size: int | None = None, seed: int = 0, fixed_subset: bool = False):
        if set_size is not None and int(set_size) < 1:
            raise ValueError(f"set_size must be >= 1 or None, got {set_size}")
        self.set_size = None if set_size is None else int(set_size)
        self.seed = int(seed)
        self.fixed_subset = bool(fixed_subset)
        self.epoch = 0

    # -- epochs and subsets -------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random subsets ``__getitem__`` returns (no effect with ``fixed_subset``)."""
        self.epoch = int(epoch)

    def _subset_epoch(self) -> int:
        return 0 if self.fixed_subset else self.epoch

    # -- subclass hooks -----------------------------------------------------------------------------------
    def _raw_set(self, index: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _target(self, index: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return x

    # -- Dataset protocol ---------------------------------------------------------------------------------
    def _check_index(self, index: int) -> int:
        n = len(self)
        index = int(index)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for dataset of {n} sets")
        return index

    def get_set(self, index: int, subsample: bool = True) -> np.ndarray:
        """Set ``index`` as float32 array ``[n, D]`` (the epoch's subset unless ``subsample=False``)."""
        index = self._check_index(index)
        x = np.asarray(self._raw_set(index))
        if subsample and self.set_size is not None and x.shape[0] > self.set_size:
            x = x[subset_indices(x.shape[0], self.set_size, self.seed, self._subset_epoch(), index)]
        return np.ascontiguousarray(self._transform(x), dtype=np.float32)

    def __getitem__(self, index: int):
        index = self._check_index(index)
        x = torch.from_numpy(self.get_set(index))
        y = target_tensor(self._target(index), self.target_kind)
        return x, y

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(task={self.task!r}, sets={len(self)}, in_dim={self.in_dim}, "
            f"out_dim={self.out_dim}, set_size={self.set_size}, source={self.source!r})"
        )


class ArraySetDataset(SetDataset):
    """Sets held in memory: a list (or array) of ``[n_i, D]`` arrays and one target per set."""

    def __init__(self, sets, targets, *, task: str, target_kind: str, out_dim: int,
                 num_classes: int | None = None, transform: Callable | None = None, source: str = "memory",
                 **kw):
        super().__init__(**kw)
        if len(sets) != len(targets):
            raise DataError(f"{source}: {len(sets)} sets but {len(targets)} targets")
        self.sets = sets
        self.targets = targets
        self.task = task
        self.target_kind = target_kind
        self.out_dim = out_dim
        self.num_classes = num_classes
        self.in_dim = int(np.asarray(sets[0]).shape[-1]) if len(sets) else 0
        self._tf = transform
        self.source = source

    def __len__(self):
        return len(self.sets)

    def _raw_set(self, index):
        return self.sets[index]

    def _target(self, index):
        return self.targets[index]

    def _transform(self, x):
        return self._tf(x) if self._tf is not None else x
