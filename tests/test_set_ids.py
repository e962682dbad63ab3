"""Set ids keep the text the user wrote, and edited data are never reused silently.

Through the command line (``python -m deepsets.cli`` as a real subprocess where it matters, its ``main``
otherwise, to keep the file fast), with files written by pandas, pyarrow and anndata: ids that
a number parser would merge (``007``/``7``, ``1e3``/``1000``) stay apart in every format, a large table keeps each
set whole across its reading chunks, a table edited in place (same size and modification time) is indexed again,
and ``deepsets cv`` refuses the finished folds of data that changed since.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deepsets.cli import main

pd = pytest.importorskip("pandas")
ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "deepsets.cli"]
TINY = ["--model", "deepsets", "--depth", "2", "--dim", "8", "--batch-size", "4", "--epochs", "1", "--no-progress"]
IDS = ["007", "7", "0012", "12", "1e3", "1000"]

pytestmark = pytest.mark.usefixtures("one_thread")


def cli(args, ok=True):
    """``python -m deepsets.cli ARGS`` (the data folder, where table indexes go, is this test run's)."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    r = subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, env=e, timeout=300)
    if ok:
        assert r.returncode == 0, r.stderr[-2000:]
    return r


def run(args):
    assert main([str(a) for a in args]) == 0


def table(ids, rows_per_set=6, seed=0):
    """A long table: set id (as text), a label, two features."""
    rng = np.random.default_rng(seed)
    n = len(ids) * rows_per_set
    return pd.DataFrame({"patient": np.repeat(np.asarray(ids, dtype=object), rows_per_set),
                         "label": np.repeat(["a", "b"] * (len(ids) // 2) + ["a"] * (len(ids) % 2), rows_per_set),
                         "x": rng.normal(size=n).astype(np.float32), "y": rng.normal(size=n).astype(np.float32)})


def predicted_ids(path):
    with open(path, newline="") as fh:
        return [r["set"] for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("ids")


@pytest.fixture(scope="module")
def ckpt(work):
    """A tiny classifier on features x, y (the set column of later inputs is named on the command line)."""
    path = work / "train.csv"
    table([f"t{i}" for i in range(8)]).to_csv(path, index=False)
    run(["train", "--data", path, "--set-column", "patient", "--label-column", "label", "--out", work / "run",
         *TINY])
    return work / "run" / "checkpoints" / "best.ckpt"


def test_ids_are_the_text_written_in_every_format(work, ckpt):
    ad = pytest.importorskip("anndata")
    pytest.importorskip("pyarrow")
    df = table(IDS)
    files = {"csv": work / "ids.csv", "parquet": work / "ids.parquet", "h5ad": work / "ids.h5ad"}
    df.to_csv(files["csv"], index=False)
    df.to_parquet(files["parquet"])
    obs = pd.DataFrame({"patient": pd.Categorical(df["patient"])}, index=[f"c{i}" for i in range(len(df))])
    adata = ad.AnnData(X=df[["x", "y"]].to_numpy(np.float32), obs=obs)
    adata.var_names = ["x", "y"]
    adata.write_h5ad(files["h5ad"])
    ints = df.assign(patient=np.repeat([7, 12, 1000, 8, 13, 1001], 6))  # an int64 column: 7, never 7.0
    files["int64"] = work / "int64.parquet"
    ints.to_parquet(files["int64"])
    for kind, path in files.items():
        out = work / f"pred-{kind}.csv"
        argv = ["predict", "--checkpoint", ckpt, "--input", path, "--set-column", "patient", "--output", out]
        cli(argv) if kind == "csv" else run(argv)
        want = ["7", "12", "1000", "8", "13", "1001"] if kind == "int64" else IDS
        assert predicted_ids(out) == want, kind
    # a labels file's set column is text too: 007 and 7 get their own labels
    (work / "labels.csv").write_text("set,label\n" + "".join(f"{s},{'ab'[i % 2]}\n" for i, s in enumerate(IDS)))
    from deepsets.data import load_task

    ds = load_task("classification", data=files["csv"], set_column="patient", labels=work / "labels.csv",
                   set_size=0)
    assert [ds.set_name(i) for i in range(len(ds))] == IDS and [int(ds[i][1]) for i in range(6)] == [0, 1] * 3


def test_a_large_table_keeps_each_set_whole_across_chunks(work, ckpt):
    """Numeric ids fill the first chunk; a text id comes late: the set spanning the chunk boundary stays one."""
    n = 300_000
    rng = np.random.default_rng(1)
    ids = (np.arange(n) // 10_000 + 1).astype(str).astype(object)  # "1".."30"; "27" spans row 262,144
    ids[-5:] = "late-text"
    path = work / "big.csv"
    pd.DataFrame({"patient": ids, "x": rng.normal(size=n).astype(np.float32),
                  "y": rng.normal(size=n).astype(np.float32)}).to_csv(path, index=False)
    out = work / "pred-big.csv"
    run(["predict", "--checkpoint", ckpt, "--input", path, "--set-column", "patient", "--output", out])
    got = predicted_ids(out)
    assert got == [str(k) for k in range(1, 31)] + ["late-text"]
    from deepsets.data.sources import open_source

    r = open_source(path, set_column="patient")
    sizes = {sid: len(r.read(i)) for i, sid in enumerate(r.set_ids)}
    assert sizes["27"] == 10_000 and sizes["30"] == 9_995 and sizes["late-text"] == 5


def test_a_table_edited_in_place_is_indexed_again(work, ckpt):
    path = work / "edit.csv"
    table(IDS).to_csv(path, index=False)
    out = work / "pred-edit.csv"
    args = ["predict", "--checkpoint", ckpt, "--input", path, "--set-column", "patient", "--output", out]
    run(args)
    assert predicted_ids(out) == IDS
    st = path.stat()
    text = path.read_text().replace("\n007,", "\n008,")  # same size
    path.write_text(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    run(args)
    assert predicted_ids(out) == ["008", *IDS[1:]]


def test_cv_refuses_finished_folds_of_edited_data(work):
    path = work / "cv.csv"
    table([f"p{i}" for i in range(8)], seed=2).to_csv(path, index=False)
    out = work / "cv"
    args = ["cv", "--folds", "2", "--data", path, "--set-column", "patient", "--label-column", "label",
            "--out", out, *TINY]
    run(args)
    plan = json.loads((out / "cv-plan.json").read_text())
    assert list(plan["data_fingerprint"]) == [str(path)]
    done = (out / "fold-0" / "result.json").stat().st_mtime_ns
    st = path.stat()
    lines = path.read_text().splitlines(keepends=True)
    swapped = [ln.replace(",a,", ",b,") if ln.startswith("p0,") else ln for ln in lines]  # same size
    path.write_text("".join(swapped))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = cli(args, ok=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "finished folds of other data" in r.stderr and "cv.csv changed" in r.stderr and "--overwrite" in r.stderr
    assert (out / "fold-0" / "result.json").stat().st_mtime_ns == done  # nothing reused, nothing replaced


def test_readers_keep_ids_and_class_names_as_text(work, monkeypatch):
    """In Python: an .h5ad nullable-integer obs column, labels that a number parser would merge, and a feature
    column that turns to text in a later chunk (a clear error naming the file, column, row and value)."""
    from deepsets.data import DataError
    from deepsets.data.sources import open_source
    from deepsets.data.sources import table as table_source

    ad = pytest.importorskip("anndata")
    obs = pd.DataFrame({"patient": pd.array([7, 7, 12, 12], dtype="Int64")}, index=list("abcd"))
    adata = ad.AnnData(X=np.ones((4, 2), np.float32), obs=obs)
    adata.write_h5ad(work / "nullable.h5ad")
    assert open_source(work / "nullable.h5ad", set_column="patient").set_ids == ["7", "12"]
    df = table(IDS, rows_per_set=2).assign(label=np.repeat(["007", "7", "1", "1.0", "x", "x"], 2))
    df.to_csv(work / "labels.csv", index=False)
    r = open_source(work / "labels.csv", set_column="patient", label_column="label")
    assert r.set_ids == IDS and r.labels == ["007", "7", "1", "1.0", "x", "x"]
    df.assign(label=np.repeat(["0", "1", "2", "10", "2", "0"], 2)).to_csv(work / "ints.csv", index=False)
    assert open_source(work / "ints.csv", set_column="patient", label_column="label").labels == [0, 1, 2, 10, 2, 0]
    monkeypatch.setattr(table_source, "CHUNK_ROWS", 4)
    df["x"] = df["x"].astype(object)
    df.loc[9, "x"] = "1,5"
    df.to_csv(work / "late-text.csv", index=False)
    with pytest.raises(DataError, match=r"late-text.csv: feature column 'x' holds numbers in earlier rows but row 9 "
                                        r"holds '1,5'"):
        open_source(work / "late-text.csv", set_column="patient", features=["x", "y"])
