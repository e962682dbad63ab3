"""Deep Sets++ at depth 50 on Normal Var: set norm vs layer norm over seeds (and the reference layers).

Usage:
    python benchmarks/norm_comparison.py RUNS_DIR OUT.jsonl [--seeds 0 1 2 3 4] [--norms set layer]
        [--kernels-off-seeds 0 1 2] [--jobs 2]
    python benchmarks/norm_comparison.py --summarize OUT.jsonl

Each cell is one ``deepsets train`` (the budget below) followed by ``deepsets eval`` of its best checkpoint on
the test split; a cell whose JSON line is already in OUT.jsonl is skipped, so the script can be rerun.
``--kernels-off-seeds`` reruns the set-norm cells of those seeds with ``DEEPSETS_KERNELS=0`` (reference layers,
no fused CPU kernels). Every process gets ``OMP_NUM_THREADS=1``; ``--jobs`` cells run side by side.

One JSON line per cell: model, depth, norm, seed, kernels, test_mse (eval of best.ckpt), test_label_variance
(the MSE of predicting the mean), best_val_mse and
final_val_mse (from metrics.csv), wall_s and the two commands. ``--summarize`` prints the Markdown table and a
two-sided Mann-Whitney U test and Welch t-test of test_mse between the two norms (kernels on).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Lock

BUDGET = ["--task", "normal-var", "--set-size", "100", "--batch-size", "32", "--max-steps", "600", "--lr", "1e-4"]
MODEL, DEPTH = "deepsets++", 50


def cell_name(norm: str, seed: int, kernels: bool) -> str:
    return f"ds50-{norm}-s{seed}" + ("" if kernels else "-k0")


def run_cell(runs: Path, norm: str, seed: int, kernels: bool) -> dict:
    out = runs / cell_name(norm, seed, kernels)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DEEPSETS_THREADS": "1"}
    env_note = "OMP_NUM_THREADS=1"
    if not kernels:
        env["DEEPSETS_KERNELS"] = "0"
        env_note += " DEEPSETS_KERNELS=0"
    train = ["deepsets", "train", *BUDGET, "--seed", str(seed), "--model", MODEL, "--depth", str(DEPTH),
             "--norm", norm, "--no-progress", "--overwrite", "--out", str(out)]
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "deepsets.cli", *train[1:]], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.time() - t0
    ev_json = out / "eval.json"
    ev = ["deepsets", "eval", "--checkpoint", str(out / "checkpoints" / "best.ckpt"), "--json", str(ev_json)]
    subprocess.run([sys.executable, "-m", "deepsets.cli", *ev[1:]], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    test = json.loads(ev_json.read_text())
    with open(out / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_loss")]
    val = [float(r["val_loss"]) for r in rows]
    rel = lambda a: [str(x).replace(str(runs), "RUNS") for x in a]  # noqa: E731  (no machine paths in output)
    return {"model": MODEL, "depth": DEPTH, "norm": norm, "seed": seed, "kernels": kernels,
            "test_mse": round(test["mse"], 6),
            "test_label_variance": round(test["label_variance"], 4), "best_val_mse": round(min(val), 6),
            "final_val_mse": round(val[-1], 6), "steps": int(rows[-1]["step"]), "wall_s": round(wall, 1),
            "train_cmd": env_note + " " + " ".join(rel(train)), "eval_cmd": " ".join(rel(ev))}


def done_cells(path: Path) -> set:
    if not path.exists():
        return set()
    return {(r["norm"], r["seed"], r["kernels"]) for r in map(json.loads, path.read_text().splitlines()) if r}


def mean_se(v):
    m = sum(v) / len(v)
    se = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v)) if len(v) > 1 else float("nan")
    return m, se


def summarize(path: Path) -> None:
    from scipy import stats

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["norm"], r["kernels"]), []).append(r)
    print("| norm | kernels | n | test MSE mean +- s.e. | median | per seed (seed: test MSE) | final-val mean |")
    print("|---|---|---|---|---|---|---|")
    for (norm, kernels), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "set", not kv[0][1])):
        rs.sort(key=lambda r: r["seed"])
        t = [r["test_mse"] for r in rs]
        m, se = mean_se(t)
        med = sorted(t)[len(t) // 2] if len(t) % 2 else sum(sorted(t)[len(t) // 2 - 1:len(t) // 2 + 1]) / 2
        fv, _ = mean_se([r["final_val_mse"] for r in rs])
        per = ", ".join(f"{r['seed']}: {r['test_mse']:.4f}" for r in rs)
        print(f"| {norm} | {'on' if kernels else 'off (DEEPSETS_KERNELS=0)'} | {len(t)} | {m:.4f} +- {se:.4f} "
              f"| {med:.4f} | {per} | {fv:.4f} |")
    a = [r["test_mse"] for r in groups.get(("set", True), [])]
    b = [r["test_mse"] for r in groups.get(("layer", True), [])]
    if len(a) > 1 and len(b) > 1:
        u = stats.mannwhitneyu(a, b, alternative="two-sided")
        w = stats.ttest_ind(a, b, equal_var=False)
        print(f"\nset vs layer (kernels on), test MSE: n = {len(a)} vs {len(b)}; Mann-Whitney U = {u.statistic:.1f}, "
              f"two-sided p = {u.pvalue:.3f}; Welch t = {w.statistic:.2f}, p = {w.pvalue:.3f}")
    sa = {r["seed"]: r["test_mse"] for r in groups.get(("set", True), [])}
    la = {r["seed"]: r["test_mse"] for r in groups.get(("layer", True), [])}
    both = sorted(set(sa) & set(la))
    if both:
        wins = sum(sa[s] < la[s] for s in both)
        print(f"paired by seed (same seed: identical initial weights and data order): set norm lower in {wins} of {len(both)}")
    on = {r["seed"]: r["test_mse"] for r in groups.get(("set", True), [])}
    off = {r["seed"]: r["test_mse"] for r in groups.get(("set", False), [])}
    paired = sorted(set(on) & set(off))
    if paired:
        print("set norm, kernels on vs off, same seed: " + ", ".join(
            f"seed {s}: {on[s]:.4f} vs {off[s]:.4f} (relative difference {abs(on[s] - off[s]) / on[s]:.1%})"
            for s in paired))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="?", type=Path)
    p.add_argument("out", nargs="?", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--norms", nargs="+", default=["set", "layer"])
    p.add_argument("--kernels-off-seeds", type=int, nargs="*", default=[])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--summarize", type=Path, metavar="OUT.jsonl")
    a = p.parse_args()
    if a.summarize:
        summarize(a.summarize)
        return
    if a.runs is None or a.out is None:
        p.error("RUNS_DIR and OUT.jsonl are required (or --summarize OUT.jsonl)")
    a.runs.mkdir(parents=True, exist_ok=True)
    done = done_cells(a.out)
    # Seed-major order, so that a cut-short grid still has both norms of its first seeds.
    cells = [(n, s, True) for s in a.seeds for n in a.norms] + [("set", s, False) for s in a.kernels_off_seeds]
    cells = [c for c in cells if c not in done]
    lock = Lock()

    def work(cell):
        r = run_cell(a.runs, *cell)
        with lock, open(a.out, "a") as f:
            f.write(json.dumps(r) + "\n")
        print(json.dumps(r), flush=True)

    with ThreadPoolExecutor(a.jobs) as ex:
        list(ex.map(work, cells))


if __name__ == "__main__":
    main()
