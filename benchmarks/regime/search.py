"""Choose the small-data default recipe of deepsets.SetClassifier / SetRegressor (evidence: evidence.md).

Every candidate recipe is fitted on the same "splits" and compared with a strong simple baseline on the same
splits.  NO test fold of the real data's outer 10-fold split is ever used here:

* real data (benchmarks/mil_data.py: musk1, musk2, elephant): the TRAINING part of outer folds OUTER_FOLDS of
  ``StratifiedKFold(10, shuffle=True, random_state=0)`` (the same outer folds as benchmarks/mil.py), split again by
  ``StratifiedKFold(INNER_K, shuffle=True, random_state=0)``; a candidate is fitted on the inner training part and
  scored on the inner held-out part.
* generated data (this file; train and test drawn from the same generator, test = fresh sets):
  - ``genmil-a`` / ``genmil-b``: MIL-like classification; bags of 5-50 Gaussian instances (D=20 / D=100), a bag is
    positive when it holds >= 1 instance of a planted cluster along a random direction; 100 / 200 training bags.
  - ``cyto-reg-a`` / ``cyto-reg-b``: cytometry-like regression; sets of 500-5,000 cells, 8 channels on an
    arcsinh(x/5) scale, label = z(fraction 1-10% of a rare population that is high in channels 0 AND 1) + z(level
    shift of channel 2), /sqrt(2); 60 / 150 training sets; training subsets of set_size=500 cells.
  - ``cyto-cls-a`` / ``cyto-cls-b``: the same sets, label = 1 if that score > 0 (2 classes).

Preprocessing (emulates what the library does inside the model): a StandardScaler fit on the concatenated
training elements (after arcsinh(x/5) for the cytometry tasks), applied to train and test sets.

Baselines (on exactly the same splits):
* classification: per-set [mean, max, min] of each feature + StandardScaler + LogisticRegression, C in
  logspace(-3, 3, 7) chosen by inner StratifiedKFold(5) accuracy (benchmarks/mil.py's baseline, plus predict_proba);
* regression: per-set feature means + StandardScaler + RidgeCV(alphas=logspace(-3, 3, 13)).

Ensembles of K are emulated by averaging predict_proba (predictions) of the fits with seeds 0..K-1; every fit's
test outputs are stored, so K=1/3/5 come from the same fits.  torch.set_num_threads(1) in every process.

The code of the library is a frozen copy of src/deepsets (other engineers edit src/ meanwhile) taken
into $DEEPSETS_SNAPSHOT (default "$TMPDIR/regime_snap") before the search; see evidence.md for its checksum.

Commands (from the repository root; two workers at most on this 2-core machine; results are appended, a rerun skips done jobs)::

    rm -rf "$TMPDIR/regime_snap" && mkdir -p "$TMPDIR/regime_snap" && cp -r src/deepsets "$TMPDIR/regime_snap"/
    .venv/bin/python benchmarks/regime/search.py run --stage 1 --worker 0 &
    .venv/bin/python benchmarks/regime/search.py run --stage 1 --worker 1 &
    wait
    .venv/bin/python benchmarks/regime/search.py run --stage 2 --worker 0 &   # (same for worker 1)
    .venv/bin/python benchmarks/regime/search.py analyze          # -> results.json + tables on stdout
    # fit times on full outer-fold training parts (no prediction), as run for evidence.md:
    .venv/bin/python benchmarks/regime/search.py timing --warmup --cands pool=mean m:ep=30 m:dim=32 --outer 3 --K 1
    .venv/bin/python benchmarks/regime/search.py timing --warmup --cands pool=mean m:ep=30 --outer 3 --K 3
    .venv/bin/python benchmarks/regime/search.py timing --warmup --cands m:ep=30,bs=8 m:ep=30 --outer 4 --K 3
    .venv/bin/python benchmarks/regime/search.py timing --warmup --cands pool=mean --outer 4 --K 3
    for d in musk2 musk1 elephant; do
      .venv/bin/python benchmarks/regime/search.py timing --warmup --data $d --cands m:ep=30,bs=8 --outer 5 --K 3; done

Raw per-fit outputs: benchmarks/regime/raw-w{0,1}.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
SNAP = os.environ.get("DEEPSETS_SNAPSHOT", os.path.join(os.environ.get("TMPDIR", "/tmp"), "regime_snap"))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, SNAP)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LogisticRegression, RidgeCV  # noqa: E402
from sklearn.metrics import r2_score, roc_auc_score  # noqa: E402
from sklearn.model_selection import GridSearchCV, StratifiedKFold  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from mil import folds, pool_features  # noqa: E402
from mil_data import load_mil  # noqa: E402

torch.set_num_threads(1)

OUTER_FOLDS = (0, 1)      # training parts of these outer folds only
INNER_K = 3
REAL = ("musk1", "musk2", "elephant")
GEN = ("genmil-a", "genmil-b", "cyto-reg-a", "cyto-reg-b", "cyto-cls-a", "cyto-cls-b")
MIL_SET_SIZE = 1100       # > the largest bag of the MIL sets (musk2: 1,044), so bags are whole
CYTO_SET_SIZE = 500

BASE = dict(model="deepsets++", depth=2, dim=64, pool="sum", lr=1e-3, batch_size=16, epochs=60,
            weight_decay=1e-2, val_fraction=0.1)

# stage 1: one coordinate at a time from BASE
STAGE1 = {  # in priority order (jobs run seed-major, then in this order; the machine was shared and slow)
    "base": {},
    "pool=mean": {"pool": "mean"}, "pool=max": {"pool": "max"},
    # pool=mean won the first coordinate (sum failed on the cytometry regression: R^2 -20), so the other
    # coordinates move from BASE + pool=mean ("m:" = pool mean)
    "m:wd=0": {"pool": "mean", "weight_decay": 0.0}, "m:wd=1e-1": {"pool": "mean", "weight_decay": 1e-1},
    "m:ep=30": {"pool": "mean", "epochs": 30}, "m:dim=128": {"pool": "mean", "dim": 128},
    "m:depth=4": {"pool": "mean", "depth": 4}, "m:lr=3e-3": {"pool": "mean", "lr": 3e-3},
    "m:bs=32": {"pool": "mean", "batch_size": 32}, "m:dim=32": {"pool": "mean", "dim": 32},
    # not run (time): wd=1e-4 (wd 0 / 1e-2 / 1e-1 were within 0.01 of each other), epochs=100, batch_size=8
}
# stage 2: filled in after stage 1 (see evidence.md); combinations of the stage-1 winners
# seeds 0-2: ensembles of 3 (K=5 was dropped: one fit of pool=mean at 60 epochs already takes ~5-7 s on MUSK2,
# so 5 of them break the ~12 s budget); ep=30 is the budget-feasible K=3 candidate
STAGE2: dict[str, dict] = {"pool=mean": {"pool": "mean"}, "m:ep=30": {"pool": "mean", "epochs": 30},
                           # twice the steps per epoch at about the same cost per epoch (for the smallest data)
                           "m:ep=30,bs=8": {"pool": "mean", "epochs": 30, "batch_size": 8}}
STAGE_SEEDS = {1: (0,), 2: (0, 1, 2)}
# generated tasks per stage (the "-b" cytometry tasks are the slowest: finalists only)
STAGE_GEN = {1: ("genmil-a", "genmil-b", "cyto-reg-a", "cyto-cls-a"), 2: GEN}


def candidates(stage: int) -> dict[str, dict]:
    return {1: STAGE1, 2: STAGE2}[stage]


# --------------------------------------------------------------------------- generated data

def gen_mil(seed: int, n_train: int, n_test: int, D: int, r: float = 3.5):
    rng = np.random.default_rng(1000 + seed)
    u = rng.normal(size=D)
    u /= np.linalg.norm(u)
    witness = r * u                       # planted cluster, along a random (not axis-aligned) direction
    distract = [3.0 * v / np.linalg.norm(v) for v in rng.normal(size=(3, D))]  # in both classes

    def bag(pos: bool):
        n = int(rng.integers(5, 51))
        x = rng.normal(size=(n, D))
        nd = rng.binomial(n, 0.15)          # distractor instances
        for i in rng.choice(n, nd, replace=False):
            x[i] = distract[rng.integers(3)] + 0.6 * rng.normal(size=D)
        if pos:
            k = 1 + rng.binomial(max(n // 10, 1), 0.3)
            for i in rng.choice(n, min(k, n), replace=False):
                x[i] = witness + 0.6 * rng.normal(size=D)
        return x.astype(np.float32)

    def draw(m):
        y = (rng.random(m) < 0.5).astype(np.int64)
        return [bag(bool(t)) for t in y], y

    return draw(n_train), draw(n_test)


def gen_cyto(seed: int, n_train: int, n_test: int, C: int = 8):
    """Raw (linear-scale) cytometry-like sets; arcsinh(x/5) is their natural scale."""
    rng = np.random.default_rng(2000 + seed)
    # 4 main populations + 1 rare one (high in channels 0 AND 1); other channels random per population
    centers = rng.uniform(0.5, 4.5, size=(5, C))
    centers[:, :2] = [[4.0, 1.0], [1.0, 4.0], [1.0, 1.0], [2.5, 2.5], [4.0, 4.0]]
    centers[:, 2] = 2.5 + rng.normal(scale=0.3, size=5)
    sds = rng.uniform(0.3, 0.5, size=(5, C))
    base_props = np.array([0.3, 0.3, 0.25, 0.15])

    def one():
        n = int(rng.integers(500, 5001))
        f = rng.uniform(0.01, 0.10)
        shift = rng.normal(scale=0.3)
        props = np.concatenate([(1 - f) * rng.dirichlet(20 * base_props), [f]])
        counts = rng.multinomial(n, props)
        jitter = rng.normal(scale=0.15, size=(5, C))       # per-set batch effect of each population
        a = np.concatenate([c + j + s * rng.normal(size=(k, C))
                            for c, j, s, k in zip(centers, jitter, sds, counts)])
        a[:, 2] += shift
        x = 5.0 * np.sinh(a) + rng.normal(scale=1.0, size=a.shape)   # raw intensities + read noise
        score = ((f - 0.055) / 0.026 + shift / 0.3) / np.sqrt(2)
        return x[rng.permutation(n)].astype(np.float32), float(score)

    def draw(m):
        xs, ys = zip(*[one() for _ in range(m)])
        return list(xs), np.asarray(ys)

    return draw(n_train), draw(n_test)


GEN_SPECS = {
    "genmil-a": ("mil", dict(seed=1, n_train=100, n_test=1000, D=20)),
    "genmil-b": ("mil", dict(seed=2, n_train=200, n_test=1000, D=100, r=4.5)),
    "cyto-reg-a": ("cyto-reg", dict(seed=1, n_train=60, n_test=400)),
    "cyto-reg-b": ("cyto-reg", dict(seed=2, n_train=150, n_test=400)),
    "cyto-cls-a": ("cyto-cls", dict(seed=3, n_train=60, n_test=400)),
    "cyto-cls-b": ("cyto-cls", dict(seed=4, n_train=150, n_test=400)),
}


# --------------------------------------------------------------------------- splits

def split_keys(outer=OUTER_FOLDS, inner_k=INNER_K, real=REAL, gen=GEN) -> list[str]:
    keys = [f"{d}/o{o}/i{i}" for d in real for o in outer for i in range(inner_k)]
    return keys + [f"{g}/test" for g in gen]


def _standardize(train, test, arcsinh: bool):
    if arcsinh:
        train = [np.arcsinh(b / 5.0) for b in train]
        test = [np.arcsinh(b / 5.0) for b in test]
    scaler = StandardScaler().fit(np.concatenate(train, axis=0).astype(np.float64))
    tr = [scaler.transform(b).astype(np.float32) for b in train]
    te = [scaler.transform(b).astype(np.float32) for b in test]
    return tr, te


@lru_cache(maxsize=4)
def _mil(name):
    return load_mil(name)


@lru_cache(maxsize=2)
def _gen(key):
    kind, kw = GEN_SPECS[key]
    if kind == "mil":
        return gen_mil(**kw)
    (xtr, str_), (xte, ste) = gen_cyto(**kw)
    if kind == "cyto-cls":
        return (xtr, (str_ > 0).astype(np.int64)), (xte, (ste > 0).astype(np.int64))
    return (xtr, str_), (xte, ste)


@lru_cache(maxsize=3)
def load_split(key: str) -> dict:
    """{task, train_raw, ytr, test_raw, yte, tr, te, set_size} (tr/te standardized)."""
    parts = key.split("/")
    if parts[0] in REAL:
        bags, y, _ = _mil(parts[0])
        o, i = int(parts[1][1:]), int(parts[2][1:])
        outer_train, _outer_test = folds(y)[o]          # the outer TEST part is never touched
        yo = y[outer_train]
        skf = StratifiedKFold(INNER_K, shuffle=True, random_state=0)
        a, b = list(skf.split(np.zeros(len(yo)), yo))[i]
        tr_raw = [bags[outer_train[j]] for j in a]
        te_raw = [bags[outer_train[j]] for j in b]
        ytr, yte = yo[a], yo[b]
        task, arcsinh, set_size = "classification", False, MIL_SET_SIZE
    else:
        (tr_raw, ytr), (te_raw, yte) = _gen(parts[0])
        task = "regression" if parts[0].startswith("cyto-reg") else "classification"
        arcsinh = parts[0].startswith("cyto")
        set_size = CYTO_SET_SIZE if arcsinh else MIL_SET_SIZE
    tr, te = _standardize(tr_raw, te_raw, arcsinh)
    return dict(task=task, tr_raw=tr_raw, te_raw=te_raw, ytr=np.asarray(ytr), yte=np.asarray(yte), tr=tr, te=te,
                set_size=set_size, arcsinh=arcsinh)


# --------------------------------------------------------------------------- models

def baseline(sp: dict) -> np.ndarray:
    """Test outputs of the baseline: P(class 1) (classification) or predictions (regression)."""
    tr_raw, te_raw = sp["tr_raw"], sp["te_raw"]
    if sp["arcsinh"]:
        tr_raw = [np.arcsinh(b / 5.0) for b in tr_raw]
        te_raw = [np.arcsinh(b / 5.0) for b in te_raw]
    if sp["task"] == "regression":
        mtr = np.stack([b.mean(0) for b in tr_raw]).astype(np.float64)
        mte = np.stack([b.mean(0) for b in te_raw]).astype(np.float64)
        pipe = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13))).fit(mtr, sp["ytr"])
        return pipe.predict(mte)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=10_000))
    search = GridSearchCV(pipe, {"logisticregression__C": np.logspace(-3, 3, 7)},
                          cv=StratifiedKFold(5, shuffle=True, random_state=0), scoring="accuracy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(pool_features(tr_raw), sp["ytr"])
    return search.predict_proba(pool_features(te_raw))[:, 1]


def fit_deepset(sp: dict, params: dict, seed: int, predict: bool = True):
    from deepsets import SetClassifier, SetRegressor

    est_cls = SetRegressor if sp["task"] == "regression" else SetClassifier
    est = est_cls(**{"set_size": sp["set_size"], **params, "seed": seed})
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(sp["tr"], sp["ytr"])
    fit_s = time.perf_counter() - t0
    if not predict:
        return None, fit_s
    if sp["task"] == "regression":
        out = np.asarray(est.predict(sp["te"]), dtype=np.float64)
    else:
        classes = list(est.classes_)
        out = np.asarray(est.predict_proba(sp["te"]))[:, classes.index(1)].astype(np.float64)
    return out, fit_s


# --------------------------------------------------------------------------- running

def raw_files():
    return sorted(HERE.glob("raw-w*.jsonl"))


def done_jobs() -> set:
    done = set()
    for f in raw_files():
        for line in f.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done.add((r["cand"], r["split"], r["seed"]))
    return done


def claim(job, claims: Path) -> bool:
    name = "__".join(str(p) for p in job).replace("/", "_")
    try:
        fd = os.open(claims / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
        return True
    except FileExistsError:
        return False


def cmd_run(args):
    cands = candidates(args.stage)
    seeds = STAGE_SEEDS[args.stage] if args.seeds is None else tuple(args.seeds)
    keys = split_keys(outer=tuple(args.outer) if args.outer else OUTER_FOLDS, gen=STAGE_GEN[args.stage])
    claims = Path(args.claims) / f"stage{args.stage}"
    claims.mkdir(parents=True, exist_ok=True)
    out = HERE / f"raw-w{args.worker}.jsonl"
    done = done_jobs()
    jobs = [("baseline", k, -1) for k in keys]
    # seed-major, then candidate, then split: an interrupted search still has whole seeds for every candidate
    jobs += [(c, k, s) for s in seeds for c in cands for k in keys]
    t_start = time.perf_counter()
    for job in jobs:
        if job in done or not claim(job, claims):
            continue
        if args.deadline and time.perf_counter() - t_start > args.deadline:
            print("deadline reached", file=sys.stderr)
            break
        cand, key, seed = job
        sp = load_split(key)
        if cand == "baseline":
            t0 = time.perf_counter()
            pred, fit_s, params = baseline(sp), None, None
            fit_s = time.perf_counter() - t0
        else:
            params = {**BASE, **cands[cand]}
            pred, fit_s = fit_deepset(sp, params, seed)
        rec = dict(cand=cand, stage=args.stage if cand != "baseline" else 0, split=key, seed=seed, params=params,
                   task=sp["task"], n_train=len(sp["tr"]), fit_s=fit_s, pred=[float(v) for v in pred],
                   y=[float(v) for v in sp["yte"]])
        with open(out, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        print(f"[w{args.worker}] {cand:12s} {key:18s} s{seed} {fit_s:6.2f}s", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- analysis

def metrics(task, y, p) -> dict:
    y, p = np.asarray(y), np.asarray(p)
    if task == "regression":
        return {"mse": float(np.mean((y - p) ** 2)), "r2": float(r2_score(y, p))}
    acc = float(np.mean((p > 0.5).astype(int) == y))
    auc = float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else float("nan")
    return {"acc": acc, "auc": auc}


def group_of(split: str) -> str:
    return split.split("/")[0]


def load_records():
    recs = []
    for f in raw_files():
        recs += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return recs


def summarize(recs, K_values=(0, 1, 2, 3, 5)):
    """{cand: {K: {group: {metric: (mean, se, n_splits)}, "_fit_s": ...}}}; K=1 = mean over the seeds' single
    fits; K=0: seed 0's single fit; K>1 = ensemble of seeds 0..K-1 (only where all are present for every split of the group)."""
    by = {}
    for r in recs:
        by.setdefault(r["cand"], {}).setdefault(r["split"], {})[r["seed"]] = r
    out = {}
    for cand, splits in by.items():
        out[cand] = {}
        for K in (1,) if cand == "baseline" else K_values:
            res, per_split = {}, {}
            for split, seeds in splits.items():
                g = group_of(split)
                any_r = next(iter(seeds.values()))
                if cand == "baseline":
                    m = metrics(any_r["task"], any_r["y"], any_r["pred"])
                    fs = any_r["fit_s"]
                elif K == 0:  # seed 0 alone (every candidate has it: the fair single-fit comparison)
                    if 0 not in seeds:
                        continue
                    m = metrics(any_r["task"], any_r["y"], seeds[0]["pred"])
                    fs = seeds[0]["fit_s"]
                elif K == 1:
                    ms = [metrics(r["task"], r["y"], r["pred"]) for r in seeds.values()]
                    m = {k: float(np.mean([x[k] for x in ms])) for k in ms[0]}
                    fs = float(np.mean([r["fit_s"] for r in seeds.values()]))
                else:
                    if not all(s in seeds for s in range(K)):
                        continue
                    p = np.mean([seeds[s]["pred"] for s in range(K)], axis=0)
                    m = metrics(any_r["task"], any_r["y"], p)
                    fs = float(sum(seeds[s]["fit_s"] for s in range(K)))
                per_split.setdefault(g, []).append((split, m, fs, any_r["n_train"]))
            for g, rows in per_split.items():
                ms = [m for _, m, _, _ in rows]
                d = {}
                for k in ms[0]:
                    v = np.array([m[k] for m in ms])
                    d[k] = (float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan"),
                            len(v))
                d["fit_s"] = float(np.mean([fs for _, _, fs, _ in rows]))
                d["splits"] = sorted(s for s, _, _, _ in rows)
                res[g] = d
            if res:
                out[cand][K] = res
    return out


def gen_se(recs):
    """Standard errors for the generated tasks' single test sets (over test sets; per fit)."""
    return None


CLIP = 0.3


def score_vs_baseline(summ, cand, K, groups):
    """Mean over groups of (candidate - baseline) accuracy (classification) or R^2 (regression)."""
    diffs = {}
    for g in groups:
        c = summ.get(cand, {}).get(K, {}).get(g)
        b = summ.get("baseline", {}).get(1, {}).get(g)
        if c is None or b is None:
            continue
        k = "r2" if "r2" in c else "acc"
        diffs[g] = c[k][0] - b[k][0]
    return diffs


def cmd_analyze(args):
    recs = load_records()
    summ = summarize(recs)
    groups = list(REAL) + list(GEN)
    lines = []
    cands = [c for c in summ if c != "baseline"]
    for K in (0, 1, 2, 3, 5):
        rows = []
        for c in cands:
            d = score_vs_baseline(summ, c, K, groups)
            gen_groups = [g for g in GEN if g in d]
            if any(g not in d for g in REAL) or len(gen_groups) < 4:
                continue
            real = np.mean([d[g] for g in REAL])
            gen = np.mean([max(d[g], -CLIP) for g in gen_groups])
            fit_m2 = summ[c][K]["musk2"]["fit_s"]
            rows.append((c, real, gen, (real + gen) / 2, min(d[g] for g in REAL), fit_m2, d))
            rows[-1][-1].update({g: float("nan") for g in groups if g not in d})
        if not rows:
            continue
        rows.sort(key=lambda r: -r[3])
        lines.append(f"\n== {'K=1, seed 0 only' if K == 0 else f'K={K}'}: difference to the baseline (accuracy; R^2 for cyto-reg); real = mean over musk1, "
                     f"musk2, elephant; gen = mean over the generated tasks present, each clipped at -{CLIP}; "
                     f"all = (real + gen) / 2; fit_s = mean seconds per fit (all K) on a MUSK2 inner split ==")
        lines.append(f"{'candidate':22s} {'real':>7s} {'gen':>7s} {'all':>7s} {'worst-real':>10s} {'fit_s musk2':>11s}  "
                     + " ".join(f"{g[:10]:>10s}" for g in groups))
        for c, real, gen, allv, worst, fs, d in rows:
            lines.append(f"{c:22s} {real:+7.3f} {gen:+7.3f} {allv:+7.3f} {worst:+10.3f} {fs:11.2f}  "
                         + " ".join(f"{d[g]:+10.3f}" for g in groups))
    lines.append("\n== absolute scores: mean +- s.e. over the splits of each group (real: 6 inner splits; generated: "
                 "one fit (or K-ensemble) scored on one fresh test set of 400-1,000 sets) ==")
    for c in ["baseline"] + cands:
        for K, res in sorted(summ[c].items()):
            tag = "K=1 seed0" if K == 0 else f"K={K}"
            cells = []
            for g in groups:
                d = res.get(g)
                if d is None:
                    cells.append(f"{g}: -")
                    continue
                ks = [k for k in ("acc", "auc", "mse", "r2") if k in d]
                cells.append(f"{g}: " + " ".join(
                    f"{k} {d[k][0]:.3f}" + (f"+-{d[k][1]:.3f}" if d[k][2] > 1 else "") for k in ks))
            lines.append(f"{c:12s} {tag:9s} | " + " | ".join(cells))
    lines.append("\n== baseline ==")
    for g in groups:
        b = summ.get("baseline", {}).get(1, {}).get(g)
        if b:
            lines.append(f"{g:12s} " + "  ".join(f"{k} {v[0]:.3f} +- {v[1]:.3f} (n={v[2]})"
                                                 for k, v in b.items() if isinstance(v, tuple)))
    text = "\n".join(lines)
    print(text)
    (HERE / "results.json").write_text(json.dumps({
        "protocol": {
            "real": f"training parts of outer folds {list(OUTER_FOLDS)} of StratifiedKFold(10, shuffle=True, "
                    f"random_state=0); inner StratifiedKFold({INNER_K}, shuffle=True, random_state=0); "
                    "se over inner splits (std ddof=1 / sqrt(n))",
            "generated": {k: v for k, v in GEN_SPECS.items()},
            "K": "K=1: mean over seeds of single-fit scores; K>1: mean predict_proba/prediction of seeds 0..K-1",
            "base": BASE, "stage1": STAGE1, "stage2": STAGE2,
            "fit_s": "per split: seconds of fit (all K members); mean over the group's splits",
        },
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "machine": platform.machine(), "cpu_threads": 1},
        "summary": {c: {str(K): v for K, v in d.items()} for c, d in summ.items()},
    }, indent=1))
    (HERE / "tables.txt").write_text(text + "\n")


def cmd_timing(args):
    """Fit time (no prediction, no test fold looked at) of a recipe on full outer-fold training parts (MUSK2 by
    default: the budget's data set).  Appends to timing.json (the first records, without "data", are MUSK2)."""
    cands = {**STAGE1, **STAGE2}
    if args.warmup:  # the first fit of a process pays imports and Lightning's set-up
        bags0, y0, _ = load_mil("musk1")
        fit_deepset(dict(task="classification", set_size=MIL_SET_SIZE, ytr=y0[::2],
                         tr=[b.astype(np.float32) for b in bags0[::2]]), {**BASE, "epochs": 1}, 0, predict=False)
    bags, y, _ = load_mil(args.data)
    res = []
    for name in args.cands:
        params = {**BASE, **cands[name]}
        for o in args.outer:
            tr_idx, _ = folds(y)[o]
            sp = dict(task="classification", set_size=MIL_SET_SIZE, ytr=y[tr_idx],
                      tr=_standardize([bags[i] for i in tr_idx], [], False)[0] if False else None)
            scaler = StandardScaler().fit(np.concatenate([bags[i] for i in tr_idx]).astype(np.float64))
            sp["tr"] = [scaler.transform(bags[i]).astype(np.float32) for i in tr_idx]
            for s in range(args.K):
                c0 = time.process_time()
                _, fs = fit_deepset(sp, params, s, predict=False)
                cpu = time.process_time() - c0
                res.append(dict(data=args.data, cand=name, params=params, outer=o, seed=s, fit_s=fs, cpu_s=cpu, n_train=len(tr_idx),
                                load=os.getloadavg()[0]))
                print(f"{name} outer {o} seed {s}: {fs:.2f} s wall, {cpu:.2f} s cpu, load {os.getloadavg()[0]:.1f}",
                      file=sys.stderr, flush=True)
    path = HERE / "timing.json"
    old = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(old + res, indent=1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--stage", type=int, default=1)
    r.add_argument("--worker", type=int, default=0)
    r.add_argument("--seeds", type=int, nargs="*")
    r.add_argument("--outer", type=int, nargs="*")
    r.add_argument("--claims", default="regime_claims")
    r.add_argument("--deadline", type=float, default=0.0, help="stop taking jobs after this many seconds")
    sub.add_parser("analyze")
    t = sub.add_parser("timing")
    t.add_argument("--cands", nargs="+", default=["base"])
    t.add_argument("--outer", type=int, nargs="+", default=[3, 4])
    t.add_argument("--K", type=int, default=1)
    t.add_argument("--warmup", action="store_true")
    t.add_argument("--data", default="musk2", choices=REAL)
    a = ap.parse_args(argv)
    {"run": cmd_run, "analyze": cmd_analyze, "timing": cmd_timing}[a.cmd](a)


if __name__ == "__main__":
    main()
