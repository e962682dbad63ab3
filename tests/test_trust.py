"""Nothing read from a checkpoint, a run folder, a config file or a saved model's folder imports or runs code.

A task given as code (``path/file.py:NAME`` / ``module:NAME``) is imported only where the user names it: ``--task``
on the command line, ``trust_code=True`` / ``import_task`` / ``load_task`` / ``TrainConfig(task=...)`` in Python.
Each test plants a payload task whose import writes a marker file into a real checkpoint's hyper-parameters, a run
folder's ``config.yaml``, a ``--config`` file and a saved model's ``config.json``, then checks that every command
and function that reads them fails with one line naming the task and how to trust it, without the marker; and that
naming the task again does import it.
"""
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from deepsets.data import ListReader, SourceDataset, Task, UntrustedTaskError, get_task, register_task
from deepsets.data.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]

LOADER = '''
import numpy as np

from deepsets.data import ListReader, SourceDataset, Task


def _load(task, split, data, base, options):
    rng = np.random.default_rng(0 if split == "train" else 1)
    sets = [rng.normal(size=(int(rng.integers(4, 9)), 1)).astype(np.float32) for _ in range(12)]
    return SourceDataset(ListReader(sets, [float(x.std()) for x in sets], source=f"payload ({split})"),
                         target="regression", task=task.name, **base)


TASK = Task(name="payload", target="regression", loader=_load, description="payload", in_dim=1, out_dim=1,
            set_size=None, epochs=1)
'''


def _load(task, split, data, base, options):  # the payload's loader, registered here under another name
    rng = np.random.default_rng(0 if split == "train" else 1)
    sets = [rng.normal(size=(int(rng.integers(4, 9)), 1)).astype(np.float32) for _ in range(12)]
    return SourceDataset(ListReader(sets, [float(x.std()) for x in sets], source=f"payload ({split})"),
                         target="regression", task=task.name, **base)


class Payload:
    """A task file whose import writes ``marker``: ``spec`` is ``DIR/payload_X.py:TASK`` (``module=False``) or
    ``payload_X:TASK``, a module found through ``path`` (sys.path / PYTHONPATH)."""

    def __init__(self, folder: Path, module: bool = False):
        name = f"ds_payload_{uuid.uuid4().hex[:10]}"
        self.path = folder / "mods"
        self.path.mkdir(parents=True, exist_ok=True)
        self.marker = folder / f"{name}.ran"
        file = self.path / f"{name}.py"
        file.write_text(f"from pathlib import Path\n\nPath({str(self.marker)!r}).write_text('ran')\n" + LOADER)
        self.spec = f"{name}:TASK" if module else f"{file}:TASK"

    @property
    def ran(self) -> bool:
        return self.marker.exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run (folder, config.yaml, best/last checkpoints) of a task with the payload's data, registered in
    this process under a plain name: its model fits the payload task."""
    from deepsets.train import TrainConfig, train

    register_task(Task(name="trust-fixture", target="regression", loader=_load, description="", in_dim=1,
                       out_dim=1, set_size=None, epochs=1))
    out = tmp_path_factory.mktemp("trust") / "run"
    torch.set_num_threads(1)
    train(TrainConfig(task="trust-fixture", model="deepsets++", depth=2, dim=8, epochs=1, batch_size=4,
                      regime="paper", progress=False, out=str(out)), echo=lambda *a: None)
    yield out
    TASKS.pop("trust-fixture", None)


def plant_checkpoint(src: Path, dst: Path, spec: str) -> Path:
    ckpt = torch.load(src, weights_only=True)
    ckpt["hyper_parameters"]["task"] = spec
    ckpt["hyper_parameters"]["train_config"]["task"] = spec
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, dst)
    return dst


def plant_run(trained: Path, dst: Path, spec: str) -> Path:
    """A copy of the run folder whose config.yaml and checkpoints record ``spec``."""
    shutil.copytree(trained, dst)
    for ckpt in (dst / "checkpoints").glob("*.ckpt"):
        plant_checkpoint(ckpt, ckpt, spec)
    cfg = yaml.safe_load((dst / "config.yaml").read_text())
    cfg["task"] = spec
    (dst / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dst


@pytest.fixture
def payload(tmp_path):
    return Payload(tmp_path)


@pytest.fixture
def module_payload(tmp_path, monkeypatch):
    p = Payload(tmp_path, module=True)
    monkeypatch.syspath_prepend(str(p.path))
    return p


# ---------------------------------------------------------------------------------------------- the lookup itself
def test_get_task_never_imports_and_import_task_does(payload, module_payload):
    for p in (payload, module_payload):
        with pytest.raises(UntrustedTaskError, match="name it again to run it: --task"):
            get_task(p.spec)
        assert not p.ran and p.spec not in TASKS
    from deepsets.data import import_task

    assert import_task(payload.spec).name == payload.spec and payload.ran
    assert get_task(payload.spec) is TASKS[payload.spec]  # imported in this process: registered
    assert get_task(module_payload.spec, trust_code=True).target == "regression" and module_payload.ran
    assert get_task("normal-var").paper  # built-in names need nothing


def test_load_task_imports_the_task_it_is_named(payload):
    from deepsets.data import load_task

    assert len(load_task(payload.spec, "test")) == 12 and payload.ran


def test_data_info_never_imports_the_task_a_file_names(payload, tmp_path, capsys):
    import h5py

    from deepsets.cli import main

    f = tmp_path / "sets.h5"
    with h5py.File(f, "w") as h:
        h["data"] = np.zeros((2, 3, 1), dtype=np.float32)
        h.attrs["deepsets_task"] = payload.spec
    main(["data", "info", str(f)])
    assert not payload.ran and f"{f} names the task '{payload.spec}', which is code" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- the command line
RUNNER = """
import contextlib, io, json, sys
from pathlib import Path
from deepsets.cli import main
results = []
for argv, marker in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    results.append({"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue(), "ran": Path(marker).exists()})
print(json.dumps(results))
"""


def cli_batch(commands: list[tuple[list, Payload]], cwd: Path) -> list[dict]:
    """``deepsets`` commands run one after another in one fresh process (the command line's ``main``); for each,
    its exit code, output and whether its payload had been imported once it ended."""
    paths = [str(ROOT / "src"), *{str(p.path) for _, p in commands}, os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    job = json.dumps([([str(a) for a in argv], str(p.marker)) for argv, p in commands])
    r = subprocess.run([sys.executable, "-c", RUNNER, job], capture_output=True, text=True, env=env, cwd=cwd,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def assert_refused(r: dict, payload: Payload, python: str | None = None):
    assert r["rc"] not in (0, None) and not r["ran"], r
    line = r["stderr"].strip().splitlines()[0]
    assert "Traceback" not in r["stderr"] and line.startswith("deepsets "), r["stderr"]
    assert f"'{payload.spec}', which is code" in line and f"--task {payload.spec}" in line, line
    if python:
        assert python in line, line


def test_cli_refuses_every_code_task_it_reads(trained, tmp_path):
    """eval, predict, export (pt2, onnx, hub) of a planted checkpoint, train --resume of a planted run folder,
    train/cv/tune --config of a planted file: each fails with one line, nothing imported."""
    file, module = Payload(tmp_path / "f"), Payload(tmp_path / "m", module=True)
    ckpt = plant_checkpoint(trained / "checkpoints" / "best.ckpt", tmp_path / "planted.ckpt", file.spec)
    mod_ckpt = plant_checkpoint(trained / "checkpoints" / "best.ckpt", tmp_path / "module.ckpt", module.spec)
    run = plant_run(trained, tmp_path / "run", file.spec)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"task": file.spec, "depth": 2, "dim": 8, "epochs": 1, "batch_size": 4,
                                   "regime": "paper", "progress": False}))
    sets = tmp_path / "sets.npy"
    np.save(sets, np.random.default_rng(0).normal(size=(3, 5, 1)).astype(np.float32))
    checkpoint_commands = [["eval", "--checkpoint", ckpt], ["predict", "--checkpoint", ckpt, "--input", sets],
                           ["export", "--checkpoint", ckpt, "--output", tmp_path / "m.pt2"],
                           ["export", "--checkpoint", ckpt, "--output", tmp_path / "m.onnx"],
                           ["export", "--checkpoint", ckpt, "--format", "hub", "--output", tmp_path / "hub"]]
    config_commands = [["train", "--config", cfg, "--out", tmp_path / "out"],
                       ["cv", "--folds", "2", "--config", cfg, "--out", tmp_path / "out"],
                       ["tune", "--folds", "2", "--trials", "1", "--config", cfg, "--out", tmp_path / "out"]]
    commands = [*[(c, file) for c in checkpoint_commands], (["eval", "--checkpoint", mod_ckpt], module),
                (["train", "--resume", "--out", run], file), *[(c, file) for c in config_commands],
                (["eval", "--checkpoint", ckpt, "--task", "normal-var"], file)]
    results = cli_batch(commands, tmp_path)
    for r in results[:5]:
        assert_refused(r, file, "trust_code=True")
        assert f"checkpoint {ckpt} was trained with" in r["stderr"]
    assert_refused(results[5], module, "trust_code=True")
    assert_refused(results[6], file, "TrainConfig(task=...)")
    assert f"the run to resume ({run / 'config.yaml'}) was trained with" in results[6]["stderr"]
    for r in results[7:10]:
        assert_refused(r, file, "TrainConfig(task=...)")
        assert f"{cfg} names the task" in r["stderr"]
    mismatch = results[10]  # another task than the checkpoint's: both named, nothing imported
    assert mismatch["rc"] == 1 and not mismatch["ran"] and f"{file.spec!r}, not 'normal-var'" in mismatch["stderr"]
    assert not any((tmp_path / n).exists() for n in ("m.pt2", "m.onnx", "hub", "out"))


def test_cli_imports_a_code_task_named_with_task(trained, tmp_path):
    """--task naming the recorded task again imports it, and the command works (one payload per command: each is
    imported by its own command)."""
    names = ["eval", "predict", "export", "module", "resume", "config"]
    p = {n: Payload(tmp_path / n, module=n == "module") for n in names}
    best = trained / "checkpoints" / "best.ckpt"
    ckpt = {n: plant_checkpoint(best, tmp_path / n / "planted.ckpt", p[n].spec) for n in ("eval", "predict", "export",
                                                                                      "module")}
    run = plant_run(trained, tmp_path / "run", p["resume"].spec)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"task": p["config"].spec, "depth": 2, "dim": 8, "epochs": 1, "batch_size": 4,
                                   "regime": "paper", "progress": False}))
    sets = tmp_path / "sets.npy"
    np.save(sets, np.random.default_rng(0).normal(size=(3, 5, 1)).astype(np.float32))
    commands = [(["eval", "--checkpoint", ckpt["eval"], "--task", p["eval"].spec], p["eval"]),
                (["predict", "--checkpoint", ckpt["predict"], "--input", sets, "--task", p["predict"].spec],
                 p["predict"]),
                (["export", "--checkpoint", ckpt["export"], "--format", "hub", "--output", tmp_path / "hub", "--task",
                  p["export"].spec], p["export"]),
                (["eval", "--checkpoint", ckpt["module"], "--task", p["module"].spec], p["module"]),
                (["train", "--resume", "--out", run, "--task", p["resume"].spec], p["resume"]),
                (["train", "--config", cfg, "--task", p["config"].spec, "--out", tmp_path / "out"], p["config"])]
    results = dict(zip(names, cli_batch(commands, tmp_path)))
    for n, r in results.items():
        assert r["rc"] == 0 and r["ran"], (n, r)
    assert json.loads(results["eval"]["stdout"].strip().splitlines()[-1])["task"] == p["eval"].spec
    assert len(results["predict"]["stdout"].strip().splitlines()) == 4  # header + 3 sets
    assert "checked" in results["export"]["stdout"] and (tmp_path / "hub" / "config.json").is_file()
    assert (tmp_path / "out" / "checkpoints" / "best.ckpt").is_file()


def test_the_deepsets_command_itself(trained, payload, tmp_path):
    """The same through ``python -m deepsets.cli``: refused with exit code 1 and one line, then run with --task."""
    ckpt = plant_checkpoint(trained / "checkpoints" / "best.ckpt", tmp_path / "planted.ckpt", payload.spec)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH"))
                                                      if p))
    command = [sys.executable, "-m", "deepsets.cli", "eval", "--checkpoint", str(ckpt)]
    r = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 1 and not payload.ran, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and f"--task {payload.spec} (Python: trust_code=True)" in lines[0], lines
    r = subprocess.run([*command, "--task", payload.spec], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 0 and payload.ran, r.stderr


# ---------------------------------------------------------------------------------------------- the Python API
def test_python_checkpoint_functions_refuse_then_trust(trained, payload, tmp_path):
    from deepsets.hub import checkpoint_to_pretrained
    from deepsets.train import evaluate, load_checkpoint
    from deepsets.train.predict import predict_file

    ckpt = plant_checkpoint(trained / "checkpoints" / "best.ckpt", tmp_path / "planted.ckpt", payload.spec)
    np.save(tmp_path / "sets.npy", np.random.default_rng(0).normal(size=(3, 5, 1)).astype(np.float32))
    calls = [lambda **kw: load_checkpoint(ckpt, **kw), lambda **kw: evaluate(ckpt, **kw),
             lambda **kw: predict_file(ckpt, tmp_path / "sets.npy", **kw),
             lambda **kw: checkpoint_to_pretrained(ckpt, tmp_path / "hub", **kw)]
    for call in calls:
        with pytest.raises(UntrustedTaskError, match=f"checkpoint {ckpt} was trained with the task") as e:
            call()
        assert e.value.spec == payload.spec and "trust_code=True" in str(e.value) and "\n" not in str(e.value)
        assert not payload.ran
    assert evaluate(ckpt, trust_code=True)["task"] == payload.spec and payload.ran
    for call in calls:  # imported in this process now: registered, nothing asked
        call()


def test_python_module_task_of_a_checkpoint(trained, module_payload, tmp_path):
    from deepsets.train import load_checkpoint

    ckpt = plant_checkpoint(trained / "checkpoints" / "best.ckpt", tmp_path / "planted.ckpt", module_payload.spec)
    with pytest.raises(UntrustedTaskError):
        load_checkpoint(ckpt)
    assert not module_payload.ran
    load_checkpoint(ckpt, trust_code=True)
    assert module_payload.ran


def test_from_pretrained_refuses_a_folders_code_task(payload, tmp_path):
    import deepsets

    pytest.importorskip("safetensors")
    model = deepsets.create_model("deepsets++", 1, 1, depth=2, dim=8)
    folder = model.save_pretrained(tmp_path / "hub", data_info={"target": "regression"})
    saved = json.loads((folder / "config.json").read_text())
    saved["data"]["task"] = payload.spec  # planted
    (folder / "config.json").write_text(json.dumps(saved))
    with pytest.raises(UntrustedTaskError, match=f"the model in {folder} was trained with the task"):
        deepsets.from_pretrained(folder)
    assert not payload.ran
    assert deepsets.from_pretrained(folder, trust_code=True).config.in_dim == 1 and payload.ran


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # a copied run folder
def test_python_resume_refuses_the_run_folders_code_task(trained, payload, tmp_path):
    from deepsets.train import TrainConfig, train

    run = plant_run(trained, tmp_path / "run", payload.spec)
    with pytest.raises(UntrustedTaskError, match="config.yaml"):
        train(TrainConfig(out=str(run), progress=False), resume=True, echo=lambda *a: None)
    assert not payload.ran
    train(TrainConfig(task=payload.spec, out=str(run), progress=False), resume=True, echo=lambda *a: None)
    assert payload.ran


def test_python_train_imports_the_task_it_is_given(payload, tmp_path):
    from deepsets.train import TrainConfig, train
    from deepsets.train.cv import cross_validate

    cfg = TrainConfig(task=payload.spec, depth=2, dim=8, epochs=1, batch_size=4, regime="paper", progress=False)
    with pytest.raises(UntrustedTaskError):
        cross_validate(cfg, folds=2, out=tmp_path / "cv", echo=lambda *a: None, trust_code=False)
    assert not payload.ran
    cfg.out = str(tmp_path / "run")
    train(cfg, echo=lambda *a: None)
    assert payload.ran and (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()
