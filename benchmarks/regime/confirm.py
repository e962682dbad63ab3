"""Variants of the library's default small-data recipe on the TRAINING parts of the MIL folds (never outer test).

For musk1, musk2, elephant: outer StratifiedKFold(10, shuffle=True, random_state=0) (benchmarks/mil.py folds());
the training parts of outer folds 0 and 1 are each split by StratifiedKFold(3, shuffle=True, random_state=0)
-> 6 inner splits per data set. On each inner split: the pooled-LR baseline and SetClassifier(set_size=1100)
variants A-E (each the default with one change). Work is ordered split-major (split -> data -> model) so that a run
cut short stays balanced. Records are appended to variants.jsonl (resumable); `--summarize` writes
variants.json and variants.md.

Usage:
    .venv/bin/python benchmarks/regime/confirm.py --deadline-min 17.3
    .venv/bin/python benchmarks/regime/confirm.py --summarize
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from mil import C_GRID, folds, pool_features  # noqa: E402
from mil_data import load_mil  # noqa: E402

DATA = ("musk1", "musk2", "elephant")
OUTER = (2, 3, 4)
INNER = 3
RAW = HERE / "confirm.jsonl"
VARIANTS = {
    "A": ({}, {}, "default"),
    "B": ({"ensemble": 5}, {}, "ensemble=5"),
}
MODELS = ("baseline",) + tuple(VARIANTS)


def splits(labels):
    """[(outer, inner, train_idx, test_idx)] with indices into the full data set, outer test parts never used."""
    from sklearn.model_selection import StratifiedKFold

    out = []
    of = folds(labels)
    for o in OUTER:
        tr_outer = of[o][0]
        skf = StratifiedKFold(INNER, shuffle=True, random_state=0)
        for i, (a, b) in enumerate(skf.split(np.zeros(len(tr_outer)), labels[tr_outer])):
            out.append((o, i, tr_outer[a], tr_outer[b]))
    return out


def fit_baseline(trb, ytr, teb):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f = lambda bs: pool_features([np.asarray(b, np.float64) for b in bs])  # noqa: E731
    search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=10000)),
                          {"logisticregression__C": C_GRID},
                          cv=StratifiedKFold(5, shuffle=True, random_state=0), scoring="accuracy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(f(trb), ytr)
    return search.predict_proba(f(teb))[:, 1]


def fit_variant(v, trb, ytr, teb):
    from deepsets import SetClassifier
    from deepsets.train import regime

    args, recipe, _ = VARIANTS[v]
    saved = copy.deepcopy(regime.RECIPES["small"])
    regime.RECIPES["small"].update(recipe)
    try:
        clf = SetClassifier(set_size=1100, **args)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(trb, ytr)
        p = clf.predict_proba(teb)
        col = list(clf.classes_).index(1)
        return p[:, col], clf
    finally:
        regime.RECIPES["small"].clear()
        regime.RECIPES["small"].update(saved)


def run(deadline_min: float):
    import torch
    from sklearn.metrics import accuracy_score, roc_auc_score

    torch.set_num_threads(1)
    t_end = time.time() + deadline_min * 60
    done = set()
    if RAW.exists():
        for line in RAW.read_text().splitlines():
            r = json.loads(line)
            done.add((r["model"], r["data"], r["split"]))
    data = {d: load_mil(d)[:2] for d in DATA}
    sp = {d: splits(np.asarray(data[d][1])) for d in DATA}
    for s in range(len(OUTER) * INNER):
        for d in DATA:
            bags, labels = data[d]
            labels = np.asarray(labels)
            o, i, tr, te = sp[d][s]
            assert not set(te) & set(folds(labels)[o][1]) and not set(tr) & set(folds(labels)[o][1])
            trb, teb = [bags[k] for k in tr], [bags[k] for k in te]
            for m in MODELS:
                if (m, d, s) in done:
                    continue
                if time.time() > t_end:
                    print("deadline reached", flush=True)
                    return
                t0 = time.time()
                if m == "baseline":
                    p, info = fit_baseline(trb, labels[tr], teb), {}
                else:
                    p, clf = fit_variant(m, trb, labels[tr], teb)
                    h = clf.history_ if isinstance(clf.history_, dict) else {}
                    info = {k: h[k] for k in ("epochs", "best_epoch", "steps", "global_step") if k in h}
                sec = time.time() - t0
                r = {"model": m, "data": d, "split": s, "outer_fold": o, "inner_fold": i,
                     "n_train": len(tr), "n_test": len(te),
                     "accuracy": float(accuracy_score(labels[te], (p >= 0.5).astype(int))),
                     "roc_auc": float(roc_auc_score(labels[te], p)), "fit_seconds": round(sec, 2), **info}
                with RAW.open("a") as f:
                    f.write(json.dumps(r) + "\n")
                print(json.dumps(r), flush=True)


def summarize(command: str):
    recs = [json.loads(l) for l in RAW.read_text().splitlines()]
    get = {(r["model"], r["data"], r["split"]): r for r in recs}
    # only splits where every model ran (balanced, paired)
    complete = {(d, s) for d in DATA for s in range(len(OUTER) * INNER) if all((m, d, s) in get for m in MODELS)}
    ms = lambda x: (float(np.mean(x)), float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan"))  # noqa
    table, lines = {}, []
    for metric in ("accuracy", "roc_auc"):
        lines += [f"\n### {metric}\n", "| model | " + " | ".join(DATA) + " | overall (mean of 3) | "
                  "overall diff vs baseline | overall diff vs A |", "|---" * 7 + "|"]
        for m in MODELS:
            row, per = [], {}
            for d in DATA:
                ss = sorted(s for (dd, s) in complete if dd == d)
                x = np.array([get[(m, d, s)][metric] for s in ss])
                per[d] = {s: get[(m, d, s)][metric] for s in ss}
                mu, se = ms(x)
                row.append(f"{mu:.3f} ± {se:.3f} (n={len(x)})")
                table.setdefault(m, {}).setdefault(d, {})[metric] = {"mean": mu, "se": se, "n": len(x)}
            # overall: per split index, mean over data sets that have it (splits common to all 3 data sets)
            common = sorted(set.intersection(*[set(per[d]) for d in DATA]))
            ov = np.array([np.mean([per[d][s] for d in DATA]) for s in common])
            diffs = {}
            for ref in ("baseline", "A"):
                rv = np.array([np.mean([get[(ref, d, s)][metric] for d in DATA]) for s in common])
                diffs[ref] = ms(ov - rv)
                # per data set paired diff
                for d in DATA:
                    ss = sorted(per[d])
                    dd_ = np.array([per[d][s] - get[(ref, d, s)][metric] for s in ss])
                    table[m][d][metric][f"diff_vs_{ref}"] = dict(zip(("mean", "se"), ms(dd_)))
            mu, se = ms(ov)
            table[m].setdefault("overall", {})[metric] = {"mean": mu, "se": se, "n_splits": len(common),
                                                         "diff_vs_baseline": dict(zip(("mean", "se"), diffs["baseline"])),
                                                         "diff_vs_A": dict(zip(("mean", "se"), diffs["A"]))}
            f = lambda t: f"{t[0]:+.3f} ± {t[1]:.3f}"  # noqa
            lines.append(f"| {m} | " + " | ".join(row) + f" | {mu:.3f} ± {se:.3f} | {f(diffs['baseline'])} | "
                         f"{'—' if m == 'A' else f(diffs['A'])} |")
        lines.append("\nPer-data-set paired difference (mean ± s.e. over splits):\n")
        lines.append("| model | " + " | ".join(f"{d} vs baseline | {d} vs A" for d in DATA) + " |")
        lines.append("|---" * 7 + "|")
        for m in MODELS:
            c = [f"{table[m][d][metric]['diff_vs_' + r]['mean']:+.3f} ± {table[m][d][metric]['diff_vs_' + r]['se']:.3f}"
                 for d in DATA for r in ("baseline", "A")]
            lines.append(f"| {m} | " + " | ".join(c) + " |")
    lines += ["\n### mean fit seconds (1 torch thread)\n", "| model | " + " | ".join(DATA) + " |", "|---" * 4 + "|"]
    for m in MODELS:
        t = {d: float(np.mean([get[(m, d, s)]["fit_seconds"] for (dd, s) in complete if dd == d])) for d in DATA}
        for d in DATA:
            table[m][d]["fit_seconds_mean"] = t[d]
        lines.append(f"| {m} | " + " | ".join(f"{t[d]:.1f}" for d in DATA) + " |")
    desc = {"baseline": "mean/max/min pooled (float64) + StandardScaler + LogisticRegression, C by 5-fold GridSearchCV",
            **{k: f"SetClassifier(set_size=1100), small recipe, {v[2]}" for k, v in VARIANTS.items()}}
    n_by = {d: sorted(s for (dd, s) in complete if dd == d) for d in DATA}
    head = [
        "# Confirmatory run: A vs B on NEW splits (training parts of outer folds 2, 3, 4)",
        "", f"Date: {datetime.datetime.now().isoformat(timespec='seconds')}", f"Command: `{command}`", "",
        "Splits: for each data set, the training parts of outer folds 2, 3 and 4 of StratifiedKFold(10, shuffle=True, "
        "random_state=0), each split by StratifiedKFold(3, shuffle=True, random_state=0) -> up to 9 inner splits "
        "(split = 3*(outer-2) + inner). Outer test parts never used. Scores on the inner held-out third; "
        "accuracy at p>=0.5, ROC-AUC from predict_proba[:, 1]. Only splits where all models ran are summarised.",
        f"Splits summarised per data set: {n_by}", "", "Models:", *[f"- {k}: {v}" for k, v in desc.items()],
        "", "Errors: mean ± s.e. over splits (sample std / sqrt(n)); overall = per split index the mean over the 3 "
        "data sets, then mean ± s.e. over those split indices; differences are paired per split. Splits share "
        "training bags (3-fold inner CV of overlapping outer training parts), so s.e. understates the noise.",
    ]
    (HERE / "confirm.md").write_text("\n".join(head + lines) + "\n")
    (HERE / "confirm.json").write_text(json.dumps({"command": command, "date": datetime.datetime.now().isoformat(),
                                                     "models": desc, "splits_summarised": n_by,
                                                     "summary": table, "records": recs}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--deadline-min", type=float, default=25)
    ap.add_argument("--summarize", action="store_true")
    a = ap.parse_args()
    if a.summarize:
        summarize(".venv/bin/python benchmarks/regime/confirm.py --deadline-min 17.3; "
                  ".venv/bin/python benchmarks/regime/confirm.py --summarize")
    else:
        run(a.deadline_min)
