"""``deepsets demo`` (what ``make demo`` runs): Deep Sets vs Deep Sets++ at depth 50 on MNIST Var.

Trains both models on the real offline MNIST digits (sets of 10 images -> variance of their labels) with the
paper's optimiser (Adam, lr 1e-4, batch 64) for a few epochs, prints their test MSE beside the label-variance
baseline (always predicting the mean), and writes the learning curves and the gradient-norm figure.
"""
from __future__ import annotations

import time
from pathlib import Path

from .train.config import TrainConfig

DEMO_MODELS = ("deepsets", "deepsets++")


def run_demo(out: str | Path = "runs/demo", depth: int = 50, epochs: int = 6, n_train: int = 6000,
             n_test: int = 1000, seed: int = 0, progress: bool = True, echo=print) -> dict:
    from .diagnostics.grad_norms import (
        first_last_ratio,
        gradient_norms,
        write_grad_norms,
    )
    from .train.callbacks import read_metrics
    from .train.evaluation import evaluate
    from .train.fit import train

    out = Path(out)
    t0 = time.time()
    echo(f"deepsets demo: Deep Sets vs Deep Sets++ at depth {depth} on MNIST Var (offline MNIST digits)")
    grads = {f"{m} (depth {depth})": gradient_norms(m, depth, "mnist-var", batch=64, seed=seed) for m in DEMO_MODELS}
    paths = write_grad_norms(grads, out / "grad_norms", f"Gradient norms at initialization, MNIST Var, depth {depth}")
    for label, rows in grads.items():
        echo(f"  gradient norm first / last layer at init, {label}: {first_last_ratio(rows):.3g}")

    results, curves = {}, {}
    for m in DEMO_MODELS:
        cfg = TrainConfig(task="mnist-var", model=m, depth=depth, epochs=epochs, seed=seed, progress=progress,
                          task_options={"n_train": n_train, "n_test": n_test}, out=str(out / m))
        echo(f"training {m} (depth {depth}, {epochs} epochs of {int(n_train * 0.9)} sets) ...")
        train(cfg, overwrite=True)
        results[m] = evaluate(out / m / "checkpoints" / "best.ckpt")
        curves[m] = read_metrics(out / m / "metrics.csv")

    baseline = results[DEMO_MODELS[0]]["label_variance"]
    try:
        from .diagnostics.plots import plot_curves

        plot_curves({f"{m} depth {depth}": rows for m, rows in curves.items()}, out / "learning_curves.png",
                    title="MNIST Var: validation MSE per epoch",
                    baseline=("predict the mean (test label variance)", baseline))
    except ImportError:
        pass
    echo("")
    echo(f"MNIST Var test MSE ({n_test} test sets; lower is better)")
    echo(f"  {'predict the mean (label variance)':<36} {baseline:8.4f}")
    for m in DEMO_MODELS:
        echo(f"  {m + f' depth {depth}':<36} {results[m]['mse']:8.4f}")
    echo("")
    echo(f"figures: {out / 'learning_curves.png'}, {paths.get('png', paths['csv'])}")
    echo(f"runs: {out / DEMO_MODELS[0]}, {out / DEMO_MODELS[1]}  ({(time.time() - t0) / 60:.1f} min)")
    return {"baseline": baseline, **{m: results[m]["mse"] for m in DEMO_MODELS}}


def add_demo_command(sub) -> None:
    p = sub.add_parser("demo", help="Deep Sets vs Deep Sets++ at depth 50 on MNIST Var (what `make demo` runs)")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--epochs", type=int, default=6, help="epochs per model (default 6)")
    p.add_argument("--n-train", type=int, default=6000, help="training sets (default 6000)")
    p.add_argument("--depth", type=int, default=50, help="depth of both models (default 50)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    run_demo(args.out, depth=args.depth, epochs=args.epochs, n_train=args.n_train, progress=args.progress)
    return 0
