"""`deepsets reproduce|cv --executor local|slurm`: one submitit job per run, gathered into the same results."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("submitit")
ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "deepsets.cli"]


def env():
    return dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_reproduce_with_the_local_executor_matches_in_process_and_resumes(tmp_path):
    out = tmp_path / "grid"
    args = ["reproduce", "table1", "--budget", "smoke", "--tasks", "normal-var", "--cells", "ds-clean-set-*",
            "ds-clean-layer-*",
            "--seeds", "0", "--out", str(out)]
    proc = subprocess.run(CLI + args + ["--executor", "local", "--parallel", "2"], capture_output=True, text=True,
                          env=env(), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((out / "results.json").read_text())
    cells = sorted(Path(r["checkpoint"]).parents[1].name for r in results)
    assert cells == ["ds-clean-layer-normal-var-s0", "ds-clean-set-normal-var-s0"]
    assert len(list((out / "jobs").glob("*_result.pkl"))) == 2  # one submitit job per (cell, seed)
    assert "Partial" not in (out / "results.md").read_text()
    # the same cell in this process gives the same number (the runs are seeded)
    here = tmp_path / "here"
    proc = subprocess.run(CLI + ["reproduce", "table1", "--budget", "smoke", "--tasks", "normal-var", "--cells",
                                 "ds-clean-set-normal-var", "--seeds", "0", "--out", str(here)],
                          capture_output=True, text=True, env=env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (mine,) = json.loads((here / "results.json").read_text())
    (theirs,) = [r for r in results if r["checkpoint"].endswith(str(Path("ds-clean-set-normal-var-s0") / "checkpoints" / "best.ckpt"))]
    assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
    # rerunning the command submits nothing new: every cell is done
    proc = subprocess.run(CLI + args + ["--executor", "local"], capture_output=True, text=True, env=env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(list((out / "jobs").glob("*_result.pkl"))) == 2  # finished cells are read, not submitted again
    assert json.loads((out / "results.json").read_text()) == results


def test_cv_folds_as_local_jobs(tmp_path):
    out = tmp_path / "cv"
    proc = subprocess.run(CLI + ["cv", "--task", "normal-var", "--folds", "2", "--depth", "2", "--dim", "16",
                                 "--epochs", "1", "--batch-size", "8", "--set-size", "16", "--n-train", "24",
                                 "--n-test", "8", "--no-progress", "--out", str(out), "--executor", "local"],
                          capture_output=True, text=True, env=env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cv = json.loads((out / "cv.json").read_text())
    assert cv["k"] == 2 and len(cv["folds"]) == 2 and [d["fold"] for d in cv["details"]] == [0, 1]
    assert (out / "fold-0" / "result.json").is_file() and (out / "fold-1" / "checkpoints" / "best.ckpt").is_file()


def test_slurm_jobs_get_the_documented_sbatch_parameters(tmp_path, monkeypatch):
    """The sbatch script submitit would submit (no cluster needed: a stand-in srun makes submitit build it)."""
    from deepsets.train.executors import SlurmOptions, make_executor

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ["PATH"])
    ex = make_executor("slurm", tmp_path / "jobs", SlurmOptions(partition="gpu", gpus_per_job=1, cpus_per_job=8,
                                                                time_min=90))
    script = ex._make_submission_file_text("python -m deepsets.cli", "uid")
    for line in ["#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --time=90", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --job-name=deepsets", "#SBATCH --signal=USR2@90"]:
        assert line in script, (line, script)


def test_slurm_executor_off_a_cluster_says_so(monkeypatch, tmp_path):
    from deepsets.train.executors import make_executor

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="not a SLURM node.*--executor local"):
        make_executor("slurm", tmp_path / "jobs")
