"""AnnData ``.h5ad``: one row per cell, ``obs[set_column]`` names each cell's set (scverse's ``sample_key``).

Read directly with ``h5py`` (``anndata`` is not needed). The data are ``X`` or, with ``layer=NAME``
(``--layer``), ``layers/NAME`` (files often keep their data only in a layer); either may be dense or sparse
(``csr_matrix``; ``csc_matrix`` is refused with advice). ``obs``/``var`` columns may be plain arrays, strings or
categoricals (anndata >= 0.8 ``categories``/``codes`` groups, or the older ``__categories`` layout). Features are
``var`` names (``features``/``channels``; default: every column except those that are not measurements, as for
FCS: time, event length, beads, barcodes; ``left_out`` names them). Labels come from ``obs[label_column]``
(default ``label`` when present; constant within a set) or a labels file; ``obs[split_column]`` (default
``split`` when present) selects train/test cells. Rows are read per set when the set is accessed.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .._base import DataError, open_h5
from ..finite import SLAB_BYTES, NonFinite
from . import SetReader, Source, labels_from_file, measurement_channels, select_features


def _decode(a):
    a = np.asarray(a)
    if a.dtype.kind in ("S", "O"):
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in a.ravel()], dtype=object)
    return a


def read_h5ad_column(group, name: str, path="") -> np.ndarray:
    """A column of an ``obs``/``var`` group: plain, string or categorical (both anndata layouts)."""
    if name not in group:
        cols = [k for k in group if not k.startswith("__") and k not in ("_index", "index")]
        raise DataError(f"{path}: column {name!r} not found in /{group.name.strip('/')}; available: {cols}")
    obj = group[name]
    if hasattr(obj, "keys") and {"values", "mask"} <= set(obj.keys()):  # nullable integer/boolean/string
        vals = _decode(obj["values"][()]).astype(object)
        vals[np.asarray(obj["mask"][()], dtype=bool)] = None
        return vals
    if hasattr(obj, "keys"):  # anndata >= 0.8 categorical group
        if "codes" not in obj or "categories" not in obj:
            raise DataError(f"{path}: {obj.name} is a group without codes/categories")
        codes = np.asarray(obj["codes"][()])
        cats = _decode(obj["categories"][()])
        out = np.empty(len(codes), dtype=object)
        out[codes >= 0] = cats[codes[codes >= 0]]
        out[codes < 0] = None
        return out
    vals = obj[()]
    legacy = group.get("__categories")
    if legacy is not None and name in legacy:
        cats = _decode(legacy[name][()])
        return cats[np.asarray(vals)]
    return _decode(vals)


def h5ad_var_names(f, path="") -> list[str]:
    var = f["var"]
    key = "_index" if "_index" in var else var.attrs.get("_index", "_index")
    key = key.decode() if isinstance(key, bytes) else str(key)
    if key not in var:
        key = "index" if "index" in var else None
    if key is None:
        raise DataError(f"{path}: var has no index (expected var/_index)")
    return [str(v) for v in read_h5ad_column(var, key, path)]


def _matrix_info(f, key: str, path):
    """``(shape, sparse)`` of ``X`` or a layer."""
    M = f[key]
    if hasattr(M, "keys"):
        enc = M.attrs.get("encoding-type", b"")
        enc = enc.decode() if isinstance(enc, bytes) else str(enc)
        if enc != "csr_matrix" or not {"data", "indices", "indptr"} <= set(M.keys()):
            raise DataError(f"{path}: /{key} is a sparse matrix of type {enc!r}; only dense and csr_matrix are "
                            f"read (convert with adata.{key.replace('layers/', 'layers[...]')} = "
                            f"scipy.sparse.csr_matrix(...))")
        shape = tuple(int(s) for s in M.attrs["shape"])
        return shape, True
    if len(M.shape) != 2:
        raise DataError(f"{path}: /{key} should be [cells, features], found {M.shape}")
    return tuple(M.shape), False


class H5ADReader(SetReader):
    def __init__(self, path, split=None, set_column=None, label_column=None, split_column=None, features=None,
                 layer=None, labels=None, expect_dim=None, channel_map=None):
        self.path = Path(path)
        self.source = str(self.path)
        with open_h5(path) as f:
            for k in ("obs", "var"):
                if k not in f:
                    raise DataError(f"{path}: not an AnnData file: missing /{k}; found {sorted(f.keys())}")
            if layer is not None:
                layers = sorted(f["layers"].keys()) if "layers" in f else []
                if layer not in layers:
                    raise DataError(f"{path}: layer {layer!r} not found; layers in the file: {layers or 'none'}")
                self.key = f"layers/{layer}"
            else:
                if "X" not in f:
                    layers = sorted(f["layers"].keys()) if "layers" in f else []
                    raise DataError(f"{path}: the file has no X; read a layer with layer=NAME (--layer NAME); "
                                    f"layers in the file: {layers or 'none'}")
                self.key = "X"
            obs = f["obs"]
            obs_cols = [k for k in obs if not k.startswith("__") and k not in ("_index", "index")]
            if set_column is None:
                raise DataError(f"{path}: no set column given: pass set_column=... (--set-column on the command "
                                f"line), the obs column naming each cell's set; obs columns: {obs_cols}")
            sets = read_h5ad_column(obs, set_column, path)
            n_cells = len(sets)
            shape, self.sparse = _matrix_info(f, self.key, path)
            if shape[0] != n_cells:
                raise DataError(f"{path}: /{self.key} has {shape[0]} rows but obs/{set_column} has {n_cells} cells")
            if self.sparse:
                self.indptr = np.asarray(f[self.key]["indptr"][()], dtype=np.int64)
                if len(self.indptr) != shape[0] + 1:
                    raise DataError(f"{path}: /{self.key}/indptr has {len(self.indptr)} entries, expected "
                                    f"{shape[0] + 1}")
            self.n_cells, self.n_cols = shape
            var_names = h5ad_var_names(f, path)
            if len(var_names) != shape[1]:
                raise DataError(f"{path}: /{self.key} has {shape[1]} columns but var has {len(var_names)} names")
            self.left_out: list[str] = []
            if features is None:  # every var that is a measurement (not time, event length, beads, ...)
                self._idx, self.left_out = measurement_channels(var_names, path, expect_dim=expect_dim,
                                                                channel_map=channel_map)
            else:
                self._idx = select_features(var_names, features, path, expect_dim=expect_dim,
                                            channel_map=channel_map)
            from . import parse_channel_map

            cmap = parse_channel_map(channel_map)
            self.feature_names = [cmap.get(var_names[i], var_names[i]) for i in self._idx]
            if split_column is None and "split" in obs_cols:
                split_column = "split"
            keep = np.ones(n_cells, dtype=bool)
            self.has_test_split = split == "train" and split_column is not None
            if split_column is not None and split is not None:
                keep = read_h5ad_column(obs, split_column, path).astype(str) == split
            if label_column is None and labels is None and "label" in obs_cols:
                label_column = "label"
            if label_column is not None and label_column not in obs_cols:
                read_h5ad_column(obs, label_column, path)  # the error naming the columns there are
        missing = [i for i in np.flatnonzero(keep) if sets[i] is None]
        if missing:
            raise DataError(f"{path}: cell {missing[0]} has no set (obs/{set_column} is missing)")
        order: dict = {}
        text = {}  # each value's text: set ids are the text of obs[set_column] (an integer column gives 7)
        for r in np.flatnonzero(keep):
            v = sets[r]
            t = text.get(v)
            if t is None:
                t = text[v] = str(v.item() if isinstance(v, np.generic) else v)
            order.setdefault(t, []).append(r)
        self.set_ids = list(order)
        self.rows = [np.asarray(v, dtype=np.int64) for v in order.values()]
        self._label_args = (label_column, labels, split)
        if labels is not None:
            self.labels_source = str(labels)
        self._file, self._pid = None, None

    def _read_labels(self):
        label_column, labels, split = self._label_args
        if labels is not None:
            return labels_from_file(labels, self.set_ids, split)
        if label_column is None:
            return None
        with open_h5(self.path) as f:
            cell_labels = read_h5ad_column(f["obs"], label_column, self.path)
        out = []
        for sid, r in zip(self.set_ids, self.rows):
            vals = {str(v): v for v in cell_labels[r].tolist()}
            if len(vals) != 1:
                raise DataError(f"{self.path}: label column {label_column!r} is not constant within set {sid!r}: "
                                f"{sorted(vals)[:5]}")
            out.append(next(iter(vals.values())))
        return out

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_file"], d["_pid"] = None, None
        return d

    def _h5(self):
        if self._file is None or self._pid != os.getpid():
            self._file = open_h5(self.path)
            self._pid = os.getpid()
        return self._file

    def __len__(self):
        return len(self.rows)

    def read(self, index):
        r = self.rows[index]
        M = self._h5()[self.key]
        try:
            if self.sparse:
                lo, hi = int(r.min()), int(r.max()) + 1  # one read of the set's span of the CSR arrays
                a, b = self.indptr[lo], self.indptr[hi]
                data, cols = M["data"][a:b], M["indices"][a:b]
                out = np.zeros((len(r), self.n_cols), dtype=np.float32)
                for j, row in enumerate(r):
                    s, e = self.indptr[row] - a, self.indptr[row + 1] - a
                    out[j, cols[s:e]] = data[s:e]
                return out[:, self._idx]
            if len(r) and r[-1] - r[0] + 1 == len(r):
                block = M[int(r[0]): int(r[-1]) + 1]
            else:
                block = M[np.sort(r)] if len(r) else np.zeros((0, M.shape[1]))
            return np.asarray(block, dtype=np.float32)[:, self._idx]
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - h5py's errors on damaged files
            raise DataError(f"{self.path}: cannot read /{self.key} rows of set {self.set_ids[index]!r}: {e}") from e

    def scan_finite(self, indices):
        """One pass over ``X`` (or the layer) in large blocks: dense rows, or the stored values of a CSR matrix.
        Only the chosen features of the cells of the wanted sets count."""
        indices = np.asarray(indices, dtype=np.int64)
        set_of = np.full(self.n_cells, -1, dtype=np.int64)  # cell -> set (-1: another split or another set)
        if len(indices):
            set_of[np.concatenate([self.rows[i] for i in indices])] = \
                np.repeat(indices, [len(self.rows[i]) for i in indices])
        feature_of = np.full(self.n_cols, -1, dtype=np.int64)
        feature_of[self._idx[::-1]] = np.arange(len(self._idx))[::-1]  # first position of a repeated column
        with open_h5(self.path) as f:
            M = f[self.key]
            if self.sparse:
                data, cols = M["data"], M["indices"]
                if data.dtype.kind not in "fc":
                    return None
                step = max(1, SLAB_BYTES // data.dtype.itemsize)
                for a in range(0, data.shape[0], step):
                    block = np.asarray(data[a: a + step])
                    if np.isfinite(block).all():
                        continue
                    pos = np.flatnonzero(~np.isfinite(block))
                    cells = np.searchsorted(self.indptr, pos + a, side="right") - 1
                    feats = feature_of[np.asarray(cols[a: a + len(block)])[pos]]
                    ok = np.flatnonzero((set_of[cells] >= 0) & (feats >= 0))
                    if len(ok):
                        j = ok[0]
                        return self._hit(set_of, int(cells[j]), int(feats[j]), float(block[pos[j]]))
                return None
            if M.dtype.kind not in "fc":
                return None
            step = max(1, SLAB_BYTES // max(1, self.n_cols * M.dtype.itemsize))
            if M.chunks:
                step = max(M.chunks[0], step // M.chunks[0] * M.chunks[0])
            for a in range(0, self.n_cells, step):
                wanted = set_of[a: a + step] >= 0
                if not wanted.any():
                    continue
                block = np.asarray(M[a: a + step])[:, self._idx]
                if np.isfinite(block).all():
                    continue
                bad = ~np.isfinite(block) & wanted[:, None]
                if bad.any():
                    r, c = np.argwhere(bad)[0]
                    return self._hit(set_of, a + int(r), int(c), float(block[r, c]))
        return None

    def _hit(self, set_of, cell: int, feature: int, value: float) -> NonFinite:
        s = int(set_of[cell])
        return NonFinite(s, int(np.searchsorted(self.rows[s], cell)), feature, value, row=cell)


SOURCE = Source("h5ad", "AnnData .h5ad with --set-column (an obs column)",
                lambda p: p.is_file() and p.suffix.lower() == ".h5ad", H5ADReader)
