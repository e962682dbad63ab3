"""Walk an HDF5 file's metadata: ``python _h5walk.py FILE``, run by :func:`deepsets.data._base.check_h5_file`.

Some damaged metadata (a broken attribute or object header, a looping B-tree) makes the HDF5 C library loop
forever. This walk touches what the data layer reads - every group and dataset, its attributes, shape, dtype,
the index of its chunks, and a small slice (first and last rows) of each dataset, all of small ones - so that a
file that would hang the library hangs this separate process instead, which the caller kills after a timeout.
It reads little data: a few rows per dataset, not the whole file.

Imports only h5py and numpy (not deepsets, which imports torch): starting it costs about as much as ``import h5py``.
Exit status 0 = walked; 1 = h5py raised (the caller's own read then gives the error message).
"""
import sys

SMALL = 1 << 20  # datasets up to this many bytes are read whole (labels, obs columns, sparse indptr)


def _attempt(step, errors: list, default=None):
    """``step()``; an error is noted and the walk goes on, so the objects after a damaged one are touched too
    (one of them may be the one that hangs)."""
    try:
        return step()
    except Exception as e:  # noqa: BLE001 - h5py raises many types on damaged files
        errors.append(e)
        return default


def _read_some(ds) -> None:
    _ = ds.dtype, ds.chunks, ds.compression  # each reads a message of the object header
    if ds.chunks is not None and hasattr(ds.id, "chunk_iter"):
        ds.id.chunk_iter(lambda info: None)  # the whole chunk index (metadata only, no chunk is read)
    if not ds.shape or ds.size == 0 or ds.size * ds.dtype.itemsize <= SMALL:
        ds[()]
    else:
        ds[:1]
        ds[-1:]


def _walk(obj, errors: list) -> None:
    for key in _attempt(lambda: list(obj.attrs), errors, []):
        _attempt(lambda: obj.attrs[key], errors)
    if hasattr(obj, "shape"):
        _attempt(lambda: _read_some(obj), errors)
    elif hasattr(obj, "keys"):
        for name in _attempt(lambda: list(obj.keys()), errors, []):
            child = _attempt(lambda: obj[name], errors)
            if child is not None:
                _walk(child, errors)


def walk(path: str) -> int:
    """Touch every object of the file; returns the number of errors h5py raised on the way."""
    import h5py

    errors: list = []
    with h5py.File(path, "r") as f:
        _walk(f, errors)
    return len(errors)


if __name__ == "__main__":
    try:
        sys.exit(1 if walk(sys.argv[1]) else 0)
    except Exception:  # noqa: BLE001 - any error is reported by the caller's own read
        sys.exit(1)
