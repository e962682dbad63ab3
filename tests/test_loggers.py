"""`deepsets train --logger csv|tensorboard|mlflow|wandb`: Lightning's loggers get the rows of metrics.csv."""
import glob
import json

import pytest

from deepsets.cli import main
from deepsets.train.callbacks import read_metrics

TINY = ["train", "--task", "normal-var", "--depth", "2", "--dim", "16", "--epochs", "2", "--n-train", "40",
        "--n-test", "8", "--set-size", "16", "--batch-size", "8", "--no-progress"]


def _train(tmp_path, *flags):
    out = tmp_path / "run"
    assert main([*TINY, "--out", str(out), *flags]) == 0
    rows = read_metrics(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == [0, 1]
    return out, rows


def test_tensorboard_event_files_hold_the_epoch_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, rows = _train(tmp_path, "--logger", "tensorboard")
    (events,) = glob.glob(str(out / "tensorboard" / "version_0" / "events.out.tfevents.*"))
    acc = EventAccumulator(events)
    acc.Reload()
    for key in ("train_loss", "train_metric", "val_loss", "val_metric"):
        logged = [(e.step, e.value) for e in acc.Scalars(key)]
        assert logged == [(r["step"], pytest.approx(r[key])) for r in rows], key


def test_mlflow_records_the_metrics_in_a_sqlite_tracking_store(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'tracking.db'}"
    out, rows = _train(tmp_path, "--logger", "mlflow", "--logger-uri", uri)
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("deepsets").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["model"] == "deepsets++"
    for key in ("train_loss", "val_loss", "val_metric"):
        history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        assert history == [(r["step"], pytest.approx(r[key])) for r in rows], key


def test_wandb_offline_run_holds_the_metrics(tmp_path):
    """Through the command (a process of its own, as a user runs it: wandb's writer finishes when it exits)."""
    pytest.importorskip("wandb")
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src"
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true",
               PYTHONPATH=str(src) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "deepsets.cli", *TINY, "--out", str(out), "--logger", "wandb",
                           "--logger-uri", "test-project"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = read_metrics(out / "metrics.csv")
    (log,) = glob.glob(str(out / "wandb" / "offline-run-*" / "*.wandb"))
    raw = Path(log).read_bytes()  # the run's record log: the history rows' values are stored as JSON text
    for r in rows:
        for key in ("train_loss", "val_loss"):
            assert key.encode() in raw and json.dumps(r[key]).encode() in raw


def test_csv_logger_and_a_missing_package_is_named(tmp_path, monkeypatch):
    out, rows = _train(tmp_path, "--logger", "csv")
    logged = [r for r in read_metrics_loose(out / "logs" / "version_0" / "metrics.csv") if r.get("val_loss")]
    assert [float(r["val_loss"]) for r in logged] == pytest.approx([r["val_loss"] for r in rows])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    from deepsets.train.loggers import make_logger

    with pytest.raises(ImportError, match=r"--logger mlflow needs the mlflow package: pip install 'deepsets\[mlflow\]'"):
        make_logger("mlflow", None, tmp_path)


def read_metrics_loose(path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))
