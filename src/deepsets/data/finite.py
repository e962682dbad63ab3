"""The scan for NaN and infinite feature values that runs before training.

Reading a set checks it (:meth:`SetDataset.check_set`), but training draws only some elements of some sets per
epoch, so one bad cell in a set that the first epochs never touch would stop a long run at a random epoch (or
never). :func:`check_finite` reads every set of the training, validation and test data once, before training, and
raises one :class:`DataError` naming the file, the split, the set and the element.

Each dataset scans itself: :meth:`SetDataset.scan_finite` (default: read each set), or, for the big formats, one
pass over the file in large blocks (:func:`scan_array`: HDF5 read in chunk-aligned slabs, ``.npy`` memory maps).
Datasets made by a generator or simulator (``generated = True``) hold no NaN by construction and are not scanned.
"""
from __future__ import annotations

from collections.abc import Mapping
import numpy as np

from ._base import DataError, NonFinite, scan_sets, unwrap

__all__ = ["NonFinite", "check_before_training", "check_finite", "first_nonfinite", "scan_array", "scan_sets"]

SLAB_BYTES = 64 << 20  # bytes read per block: large enough for full read speed, small enough for any machine


def first_nonfinite(block: np.ndarray, padding: bool = False) -> tuple | None:
    """``(set, row, feature, element)`` of the first NaN/inf in ``block [sets, rows, features]`` (``element`` is
    the row's position once padding rows are dropped), ``(set, None, None, None)`` for a set with no elements
    left, ``None`` if all is finite. With ``padding``, rows that are entirely NaN are padding (the Flow-RBC
    layout) and are fine."""
    if block.dtype.kind not in "fc" or block.size == 0:
        return None
    if np.isfinite(block).all():  # the common case, at memory speed; the details below only for a bad block
        return None
    bad = ~np.isfinite(block)
    pad = np.isnan(block).all(axis=2) if padding else np.zeros(block.shape[:2], dtype=bool)
    bad &= ~pad[:, :, None]
    empty = pad.all(axis=1) if padding else np.zeros(len(block), dtype=bool)
    per_set = bad.any(axis=(1, 2)) | empty
    if not per_set.any():
        return None
    s = int(np.flatnonzero(per_set)[0])
    if empty[s]:
        return s, None, None, None
    r, f = (int(v) for v in np.argwhere(bad[s])[0])
    return s, r, f, r - int(pad[s, :r].sum())


def scan_array(arr, indices: np.ndarray, padding: bool = False, first: int = 0) -> NonFinite | None:
    """Scan ``arr [sets, elements, ...features]`` (an h5py dataset or a numpy/memory-mapped array) over the
    sets ``indices`` (sorted; set ``i`` of ``arr`` is set ``first + i`` of the dataset) in blocks of about
    :data:`SLAB_BYTES`.

    HDF5 blocks are whole chunks along the set axis, so every chunk is read (and decompressed) once. Sets
    between the wanted ones are read too (cheaper than many small reads) but their values are ignored.
    """
    indices = np.asarray(indices, dtype=np.int64) - first
    if len(indices) == 0 or np.dtype(arr.dtype).kind not in "fc":
        return None  # integer data (e.g. image pixels) cannot be NaN
    per_set = int(np.prod(arr.shape[1:], dtype=np.int64)) * np.dtype(arr.dtype).itemsize
    step = max(1, SLAB_BYTES // max(per_set, 1))
    chunks = getattr(arr, "chunks", None)
    if chunks:
        step = max(chunks[0], step // chunks[0] * chunks[0])
    wanted = np.zeros(int(indices[-1]) + 1, dtype=bool)
    wanted[indices] = True
    lo = int(indices[0]) // step * step if chunks else int(indices[0])
    buf = np.empty((min(step, len(wanted) - lo), *arr.shape[1:]), arr.dtype) if hasattr(arr, "read_direct") else None
    for a in range(lo, len(wanted), step):
        b = min(a + step, len(wanted))
        keep = wanted[a:b]
        if not keep.any():
            continue
        if buf is not None:  # h5py: into one reused buffer (no new allocation per slab)
            arr.read_direct(buf, np.s_[a:b], np.s_[: b - a])
            block = buf[: b - a]
        else:
            block = np.asarray(arr[a:b])
        block = block.reshape(b - a, block.shape[1], -1) if block.ndim != 3 else block
        block = block if keep.all() else block[keep]
        hit = first_nonfinite(block, padding)
        if hit is not None:
            s, r, f, e = hit
            index = first + a + int(np.flatnonzero(keep)[s])
            return NonFinite(index, e, f, None if r is None else float(block[s, r, f]), padding=padding)
    return None


def check_finite(datasets, split: str = "train") -> None:
    """Raise :class:`DataError` if any set holds a NaN or infinite feature value (or, in the Flow-RBC layout, no
    element at all), naming the file, the split, the set and the element.

    ``datasets`` is a dataset or (nested) ``torch.utils.data.Subset`` of one, or ``{split name: dataset}``; the
    splits of one file (training and validation) are scanned in one pass and a bad set is named by the split it
    is in. Generated data (``generated = True`` on the dataset) are skipped.
    """
    parts = datasets if isinstance(datasets, Mapping) else {split: datasets}
    groups: dict = {}  # one pass per data source, whatever number of splits are drawn from it
    for name, ds in parts.items():
        if ds is None:
            continue
        base, idx = unwrap(ds)
        if getattr(base, "generated", False) or not hasattr(base, "scan_finite"):
            continue
        key = (type(base), str(getattr(base, "source", id(base))))
        groups.setdefault(key, (base, []))[1].append((name, idx))
    for base, members in groups.values():
        indices = np.unique(np.concatenate([idx for _, idx in members]).astype(np.int64))
        hit = base.scan_finite(indices)
        if hit is None:
            continue
        where = next(name for name, idx in members if hit.index in set(idx.tolist()))
        label = f"{base.set_label(hit.index)} of the {where} split"
        if hit.element is None:
            why = ": every row is NaN padding" if hit.padding else ""
            raise DataError(f"{base.source}: {label} is empty (expected at least one element, found 0{why}); remove it "
                            f"from the data")
        names = getattr(base, "feature_names", None)
        feature = f"{hit.feature}" + (f" ({names[hit.feature]!r})" if names and hit.feature < len(names) else "")
        row = f" (row {hit.row} of the file)" if hit.row is not None else ""
        raise DataError(f"{base.source}: {label} holds a NaN or infinite feature value (expected finite numbers, "
                        f"found {hit.value} at element {hit.element}{row}, feature {feature}); clean or drop it "
                        f"(every set is checked before training, also those an epoch would not draw)")


def check_before_training(train, validation=None, load_test=None) -> None:
    """:func:`check_finite` of the training and validation sets and, where the data file has its own test split
    (``has_test_split``: HDF5 ``test_data``, a split column, ``train/``/``test/`` folders), of the test split
    ``load_test()``: a bad test set would otherwise stop the evaluation after the whole training."""
    check_finite({"train": train, "validation": validation})
    base = unwrap(train)[0]
    if load_test is None or getattr(base, "generated", False) or not getattr(base, "has_test_split", False):
        return
    try:
        test = load_test()
    except (DataError, ValueError, OSError):  # a test split that cannot be opened is the evaluation's business
        return
    check_finite(test, "test")
