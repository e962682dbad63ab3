"""Metrics of own-data runs: ``--metric`` picks best.ckpt (and ``--patience`` stops early), ``eval`` and ``cv``
report every metric of the target, two-valued labels are classes, and FCS/.h5ad channels that are not
measurements (time, event length, beads) are left out unless named.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from deepsets.cli import main
from deepsets.data import load_task
from deepsets.data.sources import is_non_measurement, measurement_channels
from deepsets.data.targets import explain_target, infer_target
from deepsets.train.callbacks import METRIC_COLUMNS, read_metrics

pd = pytest.importorskip("pandas")
TINY = ["--model", "deepsets++", "--depth", "2", "--dim", "16", "--batch-size", "4", "--lr", "3e-3", "--no-progress"]


def table(path: Path, n_sets: int = 20, seed: int = 0, regression: bool = False) -> Path:
    """Sets of two features shifted by their class (labels 0/1, numbers) or by a real label."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_sets):
        y = float(rng.normal()) if regression else i % 2
        shift = y if regression else (1.0 if y else -1.0)
        for r in rng.normal(size=(int(rng.integers(15, 30)), 2)) + shift:
            rows.append({"patient": f"p{i:02d}", "y": y, "a": r[0], "b": r[1]})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def callback_state(ckpt: Path, kind: str) -> dict:
    states = torch.load(ckpt, map_location="cpu", weights_only=True)["callbacks"]
    return next(v for k, v in states.items() if k.startswith(kind) and "'monitor': None" not in k)


# ---------------------------------------------------------------------------------------------------- targets
@pytest.mark.parametrize("labels,target,why", [
    ([0, 1, 1, 0], "classification", "two distinct values"),
    ([True, False, True], "classification", "booleans"),
    (np.array([1.0, 2.0, 2.0, 1.0]), "classification", "two distinct values"),
    (["1.0", "2", "1", "2.0"], "classification", "two distinct values"),  # numbers as text: two values
    (["sick", "healthy", "sick"], "classification", "not all numbers"),
    (["a", "b", "c"], "classification", "not all numbers"),
    (np.array([0.5, 1.5, 2.5]), "regression", "numbers"),
    ([1, 2, 3, 2], "regression", "numbers"),
    (np.array([[1.0, 2.0], [2.0, 1.0]]), "regression", "rows of numbers"),  # two outputs per set
    ([3.0, 3.0, 3.0], "regression", "numbers"),  # one value: not two classes
    (np.array([0.0, 1.0, np.nan, 1.0]), "classification", "two distinct values"),  # a missing label: no value
])
def test_two_distinct_values_are_classes(labels, target, why):
    assert infer_target(labels) == target
    assert explain_target(labels) == (target, f"the labels {'are' if why != 'two distinct values' else 'have'} {why}")


# ---------------------------------------------------------------------------------------------------- train
@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    """A run on 0/1 labels without --target, best epoch by ROC AUC, stopping after 2 validations without gain."""
    root = tmp_path_factory.mktemp("sel")
    data = table(root / "c.csv")
    out = root / "run"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["train", "--data", str(data), "--set-column", "patient", "--label-column", "y", "--metric",
                     "roc_auc", "--patience", "2", "--epochs", "15", "--val-fraction", "0.4", "--out", str(out),
                     *TINY])
    assert code == 0
    return data, out, buf.getvalue()


def test_two_valued_numbers_train_a_classifier_and_say_why(selected):
    _, out, printed = selected
    assert "target: classification (the labels have two distinct values; pass --target to choose)" in printed
    ckpt = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["target"] == "classification"
    assert ckpt["hyper_parameters"]["data_info"]["classes"] == [0, 1]


def test_metric_picks_best_epoch_and_patience_stops(selected):
    _, out, _ = selected
    with open(out / "metrics.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header == [*METRIC_COLUMNS, "val_roc_auc"]  # the usual columns, then the selected metric
    rows = read_metrics(out / "metrics.csv")
    auc = np.array([r["val_roc_auc"] for r in rows])
    assert np.isfinite(auc).all()
    first_best = int(np.argmax(auc))  # ties: the first epoch reaching the best value is kept
    assert len(rows) < 15, "early stopping should have ended the run"
    assert len(rows) - 1 - first_best == 2  # stopped after --patience validations without improvement
    best = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["epoch"] == rows[first_best]["epoch"]
    state = callback_state(out / "checkpoints" / "best.ckpt", "ModelCheckpoint")
    assert state["monitor"] == "val_select" and float(state["best_model_score"]) == pytest.approx(-auc.max())
    assert callback_state(out / "checkpoints" / "last.ckpt", "EarlyStopping")["patience"] == 2
    # last.ckpt is the end of the last epoch, even when that epoch was not the best
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == rows[-1]["epoch"]


def test_eval_reports_every_classification_metric(selected, capsys):
    data, out, _ = selected
    assert main(["eval", "--checkpoint", str(out / "checkpoints" / "best.ckpt"), "--data", str(data)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(printed.strip().splitlines()[-1])
    for key in ("sets", "loss", "accuracy", "balanced_accuracy", "roc_auc", "log_loss"):
        assert key in result and f"\n{key} " in "\n" + printed, key
    assert result["log_loss"] == pytest.approx(result["loss"], rel=1e-4)  # the cross-entropy, in float64
    assert 0 <= result["roc_auc"] <= 1 and "mse" not in result


def test_metric_of_another_target_is_refused_before_anything_is_written(tmp_path, capsys):
    data = table(tmp_path / "c.csv", n_sets=6)
    assert main(["train", "--data", str(data), "--set-column", "patient", "--label-column", "y", "--metric", "r2",
                 "--out", str(tmp_path / "r"), *TINY]) == 1
    err = capsys.readouterr().err
    assert "--metric r2: not a metric of classification" in err and "roc_auc" in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit):  # not a metric at all: argparse lists the choices
        main(["train", "--metric", "auc", "--out", str(tmp_path / "r")])


def test_step_budget_final_validation_uses_the_metric(tmp_path, capsys):
    """A step budget ending mid-epoch validates once more; best.ckpt follows --metric r2 there too; eval reports
    every regression metric."""
    data = table(tmp_path / "r.csv", regression=True)
    out = tmp_path / "reg"
    assert main(["train", "--data", str(data), "--set-column", "patient", "--label-column", "y", "--metric", "r2",
                 "--max-steps", "5", "--epochs", "10", "--val-fraction", "0.4", "--out", str(out), *TINY]) == 0
    assert "target: regression" in capsys.readouterr().out
    rows = read_metrics(out / "metrics.csv")
    assert len(rows) == 2 and rows[-1]["step"] == 5  # epoch 0 (3 steps), then the final 2 steps
    r2 = np.array([r["val_r2"] for r in rows])
    state = callback_state(out / "checkpoints" / "last.ckpt", "ModelCheckpoint")
    assert state["monitor"] == "val_select" and float(state["best_model_score"]) == pytest.approx(-r2.max())
    best = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["global_step"] == rows[int(np.argmax(r2))]["step"]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "checkpoints" / "best.ckpt"), "--data", str(data)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("mse", "mae", "r2", "label_variance"):
        assert math.isfinite(result[key]), key
    assert "roc_auc" not in result


# ---------------------------------------------------------------------------------------------------- cv
def test_cv_reports_every_metric_and_the_sets_of_each_fold(tmp_path, capsys):
    data = table(tmp_path / "c.csv", n_sets=12)
    out = tmp_path / "cv"
    assert main(["cv", "--folds", "3", "--data", str(data), "--set-column", "patient", "--label-column", "y",
                 "--metric", "balanced_accuracy", "--epochs", "2", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    cv = json.loads((out / "cv.json").read_text())
    assert cv["metric"] == "balanced_accuracy"
    assert set(cv["metrics"]) == {"accuracy", "balanced_accuracy", "roc_auc", "log_loss"}
    chosen = cv["metrics"]["balanced_accuracy"]
    assert chosen == {"folds": cv["folds"], "mean": cv["mean"], "se": cv["se"]}
    for name, m in cv["metrics"].items():
        assert len(m["folds"]) == 3 and m["folds"] == [d[name] for d in cv["details"]], name
        assert m["mean"] == pytest.approx(np.mean(m["folds"]))
    # fold_sets: the test sets of each fold, by id; together every set exactly once
    ids = [f"p{i:02d}" for i in range(12)]
    assert len(cv["fold_sets"]) == 3 and sorted(s for f in cv["fold_sets"] for s in f) == ids
    assert [len(f) for f in cv["fold_sets"]] == [d["test_sets"] for d in cv["details"]]
    assert "balanced_accuracy" in printed and "+-" in printed
    assert "other metrics: accuracy" in printed and "roc_auc" in printed and "log_loss" in printed
    # without --metric: the target's default metric
    out2 = tmp_path / "cv2"
    assert main(["cv", "--folds", "2", "--data", str(data), "--set-column", "patient", "--label-column", "y",
                 "--epochs", "1", "--out", str(out2), *TINY]) == 0
    cv2 = json.loads((out2 / "cv.json").read_text())
    assert cv2["metric"] == "accuracy" and cv2["metrics"]["accuracy"]["folds"] == cv2["folds"]


# ---------------------------------------------------------------------------------------------------- channels
@pytest.mark.parametrize("name", ["Time", "TIME", "time", "Event_length", "Event length", "EventLength",
                                  "Event_count", "Event #", "Event", "event number", "Cell_length", "Beads",
                                  "Bead1", "140Ce_Beads", "EQ_beads", "Barcode", "barcode_3"])
def test_not_measurements(name):
    assert is_non_measurement(name)


@pytest.mark.parametrize("name", ["FSC-A", "SSC-H", "CD3", "Ce140Di", "BC1", "102Pd_BC1", "Timestamp_gate",
                                  "CD45RA", "FL1-A", "Eventual", "beadle", ""])
def test_measurements_are_kept(name):
    assert not is_non_measurement(name)


def test_measurement_channels_keep_everything_when_nothing_else_is_left():
    assert measurement_channels(["Time", "Event_length"], "f.fcs") == ([0, 1], [])
    assert measurement_channels(["Ce140Di", "CD3", "Time"], "f.fcs", alt_names=["140Ce_Beads", "", ""]) == \
        ([1], ["Ce140Di", "Time"])


CHANNELS = ["FSC-A", "Time", "SSC-A", "Event_length", "Bead1"]


def fcs_folder(folder: Path, n_sets: int = 8, channels=CHANNELS, seed: int = 0) -> Path:
    flowio = pytest.importorskip("flowio")
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    labels = []
    for i in range(n_sets):
        n = int(rng.integers(20, 40))
        shift = 1.5 if i % 2 else -1.5
        cols = {"FSC-A": rng.normal(size=n) + shift, "SSC-A": rng.normal(size=n) + shift,
                "Time": np.arange(n) * 10.0, "Event_length": rng.integers(10, 60, n), "Bead1": rng.normal(size=n)}
        ev = np.column_stack([cols[c] for c in channels]).astype(np.float32)
        with open(folder / f"s{i}.fcs", "wb") as fh:
            flowio.create_fcs(fh, ev.ravel().tolist(), list(channels))
        labels.append((f"s{i}", "high" if i % 2 else "low"))
    with open(folder / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("set", "label"), *labels])
    return folder


def test_fcs_channels_that_are_not_measurements_are_left_out(tmp_path):
    folder = fcs_folder(tmp_path / "fcs", n_sets=3)
    ds = load_task("classification", data=folder, set_size=0)
    assert ds.feature_names == ["FSC-A", "SSC-A"] and ds.in_dim == 2
    assert ds.left_out == ["Time", "Event_length", "Bead1"]
    assert ds[0][0].shape[1] == 2
    named = load_task("classification", data=folder, set_size=0, channels=["FSC-A", "Time"])
    assert named.feature_names == ["FSC-A", "Time"] and named.left_out == []


def test_h5ad_vars_that_are_not_measurements_are_left_out(tmp_path):
    ad = pytest.importorskip("anndata")
    obs = pd.DataFrame({"sample": pd.Categorical(["a", "a", "b", "b"]), "label": ["x", "x", "y", "y"]},
                       index=[f"c{i}" for i in range(4)])
    adata = ad.AnnData(X=np.arange(12, dtype=np.float32).reshape(4, 3), obs=obs)
    adata.var_names = ["CD3", "Time", "CD4"]
    adata.write_h5ad(tmp_path / "x.h5ad")
    ds = load_task("classification", data=tmp_path / "x.h5ad", set_column="sample", set_size=0)
    assert ds.feature_names == ["CD3", "CD4"] and ds.left_out == ["Time"]
    np.testing.assert_array_equal(ds[0][0].numpy(), [[0, 2], [3, 5]])


def test_fcs_run_says_what_it_left_out_and_predicts_by_name(tmp_path, capsys):
    folder = fcs_folder(tmp_path / "fcs")
    out = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--epochs", "1", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "features (2): FSC-A, SSC-A" in printed
    assert "left out 3 channels that are not a measurement: Time, Event_length, Bead1" in printed
    ckpt = out / "checkpoints" / "best.ckpt"
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(folder), "--output",
                 str(tmp_path / "p.csv")]) == 0
    # the same cells with the channels in another order and no time channel: the same predictions
    other = fcs_folder(tmp_path / "other", channels=["Bead1", "SSC-A", "FSC-A"])
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(other), "--output",
                 str(tmp_path / "q.csv")]) == 0
    p, q = (pd.read_csv(tmp_path / f).set_index("set") for f in ("p.csv", "q.csv"))
    assert list(p.index) == [f"s{i}" for i in range(8)]
    np.testing.assert_allclose(p["p_high"], q.loc[p.index, "p_high"], rtol=1e-4, atol=1e-6)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(other)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["sets"] == 8
    shutil.rmtree(other)
