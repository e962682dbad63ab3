"""`deepsets data list|build|info` through deepsets.data.cli."""
import argparse
import gzip
import struct

import h5py
import numpy as np
import pytest

from deepsets.data import load_task
from deepsets.data.cli import add_data_commands


def run(argv):
    parser = argparse.ArgumentParser(prog="deepsets")
    sub = parser.add_subparsers(dest="command")
    add_data_commands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_list(capsys):
    assert run(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("normal-var", "mnist-var", "point-cloud", "hematocrit", "anemia", "set-anomaly"):
        assert name in out
    assert "DEEPSETS_DATA" in out and "deepsets-data" in out


def test_build_simulate_and_info(tmp_path, capsys):
    out = tmp_path / "sim.h5"
    assert run(["data", "build", "hematocrit", "--simulate", "--out", str(out), "--n-train", "5", "--n-test", "3",
                "--cells", "20"]) == 0
    assert len(load_task("hematocrit", "test", data=out)) == 3
    capsys.readouterr()
    assert run(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "train_data: shape=(5, 20, 2)" in text and "detected task: hematocrit" in text
    assert "train: 5 sets" in text and "test: 3 sets" in text


def test_build_mnist_from_idx(tmp_path, capsys):
    folder = tmp_path / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 20)):
        for stem, arr in ((f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28))),
                          (f"{split}-labels-idx1-ubyte", np.arange(n) % 10)):
            arr = np.asarray(arr, np.uint8)
            raw = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()
            (folder / (stem + ".gz")).write_bytes(gzip.compress(raw))
    out = tmp_path / "mv.h5"
    # the synthetic files do not match the published MD5s (a data error: exit code 1, as every command)
    assert run(["data", "build", "mnist-var", "--source", str(folder), "--out", str(out)]) == 1
    assert "MD5" in capsys.readouterr().err
    assert run(["data", "build", "mnist-var", "--source", str(folder), "--out", str(out), "--no-verify",
                "--n-train", "4", "--n-test", "2"]) == 0
    with h5py.File(out) as f:
        assert f["train_data"].shape == (4, 10, 784)
    assert run(["data", "info", str(out)]) == 0
    assert "detected task: mnist-var" in capsys.readouterr().out


def test_build_point_cloud(tmp_path, capsys):
    folder = tmp_path / "ply"
    folder.mkdir()
    for name, n in (("train0", 3), ("test0", 2)):
        with h5py.File(folder / f"ply_data_{name}.h5", "w") as f:
            f["data"] = np.random.default_rng(0).normal(size=(n, 16, 3)).astype(np.float32)
            f["label"] = np.zeros((n, 1), np.uint8)
    out = tmp_path / "comb.h5"
    assert run(["data", "build", "point-cloud", "--source", str(folder), "--out", str(out)]) == 0
    assert len(load_task("point-cloud", "test", data=out)) == 2
    assert run(["data", "build", "point-cloud"]) == 1
    assert run(["data", "info", str(folder)]) == 0
    assert "point-cloud" in capsys.readouterr().out


def test_info_errors(tmp_path, capsys):
    assert run(["data", "info", str(tmp_path / "nothing.h5")]) == 1
    assert "nothing.h5" in capsys.readouterr().err
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 20)
    assert run(["data", "info", str(bad)]) == 1
    assert "bad.h5" in capsys.readouterr().err
    assert run(["data", "build", "normal-var"]) == 1
