"""Single-cell readers: FCS files (one file = one set) and AnnData ``.h5ad`` (an ``obs`` column names the set).

FCS (needs the optional dependency ``flowio``: ``pip install deepsets[cytometry]``)
    ``data`` is a folder of ``*.fcs`` files (or one file). Channels are chosen by name with ``channels=[...]``
    (matched against ``$PnN``, then ``$PnS``); without it every channel is used, which must then match the
    task's input size. ``channel_map={"FSC-A": "RBC_Volume", ...}`` (``--channel-map FSC-A=RBC_Volume`` on the
    command line) renames a file's channels before they are matched, so files from instruments that name the
    same measurement differently are read with one list of ``channels``. Labels come from ``labels.csv`` in the
    folder with columns ``file,label`` and optionally ``split`` (``train``/``test``); every ``.fcs`` file must
    have a row. Without a ``split`` column, subfolders ``train/`` and ``test/`` are used if present, else every
    file is in both splits. Without ``labels.csv`` targets are missing (NaN for regression, -1 for classes),
    which is enough for prediction (training refuses such data). Files are read when their set is accessed.

AnnData ``.h5ad`` (read directly with ``h5py``; ``anndata`` is not needed)
    One row of ``X`` per cell; ``obs[set_column]`` names the set, ``obs[label_column]`` (default ``label`` when
    present) gives its target and must be constant within a set; ``obs[split_column]`` (default ``split`` when
    present) selects train/test rows. ``X`` may be dense or CSR (``encoding-type`` ``csr_matrix``); ``obs`` and
    ``var`` columns may be plain arrays, strings or categoricals (anndata >= 0.8 layout with ``categories`` and
    ``codes``, or the older ``__categories`` layout). Channels are ``var`` names. Rows are read per set on
    access. ``channel_map`` renames ``var`` names as for FCS.

Labels are checked when the data are opened: a missing, non-numeric or NaN label, or a class outside
``0..num_classes-1``, raises :class:`~deepsets.data.DataError` naming the file and the set.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._base import DataError, SetDataset, check_exists, open_h5

__all__ = ["FCSDataset", "H5ADDataset", "fcs_channels", "h5ad_var_names", "parse_channel_map", "read_fcs",
           "read_h5ad_column"]


# ---------------------------------------------------------------------------------------------------------------
# FCS
# ---------------------------------------------------------------------------------------------------------------
def _flowio():
    try:
        import flowio
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading FCS files needs flowio: pip install 'deepsets[cytometry]'") from e
    return flowio


def _open_fcs(path):
    flowio = _flowio()
    p = check_exists(path)
    try:
        data = p.read_bytes()  # read whole (one set), so no file handle is left open
    except OSError as e:
        raise DataError(f"{p}: cannot read: {e}") from e
    try:
        return flowio.FlowData(io.BytesIO(data))
    except Exception as e:
        raise DataError(f"{p}: not a readable FCS file (corrupt or truncated?): {e}") from e


def fcs_channels(path) -> tuple[list[str], list[str]]:
    """``($PnN names, $PnS names)`` of an FCS file."""
    fd = _open_fcs(path)
    keys = sorted(fd.channels, key=int)
    return [fd.channels[k].get("pnn", "") for k in keys], [fd.channels[k].get("pns", "") for k in keys]


def parse_channel_map(channel_map) -> dict[str, str]:
    """``channel_map`` as a dict ``{name in the file: name to use}``.

    Accepts a dict, or a list of ``"FILE_NAME=NAME"`` strings (the ``--channel-map`` command-line form).
    """
    if channel_map is None:
        return {}
    if isinstance(channel_map, dict):
        return {str(k): str(v) for k, v in channel_map.items()}
    if isinstance(channel_map, str):
        channel_map = [channel_map]
    out = {}
    for item in channel_map:
        old, sep, new = str(item).partition("=")
        if not sep or not old.strip() or not new.strip():
            raise ValueError(f"channel map entry {item!r}: expected FILE_CHANNEL=NAME (e.g. FSC-A=RBC_Volume)")
        out[old.strip()] = new.strip()
    return out


def _select(names_n, names_s, channels, path, expect_dim=None, channel_map=None):
    """Column indices of ``channels`` among a file's channel names (``$PnN`` first, then ``$PnS``).

    ``channel_map`` (``{name in the file: name to use}``) renames the file's channels first, so files that name
    the same measurement differently can be read with one list of ``channels``.
    """
    cmap = parse_channel_map(channel_map)
    if cmap:
        names_n = [cmap.get(n, n) for n in names_n]
        names_s = [cmap.get(n, n) for n in names_s]
    if channels is None:
        if expect_dim is not None and len(names_n) != expect_dim:
            raise DataError(
                f"{path}: has {len(names_n)} channels {names_n} but the task needs {expect_dim}; "
                f"choose them with channels=[...] (--channels on the command line)"
            )
        return list(range(len(names_n)))
    idx = []
    for c in channels:
        if c in names_n:
            idx.append(names_n.index(c))
        elif c in names_s:
            idx.append(names_s.index(c))
        else:
            avail = names_n + [s for s in names_s if s and s not in names_n]
            raise DataError(f"{path}: channel {c!r} not found (expected channels {list(channels)}); available "
                            f"channels: {avail}; rename a file's channel with channel_map / "
                            f"--channel-map FILE_CHANNEL={c}")
    return idx


def read_fcs(path, channels: Sequence[str] | None = None, channel_map=None) -> np.ndarray:
    """Events of an FCS file as float32 ``[events, channels]`` (raw values, no transform)."""
    fd = _open_fcs(path)
    keys = sorted(fd.channels, key=int)
    names_n = [fd.channels[k].get("pnn", "") for k in keys]
    names_s = [fd.channels[k].get("pns", "") for k in keys]
    idx = _select(names_n, names_s, channels, path, channel_map=channel_map)
    try:
        arr = np.asarray(fd.as_array(preprocess=False), dtype=np.float32)
    except Exception as e:
        raise DataError(f"{path}: cannot decode FCS events: {e}") from e
    if arr.ndim != 2 or arr.shape[1] != len(names_n):
        raise DataError(f"{path}: expected events [n, {len(names_n)}], decoded {arr.shape}")
    return arr[:, idx]


def _read_labels_csv(path: Path):
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read labels CSV: {e}") from e
    if not rows or "file" not in rows[0] or "label" not in rows[0]:
        found = list(rows[0]) if rows else []
        raise DataError(f"{path}: expected columns file,label[,split], found {found}")
    return rows


class FCSDataset(SetDataset):
    """Sets from FCS files, one file per set (see module docstring)."""

    def __init__(self, data, split: str = "train", task: str = "hematocrit", channels: Sequence[str] | None = None,
                 target_kind: str = "regression", out_dim: int = 1, expect_dim: int | None = None,
                 labels: str | os.PathLike | None = None, channel_map=None, **kw):
        super().__init__(**kw)
        root = check_exists(data)
        self.task, self.target_kind, self.channels = task, target_kind, list(channels) if channels else None
        self.channel_map = parse_channel_map(channel_map)
        self.num_classes = out_dim if target_kind == "class" else None
        self.out_dim = out_dim
        if root.is_file():
            files, folder = [root], root.parent
        else:
            folder = root
            files = sorted(root.rglob("*.fcs")) + sorted(root.rglob("*.FCS"))
            if not files:
                raise DataError(f"{root}: no .fcs files found")
        lab_path = Path(labels) if labels else folder / "labels.csv"
        missing = float("nan") if target_kind == "regression" else -1
        if lab_path.exists():
            rows = _read_labels_csv(lab_path)
            by_name, listed = {}, set()
            for r in rows:
                listed.add((r.get("file") or "").strip())
                if "split" in r and r["split"] and r["split"].strip() != split:
                    continue
                by_name[r["file"].strip()] = r["label"].strip()
            has_split = "split" in rows[0]
            chosen, targets, unlabeled = [], [], []
            for f in files:
                rel = f.relative_to(folder).as_posix() if f.is_relative_to(folder) else f.name
                key = rel if rel in by_name else (f.name if f.name in by_name else None)
                if key is None:
                    if rel not in listed and f.name not in listed:
                        unlabeled.append(rel)
                    continue
                in_subfolders = not has_split and (folder / "train").is_dir() and (folder / "test").is_dir()
                if in_subfolders and not rel.startswith(f"{split}/"):
                    continue
                chosen.append(f)
                value = by_name[key]
                try:
                    t = float(value) if target_kind == "regression" else int(value)
                except ValueError:
                    kind = "a number" if target_kind == "regression" else "an integer class label"
                    found = "an empty (missing) label" if not value else repr(value)
                    raise DataError(f"{lab_path}: label of {key}: expected {kind}, found {found}") from None
                if target_kind == "regression" and not np.isfinite(t):
                    raise DataError(f"{lab_path}: label of {key}: expected a finite number, found {value!r}")
                if target_kind == "class" and not 0 <= t < out_dim:
                    raise DataError(f"{lab_path}: label of {key}: expected a class in 0..{out_dim - 1} "
                                    f"for {out_dim} classes, found {t}")
                targets.append(t)
            unknown = set(by_name) - {f.relative_to(folder).as_posix() for f in files} - {f.name for f in files}
            if unknown:
                raise DataError(f"{lab_path}: lists files that do not exist: {sorted(unknown)[:5]}")
            if unlabeled:
                raise DataError(f"{lab_path}: no label for {len(unlabeled)} file(s) of {folder}: "
                                f"{sorted(unlabeled)[:5]}; add a row (file,label) for each, or move them out")
            files = chosen
            self.has_labels = True
        else:
            if (folder / "train").is_dir() and (folder / "test").is_dir() and root.is_dir():
                files = [f for f in files if f.relative_to(folder).as_posix().startswith(f"{split}/")]
            targets = [missing] * len(files)
            self.has_labels = False
        self.files, self.targets = files, targets
        if files:
            names_n, names_s = fcs_channels(files[0])
            self._idx = _select(names_n, names_s, self.channels, files[0], expect_dim, self.channel_map)
            mapped = [self.channel_map.get(n, n) for n in names_n]
            self.channel_names = list(self.channels) if self.channels else [mapped[i] for i in self._idx]
            self.in_dim = len(self._idx)
        else:
            self.channel_names, self.in_dim = list(self.channels or []), len(self.channels or [])
        self.source = str(root)

    def __len__(self):
        return len(self.files)

    def set_name(self, index):
        return self.files[index].name

    def _raw_set(self, index):
        return read_fcs(self.files[index], self.channel_names, self.channel_map)

    def _target(self, index):
        return self.targets[index]


# ---------------------------------------------------------------------------------------------------------------
# AnnData .h5ad (h5py only)
# ---------------------------------------------------------------------------------------------------------------
def _decode(a):
    a = np.asarray(a)
    if a.dtype.kind in ("S", "O"):
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in a.ravel()], dtype=object)
    return a


def read_h5ad_column(group, name: str, path="") -> np.ndarray:
    """A column of an ``obs``/``var`` group: plain, string or categorical (both anndata layouts)."""
    if name not in group:
        cols = [k for k in group if not k.startswith("__")]
        raise DataError(f"{path}: column {name!r} not found in /{group.name.strip('/')}; available: {cols}")
    obj = group[name]
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


class H5ADDataset(SetDataset):
    """Sets from an AnnData ``.h5ad`` file (see module docstring)."""

    def __init__(self, path, split: str = "train", task: str = "hematocrit", set_column: str | None = None,
                 label_column: str | None = None, split_column: str | None = None,
                 channels: Sequence[str] | None = None, target_kind: str = "regression", out_dim: int = 1,
                 expect_dim: int | None = None, channel_map=None, **kw):
        super().__init__(**kw)
        self.path = Path(path)
        self.task, self.target_kind, self.out_dim = task, target_kind, out_dim
        self.num_classes = out_dim if target_kind == "class" else None
        with open_h5(path) as f:
            for k in ("X", "obs", "var"):
                if k not in f:
                    raise DataError(f"{path}: not an AnnData file: missing /{k}; found {sorted(f.keys())}")
            obs = f["obs"]
            # obs/_index (the cell names) is not a column; attributes are only read when needed (a damaged
            # attribute is where the HDF5 library is least robust)
            obs_cols = [k for k in obs if not k.startswith("__") and k not in ("_index", "index")]
            if set_column is None:
                raise DataError(f"{path}: no set column given: pass set_column=... (--set-column on the command "
                                f"line), the obs column naming each cell's set; obs columns: {obs_cols}")
            sets = read_h5ad_column(obs, set_column, path)
            n_cells = len(sets)
            X = f["X"]
            if hasattr(X, "keys"):
                enc = X.attrs.get("encoding-type", b"")
                enc = enc.decode() if isinstance(enc, bytes) else str(enc)
                if enc != "csr_matrix" or not {"data", "indices", "indptr"} <= set(X.keys()):
                    raise DataError(f"{path}: X is a sparse group of type {enc!r}; only dense or csr_matrix supported")
                shape = tuple(int(s) for s in X.attrs["shape"])
                self.sparse = True
                self.indptr = np.asarray(X["indptr"][()], dtype=np.int64)
                if len(self.indptr) != shape[0] + 1:
                    raise DataError(f"{path}: X/indptr has {len(self.indptr)} entries, expected {shape[0] + 1}")
            else:
                shape = X.shape
                self.sparse = False
                if len(shape) != 2:
                    raise DataError(f"{path}: X should be [cells, channels], found {shape}")
            if shape[0] != n_cells:
                raise DataError(f"{path}: X has {shape[0]} rows but obs/{set_column} has {n_cells} cells")
            var_names = h5ad_var_names(f, path)
            if len(var_names) != shape[1]:
                raise DataError(f"{path}: X has {shape[1]} columns but var has {len(var_names)} names")
            self._idx = _select(var_names, [], channels, path, expect_dim, channel_map)
            cmap = parse_channel_map(channel_map)
            self.channel_names = [cmap.get(var_names[i], var_names[i]) for i in self._idx]
            self.in_dim = len(self._idx)
            if split_column is None and "split" in obs_cols:
                split_column = "split"
            keep = np.ones(n_cells, dtype=bool)
            if split_column is not None:
                keep = read_h5ad_column(obs, split_column, path).astype(str) == split
            if label_column is None and "label" in obs_cols:
                label_column = "label"
            labels = read_h5ad_column(obs, label_column, path) if label_column else None
        self.has_labels = labels is not None
        names = sets[keep]
        rows = np.flatnonzero(keep)
        order = {}
        for r, s in zip(rows, names):
            order.setdefault(s, []).append(r)
        self.names = list(order)
        self.rows = [np.asarray(v, dtype=np.int64) for v in order.values()]
        self.targets = []
        for name, r in zip(self.names, self.rows):
            if labels is None:
                self.targets.append(float("nan") if target_kind == "regression" else -1)
                continue
            vals = set(labels[r].tolist())
            if len(vals) != 1:
                raise DataError(f"{path}: label column {label_column!r} is not constant within set {name!r}: "
                                f"{sorted(map(str, vals))[:5]}")
            v = vals.pop()
            what = f"{path}: label column {label_column!r}, set {name!r}"
            try:
                t = float(v) if target_kind == "regression" else int(float(v))
            except (TypeError, ValueError):
                kind = "a number" if target_kind == "regression" else "an integer class label"
                raise DataError(f"{what}: expected {kind}, found {v!r}") from None
            if target_kind == "regression" and not np.isfinite(t):
                raise DataError(f"{what}: expected a finite number, found {v!r} (a missing label?)")
            if target_kind == "class" and (not np.isfinite(float(v)) or float(v) != t or not 0 <= t < out_dim):
                raise DataError(f"{what}: expected a class in 0..{out_dim - 1} for {out_dim} classes, found {v!r}")
            self.targets.append(t)
        self.source = str(path)
        self._file = None
        self._pid = None

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

    def set_name(self, index):
        return str(self.names[index])

    def _raw_set(self, index):
        r = self.rows[index]
        X = self._h5()["X"]
        try:
            if self.sparse:
                ncol = int(X.attrs["shape"][1])
                out = np.zeros((len(r), ncol), dtype=np.float32)
                for j, row in enumerate(r):
                    a, b = self.indptr[row], self.indptr[row + 1]
                    out[j, X["indices"][a:b]] = X["data"][a:b]
                return out[:, self._idx]
            if len(r) and r[-1] - r[0] + 1 == len(r):
                block = X[int(r[0]): int(r[-1]) + 1]
            else:
                block = X[np.sort(r)] if len(r) else np.zeros((0, X.shape[1]))
            return np.asarray(block, dtype=np.float32)[:, self._idx]
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{self.path}: cannot read X rows of set {self.names[index]!r}: {e}") from e

    def _target(self, index):
        return self.targets[index]
