"""Shared pieces of the data layer: errors, the cache folder, lazy HDF5 access and the set dataset base class.

Every dataset of :mod:`deepsets.data` is a :class:`SetDataset`: item ``i`` is ``(x, y)`` with ``x`` a float32
tensor ``[n_i, D]`` (``n_i`` may vary between sets) and ``y`` the target. Where a source set has more elements
than ``set_size``, a random subset of ``set_size`` elements is drawn; the subset is a deterministic function of
``(seed, epoch, index)`` and changes with :meth:`SetDataset.set_epoch` unless ``fixed_subset=True``.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

__all__ = [
    "DataError",
    "H5Source",
    "SetDataset",
    "data_dir",
    "subset_indices",
    "subset_views",
    "resized",
    "unwrap",
    "NonFinite",
    "scan_sets",
    "target_tensor",
    "check_class_labels",
    "check_regression_labels",
    "require_labels",
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


class Resized:
    """A view of a dataset with every set cut to a random subset of ``set_size`` elements (a smaller set stays
    whole), the same subset each time it is read: what the set-size generalisation report evaluates."""

    def __init__(self, ds, set_size: int, seed: int = 0):
        if set_size < 1:
            raise ValueError(f"set sizes must be >= 1, got {set_size}")
        self.ds, self.set_size, self.seed = ds, int(set_size), seed

    def __getattr__(self, name):
        return getattr(self.ds, name)

    def __len__(self):
        return len(self.ds)

    def get_set(self, index: int, subsample: bool = True) -> np.ndarray:
        x = self.ds.get_set(index, subsample=False)
        return x[subset_indices(x.shape[0], self.set_size, self.seed, 0x51, index)]

    def __getitem__(self, index: int):
        x = self.get_set(index)
        return torch.from_numpy(np.ascontiguousarray(x)), self.ds.target_of(index)


def resized(ds, set_size: int, seed: int = 0):
    """:class:`Resized` over a dataset or a (nested) torch ``Subset`` of one (the Subset's sets are kept)."""
    if isinstance(ds, Subset):
        return Subset(resized(ds.dataset, set_size, seed), ds.indices)
    return Resized(ds, set_size, seed)


def unwrap(ds) -> tuple:
    """``(base dataset, indices)`` of a dataset or a (nested) torch ``Subset`` of one."""
    idx = np.arange(len(ds))
    while isinstance(ds, Subset):
        idx = np.asarray(ds.indices)[idx]
        ds = ds.dataset
    return ds, idx


@dataclass(frozen=True)
class NonFinite:
    """Where a scan found a bad value: set ``index`` (position in the dataset), ``element`` and ``feature``
    (positions within the set as training sees it), the ``value``; ``element=None`` means the set is empty
    (``padding``: every row is NaN padding). ``row`` is the row of the file, where it differs from the element's
    position."""

    index: int
    element: int | None
    feature: int | None = None
    value: float | None = None
    row: int | None = None
    padding: bool = False


def scan_sets(read, indices) -> NonFinite | None:
    """Scan sets one at a time: ``read(i) -> [n, D]``. For sources whose sets are separate (FCS files, lists)."""
    for i in indices:
        x = np.asarray(read(int(i)))
        if x.shape[0] == 0:
            return NonFinite(int(i), None)
        if x.dtype.kind in "fc" and x.size and not np.isfinite(x).all():
            e, f = np.argwhere(~np.isfinite(x))[0]
            return NonFinite(int(i), int(e), int(f), float(x[e, f]))
    return None


def check_class_labels(labels, num_classes: int | None, what: str, n_elements: int | None = None,
                       first_index: int | None = None) -> None:
    """Raise :class:`DataError` unless every label is an integer in ``[0, num_classes)`` (and, for the index of
    an element, below ``n_elements``). ``what`` names the file/key for the message; with ``first_index`` set,
    the message names the index of the first bad label (labels checked as a whole array at load time)."""
    a = np.asarray(labels).reshape(-1)
    if a.size == 0:
        return
    if a.dtype.kind in "fc":
        bad = ~np.isfinite(a) | (a != np.round(a))
    elif a.dtype.kind in "iub":
        bad = np.zeros(a.shape, dtype=bool)
    else:
        raise DataError(f"{what}: expected integer class labels, found values of type {a.dtype}")
    hi = num_classes if num_classes else None
    if n_elements is not None:
        hi = n_elements if hi is None else min(hi, n_elements)
    with np.errstate(invalid="ignore"):
        bad |= a < 0
        if hi is not None:
            bad |= a >= hi
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        at = "" if first_index is None else f" at set {first_index + j}"
        rng = f"0..{hi - 1}" if hi is not None else ">= 0"
        found = "a missing value (NaN)" if a.dtype.kind == "f" and np.isnan(a[j]) else repr(a[j].item())
        count = f" ({int(bad.sum())} bad labels in all)" if bad.sum() > 1 else ""
        classes = f" for {num_classes} classes" if num_classes else ""
        raise DataError(f"{what}{at}: expected an integer class label in {rng}{classes}, found {found}{count}")


def check_regression_labels(labels, what: str, first_index: int = 0) -> None:
    """Raise :class:`DataError` naming the first set whose regression label is NaN or infinite."""
    a = np.asarray(labels)
    if a.dtype.kind not in "fciub":
        raise DataError(f"{what}: expected numeric labels, found values of type {a.dtype}")
    a = a.reshape(len(a), -1) if a.ndim else a.reshape(1, 1)
    bad = ~np.isfinite(a).all(axis=1)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        count = f" ({int(bad.sum())} sets in all)" if bad.sum() > 1 else ""
        raise DataError(f"{what} at set {first_index + j}: expected a finite number, found "
                        f"{a[j].tolist()}{count} (a missing label?)")


def require_labels(ds) -> None:
    """Training and evaluation need a label for every set: raise :class:`DataError` for unlabeled data."""
    base = getattr(ds, "dataset", ds)
    if getattr(base, "has_labels", True) is False:
        raise DataError(f"{getattr(base, 'source', 'data')}: no labels found (expected a label column: "
                        f"label_column=... / --label-column, or a labels file with columns set,label: labels.csv in "
                        f"an FCS folder or --labels FILE); labels are needed to train or evaluate, "
                        f"`deepsets predict` works without them")


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
            raise DataError(f"{self.path}: cannot read {key}[{index}] (corrupt or truncated?): "
                            f"{' '.join(str(e).split())}") from e

    def close(self):
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # noqa: BLE001, S110 - closing a broken handle
                pass
            self._file = None


# What h5py raises when a file's metadata (object headers, heaps, B-trees) is damaged.
_H5_ERRORS = (KeyError, RuntimeError, OSError, ValueError, TypeError, IndexError, AttributeError, SystemError)


def _damaged(path, e: BaseException) -> DataError:
    text = " ".join(str(e).split()) or type(e).__name__
    return DataError(f"{path}: damaged HDF5 file (corrupt or truncated?): {type(e).__name__}: {text}")


@functools.cache
def _h5_file_class():
    """``h5py.File`` whose ``with`` block turns h5py's errors on damaged files into :class:`DataError` (the class is
    made on first use, so importing this module does not import h5py)."""
    import h5py

    class CheckedH5File(h5py.File):
        def __exit__(self, exc_type, exc, tb):
            path = getattr(self, "_deepsets_path", "HDF5 file")
            try:
                super().__exit__(exc_type, exc, tb)
            except Exception:  # noqa: BLE001, S110 - closing a damaged file
                pass
            if exc is not None and isinstance(exc, _H5_ERRORS) and not isinstance(exc, DataError):
                raise _damaged(path, exc) from exc
            return False

    return CheckedH5File


FILE_CHECK_ENV = "DEEPSETS_FILE_CHECK_TIMEOUT"
_checked_files: set = set()  # (path, mtime, size) of the files whose metadata walk finished in this process
H5_WALKER = Path(__file__).with_name("_h5walk.py")
_RUN_SCRIPT = ("import runpy, sys; del sys.path[0]; sys.argv = sys.argv[1:]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')")


def h5_walk_command(path) -> list[str]:
    """The command of the metadata walk of ``path``: the walker script run with this environment's h5py (also
    one found through PYTHONPATH), with neither the current folder nor the script's folder first on sys.path,
    where a file could shadow a module h5py imports."""
    return [sys.executable, "-c", _RUN_SCRIPT, str(H5_WALKER), str(path)]


def file_check_timeout() -> float:
    """Seconds the metadata walk of an HDF5 file may take: ``$DEEPSETS_FILE_CHECK_TIMEOUT``, default 30; 0 = no walk."""
    raw = os.environ.get(FILE_CHECK_ENV, "").strip() or "30"
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{FILE_CHECK_ENV} must be a number of seconds (0 turns the check off), got {raw!r}") from None


def loader_timeout() -> float:
    """Seconds a DataLoader worker may take for one batch before the run stops with an error: 10 x
    :func:`file_check_timeout` (300 s by default; 0 = wait forever). A worker blocked inside the HDF5 library on a
    damaged data chunk (which the metadata walk does not read) would otherwise hang training."""
    return 10 * file_check_timeout()


def check_h5_file(path: Path) -> None:
    """Walk the metadata of an HDF5 file in a child process (:mod:`deepsets.data._h5walk`), killed after
    :func:`file_check_timeout` seconds: some damaged metadata makes the HDF5 C library loop forever, which no
    Python code can interrupt, so the first read of a file happens where it can be stopped. A walk that does not
    finish, or a child that crashes, raises :class:`DataError` naming the file. Done once per file (path,
    modification time, size) per process; DataLoader workers started by fork inherit what was checked."""
    timeout = file_check_timeout()
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if timeout <= 0 or key in _checked_files or not sys.executable:
        return
    try:
        rc = subprocess.run(h5_walk_command(path), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout).returncode
    except subprocess.TimeoutExpired:  # the child is killed
        raise DataError(f"{path}: reading the file did not finish within {timeout:g} s (damaged HDF5 metadata?); "
                        f"restore the file from a good copy (a slow disk? raise {FILE_CHECK_ENV})") from None
    if rc < 0:
        raise DataError(f"{path}: reading the file crashed the HDF5 library (signal {-rc}; damaged HDF5 "
                        f"metadata?); restore the file from a good copy")
    _checked_files.add(key)  # rc 1: h5py raised; the caller's own read says what is wrong


def open_h5(path: str | os.PathLike):
    """Open an HDF5 file read-only; a missing path raises FileNotFoundError, a damaged one DataError.

    The first time a file is opened its metadata is walked in a child process with a timeout
    (:func:`check_h5_file`), so a file that would make the HDF5 library loop gives an error instead of a hang.

    Used as ``with open_h5(path) as f: ...``, h5py errors raised inside the block (damaged metadata found while
    reading keys, shapes or values) also become :class:`DataError` naming the file.
    """
    p = check_exists(path)
    if p.is_dir():
        raise DataError(f"{p}: expected an HDF5 file, found a folder")
    check_h5_file(p)
    try:
        f = _h5_file_class()(p, "r")
    except Exception as e:
        raise DataError(f"{p}: not a readable HDF5 file (corrupt or truncated?): {e}") from e
    f._deepsets_path = p
    return f


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
    generated: bool = False  # made by a generator or simulator: holds no NaN, so check_finite skips it
    has_test_split: bool = False  # the training split's file also holds a separate test split

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
        """Set ``index`` as float32 array ``[n, D]`` (the epoch's subset unless ``subsample=False``).

        Raises :class:`DataError` naming the source and the set if the set is empty or holds NaN/inf values.
        """
        index = self._check_index(index)
        x = np.asarray(self._raw_set(index))
        self.check_set(index, x)  # before subsampling: positions in the message are those of the source set
        if subsample and self.set_size is not None and x.shape[0] > self.set_size:
            x = x[subset_indices(x.shape[0], self.set_size, self.seed, self._subset_epoch(), index)]
        x = np.ascontiguousarray(self._transform(x), dtype=np.float32)
        return x if x.flags.writeable else x.copy()  # e.g. a memory-mapped file: torch needs writable arrays

    def set_label(self, index: int) -> str:
        """How messages name set ``index``: its position, plus its name where the source has one."""
        name = self.set_name(index) if hasattr(self, "set_name") else None
        return f"set {index}" + (f" ({name})" if name is not None and str(name) != str(index) else "")

    def check_set(self, index: int, x: np.ndarray) -> None:
        """Raise :class:`DataError` if set ``index`` is empty or holds NaN/infinite values."""
        if x.shape[0] == 0:
            raise DataError(f"{self.source}: {self.set_label(index)} is empty (expected at least one element, "
                            f"found 0); remove it from the data")
        if x.dtype.kind in "fc" and not np.isfinite(x).all():
            bad = np.argwhere(~np.isfinite(x))[0]
            where = f"element {bad[0]}" + (f", feature {bad[1]}" if len(bad) > 1 else "")
            raise DataError(f"{self.source}: {self.set_label(index)} holds a NaN or infinite feature value "
                            f"(expected finite numbers, found {x[tuple(bad)]} at {where}); clean or drop it")

    def scan_finite(self, indices):
        """The first NaN/inf feature value (or empty set) among the sets ``indices``, as a
        :class:`NonFinite`, or ``None``: what :func:`~deepsets.data.check_finite` asks.
        This default reads each set; datasets of big files override it with one pass in large blocks."""
        return scan_sets(self._raw_set, indices)

    def target_of(self, index: int, n_elements: int | None = None) -> torch.Tensor:
        """The target of set ``index`` as a tensor, checked: finite for regression, a class index in range.

        Datasets without labels (``has_labels = False``, e.g. FCS files without ``labels.csv``) return their
        placeholder unchecked (NaN, or -1 for classes): they are for prediction only.
        """
        raw = self._target(index)
        if getattr(self, "has_labels", True) is False:
            return target_tensor(raw, self.target_kind)
        what = f"{self.source}: label of {self.set_label(index)}"
        if self.target_kind == "regression":
            try:
                y = target_tensor(raw, self.target_kind)
            except (TypeError, ValueError) as e:
                raise DataError(f"{what} is not a number (found {raw!r})") from e
            if not torch.isfinite(y).all():
                raise DataError(f"{what} is missing or not finite (expected a number, found {y.tolist()})")
            return y
        check_class_labels(np.asarray(raw).reshape(-1)[:1], self.num_classes, what, n_elements=n_elements)
        return target_tensor(raw, self.target_kind)

    def __getitem__(self, index: int):
        index = self._check_index(index)
        x = self.get_set(index)
        element_index = self.target_kind == "class" and self.out_dim == 1  # the target indexes an element
        y = self.target_of(index, n_elements=x.shape[0] if element_index else None)
        return torch.from_numpy(x), y

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(task={self.task!r}, sets={len(self)}, in_dim={self.in_dim}, "
            f"out_dim={self.out_dim}, set_size={self.set_size}, source={self.source!r})"
        )
