"""Re-evaluate finished reproduction runs whose best.ckpt is not their lowest validation loss.

Usage: python benchmarks/reselect_best.py [ROOT ...]      (default: benchmarks/reproduce)

Before the fix of 2026-12-02, a step budget that ended mid-epoch validated once more at the end but kept the
older best.ckpt even when that final validation was the lowest. The final state is last.ckpt (saved right after
that validation), so such a run is repaired without training: last.ckpt becomes best.ckpt and the test split is
evaluated again; results.json keeps its training fields and gains ``"reselected": true``. A run whose best row is
neither best.ckpt nor last.ckpt is reported and left alone.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

from deepsets.train.callbacks import read_metrics
from deepsets.files import write_json
from deepsets.train import evaluate


def step_of(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])


def main(roots: list[str]) -> None:
    for root in roots or ["benchmarks/reproduce"]:
        for done in sorted(Path(root).glob("*/runs/*/results.json")):
            run = done.parent
            best_ckpt, last_ckpt = run / "checkpoints" / "best.ckpt", run / "checkpoints" / "last.ckpt"
            rows = read_metrics(run / "metrics.csv")
            want = min(rows, key=lambda r: r["val_loss"])["step"]
            if not best_ckpt.is_file():
                print(f"{run}: no checkpoints here (a fresh clone?): skipped")
                continue
            have = step_of(best_ckpt)
            if have == want:
                continue
            if not last_ckpt.is_file() or step_of(last_ckpt) != want:
                print(f"{run}: best validation at step {want}, best.ckpt at {have}, last.ckpt elsewhere: left alone")
                continue
            old = json.loads(done.read_text())
            shutil.copyfile(last_ckpt, best_ckpt)
            new = evaluate(best_ckpt)
            keep = {k: old[k] for k in ("train_seconds", "steps", "epochs", "paper", "seed") if k in old}
            write_json(done, {**new, **keep, "reselected": True})
            key = "mse" if "mse" in new else "accuracy"
            print(f"{run}: best.ckpt step {have} -> {want}; test {key} {old.get(key):.4f} -> {new[key]:.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
