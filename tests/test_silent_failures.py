"""Inputs that used to crash, or to pass silently with a wrong result, now stop with one clear line.

Every case runs the real command (``python -m deepsets.cli``) on files written by the real writer libraries
(anndata, pandas, numpy): exit code 1, a message naming the file and the problem, no traceback, and no run folder
or output file left that looks like a result.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "deepsets.cli"]
TINY = ["--model", "deepsets++", "--depth", "2", "--dim", "16", "--max-steps", "4", "--batch-size", "4",
        "--no-progress", "--ensemble", "1"]


def run(*argv, cwd=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(CLI + [str(a) for a in argv], capture_output=True, text=True, env=env, timeout=300,
                          cwd=cwd)


def one_clear_line(r, *words):
    assert r.returncode == 1, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    err = [line for line in r.stderr.strip().splitlines() if "error:" in line]
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    for w in words:
        assert w in err[0], (w, err[0])


def cells(n_sets=12, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_sets):
        for _ in range(int(rng.integers(5, 12))):
            rows.append({"set": f"p{s}", "CD3": rng.normal() + s % 2, "CD19": rng.normal(), "label": s % 2})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def h5ad_run(tmp_path_factory):
    """A model trained on an .h5ad (written by anndata) with --channels."""
    ad = pytest.importorskip("anndata")
    root = tmp_path_factory.mktemp("h5ad-run")
    df = cells()
    a = ad.AnnData(X=df[["CD3", "CD19"]].to_numpy(np.float32),
                   obs=pd.DataFrame({"sample": df["set"].values, "label": df["label"].values},
                                    index=[f"c{i}" for i in range(len(df))]))
    a.var_names = ["CD3", "CD19"]
    a.write_h5ad(root / "cells.h5ad")
    r = run("train", "--data", root / "cells.h5ad", "--set-column", "sample", "--label-column", "label",
            "--channels", "CD3", "CD19", "--out", root / "run", *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    return root, root / "run" / "checkpoints" / "best.ckpt", a


def test_h5ad_model_predicts_npy_of_the_same_features(h5ad_run, tmp_path):
    """The run's channel names do not stop a source without names: .npy is matched by feature count."""
    root, ckpt, a = h5ad_run
    sets = np.stack([a.X[:6], a.X[6:12]]).astype(np.float32)
    np.save(tmp_path / "sets.npy", sets)
    r = run("predict", "--checkpoint", ckpt, "--input", tmp_path / "sets.npy", "--output", tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr[-2000:]
    out = pd.read_csv(tmp_path / "p.csv")
    assert len(out) == 2
    np.save(tmp_path / "three.npy", np.zeros((2, 4, 3), np.float32))  # the count still has to match
    one_clear_line(run("predict", "--checkpoint", ckpt, "--input", tmp_path / "three.npy"), "three.npy", "3", "2")


@pytest.mark.parametrize("kind", ["complex", "text"])
def test_npy_that_is_not_real_numbers_is_refused(h5ad_run, tmp_path, kind):
    _, ckpt, _ = h5ad_run
    arr = np.ones((2, 4, 2)) + 1j if kind == "complex" else np.full((2, 4, 2), "a")
    np.save(tmp_path / f"{kind}.npy", arr)
    out = tmp_path / "p.csv"
    r = run("predict", "--checkpoint", ckpt, "--input", tmp_path / f"{kind}.npy", "--output", out)
    one_clear_line(r, f"{kind}.npy", "complex" if kind == "complex" else "not numbers")
    assert not out.exists()


def test_h5ad_with_no_cells(h5ad_run, tmp_path):
    """0 cells: named, for training and for prediction (which used to write a header-only CSV with exit 0)."""
    _, ckpt, a = h5ad_run
    a[:0].copy().write_h5ad(tmp_path / "empty.h5ad")
    r = run("train", "--data", tmp_path / "empty.h5ad", "--set-column", "sample", "--label-column", "label",
            "--out", tmp_path / "run", *TINY)
    one_clear_line(r, "empty.h5ad", "no sets")
    assert not (tmp_path / "run").exists()  # a run that never started leaves no folder
    r = run("predict", "--checkpoint", ckpt, "--input", tmp_path / "empty.h5ad", "--output", tmp_path / "p.csv")
    one_clear_line(r, "empty.h5ad", "no sets")
    assert not (tmp_path / "p.csv").exists()


def test_one_set_for_regression(tmp_path):
    df = cells(n_sets=1)
    df.to_csv(tmp_path / "one.csv", index=False)
    pd.DataFrame({"set": ["p0"], "label": [1.5]}).to_csv(tmp_path / "labels.csv", index=False)
    r = run("train", "--data", tmp_path / "one.csv", "--set-column", "set", "--labels", tmp_path / "labels.csv",
            "--features", "CD3", "CD19", "--target", "regression", "--out", tmp_path / "run", *TINY)
    one_clear_line(r, "one.csv", "1 set", "at least 2")
    assert not (tmp_path / "run").exists()


@pytest.fixture()
def table_run(tmp_path):
    cells().to_csv(tmp_path / "cells.csv", index=False)
    r = run("train", "--data", tmp_path / "cells.csv", "--set-column", "set", "--label-column", "label",
            "--out", tmp_path / "run", *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    return tmp_path


def test_resume_with_a_foreign_checkpoint(table_run):
    root = table_run
    r = run("train", "--data", root / "cells.csv", "--set-column", "set", "--label-column", "label",
            "--out", root / "other", *[("settransformer++" if a == "deepsets++" else a) for a in TINY])
    assert r.returncode == 0, r.stderr[-2000:]
    last = root / "run" / "checkpoints" / "last.ckpt"
    last.write_bytes((root / "other" / "checkpoints" / "last.ckpt").read_bytes())
    r = run("train", "--out", root / "run", "--resume", "--max-steps", "8")
    one_clear_line(r, "last.ckpt", "does not match", "config.yaml", "settransformer++")


def test_overwrite_never_deletes_through_a_link(table_run):
    root = table_run
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.ckpt").write_text("the user's")
    run_dir = root / "run"
    import shutil

    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    before = sorted(p.name for p in run_dir.iterdir())
    r = run("train", "--data", root / "cells.csv", "--set-column", "set", "--label-column", "label",
            "--out", run_dir, "--overwrite", *TINY)
    one_clear_line(r, "checkpoints", "symbolic link")
    assert (elsewhere / "keep.ckpt").read_text() == "the user's"
    assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing deleted first


@pytest.mark.parametrize("case", ["header-only-parquet", "huge-integer-column"])
def test_tables_that_used_to_crash(tmp_path, case):
    if case == "header-only-parquet":
        pytest.importorskip("pyarrow")
        path = tmp_path / "cells.parquet"
        pd.DataFrame({"set": pd.Series([], dtype=str), "CD3": pd.Series([], dtype=float)}).to_parquet(path)
        words = ("cells.parquet", "no rows")
    else:
        path = tmp_path / "cells.csv"
        df = cells()
        df["barcode"] = 99999999999999999999999  # beyond int64: pandas keeps Python ints
        df.to_csv(path, index=False)
        words = ("cells.csv", "'barcode'", "too large")
    r = run("train", "--data", path, "--set-column", "set", "--out", tmp_path / "run", *TINY)
    one_clear_line(r, *words)
    assert not (tmp_path / "run").exists()
