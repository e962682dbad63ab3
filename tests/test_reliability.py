"""Reliability: every bad input gets a short, clear error (CLI and Python API); runs never lose their work.

The bad-input table runs every case through the command line's ``main`` (exit code, at most two lines of
message, no traceback, the message names the file/argument, the set and what was expected and found), and a
sample of it through ``python -m deepsets.cli`` as a real subprocess.
"""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import deepsets
from deepsets.data import DataError, load_task
from deepsets.train import TrainConfig, load_checkpoint, train
from deepsets.train.callbacks import NonFiniteLossError, read_metrics

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "deepsets.cli"]
TINY = ["--model", "deepsets", "--depth", "2", "--dim", "16", "--epochs", "1", "--batch-size", "4",
        "--set-size", "8", "--no-progress"]


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    return e


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ file writers
def _h5(path, **arrays):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    return path


def _rbc(n=6, cells=12, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.uniform(50, 100, size=(n, cells, 2)).astype(np.float32)
    return data, rng.uniform(30, 50, size=(n, 1)).astype(np.float32)


def _fcs(path, events, names):
    flowio = pytest.importorskip("flowio")
    with open(path, "wb") as fh:
        flowio.create_fcs(fh, np.asarray(events, dtype=np.float32).ravel().tolist(), names)


def _fcs_folder(root, labels=None, names=("FSC-A", "RBC_Volume", "RBC_HC"), n=4):
    rng = np.random.default_rng(2)
    root.mkdir(parents=True)
    for i in range(n):
        ev = np.column_stack([rng.uniform(0, 1000, 20), rng.uniform(60, 110, 20), rng.uniform(20, 35, 20)])
        _fcs(root / f"patient{i}.fcs", ev, list(names))
    if labels is not None:
        with open(root / "labels.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "label"])
            w.writerows([f"patient{i}.fcs", lab] for i, lab in enumerate(labels) if lab is not None)
    return root


def _h5ad(path, X, var_names, obs: dict):
    str_dt = h5py.string_dtype()
    with h5py.File(path, "w") as f:
        f["X"] = X
        var = f.create_group("var")
        var.attrs["_index"] = "_index"
        var.create_dataset("_index", data=np.array(var_names, dtype=object), dtype=str_dt)
        o = f.create_group("obs")
        o.attrs["_index"] = "_index"
        o.create_dataset("_index", data=np.array([f"c{i}" for i in range(len(X))], dtype=object), dtype=str_dt)
        for name, vals in obs.items():
            vals = np.asarray(vals)
            if vals.dtype.kind in "US":
                o.create_dataset(name, data=vals.astype(object), dtype=str_dt)
            else:
                o.create_dataset(name, data=vals)
    return path


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny trained normal-var checkpoint (1 input feature), trained once for the module."""
    base = tmp_path_factory.mktemp("ckpt")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPSETS_DATA", str(tmp_path_factory.getbasetemp() / "deepsets-data"))
        train(TrainConfig(task="normal-var", model="deepsets++", depth=2, dim=16, epochs=1, batch_size=8,
                          set_size=16, progress=False, task_options={"n_train": 24, "n_test": 8},
                          out=str(base / "run")))
    return base / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def files(tmp_path_factory, ckpt):
    """Every bad file of the table, written once."""
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    sets = rng.normal(size=(4, 10, 1)).astype(np.float32)
    nan = sets.copy()
    nan[2, 3, 0] = np.nan
    np.save(d / "nan_sets.npy", nan)
    inf = sets.copy()
    inf[1, 0, 0] = np.inf
    np.save(d / "inf_sets.npy", inf)
    np.save(d / "no_elements.npy", np.zeros((3, 0, 1), np.float32))
    _h5(d / "three_features.h5", test_data=np.zeros((2, 5, 3), np.float32))
    data, lab = _rbc()
    bad = data.copy()
    bad[3, 4, 1] = np.nan  # one value of one cell: not a padding row
    _h5(d / "nan_feature.h5", train_data=bad, train_labels=lab)
    empty = data.copy()
    empty[1] = np.nan  # every row NaN: padding only, so set 1 has no elements
    _h5(d / "empty_set.h5", train_data=empty, train_labels=lab)
    nl = lab.copy()
    nl[2] = np.nan
    _h5(d / "nan_label.h5", train_data=data, train_labels=nl)
    _h5(d / "class_range.h5", train_data=data, train_anemia=np.array([0, 1, 5, 0, 1, 0]))
    _h5(d / "no_labels.h5", train_data=data)
    _h5(d / "mismatch.h5", train_data=data, train_labels=lab[:4])
    full = _h5(d / "good_rbc.h5", train_data=np.repeat(data, 20, axis=1), train_labels=lab)
    raw = full.read_bytes()
    (d / "truncated.h5").write_bytes(raw[: len(raw) // 3])
    (d / "corrupt.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(rng.integers(0, 256, 3000, dtype=np.uint8)))
    _fcs_folder(d / "fcs_channels", labels=[30, 31, 32, 33], names=("FSC-A", "Volume", "HC"))
    _fcs_folder(d / "fcs_unlabeled_file", labels=[30, 31, None, 33])
    _fcs_folder(d / "fcs_empty_label", labels=[30, "", 32, 33])
    _fcs_folder(d / "fcs_no_labels_csv")
    X = rng.uniform(1, 2, size=(12, 2)).astype(np.float32)
    _h5ad(d / "cells.h5ad", X, ["volume", "hemoglobin"], {"patient": np.array([f"p{i % 3}" for i in range(12)])})
    # checkpoints: corrupt, foreign, and one whose weights do not fit its model description
    raw = ckpt.read_bytes()
    (d / "truncated.ckpt").write_bytes(raw[: len(raw) // 2])
    (d / "garbage.ckpt").write_bytes(bytes(rng.integers(0, 256, 5000, dtype=np.uint8)))
    torch.save({"state_dict": torch.nn.Linear(2, 2).state_dict()}, d / "foreign.ckpt")
    c = torch.load(ckpt, weights_only=True)
    c["hyper_parameters"]["model_kwargs"]["dim"] = 32
    torch.save(c, d / "other_model.ckpt")
    # output folders
    (d / "a_file").write_text("")
    (d / "used_run").mkdir()
    (d / "used_run" / "metrics.csv").write_text("epoch\n")
    (d / "no_ckpt_run").mkdir()
    (d / "no_ckpt_run" / "config.yaml").write_text("task: normal-var\n")
    return d


def _train(data, task="hematocrit", *extra):
    return ["train", "--task", task, "--data", str(data), *TINY, *extra]


# (id, argv builder, words the message must hold)
CASES = [
    ("predict-nan", lambda f, c: ["predict", "--checkpoint", c, "--input", f / "nan_sets.npy"],
     ["nan_sets.npy", "set 2", "NaN", "expected finite"]),
    ("predict-inf", lambda f, c: ["predict", "--checkpoint", c, "--input", f / "inf_sets.npy"],
     ["inf_sets.npy", "set 1", "infinite"]),
    ("predict-empty-sets", lambda f, c: ["predict", "--checkpoint", c, "--input", f / "no_elements.npy"],
     ["no_elements.npy", "set 0", "empty", "found 0"]),
    ("predict-feature-count", lambda f, c: ["predict", "--checkpoint", c, "--input", f / "three_features.h5"],
     ["three_features.h5", "3 features", "expects 1"]),
    ("predict-missing-key", lambda f, c: ["predict", "--checkpoint", c, "--input", f / "three_features.h5",
                                          "--key", "nope"], ["three_features.h5", "'nope'", "test_data"]),
    ("train-nan-feature", lambda f, c: _train(f / "nan_feature.h5"),
     ["nan_feature.h5", "set 3", "NaN or infinite", "found nan", "element 4"]),
    ("train-empty-set", lambda f, c: _train(f / "empty_set.h5"), ["empty_set.h5", "set 1", "empty", "found 0"]),
    ("train-nan-label", lambda f, c: _train(f / "nan_label.h5"),
     ["nan_label.h5", "train_labels", "set 2", "expected a finite number", "nan"]),
    ("train-label-out-of-range", lambda f, c: _train(f / "class_range.h5", "anemia"),
     ["class_range.h5", "train_anemia", "set 2", "0..1", "2 classes", "found 5"]),
    ("train-labels-missing", lambda f, c: _train(f / "no_labels.h5"), ["no_labels.h5", "train_labels", "missing"]),
    ("train-length-mismatch", lambda f, c: _train(f / "mismatch.h5"), ["mismatch.h5", "6 sets", "4 labels"]),
    ("train-truncated-h5", lambda f, c: _train(f / "truncated.h5"), ["truncated.h5", "truncated"]),
    ("train-corrupt-h5", lambda f, c: _train(f / "corrupt.h5"), ["corrupt.h5", "corrupt"]),
    ("train-fcs-channels", lambda f, c: _train(f / "fcs_channels", "hematocrit", "--channels", "RBC_Volume",
                                               "RBC_HC"),
     ["patient0.fcs", "'RBC_Volume'", "not found", "Volume", "--channel-map"]),
    ("train-fcs-file-without-label", lambda f, c: _train(f / "fcs_unlabeled_file", "hematocrit", "--channels",
                                                         "RBC_Volume", "RBC_HC"),
     ["labels.csv", "no label", "patient2.fcs"]),
    ("train-fcs-empty-label", lambda f, c: _train(f / "fcs_empty_label", "hematocrit", "--channels",
                                                  "RBC_Volume", "RBC_HC"),
     ["labels.csv", "patient1.fcs", "expected a number", "missing"]),
    ("train-fcs-no-labels", lambda f, c: _train(f / "fcs_no_labels_csv", "hematocrit", "--channels",
                                                "RBC_Volume", "RBC_HC"), ["fcs_no_labels_csv", "no labels"]),
    ("train-h5ad-no-set-column", lambda f, c: _train(f / "cells.h5ad"), ["cells.h5ad", "--set-column", "patient"]),
    ("predict-h5ad-unknown-set-column", lambda f, c: ["predict", "--checkpoint", c, "--input", f / "cells.h5ad",
                                                      "--set-column", "donor"],
     ["cells.h5ad", "'donor'", "not found", "patient"]),
    ("eval-truncated-checkpoint", lambda f, c: ["eval", "--checkpoint", f / "truncated.ckpt"],
     ["truncated.ckpt", "not a readable checkpoint", "corrupt or truncated"]),
    ("eval-garbage-checkpoint", lambda f, c: ["eval", "--checkpoint", f / "garbage.ckpt"],
     ["garbage.ckpt", "not a readable checkpoint"]),
    ("eval-foreign-checkpoint", lambda f, c: ["eval", "--checkpoint", f / "foreign.ckpt"],
     ["foreign.ckpt", "not a deepsets training checkpoint", "found ['state_dict']"]),
    ("predict-other-model-checkpoint", lambda f, c: ["predict", "--checkpoint", f / "other_model.ckpt",
                                                     "--input", f / "nan_sets.npy"],
     ["other_model.ckpt", "weights do not match", "different model"]),
    ("eval-missing-checkpoint", lambda f, c: ["eval", "--checkpoint", f / "nope.ckpt"],
     ["nope.ckpt", "does not exist"]),
    ("train-missing-data", lambda f, c: _train(f / "nope.h5"), ["nope.h5", "does not exist"]),
    ("train-out-not-writable", lambda f, c: ["train", "--task", "normal-var", *TINY, "--out", f / "a_file" / "run"],
     ["a_file", "cannot be created"]),
    ("train-out-holds-run", lambda f, c: ["train", "--task", "normal-var", *TINY, "--out", f / "used_run"],
     ["used_run", "already holds files", "--resume", "--overwrite"]),
    ("train-resume-without-checkpoint", lambda f, c: ["train", "--task", "normal-var", *TINY, "--out",
                                                      f / "no_ckpt_run", "--resume"],
     ["no_ckpt_run", "no checkpoint to resume", "--overwrite"]),
    # misspelled flags, models, tasks and config keys: tests/test_cli.py
]


def _check_message(err: str, words, command: str):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, err
    assert "Traceback" not in err
    assert lines[0].startswith(f"deepsets {command}: error: "), err
    for w in words:
        assert w.lower() in lines[0].lower(), f"{w!r} not in: {lines[0]}"


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_table(case, files, ckpt, capsys, tmp_path):
    from deepsets.cli import main

    _, build, words = case
    argv = [str(a) for a in build(files, ckpt)]
    if argv[0] == "train" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "run")]
    capsys.readouterr()
    assert main(argv) == 1
    _check_message(capsys.readouterr().err, words, argv[0])


SUBPROCESS_CASES = ["predict-nan", "train-nan-label"]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_bad_input_cli_subprocess(case_id, files, ckpt, tmp_path):
    """The real command (a sample of the table: each start costs seconds): exit code 1, a one- or two-line
    message naming the problem."""
    _, build, words = next(c for c in CASES if c[0] == case_id)
    argv = [str(a) for a in build(files, ckpt)]
    if argv[0] == "train":
        argv += ["--out", str(tmp_path / "run")]
    r = subprocess.run(CLI + argv, capture_output=True, text=True, env=env(), timeout=300)
    assert r.returncode == 1, r.stderr
    _check_message(r.stderr, words, argv[0])


def test_usage_errors_are_two_lines(capsys):
    from deepsets.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--depth", "many"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--depth" in err[0] and "'many'" in err[0]


def test_debug_shows_the_traceback(files, ckpt):
    from deepsets.cli import main

    with pytest.raises(DataError, match="nan_sets.npy"):
        main(["--debug", "predict", "--checkpoint", str(ckpt), "--input", str(files / "nan_sets.npy")])
    with pytest.raises(DataError, match="nan_sets.npy"):  # also accepted after the subcommand
        main(["predict", "--checkpoint", str(ckpt), "--input", str(files / "nan_sets.npy"), "--debug"])


# ------------------------------------------------------------------------------------------------ Python API
def test_python_api_errors(files):
    model = deepsets.create_model("deepsets++", 2, 1, depth=2, dim=16)
    x = torch.randn(3, 5, 2)
    with pytest.raises(TypeError, match=r"mask must have dtype torch.bool.*mask.bool\(\)"):
        model(x, torch.ones(3, 5))
    with pytest.raises(ValueError, match=r"mask must have shape \[B, N\] = \[3, 5\].*got \[3, 4\]"):
        model(x, torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="3 features per element but the model expects in_dim=2"):
        model(torch.randn(3, 5, 3))
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(ValueError, match="batch index 1"):
        model(x, mask)
    with pytest.raises(DataError, match=r"nan_feature.h5: set 3 holds a NaN or infinite"):
        ds = load_task("hematocrit", "train", data=files / "nan_feature.h5")
        [ds[i] for i in range(len(ds))]
    with pytest.raises(DataError, match=r"nan_label.h5: train_labels at set 2"):
        load_task("hematocrit", "train", data=files / "nan_label.h5")
    with pytest.raises(DataError, match=r"class_range.h5: train_anemia at set 2.*0\.\.1"):
        load_task("anemia", "train", data=files / "class_range.h5")
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        load_task("hematocrit", "train", data=files / "nope.h5")
    with pytest.raises(ValueError, match="other_model.ckpt"):
        load_checkpoint(files / "other_model.ckpt")


def test_per_item_label_checks():
    """Labels checked on access too (sources too large to check whole at load)."""
    from deepsets.data._base import SetDataset

    class ArraySetDataset(SetDataset):  # a source whose labels are only checked when a set is read
        def __init__(self, sets, targets, *, task, target_kind, out_dim, num_classes=None, source="memory"):
            super().__init__()
            self.sets, self.targets, self.task, self.target_kind = sets, targets, task, target_kind
            self.out_dim, self.num_classes, self.source, self.in_dim = out_dim, num_classes, source, 2

        def __len__(self):
            return len(self.sets)

        def _raw_set(self, index):
            return self.sets[index]

        def _target(self, index):
            return self.targets[index]

    sets = [np.ones((3, 2), np.float32)] * 3
    ds = ArraySetDataset(sets, [0, 1, 4], task="t", target_kind="class", out_dim=3, num_classes=3, source="mem")
    assert ds[1][1].item() == 1
    with pytest.raises(DataError, match=r"mem: label of set 2.*0\.\.2 for 3 classes, found 4"):
        ds[2]
    ds = ArraySetDataset(sets, [1.0, float("nan"), 2.0], task="t", target_kind="regression", out_dim=1,
                         source="mem")
    with pytest.raises(DataError, match=r"mem: label of set 1 is missing or not finite"):
        ds[1]
    ds = ArraySetDataset(sets, [0, 5, 1], task="t", target_kind="class", out_dim=1, num_classes=None, source="mem")
    with pytest.raises(DataError, match=r"label of set 1.*0\.\.2"):  # index of an element: below the set size
        ds[1]


def test_fcs_channel_map_reads_differently_named_channels(files, ckpt):
    """Files that name the channels differently are read with --channel-map FILE_CHANNEL=NAME."""
    folder = files / "fcs_channels"
    kw = {"channels": ["RBC_Volume", "RBC_HC"], "set_size": 0}
    with pytest.raises(DataError, match="--channel-map"):
        load_task("hematocrit", "train", data=folder, **kw)
    ds = load_task("hematocrit", "train", data=folder, channel_map={"Volume": "RBC_Volume", "HC": "RBC_HC"}, **kw)
    ref = load_task("hematocrit", "train", data=folder, channels=["Volume", "HC"], set_size=0)
    assert len(ds) == 4 and ds.feature_names == ["RBC_Volume", "RBC_HC"]
    assert torch.equal(ds[0][0], ref[0][0])
    from deepsets.data.sources import parse_channel_map

    assert parse_channel_map(["Volume=RBC_Volume", " HC = RBC_HC"]) == {"Volume": "RBC_Volume", "HC": "RBC_HC"}
    with pytest.raises(ValueError, match="FILE_CHANNEL=NAME"):
        parse_channel_map(["Volume"])


# ------------------------------------------------------------------------------------------------ hard but valid
@pytest.mark.parametrize("case", ["constant", "single", "large-values", "tiny-values"])
def test_numerically_hard_training_data_trains(case, tmp_path):
    """Constant sets, one-element sets, values ~1e6 and ~1e-6 train with finite losses (Flow-RBC layout)."""
    rng = np.random.default_rng(0)
    data = rng.uniform(1, 2, size=(12, 6, 2)).astype(np.float32)
    if case == "constant":
        data[:] = 3.0
    elif case == "single":
        data[:, 1:] = np.nan  # padding rows: one element per set
    elif case == "large-values":
        data *= 1e6
    else:
        data *= 1e-6
    p = _h5(tmp_path / "hard.h5", train_data=data, train_labels=rng.uniform(30, 50, (12, 1)).astype(np.float32))
    summary = train(TrainConfig(task="hematocrit", data=str(p), model="deepsets++", depth=2, dim=16, epochs=1,
                                batch_size=4, progress=False, out=str(tmp_path / "run")))
    assert np.isfinite(summary["final"]["train_loss"]) and np.isfinite(summary["final"]["val_loss"])


# ------------------------------------------------------------------------------------------------ faults
def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    from deepsets.cli import main
    from deepsets.train.module import SetModule

    orig = SetModule._step

    def poisoned(self, batch):  # the loss turns NaN at optimizer step 4 (epoch 1, its second batch)
        loss, metric = orig(self, batch)
        if self.training and self.global_step >= 4:
            loss = loss * float("nan")
        return loss, metric

    monkeypatch.setattr(SetModule, "_step", poisoned)
    out = tmp_path / "run"
    args = ["train", "--task", "normal-var", "--model", "deepsets++", "--depth", "2", "--dim", "16", "--epochs",
            "3", "--batch-size", "8", "--set-size", "16", "--n-train", "24", "--n-test", "8", "--no-progress",
            "--out", str(out)]
    assert main(args) == 1  # 22 training sets, batch 8: 3 steps per epoch
    _check_message(capsys.readouterr().err, ["nan", "epoch 1", "step 4", "last.ckpt", "end of epoch 0", "--lr"],
                   "train")
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0 and last["global_step"] == 3  # nothing was saved after the NaN
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    load_checkpoint(out / "checkpoints" / "best.ckpt")
    assert [r["epoch"] for r in read_metrics(out / "metrics.csv")] == [0]
    with pytest.raises(NonFiniteLossError, match="step 4"):
        train(TrainConfig(task="normal-var", model="deepsets++", depth=2, dim=16, epochs=3, batch_size=8,
                          set_size=16, progress=False, task_options={"n_train": 24, "n_test": 8},
                          out=str(tmp_path / "run2")))


def test_atomic_writes_leave_old_file_or_new_never_half(tmp_path, monkeypatch):
    """A kill between writing and renaming (simulated) leaves the previous checkpoint/metrics intact."""
    from deepsets import files as tio
    from deepsets.train.callbacks import AtomicCheckpointIO, write_metrics

    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    write_metrics(tmp_path / "metrics.csv", [{"epoch": 0, "step": 1}])

    def killed(*a, **k):
        raise KeyboardInterrupt  # stands in for the process dying before the rename

    monkeypatch.setattr(tio.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    with pytest.raises(KeyboardInterrupt):
        write_metrics(tmp_path / "metrics.csv", [{"epoch": 0, "step": 1}, {"epoch": 1, "step": 2}])
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [r["epoch"] for r in read_metrics(tmp_path / "metrics.csv")] == [0]
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_at_random_moments_never_leaves_a_corrupt_checkpoint(tmp_path):
    """SIGKILL a process that rewrites last.ckpt in a loop, at random moments: the file always loads whole;
    a resume removes the half-written temporary files a kill leaves behind."""
    from deepsets.train.callbacks import AtomicCheckpointIO
    from deepsets.train.folder import prepare_out_dir

    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 0, "w": torch.zeros(100_000)}, path)
    rng = np.random.default_rng(0)
    for _ in range(6):
        pid = os.fork()
        if pid == 0:  # child: rewrite the checkpoint until killed
            try:
                i = 0
                while True:
                    i += 1
                    AtomicCheckpointIO().save_checkpoint({"epoch": i, "w": torch.full((100_000,), float(i))}, path)
            finally:
                os._exit(0)
        time.sleep(float(rng.uniform(0.02, 0.3)))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        ckpt = torch.load(path, weights_only=True)
        assert torch.equal(ckpt["w"], torch.full((100_000,), float(ckpt["epoch"])))
    (path.parent / ".last.ckpt.dead.tmp").write_bytes(b"half")  # what a kill mid-write leaves
    (tmp_path / "run" / "config.yaml").write_text("task: normal-var\n")
    torch.save({"epoch": 0, "hyper_parameters": {"model": "deepsets++", "model_kwargs": {}}, "state_dict": {}},
               path)
    prepare_out_dir(tmp_path / "run", resume=True)
    assert not list(path.parent.glob("*.tmp"))


def test_resume_refuses_a_corrupt_last_checkpoint(tmp_path):
    from deepsets.train.folder import prepare_out_dir

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("task: normal-var\n")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValueError, match=r"last.ckpt: not a readable checkpoint"):
        prepare_out_dir(run, resume=True)


def test_errors_doc_lists_the_messages():
    """docs/errors.md lists the messages the checks above produce."""
    text = (ROOT / "docs" / "errors.md").read_text()
    for phrase in ["holds a NaN or infinite feature value", "is empty (expected at least one element",
                   "expected a finite number", "expected an integer class label", "no label for",
                   "no labels found", "damaged HDF5 file", "missing key(s)", "sets but", "--channel-map",
                   "no set column given", "not a readable checkpoint", "not a deepsets training checkpoint",
                   "weights do not match", "data path does not exist", "already holds files", "cannot be created",
                   "no checkpoint to resume", "training loss is nan at epoch", "--debug",
                   "differs from the run's saved", "nothing to train: the run in", "not finite on another process",
                   "of the train split holds a NaN or infinite feature value", "of the validation split",
                   "of the test split", "every row is NaN padding", "reading the file did not finish within",
                   "crashed the HDF5 library", "DEEPSETS_FILE_CHECK_TIMEOUT", "DataLoader timed out",
                   "ONNX export needs", "pip install deepsets[export]", "unknown export format",
                   "cannot tell the export format", "the exported model differs from the PyTorch model",
                   "set sizes must be at least 1", "exported file does not exist",
                   "is in use by another run", "wait for it to finish or choose another --out",
                   "could not write checkpoint", "could not write metrics file", "No space left on device",
                   "no space / file size limit", "not writable", "the previous checkpoint", "stopped by SIGTERM",
                   "stopped by SIGINT", "continue with: deepsets train --out OUT --resume", "143", "130"]:
        assert phrase in text, phrase
