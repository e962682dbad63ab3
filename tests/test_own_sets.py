"""Your own sets: tables, AnnData, FCS folders and Python lists through the CLI, the API and the estimators.

Files are written by the real writer libraries (pandas, pyarrow, anndata, flowio); the same cells in every
format must give the same predictions.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deepsets.cli import main
from deepsets.data import DataError, load_task, sets_from_table

pd = pytest.importorskip("pandas")
ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "deepsets++", "--depth", "2", "--dim", "16", "--batch-size", "4", "--lr", "3e-3", "--no-progress"]


def cells(n_sets: int = 12, seed: int = 0):
    """A long table of cells: patient id, string label (from the cells), two channels, a text column."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_sets):
        shift = 1.5 if i % 2 else -1.5
        n = int(rng.integers(15, 30))
        x = rng.normal(size=(n, 2)).astype(np.float32) + np.float32(shift)
        label = "high" if shift > 0 else "low"
        for r in x:
            rows.append({"patient": f"p{i:02d}", "label": label, "FSC-A": r[0], "SSC-A": r[1], "note": "ok"})
    df = pd.DataFrame(rows)
    df["FSC-A"] = df["FSC-A"].astype(np.float32)
    df["SSC-A"] = df["SSC-A"].astype(np.float32)
    return df


def write_formats(df, folder: Path) -> dict:
    """The same cells as CSV, Parquet, .h5ad (categorical sample column, sparse X) and an FCS folder."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {"csv": folder / "cells.csv"}
    df.to_csv(out["csv"], index=False)
    pytest.importorskip("pyarrow")
    out["parquet"] = folder / "cells.parquet"
    df.to_parquet(out["parquet"])
    ad = pytest.importorskip("anndata")
    sp = pytest.importorskip("scipy.sparse")
    obs = pd.DataFrame({"patient": pd.Categorical(df["patient"]), "label": pd.Categorical(df["label"])})
    obs.index = [f"cell{i}" for i in range(len(df))]
    adata = ad.AnnData(X=sp.csr_matrix(df[["FSC-A", "SSC-A"]].to_numpy(np.float32)), obs=obs)
    adata.var_names = ["FSC-A", "SSC-A"]
    out["h5ad"] = folder / "cells.h5ad"
    adata.write_h5ad(out["h5ad"])
    flowio = pytest.importorskip("flowio")
    fcs = folder / "fcs"
    fcs.mkdir()
    labels = []
    for pid, g in df.groupby("patient", sort=False):
        with open(fcs / f"{pid}.fcs", "wb") as fh:
            flowio.create_fcs(fh, g[["FSC-A", "SSC-A"]].to_numpy(np.float32).ravel().tolist(), ["FSC-A", "SSC-A"])
        labels.append((pid, g["label"].iloc[0]))
    with open(fcs / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("set", "label"), *labels])
    out["fcs"] = fcs
    return out


def read_csv(path):
    with open(path, newline="") as fh:
        return {r["set"]: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    return write_formats(cells(), tmp_path_factory.mktemp("cells"))


@pytest.fixture(scope="module")
def trained(formats, tmp_path_factory):
    """A classifier trained through the CLI on the CSV table (string labels)."""
    out = tmp_path_factory.mktemp("run") / "clf"
    assert main(["train", "--data", str(formats["csv"]), "--set-column", "patient", "--label-column", "label",
                 "--epochs", "8", "--out", str(out), *TINY]) == 0
    return out / "checkpoints" / "best.ckpt"


def test_same_cells_in_every_format_give_the_same_predictions(formats, trained, tmp_path, capsys):
    preds = {}
    for kind, path in formats.items():
        extra = ["--set-column", "patient"] if kind in ("csv", "parquet", "h5ad") else []
        assert main(["predict", "--checkpoint", str(trained), "--input", str(path), "--output",
                     str(tmp_path / f"{kind}.csv"), *extra]) == 0
        preds[kind] = read_csv(tmp_path / f"{kind}.csv")
    ids = sorted(preds["csv"])
    assert ids == [f"p{i:02d}" for i in range(12)]
    header = list(next(iter(preds["csv"].values())))
    # string labels kept, one column per class; the small regime's mean pooling is size-consistent, so every set is
    # predicted whole and there is no spread column (tests/test_own_data_quality.py covers sum pooling's subsets)
    assert header == ["set", "predicted_class", "p_high", "p_low"]
    for kind, rows in preds.items():
        assert sorted(rows) == ids, kind
        for sid in ids:
            assert rows[sid]["predicted_class"] == preds["csv"][sid]["predicted_class"], (kind, sid)
            np.testing.assert_allclose(float(rows[sid]["p_high"]), float(preds["csv"][sid]["p_high"]), rtol=1e-4,
                                       atol=1e-6, err_msg=f"{kind} {sid}")
    # the model learned the labels (they follow the cells' shift)
    truth = {f"p{i:02d}": "high" if i % 2 else "low" for i in range(12)}
    acc = np.mean([preds["csv"][s]["predicted_class"] == truth[s] for s in ids])
    assert acc >= 0.75


def test_eval_on_every_labeled_format(formats, trained, capsys):
    results = {}
    for kind, path in formats.items():
        extra = ["--set-column", "patient", "--label-column", "label"] if kind != "fcs" else []
        capsys.readouterr()
        assert main(["eval", "--checkpoint", str(trained), "--data", str(path), *extra]) == 0
        results[kind] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    accs = {k: r["accuracy"] for k, r in results.items()}
    assert len(set(np.round(list(accs.values()), 6))) == 1, accs
    assert all(r["sets"] == 12 for r in results.values())


def test_cv_writes_cv_json(formats, tmp_path, capsys):
    out = tmp_path / "cv"
    assert main(["cv", "--folds", "3", "--data", str(formats["parquet"]), "--set-column", "patient",
                 "--label-column", "label", "--epochs", "2", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    cv = json.loads((out / "cv.json").read_text())
    assert cv["metric"] == "accuracy" and len(cv["folds"]) == 3 and cv["stratified"]
    assert cv["mean"] == pytest.approx(np.mean(cv["folds"])) and cv["se"] >= 0
    assert "accuracy" in printed and "+-" in printed and "target: classification" in printed
    # every set is tested exactly once
    assert sum(d["test_sets"] for d in cv["details"]) == 12
    # the same command continues (nothing retrained); other settings in the same folder are refused
    mtime = (out / "fold-0" / "result.json").stat().st_mtime
    argv = ["cv", "--data", str(formats["parquet"]), "--set-column", "patient", "--label-column", "label",
            "--epochs", "2", "--out", str(out), *TINY]
    assert main(["--debug", *argv[:1], "--folds", "3", *argv[1:]]) == 0
    assert (out / "fold-0" / "result.json").stat().st_mtime == mtime
    capsys.readouterr()
    assert main([*argv[:1], "--folds", "4", *argv[1:]]) == 1
    assert "other settings" in capsys.readouterr().err
    assert main([*argv[:1], "--folds", "4", "--overwrite", *argv[1:]]) == 0
    assert len(json.loads((out / "cv.json").read_text())["folds"]) == 4


def test_regression_target_and_headerless_table(tmp_path, capsys):
    df = cells(10, seed=1)
    df["mean_fsc"] = df.groupby("patient")["FSC-A"].transform("mean")
    path = tmp_path / "nohead.tsv"
    df[["patient", "mean_fsc", "FSC-A", "SSC-A"]].to_csv(path, sep="\t", index=False, header=False)
    out = tmp_path / "reg"
    assert main(["train", "--data", str(path), "--no-header", "--set-column", "0", "--label-column", "1",
                 "--target", "regression", "--epochs", "2", "--out", str(out), *TINY]) == 0
    assert main(["predict", "--checkpoint", str(out / "checkpoints" / "best.ckpt"), "--input", str(path),
                 "--output", str(tmp_path / "p.csv")]) == 0
    rows = read_csv(tmp_path / "p.csv")
    assert sorted(rows) == sorted(df["patient"].unique()) and "prediction" in next(iter(rows.values()))
    with pytest.raises(DataError, match="0-based column index"):
        load_task("regression", data=path, no_header=True, set_column="patient", label_column=1)


def test_h5ad_layer_without_x(tmp_path):
    ad = pytest.importorskip("anndata")
    df = cells(6)
    obs = pd.DataFrame({"sample": pd.Categorical(df["patient"]), "label": df["label"].to_numpy()},
                       index=[f"c{i}" for i in range(len(df))])
    adata = ad.AnnData(obs=obs, var=pd.DataFrame(index=["FSC-A", "SSC-A"]))
    adata.layers["counts"] = df[["FSC-A", "SSC-A"]].to_numpy(np.float32)
    path = tmp_path / "layer.h5ad"
    adata.write_h5ad(path)
    with pytest.raises(DataError, match="no X.*--layer.*counts"):
        load_task("classification", data=path, set_column="sample")
    ds = load_task("classification", data=path, set_column="sample", layer="counts", set_size=0)
    assert len(ds) == 6 and ds.classes == ["high", "low"]
    first = df[df["patient"] == ds.set_name(0)][["FSC-A", "SSC-A"]].to_numpy(np.float32)
    np.testing.assert_array_equal(ds[0][0].numpy(), first)
    with pytest.raises(DataError, match="layer 'nope' not found.*counts"):
        load_task("classification", data=path, set_column="sample", layer="nope")


def test_labels_file_for_tables_and_npy(tmp_path):
    df = cells(4)
    df.drop(columns=["label"]).to_csv(tmp_path / "c.csv", index=False)
    (tmp_path / "labels.csv").write_text("set,label\np00,a\np01,b\np02,a\np03,b\n")
    ds = load_task("classification", data=tmp_path / "c.csv", set_column="patient", labels=tmp_path / "labels.csv")
    assert [ds.set_name(i) for i in range(4)] == ["p00", "p01", "p02", "p03"] and ds.classes == ["a", "b"]
    assert [int(ds[i][1]) for i in range(4)] == [0, 1, 0, 1]
    (tmp_path / "short.csv").write_text("set,label\np00,a\np01,b\n")
    with pytest.raises(DataError, match=r"short.csv: no label for 2 set\(s\): \['p02', 'p03'\]"):
        load_task("classification", data=tmp_path / "c.csv", set_column="patient", labels=tmp_path / "short.csv")
    np.save(tmp_path / "s.npy", np.ones((2, 3, 2), np.float32))
    (tmp_path / "nl.csv").write_text("set,label\n0,1.5\n1,2.5\n")
    ds = load_task("regression", data=tmp_path / "s.npy", labels=tmp_path / "nl.csv")
    assert ds[1][1].tolist() == [2.5]


@pytest.mark.parametrize("case", ["missing_column", "label_differs", "non_numeric", "nan", "empty_list",
                                  "missing_feature", "stray_text", "one_class", "no_header_flag"])
def test_bad_input_gets_one_clear_line(tmp_path, case, capsys):
    df = cells(4)
    path = tmp_path / "bad.csv"
    args = ["--set-column", "patient", "--label-column", "label"]
    if case == "missing_column":
        args = ["--set-column", "sample", "--label-column", "label"]
        expect = ["bad.csv", "'sample' not found", "'patient'", "'FSC-A'"]
    elif case == "label_differs":
        df.loc[3, "label"] = "high" if df.loc[0, "label"] == "low" else "low"
        expect = ["bad.csv", "differs within set 'p00'"]
    elif case == "non_numeric":
        df["FSC-A"] = df["FSC-A"].astype(object)
        df.loc[5, "FSC-A"] = "n/a?"
        args += ["--features", "FSC-A", "SSC-A"]
        expect = ["bad.csv", "'FSC-A' is not numeric", "row 5", "n/a?"]
    elif case == "nan":
        df.loc[7, "SSC-A"] = np.inf
        expect = ["bad.csv", "(p00) of the", "split holds a NaN", "row 7 of the file", "'SSC-A'", "inf"]
    elif case == "missing_feature":
        args += ["--features", "FSC-A", "CD45"]
        expect = ["bad.csv", "'CD45' not found", "'SSC-A'"]
    elif case == "stray_text":  # default features: a column of numbers with one text value is not dropped silently
        df["FSC-A"] = df["FSC-A"].astype(object)
        df.loc[9, "FSC-A"] = "n/a?"
        expect = ["bad.csv", "'FSC-A' holds numbers but row 9", "n/a?"]
    elif case == "one_class":
        df["label"] = "high"
        expect = ["bad.csv", "'high'", "at least two classes"]
    elif case == "no_header_flag":
        df = df[["patient", "FSC-A", "SSC-A"]].assign(patient=np.arange(len(df)) // 20, label=0.5)
        args = ["--set-column", "0", "--label-column", "3"]
        expect = ["bad.csv", "looks like data", "--no-header"]
    else:
        expect = ["set 1 of the train split is empty"]
    df.to_csv(path, index=False, header=case != "no_header_flag")
    if case == "empty_list":
        from deepsets import SetClassifier

        with pytest.raises(DataError) as e:
            SetClassifier(epochs=1).fit([np.ones((3, 2)), np.zeros((0, 2)), np.ones((2, 2))], ["a", "b", "a"])
        msg = str(e.value)
    else:
        code = main(["train", "--data", str(path), *args, "--epochs", "1", "--out", str(tmp_path / "o"), *TINY])
        assert code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 2 and err[1].startswith("(run with --debug")
        msg = err[0]
    for e in expect:
        assert e in msg, (e, msg)


def test_sets_from_table_dataframe_and_file(tmp_path):
    df = cells(3)
    sets, labels, ids = sets_from_table(df, "patient", "label")
    assert ids == ["p00", "p01", "p02"] and labels == ["low", "high", "low"]
    assert [s.shape[1] for s in sets] == [2, 2, 2]  # the text column is not a feature
    df.to_csv(tmp_path / "t.csv", index=False)
    s2, l2, i2 = sets_from_table(tmp_path / "t.csv", "patient", "label", features=["FSC-A", "SSC-A"])
    assert i2 == ids and l2 == labels and all(np.array_equal(a, b) for a, b in zip(sets, s2))
    with pytest.raises(DataError, match="'nope' not found"):
        sets_from_table(df, "nope")


# ------------------------------------------------------------------------------------------ estimators
def spread_sets(n: int, seed: int):
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.3, 3.0, n)
    X = [rng.normal(size=(int(rng.integers(10, 30)), 2)).astype(np.float32) * s for s in scales]
    return X, scales


def test_set_classifier_cross_val_score_and_grid_search():
    sk = pytest.importorskip("sklearn.model_selection")
    from deepsets import SetClassifier

    X, scales = spread_sets(36, 0)
    y = np.where(scales > np.median(scales), "wide", "narrow")
    clf = SetClassifier(depth=1, dim=8, epochs=4, batch_size=8, lr=3e-3)
    scores = sk.cross_val_score(clf, X, y, cv=3)
    assert scores.shape == (3,) and np.all((0 <= scores) & (scores <= 1))
    grid = sk.GridSearchCV(SetClassifier(dim=8, epochs=2, batch_size=8), {"depth": [1, 2]}, cv=2).fit(X, y)
    assert grid.best_params_["depth"] in (1, 2)
    assert set(grid.predict(X[:4])) <= {"wide", "narrow"}
    assert list(grid.best_estimator_.classes_) == ["narrow", "wide"]
    proba = grid.predict_proba(X[:4])
    assert proba.shape == (4, 2) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert clf.get_params()["dim"] == 8 and clf.set_params(dim=4).dim == 4


def test_set_regressor_learns_a_set_statistic():
    from deepsets import SetRegressor

    X, scales = spread_sets(240, 1)
    y = np.array([x.std() for x in X])
    reg = SetRegressor(model="deepsets++", depth=2, dim=32, epochs=25, batch_size=16, lr=3e-3, seed=0)
    reg.fit(X[:200], y[:200])
    pred = reg.predict(X[200:])
    mse, baseline = float(np.mean((pred - y[200:]) ** 2)), float(np.var(y[200:]))
    assert mse < 0.5 * baseline, (mse, baseline)
    assert reg.score(X[200:], y[200:]) > 0.5


# ------------------------------------------------------------------------------------------ a task of one's own
def test_task_defined_in_a_test_file_trains_through_the_cli(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    task = f"{ROOT / 'tests' / 'example_task.py'}:TASK"
    run = tmp_path / "points"
    r = subprocess.run([sys.executable, "-m", "deepsets.cli", "train", "--task", task, "--out", str(run), *TINY],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "deepsets.cli", "eval", "--checkpoint",  # the task is code: named again
                        str(run / "checkpoints" / "best.ckpt"), "--task", task], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["sets"] == 48 and np.isfinite(result["mse"])


def test_paper_configs_ship_inside_the_package():
    from deepsets.train.reproduce import cell_files, config_root

    root = config_root()
    assert root.is_relative_to(Path(__import__("deepsets").__file__).parent)
    assert len(cell_files("table1")) == 48 and len(cell_files("table2")) == 72
    text = (ROOT / "pyproject.toml").read_text()
    assert '"configs/paper/*/*.yaml"' in text


def test_target_inferred_and_stated(tmp_path, capsys):
    df = cells(6)
    df["y"] = df.groupby("patient")["FSC-A"].transform("mean")
    df.to_csv(tmp_path / "c.csv", index=False)
    assert main(["train", "--data", str(tmp_path / "c.csv"), "--set-column", "patient", "--label-column", "y",
                 "--features", "FSC-A", "SSC-A", "--epochs", "1", "--out", str(tmp_path / "r"), *TINY]) == 0
    assert "target: regression" in capsys.readouterr().out
    with pytest.raises(ValueError, match="does not match"):
        main_raise(["train", "--task", "anemia", "--target", "regression", "--out", str(tmp_path / "x")])


def main_raise(argv):
    return main([*argv, "--debug"])


def test_string_labels_with_torch_targets():
    from deepsets.data import ListReader, SourceDataset

    ds = SourceDataset(ListReader([np.ones((2, 1))] * 3, labels=[True, False, True]), target=None)
    assert ds.classes == [False, True] and ds.target.name == "classification"
    assert [int(ds[i][1]) for i in range(3)] == [1, 0, 1] and ds[0][1].dtype == torch.int64


@pytest.mark.parametrize("kind", ["csv", "parquet", "h5ad", "fcs"])
def test_every_format_trains_through_the_cli(formats, kind, tmp_path):
    extra = ["--set-column", "patient", "--label-column", "label"] if kind != "fcs" else []
    out = tmp_path / kind
    assert main(["train", "--data", str(formats[kind]), *extra, "--epochs", "1", "--out", str(out), *TINY]) == 0
    from deepsets.train import load_checkpoint

    info = load_checkpoint(out / "checkpoints" / "best.ckpt").hparams["data_info"]
    assert info["classes"] == ["high", "low"] and info["features"] == ["FSC-A", "SSC-A"] and info["sets"] == 12
