"""Own-data benchmarks: the ``deepsets`` CLI exactly as a new user runs it, beside simple baselines.

Every deep-sets number here comes from the command line with data-description flags only (which file, which
column is the set, which the label, regression or classification): no model, optimisation or preprocessing
flag, so the numbers measure the project's defaults at the time of the run (the resolved settings the CLI chose
are recorded in the JSON).  Every baseline is computed on exactly the same folds, read back from ``cv.json``
(``fold_sets``: the set ids of each fold's test part).

Subcommands (each writes ``benchmarks/own-data/<name>.json`` and ``.md`` and prints a markdown table; scratch
data, CLI run folders and logs go to ``benchmarks/own-data/work/``, which is git-ignored)::

    .venv/bin/python benchmarks/own_data.py mil          # MUSK1, MUSK2, Elephant: 10-fold deepsets cv vs pooled LR
    .venv/bin/python benchmarks/own_data.py cytometry    # simulated FCS regression: 5-fold cv vs linear on means
    .venv/bin/python benchmarks/own_data.py set-size     # train once, predict 1e3/1e4/1e5-event files, eval --set-sizes
    .venv/bin/python benchmarks/own_data.py all          # the three, one after another
    # small end-to-end check of each (writes *-quick.json / *-quick.md):
    .venv/bin/python benchmarks/own_data.py mil --quick
    .venv/bin/python benchmarks/own_data.py cytometry --quick
    .venv/bin/python benchmarks/own_data.py set-size --quick

The exact CLI commands (``DS`` = the ``deepsets`` executable beside this Python, ``W`` = the work folder; run folders are
named after the output, e.g. ``W/mil/mil-quick/`` for ``mil --quick``):

``mil`` (per data set NAME; the table has columns ``bag``, ``label`` (0/1), ``f0..f{D-1}``)::

    DS cv --folds 10 --data W/mil/NAME.csv --set-column bag --label-column label --out W/mil/mil/NAME-cv --no-progress

  Baseline (as ``benchmarks/mil.py``): per bag the mean, max and min of every feature, StandardScaler,
  LogisticRegression with C in logspace(-3, 3, 7) chosen by GridSearchCV(StratifiedKFold(5, shuffle, seed 0),
  accuracy) on the training part of each fold; accuracy and ROC-AUC (of predict_proba) per test fold.
  Reference: published attention-MIL accuracies (Ilse et al. 2018; their folds, not ours).

``cytometry`` (a folder of simulated FCS files plus ``labels.csv`` with columns ``set,label``)::

    DS cv --folds 5 --data W/cytometry/fcs --target regression --out W/cytometry/cytometry --no-progress

  Baselines on the same folds: LinearRegression on each file's per-channel means (raw values), and on the
  per-channel means of arcsinh(x / 150); both use every channel but Time.  A "training mean" row gives R^2 ~ 0;
  an "oracle" row (linear on two hand gates that know the simulation's rule) shows what is attainable.

``set-size`` (train on the cytometry files, then predict / evaluate on 100,000-event files never trained on)::

    DS train --data W/cytometry/fcs --target regression --out W/set-size/set-size/train-default --no-progress
    DS train --data W/cytometry/fcs --target regression --pool P --out W/set-size/set-size/train-pool-P --no-progress
          (P = the other of sum / mean when the default pooling is sum or mean; both when it is neither)
    DS predict --checkpoint CKPT --input W/set-size/predict [--whole-sets] --output W/set-size/set-size/predict-TAG-MODE.csv
          (predict/ holds one 100,000-event file and the same file subsampled to 1,000 and 10,000 events)
    DS eval --checkpoint CKPT --data W/set-size/test --set-sizes 100 1000 10000 100000 --json W/set-size/set-size/eval-TAG.json

Options: ``--data`` (mil: which sets), ``--extra-flags "..."`` (further CLI flags appended to the cv / train
commands: for experiments only, the result is then written under a different name and marked as such, never
as the default run), ``--quick`` (fewer files / folds), ``--timeout`` (seconds per CLI command, default 600:
a longer run is stopped and reported), ``--work`` (scratch folder), ``--deepsets`` (the executable),
``--tag`` (suffix of the output names).  An experiment, e.g.::

    .venv/bin/python benchmarks/own_data.py mil --data musk2 --extra-flags "--pool mean" --tag musk2-pool-mean

Determinism: the simulated data come from fixed seeds (``--seed``, default 0), the CLI runs use the CLI's
default seed, the baselines are deterministic; deep-sets numbers can still differ slightly between machines
(floating point, thread counts).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT_DIR = HERE / "own-data"
DEFAULT_WORK = OUT_DIR / "work"
sys.path.insert(0, str(HERE))

MIL_SETS = ("musk1", "musk2", "elephant")
# Published accuracies of attention-based MIL (Ilse, Tomczak & Welling, ICML 2018, Table 1, "Attention"),
# mean over 5 repetitions of 10-fold CV: reference only, their folds are not ours.
ILSE_2018 = {"musk1": 0.892, "musk2": 0.858, "elephant": 0.868}

# Simulated cytometry: (PnN, PnS) of every channel; fluorescence channels carry the marker in PnS, as
# a BD/Cytek export does.  The CLI names features by PnN and leaves Time out by itself.
FCS_CHANNELS = [("FSC-A", ""), ("SSC-A", ""), ("FITC-A", "CD3"), ("PE-A", "CD4"), ("PerCP-Cy5.5-A", "CD8"),
                ("PE-Cy7-A", "CD56"), ("APC-A", "CD19"), ("APC-H7-A", "CD14"), ("Time", "")]
ARCSINH_COFACTOR = 150.0
SET_SIZES = (100, 1000, 10000, 100000)


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which and why."""


# ============================================================================ helpers

def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def mean_se(values: Sequence[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    ok = a[np.isfinite(a)]
    se = float(ok.std(ddof=1) / math.sqrt(len(ok))) if len(ok) > 1 else float("nan")
    return {"folds": [float(v) for v in a], "mean": float(ok.mean()) if len(ok) else float("nan"), "se": se}


def fmt(m: dict | None, digits: int = 3) -> str:
    if not m or m.get("mean") is None or not np.isfinite(m["mean"]):
        return "-"
    if m.get("se") is None or not np.isfinite(m["se"]):
        return f"{m['mean']:.{digits}f}"
    return f"{m['mean']:.{digits}f} ± {m['se']:.{digits}f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def versions() -> dict:
    out = {"loadavg_1_5_15": [round(v, 2) for v in os.getloadavg()], "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "platform": platform.platform()}
    for pkg in ("deepsets", "torch", "lightning", "numpy", "pandas", "scikit-learn", "flowio"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_state() -> dict:
    """Commit and whether src/ differs from it (read-only git commands; the defaults are being tuned)."""
    def run(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    status = run("status", "--porcelain", "--", "src")
    return {"commit": run("rev-parse", "HEAD"),
            "src_modified": None if status is None else [ln[3:] for ln in status.splitlines()]}


def find_deepsets(given: str | None) -> str:
    if given:
        path = shutil.which(given) or given
    else:
        beside = Path(sys.executable).parent / "deepsets"
        path = str(beside) if beside.is_file() else shutil.which("deepsets")
    if not path or not Path(path).is_file():
        raise BenchError("the `deepsets` command was not found beside this Python nor on PATH; install the project "
                         "(pip install -e .) or pass --deepsets PATH")
    return str(path)


class CLI:
    """Runs ``deepsets`` commands one at a time, logs their output, times them, stops them after a timeout."""

    def __init__(self, exe: str, timeout: float, log_dir: Path):
        self.exe, self.timeout, self.log_dir = exe, timeout, log_dir
        self.n = 0

    def display(self, args: Sequence[str]) -> str:
        def short(a: str) -> str:
            try:
                return str(Path(a).resolve().relative_to(REPO)) if os.sep in a else a
            except ValueError:
                return a
        return "deepsets " + " ".join(shlex.quote(short(str(a))) for a in args)

    def __call__(self, args: Sequence[str], name: str) -> dict:
        args = [str(a) for a in args]
        self.n += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{self.n:02d}-{name}.log"
        shown = self.display(args)
        print(f"  $ {shown}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        with open(log, "w") as fh:
            fh.write(f"# {shown}\n# started {now()}\n")
            fh.flush()
            proc = subprocess.Popen([self.exe, *args], stdout=fh, stderr=subprocess.STDOUT, cwd=REPO,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)  # the process group this call started, nothing else
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                raise BenchError(f"`{shown}` ran longer than {self.timeout:.0f} s and was stopped; log: {log}")
            except KeyboardInterrupt:
                os.killpg(proc.pid, signal.SIGTERM)
                raise
        wall = time.perf_counter() - t0
        output = log.read_text(errors="replace")
        if rc != 0:
            tail = "\n".join(output.splitlines()[-25:])
            raise BenchError(f"`{shown}` failed with exit status {rc} after {wall:.1f} s; log: {log}\n{tail}")
        lines = [ln for ln in output.splitlines()[2:]]
        print(f"    ({wall:.1f} s)", file=sys.stderr, flush=True)
        return {"command": shown, "wall_s": round(wall, 2), "log": str(log), "output": lines,
                "notes": {k: next((ln.partition(": ")[2] for ln in lines if ln.startswith(k + ": ")), None)
                          for k in ("target", "regime", "prediction", "transform", "standardize")}}


def read_cv(run_dir: Path) -> dict:
    path = run_dir / "cv.json"
    if not path.is_file():
        raise BenchError(f"the cv run finished but {path} does not exist")
    cv = json.loads(path.read_text())
    missing = [k for k in ("metric", "folds", "mean", "se", "metrics", "fold_sets") if k not in cv]
    if missing:
        raise BenchError(f"{path} lacks the keys {missing} (DESIGN.md contract: metric, folds, mean, se, metrics, "
                         f"fold_sets); got {sorted(cv)}")
    return cv


def check_folds(fold_sets: list[list], all_ids: Sequence[str], n_folds: int, where: str) -> list[list[str]]:
    folds = [[str(s) for s in f] for f in fold_sets]
    if len(folds) != n_folds:
        raise BenchError(f"{where}: fold_sets has {len(folds)} folds, expected {n_folds}")
    flat = [s for f in folds for s in f]
    known = set(map(str, all_ids))
    if len(flat) != len(set(flat)):
        raise BenchError(f"{where}: a set id is in more than one test fold")
    unknown = sorted(set(flat) - known)
    if unknown:
        raise BenchError(f"{where}: fold_sets names sets that are not in the data: {unknown[:5]}")
    left = sorted(known - set(flat))
    if left:
        raise BenchError(f"{where}: sets in no test fold: {left[:5]} ({len(left)} in all)")
    return folds


def fold_indices(folds: list[list[str]], ids: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    pos = {str(s): i for i, s in enumerate(ids)}
    out = []
    for f in folds:
        test = np.array(sorted(pos[s] for s in f))
        train = np.setdiff1d(np.arange(len(ids)), test)
        out.append((train, test))
    return out


def cv_summary(cv: dict) -> dict:
    cfg = cv.get("config") or {}
    keep = ("task", "target", "model", "depth", "dim", "norm", "residual", "pool", "epochs", "batch_size", "lr",
            "weight_decay", "ensemble", "regime", "patience", "metric", "set_size", "eval_subsets", "transform",
            "standardize", "seed", "val_fraction")
    return {k: cfg.get(k) for k in keep if k in cfg}


def write_outputs(stem: str, result: dict, table: str) -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (OUT_DIR / f"{stem}.md").write_text(table + "\n")
    print(table)
    print(f"\nwrote {(OUT_DIR / f'{stem}.json').relative_to(REPO)} and .md", file=sys.stderr)


def output_stem(base: str, args) -> str:
    stem = base + ("-quick" if args.quick else "")
    if args.extra_flags:
        stem += "-" + (args.tag or "extra")
    elif args.tag:
        stem += "-" + args.tag
    return stem


def fresh(path: Path) -> Path:
    """An empty scratch folder (only ever under the work folder)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# ============================================================================ mil

def mil_baseline(bags, labels, fold_list) -> dict:
    """Pooled [mean, max, min] + StandardScaler + LogisticRegression (C by inner CV) as benchmarks/mil.py."""
    from mil import C_GRID, FOLD_SEED, INNER_FOLDS, pool_features
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = pool_features([np.asarray(b, dtype=np.float64) for b in bags])  # pooled in float64 (float32 loses digits)
    acc, auc, chosen = [], [], []
    t0 = time.perf_counter()
    for train, test in fold_list:
        search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=10_000)),
                              {"logisticregression__C": C_GRID},
                              cv=StratifiedKFold(INNER_FOLDS, shuffle=True, random_state=FOLD_SEED),
                              scoring="accuracy")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            search.fit(X[train], labels[train])
        acc.append(float(np.mean(search.predict(X[test]) == labels[test])))
        p1 = search.predict_proba(X[test])[:, list(search.classes_).index(1)]
        auc.append(float(roc_auc_score(labels[test], p1)) if len(set(labels[test])) == 2 else float("nan"))
        chosen.append(float(search.best_params_["logisticregression__C"]))
    return {"accuracy": mean_se(acc), "roc_auc": mean_se(auc), "C": chosen,
            "wall_s": round(time.perf_counter() - t0, 2),
            "description": f"per bag mean|max|min of each feature (float64), StandardScaler, LogisticRegression(max_iter=10000), "
                           f"C in {list(map(float, C_GRID))} by GridSearchCV(StratifiedKFold({INNER_FOLDS}, "
                           f"shuffle=True, random_state={FOLD_SEED}), accuracy) on each training part"}


def write_mil_table(name: str, path: Path, fmt_: str) -> tuple[list, np.ndarray, list[str]]:
    import pandas as pd
    from mil_data import load_mil

    bags, labels, ids = load_mil(name)
    sizes = [len(b) for b in bags]
    df = pd.DataFrame(np.concatenate(bags, axis=0), columns=[f"f{j}" for j in range(bags[0].shape[1])])
    df.insert(0, "label", np.repeat(labels, sizes))  # 0/1: the CLI infers classification (two values)
    df.insert(0, "bag", np.repeat(np.asarray(ids, dtype=object), sizes))
    if fmt_ == "parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
    return bags, labels, ids


def cmd_mil(args, cli: CLI) -> dict:
    n_folds = 3 if args.quick else 10
    data = args.data or (["musk1"] if args.quick else list(MIL_SETS))
    bad = [d for d in data if d not in MIL_SETS]
    if bad:
        raise BenchError(f"--data {bad}: the MIL sets are {list(MIL_SETS)}")
    extra = shlex.split(args.extra_flags or "")
    work = args.work / "mil"
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for name in data:
        print(f"[mil] {name}", file=sys.stderr, flush=True)
        table = work / f"{name}.{args.format}"
        bags, labels, ids = write_mil_table(name, table, args.format)
        run_dir = work / output_stem("mil", args) / f"{name}-cv"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run = cli(["cv", "--folds", n_folds, "--data", table, "--set-column", "bag", "--label-column", "label",
                   "--out", run_dir, "--no-progress", *extra], f"mil-{name}-cv")
        cv = read_cv(run_dir)
        folds = check_folds(cv["fold_sets"], ids, n_folds, f"{run_dir}/cv.json")
        fold_list = fold_indices(folds, ids)
        base = mil_baseline(bags, labels, fold_list)
        ds = {m: cv["metrics"].get(m) for m in ("accuracy", "roc_auc", "balanced_accuracy", "log_loss")}
        for m in ("accuracy", "roc_auc"):
            if not ds.get(m) or len(ds[m]["folds"]) != n_folds:
                raise BenchError(f"{run_dir}/cv.json: metrics.{m} missing or not one value per fold")
        diff = {m: mean_se(np.asarray(ds[m]["folds"]) - np.asarray(base[m]["folds"])) for m in ("accuracy", "roc_auc")}
        results.append({
            "data": name, "bags": len(bags), "instances": int(sum(len(b) for b in bags)),
            "features": int(bags[0].shape[1]), "positive_bags": int(labels.sum()),
            "table": str(table.relative_to(REPO) if table.is_relative_to(REPO) else table),
            "deepsets": {**ds, "wall_s": run["wall_s"], "command": run["command"], "printed": run["notes"],
                         "resolved": cv_summary(cv), "stratified": cv.get("stratified")},
            "baseline": base, "deepsets_minus_baseline": diff,
            "fold_sets": folds, "reference_ilse2018_accuracy": ILSE_2018.get(name)})
        r = results[-1]
        print(f"    deepsets acc {fmt(ds['accuracy'])} auc {fmt(ds['roc_auc'])} ({run['wall_s']:.0f} s); "
              f"baseline acc {fmt(base['accuracy'])} auc {fmt(base['roc_auc'])}", file=sys.stderr, flush=True)

    rows = []
    for r in results:
        d, b = r["deepsets"], r["baseline"]
        rows.append([r["data"], ("deepsets cv + " + " ".join(extra) if extra else "deepsets cv (defaults)"),
                     fmt(d["accuracy"]), fmt(d["roc_auc"]), f"{d['wall_s']:.0f}"])
        rows.append([r["data"], "pooled LR baseline (same folds)", fmt(b["accuracy"]), fmt(b["roc_auc"]),
                     f"{b['wall_s']:.0f}"])
        rows.append([r["data"], "deepsets − baseline (paired)", fmt(r["deepsets_minus_baseline"]["accuracy"]),
                     fmt(r["deepsets_minus_baseline"]["roc_auc"]), ""])
        rows.append([r["data"], "Ilse et al. 2018 attention (their folds)", f"{ILSE_2018[r['data']]:.3f}", "-", "-"])
    regimes = {r["data"]: r["deepsets"]["printed"].get("regime") for r in results}
    table = (f"### Own data: MIL ({n_folds}-fold CV, folds from `deepsets cv`, {now()[:10]})\n\n"
             + md_table(["data", "model", "accuracy", "ROC-AUC", "wall s"], rows)
             + "\n\nmean ± s.e. over folds (std ddof=1 / √folds). CLI regime as printed: "
             + "; ".join(f"{k}: {v}" for k, v in regimes.items()))
    return {"table": table, "results": results, "n_folds": n_folds, "extra_flags": extra,
            "protocol": {"deepsets": "deepsets cv with data-description flags only; folds chosen by the CLI "
                                     "(cv.json fold_sets)",
                         "baseline": results[0]["baseline"]["description"] if results else None,
                         "se": "std(ddof=1)/sqrt(n_folds)",
                         "reference": "Ilse, Tomczak & Welling 2018, Table 1 (attention), mean of 5x10-fold CV"}}


# ============================================================================ cytometry simulation

def simulate_file(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict]:
    """One simulated blood sample: [n, 9] raw events (FSC-A, SSC-A, CD3, CD4, CD8, CD56, CD19, CD14, Time) and
    its hidden parameters.  Target = 10 * (CD3+CD56+ frequency, 1-10 %) + level of CD4 on CD4 T cells (0-1)."""
    f_nkt = rng.uniform(0.01, 0.10)          # CD3+ CD56+ (the subpopulation of interest)
    f_nk = rng.uniform(0.03, 0.15)           # CD3- CD56+ (nuisance: moves the CD56 mean too)
    f_b = rng.uniform(0.05, 0.15)            # CD19+
    f_mono = rng.uniform(0.05, 0.20)         # CD14+, large and granular
    f_debris = rng.uniform(0.01, 0.04)
    f_t = 1.0 - f_nkt - f_nk - f_b - f_mono - f_debris
    cd4_share = rng.uniform(0.5, 0.75)       # of the conventional T cells
    cd4_level = rng.uniform(0.0, 1.0)        # CD4 brightness on CD4 T cells: 2**(1+cd4_level) x 3,000
    p = np.array([f_t * cd4_share, f_t * (1 - cd4_share), f_nkt, f_nk, f_b, f_mono, f_debris])
    pop = rng.choice(len(p), size=n, p=p / p.sum())
    gain = np.exp(rng.normal(0.0, 0.05))     # per-sample instrument drift (all fluorescence)

    def neg(k):  # compensated negative: spread around ~0 with a negative tail
        return rng.normal(80.0, 220.0, k) + rng.exponential(60.0, k)

    def pos(k, median, sd=0.35):
        return rng.lognormal(np.log(median), sd, k)

    ev = np.empty((n, 9), dtype=np.float64)
    fl = np.empty((n, 6))  # CD3, CD4, CD8, CD56, CD19, CD14
    for j in range(6):
        fl[:, j] = neg(n)
    marker_on = {  # population -> [(marker column, median)]
        0: [(0, 8000), (1, 3000 * 2 ** (1 + cd4_level))],
        1: [(0, 8000), (2, 12000)],
        2: [(0, 6000), (3, 4000)],
        3: [(3, 6000)],
        4: [(4, 9000)],
        5: [(5, 15000), (1, 1200)],  # monocytes are CD4 dim
        6: [],
    }
    for k, markers in marker_on.items():
        idx = np.flatnonzero(pop == k)
        for col, med in markers:
            fl[idx, col] = pos(len(idx), med)
    fl *= gain
    lymph = pop <= 4
    mono, debris = pop == 5, pop == 6
    ev[:, 0] = np.where(lymph, rng.normal(55000, 7000, n), np.where(mono, rng.normal(85000, 10000, n),
                                                                     rng.uniform(2000, 20000, n)))
    ev[:, 1] = np.where(lymph, rng.lognormal(np.log(12000), 0.25, n),
                        np.where(mono, rng.lognormal(np.log(40000), 0.2, n), rng.uniform(500, 8000, n)))
    ev[:, 0:2] = np.clip(ev[:, 0:2], 0, 100_000)
    ev[:, 2:8] = np.clip(fl, None, 100_000)
    ev[:, 8] = np.sort(rng.uniform(0, n / 2000.0, n)) * 100.0  # Time in 0.01 s ticks, in acquisition order
    label = 10.0 * f_nkt + cd4_level + rng.normal(0.0, 0.02)
    return ev.astype(np.float32), {"label": float(label), "f_cd3_cd56": float(f_nkt), "cd4_level": float(cd4_level),
                                   "events": int(n), "debris": float(f_debris)}


def write_fcs(path: Path, events: np.ndarray) -> None:
    import flowio

    with open(path, "wb") as fh:
        flowio.create_fcs(fh, np.asarray(events, dtype=np.float32).ravel().tolist(),
                          [c for c, _ in FCS_CHANNELS], opt_channel_names=[s for _, s in FCS_CHANNELS])


def read_fcs(path: Path) -> np.ndarray:
    import flowio

    f = flowio.FlowData(str(path))
    arr = np.reshape(np.asarray(f.events, dtype=np.float64), (-1, f.channel_count)) \
        if not hasattr(f, "as_array") else np.asarray(f.as_array(preprocess=False), dtype=np.float64)
    names = [f.channels[i + 1]["pnn"] for i in range(f.channel_count)]
    if names != [c for c, _ in FCS_CHANNELS]:
        raise BenchError(f"{path}: channels {names}, expected {[c for c, _ in FCS_CHANNELS]}")
    return arr


def make_fcs_folder(folder: Path, n_files: int, log10_events: tuple[float, float], seed: int,
                    fixed_events: int | None = None) -> list[dict]:
    """Write ``n_files`` simulated FCS files ``s000.fcs`` ... and ``labels.csv`` (set,label) into ``folder``."""
    fresh(folder)
    rng = np.random.default_rng(seed)
    info = []
    for i in range(n_files):
        n = fixed_events or int(round(10 ** rng.uniform(*log10_events)))
        ev, meta = simulate_file(np.random.default_rng([seed, i]), n)
        name = f"s{i:03d}"
        write_fcs(folder / f"{name}.fcs", ev)
        info.append({"set": name, **meta})
    with open(folder / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["set", "label"])
        w.writerows([[d["set"], f"{d['label']:.6f}"] for d in info])
    (folder.parent / f"{folder.name}-truth.json").write_text(json.dumps(info, indent=1))
    return info


def channel_means(folder: Path, sets: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per file: mean of each channel but Time, raw and after arcsinh(x / 150); and two hand-gated features that
    know the simulation's rule (an oracle, not a fair baseline): the share of CD3+CD56+ events and the mean
    arcsinh CD4 of CD3+CD4+ events (gate: arcsinh(x / 150) > 3)."""
    keep = [i for i, (c, _) in enumerate(FCS_CHANNELS) if c != "Time"]
    col = {s or c: j for j, (c, s) in enumerate(FCS_CHANNELS[i] for i in keep)}
    raw, asinh, gated = [], [], []
    for s in sets:
        x = read_fcs(folder / f"{s}.fcs")[:, keep]
        a = np.arcsinh(x / ARCSINH_COFACTOR)
        raw.append(x.mean(0))
        asinh.append(a.mean(0))
        cd3, cd4, cd56 = a[:, col["CD3"]] > 3, a[:, col["CD4"]] > 3, a[:, col["CD56"]] > 3
        gated.append([np.mean(cd3 & cd56), a[cd3 & cd4, col["CD4"]].mean() if np.any(cd3 & cd4) else 0.0])
    return np.asarray(raw), np.asarray(asinh), np.asarray(gated)


def regression_baselines(X_by_name: dict, y: np.ndarray, fold_list) -> dict:
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import mean_squared_error, r2_score

    out = {}
    for name, X in X_by_name.items():
        mse, r2 = [], []
        for train, test in fold_list:
            if X is None:
                pred = np.full(len(test), y[train].mean())
            else:
                pred = LinearRegression().fit(X[train], y[train]).predict(X[test])
            mse.append(float(mean_squared_error(y[test], pred)))
            r2.append(float(r2_score(y[test], pred)))
        out[name] = {"mse": mean_se(mse), "r2": mean_se(r2)}
    return out


def cytometry_sizes(args) -> tuple[int, tuple[float, float], int]:
    if args.quick:
        return args.files or 16, (3.0, 4.0), 3
    return args.files or 48, (4.0, 5.0), 5


def ensure_cytometry_folder(args) -> tuple[Path, list[dict]]:
    n_files, span, _ = cytometry_sizes(args)
    folder = args.work / ("cytometry-quick" if args.quick else "cytometry") / "fcs"
    stamp = folder.parent / f"{folder.name}-stamp.json"
    want = {"files": n_files, "log10_events": list(span), "seed": args.seed, "channels": FCS_CHANNELS}
    truth = folder.parent / f"{folder.name}-truth.json"
    if stamp.is_file() and truth.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(want)):
        return folder, json.loads(truth.read_text())
    print(f"[cytometry] writing {n_files} FCS files to {folder}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    info = make_fcs_folder(folder, n_files, span, args.seed)
    stamp.write_text(json.dumps(want))
    print(f"    ({time.perf_counter() - t0:.1f} s, {sum(d['events'] for d in info):,} events)", file=sys.stderr)
    return folder, info


def cmd_cytometry(args, cli: CLI) -> dict:
    n_files, span, n_folds = cytometry_sizes(args)
    extra = shlex.split(args.extra_flags or "")
    folder, info = ensure_cytometry_folder(args)
    run_dir = folder.parent / output_stem("cytometry", args)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run = cli(["cv", "--folds", n_folds, "--data", folder, "--target", "regression", "--out", run_dir,
               "--no-progress", *extra], "cytometry-cv")
    cv = read_cv(run_dir)
    ids = [d["set"] for d in info]
    folds = check_folds(cv["fold_sets"], ids, n_folds, f"{run_dir}/cv.json")
    fold_list = fold_indices(folds, ids)
    y = np.array([d["label"] for d in info])
    t0 = time.perf_counter()
    raw, asinh, gated = channel_means(folder, ids)
    base = regression_baselines({"linear on channel means (raw)": raw,
                                 f"linear on channel means of arcsinh(x/{ARCSINH_COFACTOR:g})": asinh,
                                 "training mean": None,
                                 "oracle: linear on 2 hand gates that know the rule": gated}, y, fold_list)
    base_wall = time.perf_counter() - t0
    ds = {m: cv["metrics"].get(m) for m in ("mse", "mae", "r2")}
    for m in ("mse", "r2"):
        if not ds.get(m) or len(ds[m]["folds"]) != n_folds:
            raise BenchError(f"{run_dir}/cv.json: metrics.{m} missing or not one value per fold")
    rows = [[("deepsets cv + " + " ".join(extra) if extra else "deepsets cv (defaults)"), fmt(ds["mse"], 4),
             fmt(ds["r2"]), f"{run['wall_s']:.0f}"]]
    for name, b in base.items():
        rows.append([name + " (same folds)", fmt(b["mse"], 4), fmt(b["r2"]), f"{base_wall:.0f}" if
                     name.startswith("linear on channel means (raw)") else ""])
    ev = [d["events"] for d in info]
    table = (f"### Own data: simulated cytometry regression ({n_files} FCS files, {min(ev):,}-{max(ev):,} events, "
             f"{n_folds}-fold CV, {now()[:10]})\n\n"
             + md_table(["model", "MSE", "R²", "wall s"], rows)
             + f"\n\nlabel = 10 × frequency of CD3+CD56+ cells (1-10 %) + CD4 level on CD4 T cells (0-1); label "
               f"variance {y.var(ddof=1):.4f}. mean ± s.e. over folds. CLI regime as printed: "
               f"{run['notes'].get('regime')}")
    return {"table": table, "n_files": n_files, "events": {"min": min(ev), "max": max(ev), "total": sum(ev)},
            "n_folds": n_folds, "extra_flags": extra, "label_variance": float(y.var(ddof=1)),
            "deepsets": {**ds, "wall_s": run["wall_s"], "command": run["command"], "printed": run["notes"],
                         "cli_output": [ln for ln in run["output"] if not ln.startswith("fold ")][:40],
                         "resolved": cv_summary(cv)},
            "baselines": base, "baseline_wall_s": round(base_wall, 2), "fold_sets": folds,
            "simulation": {"seed": args.seed, "channels": FCS_CHANNELS, "log10_events": list(span),
                           "label": "10 * f(CD3+CD56+) + cd4_level + N(0, 0.02)"}}


# ============================================================================ set size

def read_predictions(path: Path) -> dict:
    with open(path, newline="") as fh:
        return {row["set"]: {k: v for k, v in row.items() if k != "set"} for row in csv.DictReader(fh)}


def cmd_set_size(args, cli: CLI) -> dict:
    n_files, span, _ = cytometry_sizes(args)
    train_folder, _ = ensure_cytometry_folder(args)
    base = args.work / ("set-size-quick" if args.quick else "set-size")
    base.mkdir(parents=True, exist_ok=True)
    n_big = 20_000 if args.quick else 100_000
    n_test = 4 if args.quick else 10
    # held-out files (other seed), every one with n_big events
    test_folder = base / "test"
    stamp = test_folder.parent / "test-stamp.json"
    want = {"files": n_test, "events": n_big, "seed": args.seed + 1000}
    if not (stamp.is_file() and json.loads(stamp.read_text()) == want):
        print(f"[set-size] writing {n_test} held-out FCS files of {n_big:,} events", file=sys.stderr, flush=True)
        make_fcs_folder(test_folder, n_test, (0, 0), args.seed + 1000, fixed_events=n_big)
        stamp.write_text(json.dumps(want))
    truth = json.loads((test_folder.parent / "test-truth.json").read_text())
    # one whole file and the same file subsampled
    pred_folder = fresh(base / "predict")
    full = read_fcs(test_folder / "s000.fcs")
    rng = np.random.default_rng(args.seed)
    files = {}
    for n in (1000, 10_000):
        keep = np.sort(rng.choice(len(full), size=n, replace=False))
        write_fcs(pred_folder / f"sub{n}.fcs", full[keep])
        files[f"sub{n}"] = n
    write_fcs(pred_folder / "whole.fcs", full)
    files["whole"] = len(full)

    extra = shlex.split(args.extra_flags or "")
    models = []

    def train(tag: str, flags: list[str]) -> dict:
        run_dir = base / output_stem("set-size", args) / f"train-{tag}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run = cli(["train", "--data", train_folder, "--target", "regression", *flags, "--out", run_dir,
                   "--no-progress", *extra], f"set-size-train-{tag}")
        ckpt = run_dir / "checkpoints" / "best.ckpt"
        if not ckpt.is_file():
            found = sorted(run_dir.rglob("*.ckpt"))
            if not found:
                raise BenchError(f"`{run['command']}` wrote no checkpoint under {run_dir}")
            ckpt = found[0]
        cfg = {}
        cfg_path = run_dir / "config.yaml"
        if cfg_path.is_file():
            import yaml
            cfg = yaml.safe_load(cfg_path.read_text()) or {}
        res_path = run_dir / "result.json"
        result = json.loads(res_path.read_text()) if res_path.is_file() else {}
        kwargs = _checkpoint_model_kwargs(ckpt)
        pool = kwargs.get("pool") or cfg.get("pool")
        return {"tag": tag, "flags": flags, "run": run, "checkpoint": ckpt, "pool": pool, "config": cfg,
                "result": result, "model_kwargs": kwargs}

    models.append(train("default", []))
    default_pool = models[0]["pool"]
    print(f"    default pooling: {default_pool}", file=sys.stderr)
    others = {"sum": ["mean"], "mean": ["sum"]}.get(default_pool, ["sum", "mean"])
    for p in others:
        models.append(train(f"pool-{p}", ["--pool", p]))

    out_models = []
    for m in models:
        print(f"[set-size] model {m['tag']} (pool {m['pool']})", file=sys.stderr, flush=True)
        preds = {}
        for mode, flags in (("default", []), ("whole-sets", ["--whole-sets"])):
            out_csv = base / output_stem("set-size", args) / f"predict-{m['tag']}-{mode}.csv"
            run = cli(["predict", "--checkpoint", m["checkpoint"], "--input", pred_folder, *flags,
                       "--output", out_csv], f"set-size-predict-{m['tag']}-{mode}")
            preds[mode] = {"printed": run["notes"].get("prediction"), "wall_s": run["wall_s"],
                           "command": run["command"], "rows": read_predictions(out_csv)}
        report_json = base / output_stem("set-size", args) / f"eval-{m['tag']}.json"
        run = cli(["eval", "--checkpoint", m["checkpoint"], "--data", test_folder, "--set-sizes",
                   *(str(s) for s in SET_SIZES), "--json", report_json], f"set-size-eval-{m['tag']}")
        if not report_json.is_file():
            raise BenchError(f"`{run['command']}` wrote no {report_json}")
        report = json.loads(report_json.read_text())
        png = report_json.with_suffix(".png")
        if png.is_file():  # keep the plot with the results (the run folder is scratch)
            shutil.copyfile(png, OUT_DIR / f"{output_stem('set-size', args)}-eval-{m['tag']}.png")
        out_models.append({
            "tag": m["tag"], "pool": m["pool"], "train_command": m["run"]["command"],
            "train_wall_s": m["run"]["wall_s"], "train_printed": m["run"]["notes"],
            "trained_set_size": m["model_kwargs"].get("trained_set_size"), "model_kwargs": m["model_kwargs"],
            "train_result": {k: v for k, v in m["result"].items() if not isinstance(v, (list, dict))},
            "predictions": preds,
            "eval": {"command": run["command"], "wall_s": run["wall_s"], "printed": run["notes"].get("prediction"),
                     "output": run["output"], "json": str(report_json), "png": str(png) if png.is_file() else None,
                     "report": report}})
    # the baselines of the cytometry step, fit on the training files, tested on the same held-out files
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import mean_squared_error, r2_score

    train_info = json.loads((train_folder.parent / f"{train_folder.name}-truth.json").read_text())
    tr_ids, te_ids = [d["set"] for d in train_info], [d["set"] for d in truth]
    y_tr, y_te = np.array([d["label"] for d in train_info]), np.array([d["label"] for d in truth])
    feats_tr, feats_te = channel_means(train_folder, tr_ids), channel_means(test_folder, te_ids)
    baselines = {}
    for k, name in enumerate(("linear on channel means (raw)",
                              f"linear on channel means of arcsinh(x/{ARCSINH_COFACTOR:g})",
                              "oracle: linear on 2 hand gates that know the rule")):
        pred = LinearRegression().fit(feats_tr[k], y_tr).predict(feats_te[k])
        baselines[name] = {"mse": float(mean_squared_error(y_te, pred)), "r2": float(r2_score(y_te, pred))}
    baselines["training mean"] = {"mse": float(mean_squared_error(y_te, np.full(len(y_te), y_tr.mean()))),
                                  "r2": float(r2_score(y_te, np.full(len(y_te), y_tr.mean())))}
    out = _set_size_tables(out_models, truth[0], files, n_big, n_files, span, test_folder, truth, baselines)
    out["baselines_whole_files"] = baselines
    return out


def _checkpoint_model_kwargs(ckpt: Path) -> dict:
    """The resolved model settings stored in a checkpoint this script just trained (pool, trained set size, ...)."""
    try:
        import torch
        hp = torch.load(ckpt, map_location="cpu", weights_only=False).get("hyper_parameters", {})
        return {k: v for k, v in (hp.get("model_kwargs") or {}).items() if isinstance(v, (str, int, float, bool, list))
                or v is None}
    except Exception as exc:  # noqa: BLE001 - only informative
        print(f"    (could not read the model settings from {ckpt}: {exc})", file=sys.stderr)
        return {}


def _set_size_tables(models, truth0, files, n_big, n_files, span, test_folder, truth, baselines) -> dict:
    rows = []
    for m in models:
        for mode in ("default", "whole-sets"):
            p = m["predictions"][mode]["rows"]
            cells = []
            for name in ("sub1000", "sub10000", "whole"):
                row = p.get(name, {})
                v = row.get("prediction")
                sd = row.get("prediction_sd")
                cells.append("-" if v is None else (f"{float(v):.3f}" + (f" (sd {float(sd):.3f})" if sd not in
                                                                          (None, "") else "")))
            rows.append([f"{m['tag']} (pool {m['pool']})", mode, *cells])
    t1 = md_table(["model", "predict", "1,000 events", "10,000 events", f"{files['whole']:,} events (whole file)"],
                  rows)
    # set-size report
    rows2 = []
    for m in models:
        rep = m["eval"]["report"]
        sizes = rep.get("set_sizes") or []
        if not sizes:
            rows2.append([m["tag"], "no set_sizes in the eval JSON", "", ""])
        for s in sizes:
            rows2.append([f"{m['tag']} (pool {m['pool']})", f"{s.get('set_size'):,}", f"{s.get('mse', float('nan')):.4f}",
                          f"{s.get('r2', float('nan')):.3f}"])
        rows2.append([f"{m['tag']} (pool {m['pool']})", "as given (whole files)",
                      f"{rep.get('mse', float('nan')):.4f}", f"{rep.get('r2', float('nan')):.3f}"])
    for name, b in baselines.items():
        rows2.append([f"baseline: {name}", "whole files", f"{b['mse']:.4f}", f"{b['r2']:.3f}"])
    t2 = md_table(["model", "set size", "MSE", "R²"], rows2)
    notes = "\n".join(f"- {m['tag']}: trained with `{m['train_command']}` ({m['train_wall_s']:.0f} s); "
                      f"regime: {m['train_printed'].get('regime')}; prediction: {m['eval']['printed']}"
                      for m in models)
    table = (f"### Own data: set size (train on {n_files} simulated FCS files, {now()[:10]})\n\n"
             f"Predictions for one held-out file ({files['whole']:,} events, true label {truth0['label']:.3f}) "
             f"and the same file subsampled:\n\n{t1}\n\n"
             f"`deepsets eval --set-sizes {' '.join(map(str, SET_SIZES))}` on {len(truth)} held-out files of "
             f"{n_big:,} events (label variance {np.var([d['label'] for d in truth], ddof=0):.4f}; baselines fit on the "
             f"training files):\n\n{t2}\n\n{notes}")
    return {"table": table, "models": models, "predict_files": files, "true_label_whole": truth0,
            "test_folder": str(test_folder), "test_truth": truth}


# ============================================================================ main

def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Own-data benchmarks through the deepsets CLI (see the module "
                                             "docstring for the exact commands).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quick", action="store_true", help="small end-to-end check (fewer files / folds)")
    common.add_argument("--extra-flags", default="", metavar='"FLAGS"',
                        help="further flags for the cv/train commands: experiments only (written as *-extra)")
    common.add_argument("--tag", help="suffix of the output names (default: none; 'extra' with --extra-flags)")
    common.add_argument("--timeout", type=float, default=600, help="seconds per CLI command (default 600)")
    common.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"scratch folder (default {DEFAULT_WORK})")
    common.add_argument("--deepsets", help="the deepsets executable (default: beside this Python)")
    common.add_argument("--seed", type=int, default=0, help="seed of the simulated data (default 0)")
    common.add_argument("--files", type=int, help="cytometry: number of FCS files (default 48; --quick 16)")
    m = sub.add_parser("mil", parents=[common], help="MUSK1, MUSK2, Elephant: deepsets cv vs pooled LR")
    m.add_argument("--data", nargs="+", help=f"which sets (default: {' '.join(MIL_SETS)}; --quick: musk1)")
    m.add_argument("--format", choices=("csv", "parquet"), default="csv", help="table file format (default csv)")
    sub.add_parser("cytometry", parents=[common], help="simulated FCS regression: deepsets cv vs linear on means")
    sub.add_parser("set-size", parents=[common], help="train once; predict/eval at 1e2..1e5 events")
    a = sub.add_parser("all", parents=[common], help="mil, cytometry, set-size")
    a.add_argument("--data", nargs="+")
    a.add_argument("--format", choices=("csv", "parquet"), default="csv")
    args = ap.parse_args(argv)
    args.work = args.work.resolve()
    if args.files is not None and args.files < 6:
        ap.error("--files must be at least 6")

    try:
        cli = CLI(find_deepsets(args.deepsets), args.timeout, args.work / "logs")
        if args.cmd == "all" and args.extra_flags:
            raise BenchError("--extra-flags with `all`: run the subcommands one by one for experiments")
        todo = ["mil", "cytometry", "set-size"] if args.cmd == "all" else [args.cmd]
        for cmd in todo:
            t0 = time.perf_counter()
            started = now()
            fn = {"mil": cmd_mil, "cytometry": cmd_cytometry, "set-size": cmd_set_size}[cmd]
            cli.log_dir, cli.n = fresh(args.work / "logs" / output_stem(cmd, args)), 0
            res = fn(args, cli)
            table = res.pop("table")
            if args.extra_flags:
                table = ("> EXPERIMENT, not the default run: extra CLI flags " + repr(args.extra_flags) + "\n\n"
                         + table)
            result = {"benchmark": cmd, "started": started, "finished": now(),
                      "total_wall_s": round(time.perf_counter() - t0, 1), "quick": args.quick,
                      "extra_flags": args.extra_flags or None,
                      "script": f"python benchmarks/own_data.py {' '.join(sys.argv[1:] if argv is None else argv)}",
                      "versions": versions(), "git": git_state(), **res}
            write_outputs(output_stem(cmd, args), result, table)
    except BenchError as exc:
        print(f"own_data.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
