"""Attribution benchmarks (`deepsets.explain`), written to benchmarks/explain/*.json and summarised in RESULTS.md.

    python benchmarks/explain.py planted   [--quick]   # recovery of a planted subpopulation (5%, 1%, 0.1%)
    python benchmarks/explain.py cost      [--quick]   # time and peak memory on one set of 10^5 and 10^6 elements
    python benchmarks/explain.py fastpath              # the occlusion fast path against exact occlusion, by set size
    python benchmarks/explain.py musk1                 # deletion curves on MUSK1 (10-fold test bags)

planted: sets of 10^4 elements (3 channels); a positive set holds a subpopulation (frequency f) in a region of
channels 0 and 1 (`deepsets.attribution.faithfulness.planted_sets`). Deep Sets++ and Set Transformer++ are trained
with `SetClassifier` (whole sets, the small recipe, one member); each method's scores on 10 test positive sets
(the positive class's log-odds) are scored by ROC-AUC against the planted indicator. Shapley players: a 4 x 4
grid of channel 0 and channel 1 (quartiles of the training elements); an element's score is its cell's share.

cost: one set, a Deep Sets++ / Set Transformer++ of the small recipe's size (depth 2, dim 64), random weights; each
(method, size) in its own process so that the peak resident memory (ru_maxrss) is its own; the forward pass is
timed in the same process.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "explain"


def _log_odds(s):
    s = s.numpy() if hasattr(s, "numpy") else np.asarray(s)
    return s[..., 1] - s[..., 0]


def grid_groups(x, edges0, edges1):
    return np.char.add(np.digitize(x[:, 0], edges0).astype(str), np.digitize(x[:, 1], edges1).astype(str))


def planted(quick: bool) -> dict:
    from deepsets import SetClassifier, explain
    from deepsets.attribution.faithfulness import planted_auc, planted_sets

    n_el = 2000 if quick else 10_000
    n_train = 60 if quick else 100
    results = []
    for freq in (0.05, 0.01, 0.001):
        X, y, _ = planted_sets(n_train, n_el, freq, seed=0)
        Xt, yt, Pt = planted_sets(20, n_el, freq, seed=1)
        allx = np.concatenate(X)
        e0, e1 = np.quantile(allx[:, 0], [0.25, 0.5, 0.75]), np.quantile(allx[:, 1], [0.25, 0.5, 0.75])
        pos = np.flatnonzero(yt == 1)[:10]
        x = torch.as_tensor(np.stack([Xt[i] for i in pos]))
        planted_mask = np.stack([Pt[i] for i in pos])
        groups = np.stack([grid_groups(Xt[i], e0, e1) for i in pos])
        for model in ("deepsets++", "settransformer++"):
            t = time.perf_counter()
            clf = SetClassifier(model=model, set_size=None, ensemble=1, seed=0).fit(X, y)
            fit_s = time.perf_counter() - t
            acc = float((clf.predict(Xt) == yt).mean())
            m = clf.module_.model
            row = {"frequency": freq, "elements": n_el, "model": model, "fit_s": round(fit_s, 1), "test_accuracy": acc}
            for method in ("occlusion", "integrated-gradients", "shapley"):
                t = time.perf_counter()
                s = explain(m, x, method=method, groups=groups if method == "shapley" else None, samples=32)
                row[method] = {"roc_auc": round(planted_auc(_log_odds(s), planted_mask), 4),
                               "seconds_per_set": round((time.perf_counter() - t) / len(pos), 3)}
            print(json.dumps(row), flush=True)
            results.append(row)
    return {"command": "python benchmarks/explain.py planted" + (" --quick" if quick else ""), "rows": results}


def _cost_one(model_name: str, n: int, method: str) -> dict:
    from deepsets import create_model, explain

    torch.manual_seed(0)
    m = create_model(model_name, in_dim=3, out_dim=2, depth=2, dim=64,
                     **({"pool": "mean"} if "deepsets" in model_name else {})).eval()
    x = torch.randn(1, n, 3)
    from deepsets.backends.chunked import chunked_forward

    with torch.no_grad():
        t = time.perf_counter()
        chunked_forward(m, x) if n > 65_536 else m(x)
        fwd = time.perf_counter() - t
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    groups = None
    if method == "shapley":
        groups = np.char.add(np.digitize(x[0, :, 0].numpy(), [-0.67, 0, 0.67]).astype(str),
                             np.digitize(x[0, :, 1].numpy(), [-0.67, 0, 0.67]).astype(str))[None]
    explain(m, x, method=method, groups=groups, samples=8)
    sec = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"model": model_name, "elements": n, "method": method, "forward_s": round(fwd, 3),
            "method_s": round(sec, 3), "ratio": round(sec / fwd, 1), "peak_rss_mb": round(peak / 1024, 1),
            "rss_before_mb": round(base / 1024, 1), "input_mb": round(n * 3 * 4 / 2 ** 20, 1)}


def cost(quick: bool, models=("deepsets++", "settransformer++"),
         methods=("occlusion", "integrated-gradients", "shapley")) -> dict:
    rows = []
    sizes = (10_000, 100_000) if quick else (100_000, 1_000_000)
    for model in models:
        for n in sizes:
            for method in methods:
                r = subprocess.run([sys.executable, __file__, "_cost", model, str(n), method], capture_output=True,
                                   text=True, timeout=3600)
                if r.returncode:
                    print(r.stderr[-2000:], file=sys.stderr)
                    continue
                row = json.loads(r.stdout.strip().splitlines()[-1])
                print(json.dumps(row), flush=True)
                rows.append(row)
    return {"command": "python benchmarks/explain.py cost" + (" --quick" if quick else ""), "rows": rows,
            "note": "shapley: 8 sampled orders of 16 groups (a 4 x 4 grid of channels 0 and 1); occlusion: the "
                    "readout fast path (sets above 1,024 elements)"}


def fastpath() -> dict:
    """Largest |fast - exact| occlusion relative to the largest |exact| score, for trained-like random models."""
    from deepsets import create_model, explain

    rows = []
    for model in ("deepsets++", "settransformer++"):
        torch.manual_seed(0)
        m = create_model(model, in_dim=3, out_dim=1, depth=2, dim=64,
                         **({"pool": "mean"} if "deepsets" in model else {})).double().eval()
        for n in (30, 100, 300, 1000):
            x = torch.randn(1, n, 3, dtype=torch.float64)
            ex = explain(m, x, method="occlusion", exact=True)
            fa = explain(m, x, method="occlusion", exact=False)
            err = float((fa - ex).abs().max() / ex.abs().max())
            corr = float(np.corrcoef(fa.numpy().ravel(), ex.numpy().ravel())[0, 1])
            row = {"model": model, "elements": n, "max_rel_error": round(err, 4), "correlation": round(corr, 5)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return {"command": "python benchmarks/explain.py fastpath", "rows": rows}


def musk1() -> dict:
    sys.path.insert(0, str(HERE))
    from mil_data import load_mil
    from sklearn.model_selection import StratifiedKFold

    from deepsets import SetClassifier, explain
    from deepsets.attribution.faithfulness import deletion_curve

    bags, labels, _ = load_mil("musk1")
    folds = StratifiedKFold(10, shuffle=True, random_state=0).split(np.zeros(len(labels)), labels)
    curves = {m: {"by_score": [], "random": []} for m in ("occlusion", "integrated-gradients")}
    for k, (tr, te) in enumerate(folds):
        clf = SetClassifier(seed=0, set_size=None).fit([bags[i] for i in tr], labels[tr])
        model = clf.module_.model
        for i in te:
            if labels[i] != 1 or len(bags[i]) < 2:
                continue
            x = torch.as_tensor(bags[i][None])
            for method in curves:
                s = explain(model, x, method=method)[0]
                fr, by, rnd, _, _ = deletion_curve(model, x[0], s[:, 1], output=1, repeats=8, seed=int(i))
                curves[method]["by_score"].append(by)
                curves[method]["random"].append(rnd)
        print(f"fold {k} done", flush=True)
    out = {"command": "python benchmarks/explain.py musk1", "fractions": fr.tolist(), "methods": {}}
    for method, c in curves.items():
        by, rnd = np.array(c["by_score"]), np.array(c["random"])
        out["methods"][method] = {"bags": len(by), "by_score": by.mean(0).tolist(), "random": rnd.mean(0).tolist(),
                                  "area_by_score": float(by.mean()), "area_random": float(rnd.mean()),
                                  "area_diff_se": float((by.mean(1) - rnd.mean(1)).std(ddof=1) / np.sqrt(len(by)))}
    try:
        from deepsets.attribution.plots import plot_deletion

        m = out["methods"]["occlusion"]
        plot_deletion(np.array(out["fractions"]), m["by_score"], m["random"], OUT / "musk1-deletion.png",
                      title="MUSK1, positive test bags (10-fold), occlusion",
                      ylabel="class-1 output (log of the mean probability)")
    except ImportError:
        pass
    return out


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_cost":
        print(json.dumps(_cost_one(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["planted", "cost", "fastpath", "musk1"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", nargs="+", default=["deepsets++", "settransformer++"], help="cost: these models")
    ap.add_argument("--methods", nargs="+", default=["occlusion", "integrated-gradients", "shapley"],
                    help="cost: these methods (rows of an earlier cost.json for the others are kept)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1 if args.what != "cost" else 2)
    OUT.mkdir(exist_ok=True)
    t = time.time()
    res = {"planted": lambda: planted(args.quick), "cost": lambda: cost(args.quick, args.models, args.methods),
           "fastpath": fastpath, "musk1": musk1}[args.what]()
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    res["wall_s"] = round(time.time() - t, 1)
    res["torch"] = torch.__version__
    name = args.what + ("-quick" if args.quick else "")
    earlier = OUT / f"{name}.json"
    if args.what == "cost" and earlier.is_file():  # a partial rerun replaces its own rows only
        old = json.loads(earlier.read_text())
        mine = {(r["model"], r["elements"], r["method"]) for r in res["rows"]}
        kept = [dict(r, date=old.get("date")) for r in old["rows"] if (r["model"], r["elements"], r["method"])
                not in mine]
        res["rows"] = kept + [dict(r, date=res["date"]) for r in res["rows"]]
        res["command"] = old.get("command", res["command"]) + "; then " + " ".join(["python", *sys.argv])
    (OUT / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {OUT / (name + '.json')}")


if __name__ == "__main__":
    main()
