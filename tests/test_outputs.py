"""Safe outputs: CSV cells a spreadsheet would run as formulas are escaped (numbers never), an output never
overwrites an input of the same command, written files keep their mode / honour the umask, exports never leave
partial files, Hub folders hold no machine paths and are checked against their weights before allocating, and
ONNX files describe their inputs and outputs."""
import csv
import errno
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from deepsets.cli import main

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "deepsets.cli"]
TINY = ["--model", "deepsets++", "--depth", "2", "--dim", "16", "--batch-size", "4", "--epochs", "1",
        "--set-size", "8", "--no-progress"]
#: set ids a spreadsheet would run as formulas (and a plain one)
SETS = ["=HYPERLINK(\"x\")", "+1+2", "@SUM(A1)", "-2+3", "-cmd", "plain"]

pytestmark = pytest.mark.usefixtures("one_thread")


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def write_table(path: Path) -> Path:
    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sample", "label", "FSC-A", "SSC-A"])
        for i, name in enumerate(SETS):
            for _ in range(6):
                w.writerow([name, "=hi" if i % 2 else "@lo", *rng.normal(size=2).round(4)])
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny classifier trained (under umask 022) on a table whose set ids and labels look like formulas."""
    d = tmp_path_factory.mktemp("outputs")
    table = write_table(d / "cells.csv")
    old = os.umask(0o022)
    try:
        assert main(["train", "--data", str(table), "--set-column", "sample", "--label-column", "label",
                     "--out", str(d / "run"), *TINY]) == 0
    finally:
        os.umask(old)
    return {"dir": d, "table": table, "out": d / "run", "ckpt": d / "run" / "checkpoints" / "last.ckpt"}


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


# ------------------------------------------------------------------------------------------------ CSV escaping
def test_escape_cell_keeps_numbers_and_escapes_formulas():
    from deepsets.files import csv_text, escape_csv_cell

    for text in ["=1+1", "+cmd", "-2+3", "@SUM(A1)", "\tx", "\rx", "-", "=", "-inf-", "+1e"]:
        assert escape_csv_cell(text) == "'" + text
    for value in ["-0.5", "-1e-3", "+3", "-inf", "-nan", "-.5", "1.5", "plain", "", -0.5, 3, None]:
        assert escape_csv_cell(value) == value
    assert csv_text(["a", "=b"], [["=x", -1.5], {"a": "-1e-3", "=b": "@y"}]).splitlines() == \
        ["a,'=b", "'=x,-1.5", "-1e-3,'@y"]
    assert csv_text(["a"], [["=x"]], escape=False).splitlines() == ["a", "=x"]


def test_regression_predictions_stay_numbers():
    from deepsets.train.predict import predictions_csv

    text = predictions_csv(["=a", "-1"], [np.array([-0.5]), np.array([-1e-3])], "regression")
    assert list(csv.reader(text.splitlines())) == [["set", "prediction"], ["'=a", "-0.5"], ["-1", "-0.001"]]


def test_prediction_csv_escapes_text_cells_and_no_csv_escape_keeps_them(run, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    r = subprocess.run([*CLI, "predict", "--checkpoint", str(run["ckpt"]), "--input", str(run["table"]),
                        "--output", str(out)], capture_output=True, text=True, env=env(), timeout=300)
    assert r.returncode == 0, r.stderr
    rows = read_rows(out)
    header, body = rows[0], rows[1:]
    assert header == ["set", "predicted_class", "p_=hi", "p_@lo"] or header == ["set", "predicted_class", "p_@lo",
                                                                                 "p_=hi"]
    assert [row[0] for row in body] == ["'" + s if s != "plain" else s for s in SETS]
    assert {row[1] for row in body} <= {"'=hi", "'@lo"}
    for row in body:  # probabilities: numbers, untouched
        assert abs(float(row[2]) + float(row[3]) - 1) < 1e-4
    raw = tmp_path / "raw.csv"
    assert main(["predict", "--checkpoint", str(run["ckpt"]), "--input", str(run["table"]), "--output", str(raw),
                 "--no-csv-escape"]) == 0
    assert [row[0] for row in read_rows(raw)[1:]] == SETS
    assert {row[1] for row in read_rows(raw)[1:]} <= {"=hi", "@lo"}


def test_metrics_csv_is_written_through_the_helper(run):
    from deepsets.train.callbacks import read_metrics

    assert read_metrics(run["out"] / "metrics.csv")  # numbers only: read back as numbers


# ------------------------------------------------------------------------------------------- inputs as outputs
def _refused(capsys, argv, output, flag):
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"{flag} {output} is also an input of this command (" in err and "choose another path" in err, err
    return err


def test_output_that_is_an_input_is_refused_and_the_input_is_unchanged(run, tmp_path, capsys):
    table = tmp_path / "cells.csv"
    table.write_bytes(run["table"].read_bytes())
    before = table.read_bytes()
    err = _refused(capsys, ["predict", "--checkpoint", str(run["ckpt"]), "--input", str(table), "--output",
                            str(table)], table, "--output")
    assert "(--input)" in err
    os.link(table, tmp_path / "hard.csv")  # another name of the same file
    _refused(capsys, ["predict", "--checkpoint", str(run["ckpt"]), "--input", str(table), "--output",
                      str(tmp_path / "hard.csv")], tmp_path / "hard.csv", "--output")
    assert table.read_bytes() == before
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(run["ckpt"].read_bytes())
    raw = ckpt.read_bytes()
    err = _refused(capsys, ["export", "--checkpoint", str(ckpt), "--format", "pt2", "--output", str(ckpt)], ckpt,
                   "--output")
    assert "(--checkpoint)" in err and ckpt.read_bytes() == raw
    _refused(capsys, ["eval", "--checkpoint", str(ckpt), "--data", str(table), "--json", str(table)], table,
             "--json")
    assert table.read_bytes() == before


def test_a_file_inside_an_input_folder_is_an_input(tmp_path):
    from deepsets.files import refuse_input_as_output

    folder = tmp_path / "fcs"
    folder.mkdir()
    (folder / "labels.csv").write_text("set,label\n")
    with pytest.raises(ValueError, match=r"--output .*labels.csv is also an input of this command \(--input\)"):
        refuse_input_as_output(folder / "labels.csv", {"--input": folder})
    refuse_input_as_output(folder / "new.csv", {"--input": folder})  # a new file: nothing of the input is lost
    refuse_input_as_output(tmp_path / "other.csv", {"--input": folder})


# ------------------------------------------------------------------------------------------------------ modes
def test_replaced_output_keeps_its_mode_and_new_files_honour_the_umask(run, tmp_path):
    from deepsets.files import atomic_write_text

    out = tmp_path / "pred.csv"
    out.write_text("old\n")
    os.chmod(out, 0o640)
    assert main(["predict", "--checkpoint", str(run["ckpt"]), "--input", str(run["table"]), "--output",
                 str(out)]) == 0
    assert mode(out) == 0o640 and out.read_text().startswith("set,")
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
        os.umask(0o027)
        atomic_write_text(tmp_path / "new2.txt", "x")
    finally:
        os.umask(old)
    assert mode(tmp_path / "new.txt") == 0o644 and mode(tmp_path / "new2.txt") == 0o640


def test_run_outputs_honour_the_umask(run):
    files = [p for p in run["out"].rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"last.ckpt", "metrics.csv", "config.yaml"} <= names, names
    assert {p.name: oct(mode(p)) for p in files if mode(p) != 0o644} == {}


def test_write_errors_name_the_path(tmp_path):
    from deepsets.files import WriteError, atomic_write_text

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(WriteError, match=r"cannot write .*a_file/x.csv: ") as e:
        atomic_write_text(blocker / "x.csv", "x")
    assert isinstance(e.value, OSError)


# ------------------------------------------------------------------------------------------------------ export
class _DiskFull:
    """A file whose writes stop half-way with ENOSPC (a disk that fills up mid-write)."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_an_export_that_fails_leaves_no_file(run, tmp_path, monkeypatch):
    from deepsets.export import export_model
    from deepsets import files as tio
    from deepsets.files import WriteError
    from deepsets.train import load_checkpoint

    module = load_checkpoint(run["ckpt"])
    real = os.fdopen
    monkeypatch.setattr(tio.os, "fdopen", lambda *a, **k: _DiskFull(real(*a, **k)))
    with pytest.raises(WriteError, match=r"cannot write .*new\.pt2: No space left on device") as e:
        export_model(module, tmp_path / "new.pt2")
    assert e.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tmp_path)) == []  # neither the file nor a temporary file


def test_an_export_to_a_full_disk_is_refused_before_writing(tmp_path, monkeypatch):
    import shutil

    from deepsets.files import WriteError, check_free_space

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 10, 10))
    with pytest.raises(WriteError, match=r"cannot write .*m\.pt2: not enough free space \(2\.0 MB needed"):
        check_free_space(tmp_path / "m.pt2", 2_000_000)
    check_free_space(tmp_path / "m.pt2", 10)


def test_onnx_stores_features_target_classes_and_logits(run, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from deepsets.export import export_model, read_metadata
    from deepsets.train import load_checkpoint

    path = export_model(load_checkpoint(run["ckpt"]), tmp_path / "m.onnx", check=True, check_sizes=(1, 5))
    meta = read_metadata(path)
    assert json.loads(meta["features"]) == ["FSC-A", "SSC-A"]
    assert meta["target"] == "classification" and sorted(json.loads(meta["classes"])) == ["=hi", "@lo"]
    assert "logits" in meta["y"] and "softmax" in meta["y"]
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


# --------------------------------------------------------------------------------------------------------- hub
def test_hub_folder_has_no_machine_path_and_a_huge_config_fails_fast(run, tmp_path, capsys):
    import deepsets

    folder = tmp_path / "shared"
    assert main(["export", "--checkpoint", str(run["ckpt"]), "--format", "hub", "--output", str(folder)]) == 0
    assert sorted(os.listdir(tmp_path)) == ["shared"]  # the temporary folder was renamed into place
    text = (folder / "config.json").read_text()
    assert str(run["dir"]) not in text and str(tmp_path) not in text
    assert json.loads(text)["data"]["source"] == "cells.csv"
    config = json.loads(text)
    t0 = time.perf_counter()
    for dim, message in [(100_000_000, r"config.json: sizes do not match the weights in model.safetensors: "
                                       r"\S+ is \[100000000, 2\] by the config"),  # 40 PB were it allocated
                         (2_000_000_000, r"config.json: not a valid model description")]:
        config["config"]["dim"] = dim
        (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(ValueError, match=message):
            deepsets.from_pretrained(folder)
    assert time.perf_counter() - t0 < 5
    _refused(capsys, ["export", "--checkpoint", str(run["ckpt"]), "--format", "hub", "--output",
                      str(run["ckpt"])], run["ckpt"], "--output")


def test_failed_hub_write_removes_its_temporary_folder(tmp_path, monkeypatch):
    from deepsets import create_model
    from deepsets import files as tio
    from deepsets.files import WriteError

    model = create_model("deepsets++", 2, 1, depth=1, dim=8)
    real = os.fdopen
    monkeypatch.setattr(tio.os, "fdopen", lambda *a, **k: _DiskFull(real(*a, **k)))
    with pytest.raises(WriteError, match="No space left on device"):
        model.save_pretrained(tmp_path / "m")
    assert os.listdir(tmp_path) == []


def test_errors_doc_lists_the_messages():
    text = (ROOT / "docs" / "errors.md").read_text()
    for phrase in ["is also an input of this command", "cannot write PATH:", "not enough free space",
                   "sizes do not match the weights", "--no-csv-escape", "nothing was written"]:
        assert phrase in text, phrase
