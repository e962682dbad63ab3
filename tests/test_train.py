"""Training, evaluation, prediction, resume, DDP and every shipped config (deepsets.train, the CLI)."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from deepsets.train import TrainConfig, evaluate, train
from deepsets.train.callbacks import METRIC_COLUMNS, read_metrics
from deepsets.train.reproduce import budget_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
CLI = [sys.executable, "-m", "deepsets.cli"]


def tiny(**kw) -> TrainConfig:
    base = dict(task="normal-var", model="deepsets++", depth=2, dim=16, epochs=2, batch_size=8, set_size=16,
                progress=False, task_options={"n_train": 40, "n_test": 16})
    base.update(kw)
    return TrainConfig(**base)


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def test_configs_exist_for_every_table_cell():
    t1 = list((ROOT / "configs/paper/table1").glob("*.yaml"))
    t2 = list((ROOT / "configs/paper/table2").glob("*.yaml"))
    assert len(t1) == 12 * 4 and len(t2) == 12 * 6


def test_table2_baseline_configs_use_the_papers_norms():
    import yaml

    norms = {}
    for path in (ROOT / "configs/paper/table2").glob("*.yaml"):
        cfg = yaml.safe_load(path.read_text())
        norms.setdefault(cfg["model"], set()).add(cfg.get("norm"))
    # Original Deep Sets: no norm; original Set Transformer: layer norm; the ++ models: the presets' set norm.
    assert norms == {"deepsets": {"none"}, "settransformer": {"layer"}, "deepsets++": {None},
                     "settransformer++": {None}}


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in CONFIGS])
def test_every_shipped_config_trains_one_step(path, tmp_path):
    cfg = budget_config(path, "smoke", 0, tmp_path)
    cfg.max_steps, cfg.epochs = 1, 1
    summary = train(cfg)
    rows = read_metrics(Path(cfg.out) / "metrics.csv")
    assert summary["steps"] == 1 and len(rows) == 1
    assert np.isfinite(rows[0]["train_loss"]) and np.isfinite(rows[0]["val_loss"])
    saved = TrainConfig.load(Path(cfg.out) / "config.yaml")
    assert saved.model == cfg.model and saved.depth == cfg.depth and saved.paper == cfg.paper


def test_train_writes_run_files_and_learns(tmp_path):
    cfg = tiny(out=str(tmp_path / "run"), epochs=4, lr=3e-3)
    train(cfg)
    run = Path(cfg.out)
    for name in ("config.yaml", "metrics.csv", "learning_curve.png", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    with open(run / "metrics.csv") as f:
        header = next(csv.reader(f))
    assert header == METRIC_COLUMNS
    rows = read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    result = evaluate(run / "checkpoints" / "best.ckpt")
    assert result["sets"] == 16 and np.isfinite(result["mse"]) and result["mse"] == pytest.approx(result["loss"])


def test_existing_run_folder_is_never_overwritten_silently(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds files.*--resume.*--overwrite"):
        train(tiny(out=str(out)))
    train(tiny(out=str(out), epochs=1), overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are replaced
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        train(tiny(out=str(tmp_path / "empty")), resume=True)


def test_eval_and_predict_cli(tmp_path):
    cfg = tiny(out=str(tmp_path / "run"), epochs=1)
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    r = subprocess.run(CLI + ["eval", "--checkpoint", str(ckpt), "--json", str(tmp_path / "e.json")],
                       capture_output=True, text=True, env=env())
    assert r.returncode == 0, r.stderr
    assert "mse" in r.stdout and json.loads((tmp_path / "e.json").read_text())["sets"] == 16
    # .npy input: sets of different content, predictions must differ per set and match the Python model
    sets = (np.random.default_rng(0).normal(size=(5, 30, 1)) * np.arange(1, 6)[:, None, None]).astype(np.float32)
    np.save(tmp_path / "sets.npy", sets)
    out_csv = tmp_path / "pred.csv"
    r = subprocess.run(CLI + ["predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "sets.npy"),
                              "--output", str(out_csv)], capture_output=True, text=True, env=env())
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out_csv.open()))
    assert [row["set"] for row in rows] == ["0", "1", "2", "3", "4"]
    from deepsets.train import load_checkpoint

    model = load_checkpoint(ckpt).model
    expected = model(torch.from_numpy(sets)).detach().numpy().ravel()
    np.testing.assert_allclose([float(r["prediction"]) for r in rows], expected, rtol=1e-4)
    # HDF5 input in the Flow-RBC-like layout, and a wrong feature count
    import h5py

    with h5py.File(tmp_path / "sets.h5", "w") as f:
        f["test_data"] = sets
        f["wrong"] = np.zeros((2, 4, 3), np.float32)
    r = subprocess.run(CLI + ["predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "sets.h5")],
                       capture_output=True, text=True, env=env())
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 6
    r = subprocess.run(CLI + ["predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "sets.h5"),
                              "--key", "wrong"], capture_output=True, text=True, env=env())
    assert r.returncode == 1 and "3 features" in r.stderr and "expects 1" in r.stderr


def test_grad_norms_cli(tmp_path):
    r = subprocess.run(CLI + ["grad-norms", "--model", "deepsets:50", "--compare", "deepsets++:50",
                              "--task", "mnist-var", "--batch", "8", "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env())
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "grad_norms.json").read_text())
    ds, dspp = data["deepsets depth 50"], data["deepsets++ depth 50"]
    assert ds[0]["grad_norm"] / ds[-1]["grad_norm"] < 1e-6  # vanishing
    assert 1e-2 < dspp[0]["grad_norm"] / dspp[-1]["grad_norm"] < 1e2  # healthy
    assert (tmp_path / "grad_norms.png").stat().st_size > 1000 and (tmp_path / "grad_norms.csv").is_file()


def test_reproduce_smoke_writes_results_table(tmp_path):
    from deepsets.train.reproduce import reproduce

    md = reproduce("table1", "smoke", tasks=["normal-var"], seeds=[0, 1], out=tmp_path, echo=lambda *_: None)
    text = md.read_text()
    assert "| Deep Sets | clean | set |" in text and "paper 0.0198" in text and "n=2" in text
    assert len(list((tmp_path / "runs").iterdir())) == 12 * 2
    # a second call reuses the finished runs (resumable reproduction)
    t0 = time.time()
    reproduce("table1", "smoke", tasks=["normal-var"], seeds=[0, 1], out=tmp_path, echo=lambda *_: None)
    assert time.time() - t0 < 30


def test_reproduce_table2_draws_test_error_against_depth(tmp_path):
    from deepsets.train.reproduce import reproduce

    reproduce("table2", "smoke", tasks=["normal-var"], cells=["*-3-*", "*-2-*", "*-8-*"], seeds=[0, 1],
              out=tmp_path, echo=lambda *_: None)
    assert len(list((tmp_path / "runs").iterdir())) == 6 * 2
    assert (tmp_path / "depth.png").stat().st_size > 5000


@pytest.mark.parametrize("table", ["table1", "table2"])
def test_cpu_budget_is_a_step_budget_every_cell_can_run(table, tmp_path):
    """The cpu budget: the same optimizer and step budget for every cell, and set sizes the data have."""
    from deepsets.data import get_task
    from deepsets.train.reproduce import cell_files

    for f in cell_files(table):
        cfg = budget_config(f, "cpu", 0, tmp_path)
        assert (cfg.batch_size, cfg.lr) == (32, 1e-4) and cfg.max_steps >= 600, f.stem
        task = get_task(cfg.task)
        assert cfg.set_size is None or cfg.set_size <= task.set_size, f.stem


def _run_cli_train(args, **kw):
    return subprocess.Popen(CLI + ["train"] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env(), **kw)


def test_sigkill_then_resume_loses_and_repeats_no_epoch(tmp_path):
    out = tmp_path / "run"
    args = ["--task", "normal-var", "--model", "deepsets++", "--depth", "2", "--dim", "16", "--epochs", "8",
            "--batch-size", "4", "--set-size", "64", "--n-train", "200", "--n-test", "8", "--out", str(out),
            "--no-progress"]
    proc = _run_cli_train(args)
    deadline = time.time() + 120
    while time.time() < deadline:
        rows = read_metrics(out / "metrics.csv") if (out / "metrics.csv").exists() else []
        if len(rows) >= 2:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len(read_metrics(out / "metrics.csv"))
    assert 2 <= killed_at < 8, "the run should be killed mid-way"
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)  # loadable: written atomically
    proc = _run_cli_train(args + ["--resume"])
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log
    rows = read_metrics(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == list(range(8))
    steps = [r["step"] for r in rows]
    per_epoch = steps[0]
    assert steps == [per_epoch * (e + 1) for e in range(8)]  # optimizer steps continue from the checkpoint
    assert ckpt["epoch"] <= killed_at


@pytest.mark.parametrize("model", ["deepsets++", "settransformer++"])
def test_ddp_step_budget_ending_mid_epoch(model, tmp_path):
    """--max-steps that ends inside an epoch on 2 processes: the final validation and checkpoints run on every
    rank together (they are collective), metrics.csv gets one final row, and the summary is printed once."""
    out = tmp_path / "ddp"
    proc = _run_cli_train(["--task", "normal-var", "--model", model, "--depth", "2", "--dim", "16",
                           "--max-steps", "7", "--batch-size", "4", "--set-size", "16", "--n-train", "40",
                           "--n-test", "8", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
                           "--out", str(out), "--no-progress"])
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log
    rows = read_metrics(out / "metrics.csv")
    # 5 steps per epoch (36 training sets, batch 4 per process, 2 processes): epoch 0 ends at step 5, the budget at 7
    assert [r["step"] for r in rows] == [5, 7]
    assert all(np.isfinite(r["val_loss"]) for r in rows)
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "checkpoints" / "best.ckpt").is_file()
    best = min(rows, key=lambda r: r["val_loss"])["step"]  # the final validation counts for best.ckpt too
    assert torch.load(out / "checkpoints" / "best.ckpt", weights_only=False)["global_step"] == best
    assert log.count("run folder:") == 1, log
    assert "Warning" not in log and "DistributedSampler" not in log and "Tip:" not in log, log  # nothing foreign


@pytest.mark.parametrize("lr", ["3e-3", "3e-2"])
def test_best_checkpoint_is_the_lowest_validation_loss_with_a_step_budget(lr, tmp_path):
    """A step budget ending mid-epoch validates once more at the end; best.ckpt is the state of the row of
    metrics.csv with the lowest validation loss, whichever it is (the final one included), also after a resume."""
    out = tmp_path / "run"
    args = ["train", "--task", "normal-var", "--model", "deepsets++", "--depth", "2", "--dim", "16", "--lr", lr,
            "--batch-size", "4", "--set-size", "16", "--n-train", "40", "--n-test", "8", "--epochs", "100",
            "--out", str(out), "--no-progress"]
    finals = []
    for extra in (["--max-steps", "22"], ["--resume", "--max-steps", "40"]):  # 9 steps per epoch
        code, log = _cli(args + extra)
        assert code == 0, log
        rows = read_metrics(out / "metrics.csv")
        best = min(rows, key=lambda r: r["val_loss"])
        assert torch.load(out / "checkpoints" / "best.ckpt", weights_only=False)["global_step"] == best["step"]
        finals.append(best is rows[-1])
    assert [r["step"] for r in rows] == [9, 18, 22, 27, 36, 40]
    if lr == "3e-3":
        assert finals[0], "this seed's loss still falls at the end of the budget: the final state is the best"


def test_demo_runs_end_to_end_small(tmp_path):
    from deepsets.demo import run_demo

    lines = []
    result = run_demo(tmp_path, depth=2, epochs=1, n_train=40, n_test=16, progress=False, echo=lines.append)
    assert set(result) == {"baseline", "deepsets", "deepsets++"} and all(np.isfinite(v) for v in result.values())
    assert (tmp_path / "grad_norms" / "grad_norms.csv").is_file() and (tmp_path / "deepsets" / "metrics.csv").is_file()
    assert any("MNIST Var test MSE" in line for line in lines)


def _cli(args, timeout=300):
    proc = subprocess.run(CLI + args, capture_output=True, text=True, env=env(), timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def _saved(out) -> dict:
    import yaml

    return yaml.safe_load((out / "config.yaml").read_text())


def test_resume_with_only_out_continues_as_saved_regression(tmp_path):
    """`--out DIR --resume` is the saved run: its budget, task and loss; a flag changes only what it names and the
    run says so; a flag that would change the model or the data is refused by name."""
    out = tmp_path / "run"
    code, log = _cli(["train", "--task", "normal-var", "--model", "deepsets++", "--depth", "2", "--dim", "16",
                      "--epochs", "2", "--batch-size", "8", "--set-size", "16", "--n-train", "40", "--n-test", "8",
                      "--lr", "3e-3", "--eval-every", "1", "--out", str(out)])
    assert code == 0, log
    assert "litlogger" not in log and "Tip:" not in log and "ERROR" not in log  # nothing foreign in a run's output
    before = _saved(out)
    code, log = _cli(["train", "--out", str(out), "--resume", "--no-progress"])
    assert code == 0, log  # the saved budget of 2 epochs is done: nothing runs (not the task's 50 epochs)
    assert "nothing to train" in log and "--epochs" in log
    assert [r["epoch"] for r in read_metrics(out / "metrics.csv")] == [0, 1]
    code, log = _cli(["train", "--out", str(out), "--resume", "--epochs", "3", "--no-progress"])
    assert code == 0, log
    assert "--epochs 2 -> 3" in log
    rows = read_metrics(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == [0, 1, 2] and [r["step"] for r in rows] == [5, 10, 15]
    after = _saved(out)
    assert after.pop("epochs") == 3 and before.pop("epochs") == 2
    assert after.pop("progress") is False and before.pop("progress") is True  # --no-progress was given too
    assert after == before  # nothing else changed: task, lr, batch size, data sizes, model
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["target"] == "regression" and ckpt["hyper_parameters"]["lr"] == 3e-3
    for flag, value in [("--depth", "3"), ("--lr", "1e-3"), ("--n-train", "50")]:
        code, log = _cli(["train", "--out", str(out), "--resume", flag, value])
        assert code == 1 and f"--resume: {flag} " in log and "differs from the run's saved" in log, log
    assert len(read_metrics(out / "metrics.csv")) == 3


def test_resume_with_only_out_continues_as_saved_classification(tmp_path):
    """A classification run on a table of your own resumes with its target and loss (cross-entropy, accuracy)."""
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = [{"set": f"s{i}", "x": rng.normal(i % 2, 1.0), "y": rng.normal(), "label": ["neg", "pos"][i % 2]}
            for i in range(24) for _ in range(10)]
    table = tmp_path / "cells.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    out = tmp_path / "run"
    code, log = _cli(["train", "--data", str(table), "--set-column", "set", "--label-column", "label", "--depth",
                      "2", "--dim", "16", "--epochs", "1", "--batch-size", "4", "--out", str(out), "--no-progress"])
    assert code == 0, log
    assert "target: classification" in log
    code, log = _cli(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"])
    assert code == 0, log
    assert "--epochs 1 -> 2" in log
    rows = read_metrics(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(0.0 <= r["val_metric"] <= 1.0 for r in rows)  # accuracy, not an MSE
    hp = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    assert hp["target"] == "classification" and hp["model_kwargs"]["out_dim"] == 2
    assert _saved(out)["data"] == str(table.resolve())


DDP = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
TINY_DDP = ["--depth", "2", "--dim", "16", "--batch-size", "4", "--set-size", "16", "--n-train", "40", "--n-test", "8",
            "--no-progress"]


def _write_log_env(tmp_path):
    """An environment whose Python processes log every file they rename into place (checkpoints, metrics.csv,
    config.yaml are all written that way) with their LOCAL_RANK, through an audit hook in sitecustomize."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(
        "import os, sys\n"
        "def _log(event, args):\n"
        "    if event == 'os.rename' and str(args[1]).endswith(('.ckpt', 'metrics.csv', 'config.yaml')):\n"
        "        with open(os.environ['DEEPSETS_TEST_WRITES'], 'a') as f:\n"
        "            f.write(os.environ.get('LOCAL_RANK', '0') + ' ' + os.path.basename(str(args[1])) + '\\n')\n"
        "sys.addaudithook(_log)\n")
    e = env()
    e["PYTHONPATH"] = str(hook) + os.pathsep + e["PYTHONPATH"]
    e["DEEPSETS_TEST_WRITES"] = str(tmp_path / "writes.log")
    return e, tmp_path / "writes.log"


@pytest.mark.parametrize("model", ["deepsets++", "settransformer++"])
def test_ddp_eval_every_resume_and_final_validation(model, tmp_path):
    """Two CPU processes: --eval-every, the final validation of an epoch off the cadence, and --resume of the DDP
    run. metrics.csv, config.yaml and the checkpoints are written by rank zero only, and the step counts are those
    of one process with the same total batch (2 x 4 sets)."""
    out = tmp_path / "ddp"
    e, log_path = _write_log_env(tmp_path)
    args = ["train", "--task", "normal-var", "--model", model, *TINY_DDP, "--out", str(out)]
    proc = subprocess.run(CLI + args + DDP + ["--epochs", "4", "--eval-every", "2"], capture_output=True, text=True,
                          env=e, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = read_metrics(out / "metrics.csv")
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 10), (3, 20)]  # 36 sets / (2 x 4) -> 5 steps per epoch
    writes = log_path.read_text().split()
    ranks, names = writes[0::2], writes[1::2]
    assert set(ranks) == {"0"} and {"last.ckpt", "best.ckpt", "metrics.csv", "config.yaml"} <= set(names)

    if model == "deepsets++":  # the step counts depend on the data only
        single = tmp_path / "single"
        code, log = _cli(["train", "--task", "normal-var", "--model", model, *TINY_DDP, "--batch-size", "8",
                          "--epochs", "4", "--eval-every", "2", "--out", str(single)])
        assert code == 0, log
        assert [r["step"] for r in read_metrics(single / "metrics.csv")] == [r["step"] for r in rows]

    proc = subprocess.run(CLI + ["train", "--out", str(out), "--resume", "--epochs", "5"] + DDP, capture_output=True,
                          text=True, env=e, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    rows = read_metrics(out / "metrics.csv")
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 10), (3, 20), (4, 25)]  # epoch 4 validated at the end
    assert all(np.isfinite(r["val_loss"]) for r in rows)
    assert log.count("run folder:") == 1 and log.count("--epochs 4 -> 5") == 1, log
    assert set(log_path.read_text().split()[0::2]) == {"0"}
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 25


def test_ddp_nonfinite_loss_on_one_process_stops_every_process(tmp_path):
    """The loss overflows on rank 1 only (epoch 1): both processes stop at the same step, the run exits 1 with
    the step, and the checkpoint of epoch 0 is kept (no hang waiting for the stopped process)."""
    out = tmp_path / "ddp"
    task = str(ROOT / "tests" / "example_diverging_task.py") + ":TASK"
    proc = subprocess.run(CLI + ["train", "--task", task, *TINY_DDP, "--epochs", "3", "--out", str(out)] + DDP,
                          capture_output=True, text=True, env=env(), timeout=180)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log
    assert "not finite" in log and "epoch 1, step 5" in log and "end of epoch 0" in log, log
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0 and last["global_step"] == 5
    assert [r["epoch"] for r in read_metrics(out / "metrics.csv")] == [0]
